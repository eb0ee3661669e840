"""Batch ids are one safe path segment: they name a local folder and an S3 prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.common.batch import batch_dir, batch_dir_for_run, batch_id_for, check_batch_id


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "a\\b",
        "../x",
        "x" * 65,
        "a b",
        "é",
        "a\nb",
        "abc\n",
        None,
        5,
    ],  # fmt: skip
)
def test_an_unsafe_batch_id_is_refused_with_the_param_named(bad):
    with pytest.raises(ValueError, match="Param batch_id"):
        check_batch_id(bad)


def test_batch_folders_stay_inside_the_output_folder(tmp_path):
    assert batch_dir("out", "b-1.2_x", tmp_path) == tmp_path / "out" / "b-1.2_x"
    for bad in ("..", ".", "../../etc"):
        with pytest.raises(ValueError):
            batch_dir("out", bad, tmp_path)


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [
        ("manual__2026-12-01T10:00:00+00:00", "manual__2026-12-01T10_00_00_00_00"),
        ("..", "run"),
        ("...///", "run"),
        (".x", "x"),
        ("a" * 200, "a" * 64),
    ],
)
def test_a_batch_id_derived_from_the_run_id_is_always_safe(run_id, expected, tmp_path):
    assert batch_id_for(None, run_id) == expected
    assert batch_id_for("", run_id) == expected
    folder = batch_dir_for_run("out", None, run_id, tmp_path)
    assert folder.parent == tmp_path / "out" and folder.name == expected
    assert Path(folder).resolve().is_relative_to((tmp_path / "out").resolve())
