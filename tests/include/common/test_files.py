"""The one atomic writer: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import pytest

from include.common import files


def test_atomic_write_removes_its_temporary_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_text(target, "new")

    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert target.read_text() == "old"


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "vectors.npz"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError), files.atomic_file(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["vectors.npz"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"  # readable, as results must be


def test_json_round_trips_unicode_and_ends_with_a_newline(tmp_path):
    path = tmp_path / "a.json"
    files.write_json(path, {"name": "ü 日本 <script>"})
    assert files.read_json(path) == {"name": "ü 日本 <script>"}
    assert path.read_text(encoding="utf-8").endswith("}\n")
