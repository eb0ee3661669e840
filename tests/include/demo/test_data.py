"""Tests for the offline demo data generator and recall@k."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from include.demo.data import (
    SCENES,
    DemoData,
    generate_demo_data,
    recall_at_k,
    recall_at_k_any,
)

SMALL = {"frames_per_scene": 3, "frame_size": (96, 54), "n_queries": 5, "n_known_sets": 2}

FRAME_NAME = re.compile(r"^scene\d{2}_frame\d{3}\.jpg$")
QUERY_NAME = re.compile(r"^query\d{2}\.(jpg|png)$")


def _hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_mtime_ns
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=7, **SMALL)


def test_layout_and_frame_names(demo: DemoData) -> None:
    assert demo.regenerated
    for folder in (demo.dataset_dir, demo.queries_dir, demo.known_answers_dir):
        assert folder.is_dir()
    assert demo.ground_truth_path.is_file()
    assert demo.manifest_path.is_file()

    frames = sorted(path.name for path in demo.dataset_dir.iterdir())
    assert len(frames) == len(SCENES) * SMALL["frames_per_scene"]
    assert all(FRAME_NAME.match(name) for name in frames), frames
    assert frames[0] == "scene01_frame001.jpg"
    assert frames[-1] == f"scene{len(SCENES):02d}_frame003.jpg"


def test_known_answer_names_follow_the_scheme(demo: DemoData) -> None:
    expected = {
        name
        for n in range(1, SMALL["n_known_sets"] + 1)
        for name in (
            f"known{n}.jpg",
            f"known{n}_1st_match.jpg",
            f"known{n}_2nd_match.jpg",
            f"known{n}_3rd_match.jpg",
        )
    }
    assert {path.name for path in demo.known_answers_dir.iterdir()} == expected


def test_known_answers_pair_the_same_frame_against_other_scenes(demo: DemoData) -> None:
    assert set(demo.known_answers) == {f"known{n}.jpg" for n in range(1, 3)}
    for target, entry in demo.known_answers.items():
        stem = target.removesuffix(".jpg")
        frame = entry["frame"]
        assert entry[f"{stem}_1st_match.jpg"] == frame
        scenes = [entry[f"{stem}_{s}_match.jpg"][:7] for s in ("2nd", "3rd")]
        assert frame[:7] not in scenes
        assert scenes[0] != scenes[1]
        for source in entry.values():
            assert (demo.dataset_dir / source).is_file()


def test_ground_truth_points_at_existing_frames(demo: DemoData) -> None:
    on_disk = json.loads(demo.ground_truth_path.read_text(encoding="utf-8"))
    assert on_disk["seed"] == 7
    assert on_disk["queries"] == demo.ground_truth
    assert set(demo.ground_truth) == {path.name for path in demo.queries_dir.iterdir()}
    assert len(demo.ground_truth) == SMALL["n_queries"]
    for frame in demo.ground_truth.values():
        assert (demo.dataset_dir / frame).is_file()


def _contains(outer: list[float], inner: list[float], tolerance: float = 0.5) -> bool:
    return (
        outer[0] <= inner[0] + tolerance
        and outer[1] <= inner[1] + tolerance
        and outer[2] >= inner[2] - tolerance
        and outer[3] >= inner[3] - tolerance
    )


def test_acceptable_frames_show_all_of_the_query(demo: DemoData) -> None:
    on_disk = json.loads(demo.ground_truth_path.read_text(encoding="utf-8"))
    assert on_disk["acceptable"] == demo.acceptable
    assert set(demo.acceptable) == set(demo.ground_truth)
    frame_boxes, query_boxes = on_disk["frame_boxes"], on_disk["query_boxes"]
    assert set(frame_boxes) == {path.name for path in demo.dataset_dir.iterdir()}
    assert set(query_boxes) == set(demo.ground_truth)
    for query, source in demo.ground_truth.items():
        frames = demo.acceptable[query]
        assert source in frames
        assert frames == sorted(set(frames))
        query_box = query_boxes[query]
        assert query_box[0] < query_box[2] and query_box[1] < query_box[3]
        for frame in frames:
            assert frame[:7] == source[:7], (query, frame)  # the same scene only
            assert (demo.dataset_dir / frame).is_file()
            assert _contains(frame_boxes[frame], query_box), (query, frame)
        # And every frame of the scene containing the query is listed.
        containing = {
            frame
            for frame, box in frame_boxes.items()
            if frame[:7] == source[:7] and _contains(box, query_box)
        }
        assert containing == set(frames)


def test_query_box_lies_inside_its_source_frame(demo: DemoData) -> None:
    on_disk = json.loads(demo.ground_truth_path.read_text(encoding="utf-8"))
    for query, source in demo.ground_truth.items():
        frame_box = on_disk["frame_boxes"][source]
        query_box = on_disk["query_boxes"][query]
        assert _contains(frame_box, query_box, tolerance=1e-6)
        # The query is an 80-90% crop of its frame.
        ratio = (query_box[2] - query_box[0]) / (frame_box[2] - frame_box[0])
        assert 0.79 <= ratio <= 0.91


def test_query_names_do_not_reveal_the_answer(demo: DemoData) -> None:
    names = list(demo.ground_truth)
    assert all(QUERY_NAME.match(name) for name in names), names
    assert all("scene" not in name and "frame" not in name for name in names)
    assert any(name.endswith(".png") for name in names)
    assert any(name.endswith(".jpg") for name in names)


def test_every_file_opens_at_the_intended_size_and_format(demo: DemoData) -> None:
    folders = (demo.dataset_dir, demo.queries_dir, demo.known_answers_dir)
    files = [path for folder in folders for path in folder.iterdir()]
    assert files
    for path in files:
        with Image.open(path) as image:
            image.load()
            assert image.size == SMALL["frame_size"], path
            assert image.mode == "RGB", path
            assert image.format == ("PNG" if path.suffix == ".png" else "JPEG"), path


def test_queries_differ_from_their_frames(demo: DemoData) -> None:
    for query, frame in demo.ground_truth.items():
        query_bytes = (demo.queries_dir / query).read_bytes()
        assert query_bytes != (demo.dataset_dir / frame).read_bytes()


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = generate_demo_data(tmp_path / "a", seed=3, **SMALL)
    second = generate_demo_data(tmp_path / "b", seed=3, **SMALL)
    assert _hashes(first.root) == _hashes(second.root)
    assert len(_hashes(first.root)) > len(SCENES) * SMALL["frames_per_scene"]

    other = generate_demo_data(tmp_path / "c", seed=4, **SMALL)
    assert _hashes(other.root) != _hashes(first.root)


def test_second_call_reuses_a_complete_generation(tmp_path: Path) -> None:
    first = generate_demo_data(tmp_path, seed=1, **SMALL)
    before = _mtimes(tmp_path)

    second = generate_demo_data(tmp_path, seed=1, **SMALL)

    assert not second.regenerated
    assert _mtimes(tmp_path) == before
    assert second == dataclasses.replace(first, regenerated=False)


def test_a_partial_folder_is_regenerated_cleanly(tmp_path: Path) -> None:
    complete = _hashes(generate_demo_data(tmp_path / "ref", seed=1, **SMALL).root)
    dest = tmp_path / "partial"
    generate_demo_data(dest, seed=1, **SMALL)
    (dest / "manifest.json").unlink()
    (dest / "queries" / "query01.jpg").unlink()
    (dest / "dataset" / "stray.jpg").write_bytes(b"left over")
    (dest / "unrelated.txt").write_text("not ours", encoding="utf-8")

    again = generate_demo_data(dest, seed=1, **SMALL)

    assert again.regenerated
    assert (dest / "unrelated.txt").read_text(encoding="utf-8") == "not ours"
    (dest / "unrelated.txt").unlink()
    assert _hashes(dest) == complete


def test_a_missing_file_or_new_parameters_trigger_regeneration(tmp_path: Path) -> None:
    generate_demo_data(tmp_path, seed=1, **SMALL)
    (tmp_path / "dataset" / "scene02_frame002.jpg").unlink()
    assert generate_demo_data(tmp_path, seed=1, **SMALL).regenerated
    assert (tmp_path / "dataset" / "scene02_frame002.jpg").is_file()

    changed = generate_demo_data(tmp_path, seed=1, **{**SMALL, "n_queries": 2})
    assert changed.regenerated
    assert sorted(path.name for path in changed.queries_dir.iterdir()) == sorted(
        changed.ground_truth
    )
    assert len(changed.ground_truth) == 2


def test_invalid_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frames_per_scene"):
        generate_demo_data(tmp_path, **{**SMALL, "frames_per_scene": 0})
    with pytest.raises(ValueError, match="n_queries"):
        generate_demo_data(tmp_path, **{**SMALL, "n_queries": 10_000})
    assert not any(tmp_path.iterdir())


GROUND_TRUTH = {
    "query01.jpg": "scene01_frame001.jpg",
    "query02.jpg": "scene02_frame005.jpg",
    "query03.png": "scene03_frame009.jpg",
    "query04.jpg": "scene04_frame002.jpg",
}
MATCHES = {
    # Found first.
    "query01.jpg": [
        {"name": "scene01_frame001.jpg", "score": 0.97},
        {"name": "scene01_frame002.jpg", "score": 0.95},
        {"name": "scene01_frame003.jpg", "score": 0.90},
    ],
    # Found third.
    "query02.jpg": [
        {"name": "scene02_frame004.jpg", "score": 0.93},
        {"name": "scene02_frame006.jpg", "score": 0.92},
        {"name": "scene02_frame005.jpg", "score": 0.91},
    ],
    # Not found.
    "query03.png": [
        {"name": "scene03_frame008.jpg", "score": 0.88},
        {"name": "scene03_frame010.jpg", "score": 0.87},
        {"name": "scene05_frame001.jpg", "score": 0.40},
    ],
    # query04.jpg is missing: a miss. An unknown query is ignored.
    "query99.jpg": [{"name": "scene04_frame002.jpg", "score": 1.0}],
}


@pytest.mark.parametrize(("k", "expected"), [(1, 0.25), (2, 0.25), (3, 0.5), (10, 0.5)])
def test_recall_at_k(k: int, expected: float) -> None:
    assert recall_at_k(MATCHES, GROUND_TRUTH, k) == pytest.approx(expected)


def test_recall_at_k_edge_cases() -> None:
    assert recall_at_k({}, GROUND_TRUTH, 3) == 0.0
    perfect = {query: [{"name": frame, "score": 1.0}] for query, frame in GROUND_TRUTH.items()}
    assert recall_at_k(perfect, GROUND_TRUTH, 1) == 1.0
    with pytest.raises(ValueError, match="k must"):
        recall_at_k(MATCHES, GROUND_TRUTH, 0)
    with pytest.raises(ValueError, match="ground truth"):
        recall_at_k(MATCHES, {}, 3)


ACCEPTABLE = {
    "query01.jpg": ["scene01_frame001.jpg"],
    "query02.jpg": ["scene02_frame005.jpg", "scene02_frame006.jpg"],
    "query03.png": ["scene03_frame009.jpg", "scene03_frame010.jpg"],
    "query04.jpg": ["scene04_frame002.jpg"],
}


@pytest.mark.parametrize(("k", "expected"), [(1, 0.25), (2, 0.75), (3, 0.75), (10, 0.75)])
def test_recall_at_k_any(k: int, expected: float) -> None:
    # query01: the source first; query02 and query03: another acceptable frame second;
    # query04 is missing (a miss); query99 is not in the ground truth (ignored).
    assert recall_at_k_any(MATCHES, ACCEPTABLE, k) == pytest.approx(expected)


def test_recall_at_k_any_with_only_the_source_equals_recall_at_k() -> None:
    only_source = {query: [frame] for query, frame in GROUND_TRUTH.items()}
    for k in (1, 2, 3):
        assert recall_at_k_any(MATCHES, only_source, k) == recall_at_k(MATCHES, GROUND_TRUTH, k)


def test_recall_at_k_any_edge_cases() -> None:
    assert recall_at_k_any({}, ACCEPTABLE, 3) == 0.0
    assert recall_at_k_any(MATCHES, {"query01.jpg": []}, 3) == 0.0
    with pytest.raises(ValueError, match="k must"):
        recall_at_k_any(MATCHES, ACCEPTABLE, 0)
    with pytest.raises(ValueError, match="ground truth"):
        recall_at_k_any(MATCHES, {}, 3)
