"""Generated gold: altered dataset images whose wrong answers are the model's own neighbours.

Real pictures (the demo's simulated video, small) embedded with the project's model; the
re-ranker reads the real files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from include.crowd.layout import plan_hits
from include.crowd.records import ImageRef
from include.demo.data import generate_demo_data
from include.image_similarity import pipeline
from include.image_similarity.gold import (
    DEFAULT_NEIGHBOURS,
    GoldError,
    _closest_gaps,
    batch_inputs,
    generate_gold,
    model_gaps,
)
from include.image_similarity.sources import ImageFile, list_local_images
from testsupport.imagekit import jpeg_bytes, textured


@pytest.fixture(scope="module")
def demo_batch(tmp_path_factory, embedder):
    """The demo data (6 frames of each of 8 scenes), listed, embedded and matched."""
    root = tmp_path_factory.mktemp("gold-demo")
    demo = generate_demo_data(root / "demo", frames_per_scene=6, frame_size=(320, 180))
    batch = root / "batch"
    pipeline.list_sources(
        batch,
        {
            "dataset": demo.dataset_dir,
            "queries": demo.queries_dir,
            "known_answers": demo.known_answers_dir,
        },
    )
    pipeline.embed_collections(batch, embedder, None)
    pipeline.match_queries(batch)
    return demo, batch


@pytest.fixture(scope="module")
def generated(demo_batch, embedder, tmp_path_factory):
    _, batch = demo_batch
    images, vectors, scores = batch_inputs(batch)
    out = tmp_path_factory.mktemp("gold-out")
    return generate_gold(images, vectors, embedder, out, 6, seed=3, model_scores=scores), out


def _dataset(batch: Path) -> dict[str, ImageFile]:
    images, _, _ = batch_inputs(batch)
    return {image.name: image for image in images}


def test_each_set_offers_the_source_of_its_reference_as_the_right_answer(demo_batch, generated):
    _, batch = demo_batch
    result, out = generated
    dataset = _dataset(batch)
    assert result.complete and len(result.records) == 6
    for record in result.records:
        # The shape of known_answers.json, which the crowd stage reads.
        assert {"set_id", "target", "correct", "wrong", "hashes"} <= record.keys()
        assert record["generated"] is True
        assert len(record["wrong"]) == 2
        names = [record["target"], record["correct"], *record["wrong"]]
        assert set(record["hashes"]) == set(names)
        for name in names:
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == record["hashes"][name]
        source = dataset[record["from_dataset"][record["correct"]]]
        assert record["hashes"][record["correct"]] == source.sha256  # the very picture
        # The reference is an altered view of the source: same scene, other pixels.
        reference = Image.open(out / record["target"])
        assert reference.format == "JPEG" and not reference.getexif()
        assert reference.size == Image.open(source.path).size
        assert record["hashes"][record["target"]] not in {i.sha256 for i in dataset.values()}
        scene = source.name.split("_")[0]
        wrong_sources = [record["from_dataset"][name] for name in record["wrong"]]
        # The closest wrong answer is a frame of the same pan; the next follows the model
        # questions' gaps (with 6 frames a scene, a model question's last option may be a frame
        # of another scene, and so may a set's).
        assert wrong_sources[0].startswith(scene + "_"), record
    # The listing holds every file the records name (what the known-answers collection needs).
    listed = {image.name: image.sha256 for image in result.listing.images}
    assert listed == {n: h for r in result.records for n, h in r["hashes"].items()}
    assert listed == {i.name: i.sha256 for i in list_local_images(out).images}


def test_wrong_answers_are_the_sources_nearest_unused_neighbours(demo_batch, generated):
    _, batch = demo_batch
    result, _ = generated
    images, vectors, _ = batch_inputs(batch)
    by_name = {image.name: image for image in images}
    used: set[str] = set()
    for record in result.records:
        source = by_name[record["from_dataset"][record["correct"]]]
        others = [i for i in images if i.sha256 != source.sha256 and i.name not in used]
        cosines = [float(vectors[i.sha256] @ vectors[source.sha256]) for i in others]
        nearest = [others[j].name for j in np.argsort(cosines)[::-1][:DEFAULT_NEIGHBOURS]]
        for name in record["wrong"]:
            assert record["from_dataset"][name] in nearest
        used.update(record["from_dataset"].values())


def test_no_picture_recurs_across_sets_and_each_hit_gets_its_own(generated):
    result, _ = generated
    pictures = [h for r in result.records for n, h in r["hashes"].items()]
    assert len(pictures) == len(set(pictures)) == 6 * 4
    sources = [name for r in result.records for name in r["from_dataset"].values()]
    assert len(sources) == len(set(sources))

    def ref(record, name):
        return ImageRef(name, record["hashes"][name], f"images/{record['hashes'][name]}.jpg")

    gold_sets = [
        (
            r["set_id"],
            ref(r, r["target"]),
            ref(r, r["correct"]),
            tuple(ref(r, n) for n in r["wrong"]),
        )
        for r in result.records
    ]
    queries = [
        (
            ImageRef(f"q{i}.jpg", f"{i:064x}"),
            [(ImageRef(f"m{i}{r}", f"{i}{r}"), r, 0.9) for r in (1, 2, 3)],
        )  # fmt: skip
        for i in range(6)
    ]
    plans = plan_hits("batch-1", queries, gold_sets, own_gold=True)
    assert sorted(p.gold.gold_set for p in plans) == sorted(r["set_id"] for r in result.records)


def test_generation_is_deterministic_for_a_seed(demo_batch, generated, embedder, tmp_path):
    _, batch = demo_batch
    result, out = generated
    images, vectors, scores = batch_inputs(batch)
    again = generate_gold(
        list(reversed(images)), vectors, embedder, tmp_path / "a", 6, seed=3, model_scores=scores
    )
    assert again.records == result.records
    for record in result.records:
        for name in record["hashes"]:
            assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
    other = generate_gold(images, vectors, embedder, tmp_path / "b", 6, seed=4, model_scores=scores)
    assert [r["hashes"] for r in other.records] != [r["hashes"] for r in result.records]


def test_gaps_are_measured_and_like_the_model_questions_not_the_provided_gold(
    demo_batch, generated, embedder
):
    demo, batch = demo_batch
    result, _ = generated
    _, _, scores = batch_inputs(batch)
    assert result.gaps.model == model_gaps(scores, 2) and len(result.gaps.model) == 8
    assert len(result.gaps.gold) == len(result.records)
    for record, gaps in zip(result.records, result.gaps.gold, strict=True):
        cosines = record["cosines"]
        right = cosines[record["correct"]]
        wrong = sorted((cosines[n] for n in record["wrong"]), reverse=True)
        assert gaps == pytest.approx([right - c for c in wrong], abs=1e-5)
    summary = result.gaps.as_dict()
    assert summary["gold"]["questions"] == 6 and len(summary["gold"]["median"]) == 2
    # Provided sets: a target beside an unrelated picture is far easier than a model question.
    known = list_local_images(demo.known_answers_dir)
    vectors = embedder.embed(known.images).vectors
    by_name = {image.name: vectors[image.sha256] for image in known.images}
    provided = [
        float(by_name[f"{s}.jpg"] @ by_name[f"{s}_1st_match.jpg"])
        - float(by_name[f"{s}.jpg"] @ by_name[f"{s}_2nd_match.jpg"])
        for s in ("known1", "known2", "known3", "known4")
    ]
    gold_first = [g[0] for g in result.gaps.gold]
    model_first = [g[0] for g in result.gaps.model]
    assert max(abs(g) for g in gold_first) < min(provided) / 4
    # Within the spread of the model's own gaps (the re-ranker check keeps the gold's right
    # answer ahead, so gold gaps lean positive where the model's re-ranked first may trail).
    assert min(model_first) - 0.02 <= min(gold_first)
    assert max(gold_first) <= max(model_first) + 0.02
    assert abs(np.median(gold_first) - np.median(model_first)) < 0.05


def _pictures(folder: Path, count: int, *, twins: bool = False) -> list[Path]:
    """``count`` textured photos as JPEG; with ``twins``, each also as a PNG of the same pixels
    (other bytes, the same picture: no re-ranker can tell them apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:02d}.jpg"
        path.write_bytes(jpeg_bytes(textured(320, 180, seed=10 + i)))
        paths.append(path)
        if twins:
            twin = folder / f"photo{i:02d}_twin.png"
            Image.open(path).convert("RGB").save(twin)
            paths.append(twin)
    return paths


def _embedded(paths: list[Path], embedder) -> tuple[list[ImageFile], dict[str, np.ndarray]]:
    images = [
        ImageFile(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in paths
    ]
    return images, embedder.embed(images).vectors


def test_a_neighbour_the_reranker_cannot_separate_is_never_a_wrong_answer(embedder, tmp_path):
    images, vectors = _embedded(_pictures(tmp_path / "twins", 4, twins=True), embedder)
    # Model questions whose options are all alike: by the gaps alone, every source's closest
    # wrong answer would be its twin, which the re-ranker cannot tell from it (for a person, a
    # second right answer). The twin is left out of the wrong answers; the other photos, which
    # the re-ranker tells apart, are the wrong answers.
    alike = [[0.9, 0.9, 0.9]]
    result = generate_gold(
        images, vectors, embedder, tmp_path / "out", 2, seed=0, model_scores=alike
    )
    assert result.records
    for record in result.records:
        photo = record["from_dataset"][record["correct"]][: len("photo00")]
        wrong = [record["from_dataset"][name] for name in record["wrong"]]
        assert len(wrong) == 2 and not any(name.startswith(photo) for name in wrong), record

    # The same photos without their twins are told apart.
    singles = [i for i in images if "_twin" not in i.name]
    result = generate_gold(singles, vectors, embedder, tmp_path / "out", 1, seed=0)
    assert len(result.records) == 1 and result.problems == []
    # And a margin no lead can reach drops every candidate, each with its reason.
    with pytest.raises(GoldError, match="no gold set") as raised:
        generate_gold(singles, vectors, embedder, tmp_path / "out2", 1, seed=0, margin=5.0)
    reasons = {p.name: p.reason for p in raised.value.problems}
    assert set(reasons) == {i.name for i in singles}
    for reason in reasons.values():
        assert "re-ranker cannot separate it from enough of its neighbours: 0 of its 3" in reason
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())


def test_too_few_images_is_an_error_that_says_how_many_are_needed(embedder, tmp_path):
    images, vectors = _embedded(_pictures(tmp_path / "two", 2), embedder)
    with pytest.raises(GoldError, match="has 2 distinct usable images; a gold set needs 3"):
        generate_gold(images, vectors, embedder, tmp_path / "out", 1, seed=0)
    # Enough for one set but not two: one set, and the shortfall is said.
    images, vectors = _embedded(_pictures(tmp_path / "four", 4), embedder)
    result = generate_gold(images, vectors, embedder, tmp_path / "out", 2, seed=0)
    assert len(result.records) == 1 and not result.complete
    assert any("unused pictures remain" in p.reason for p in result.problems)


def test_duplicates_corrupt_files_and_missing_vectors_are_skipped_with_reasons(embedder, tmp_path):
    paths = _pictures(tmp_path / "mixed", 6)
    shutil.copyfile(paths[0], tmp_path / "mixed" / "copy_of_photo00.jpg")
    corrupt = tmp_path / "mixed" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    unembedded = shutil.copyfile(_pictures(tmp_path / "late", 1)[0], tmp_path / "late.jpg")
    images, vectors = _embedded([*paths, tmp_path / "mixed" / "copy_of_photo00.jpg"], embedder)
    corrupt_image = ImageFile(
        corrupt.name, corrupt, hashlib.sha256(corrupt.read_bytes()).hexdigest(), 1027
    )
    # As if an earlier run had cached a vector for it: the file itself cannot be decoded.
    vectors[corrupt_image.sha256] = vectors[images[3].sha256] * 0.999 + 0.001
    late = ImageFile(unembedded.name, unembedded, "f" * 64, unembedded.stat().st_size)
    dataset = [*images, corrupt_image, late]

    result = generate_gold(dataset, vectors, embedder, tmp_path / "out", 2, seed=1)
    reasons = {p.name: p.reason for p in result.problems}
    # Sorted by name, the copy comes first and is kept; the original is the duplicate.
    assert reasons["photo00.jpg"].startswith("same content as copy_of_photo00.jpg")
    assert "no embedding vector" in reasons[late.name]
    used = {name for r in result.records for name in r["from_dataset"].values()}
    assert corrupt.name not in used
    assert not {"photo00.jpg", "copy_of_photo00.jpg"} <= used
    pictures = [h for r in result.records for h in r["hashes"].values()]
    assert len(pictures) == len(set(pictures))
    if corrupt.name in reasons:  # tried (as a source or a wrong answer): said why it was not used
        assert "corrupt" in reasons[corrupt.name] or "not an image" in reasons[corrupt.name]


def test_a_source_with_exif_gives_a_reference_without_it(embedder, tmp_path):
    paths = _pictures(tmp_path / "exif", 4)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0112] = 1
    textured(320, 180, seed=10).save(paths[0], "JPEG", exif=exif.tobytes())
    images, vectors = _embedded(paths, embedder)
    result = generate_gold(images, vectors, embedder, tmp_path / "out", 1, seed=0)
    reference = tmp_path / "out" / result.records[0]["target"]
    assert b"Exif" not in reference.read_bytes()[:4096]
    assert b"SecretCam" not in reference.read_bytes()


def test_two_versions_of_one_picture_are_never_the_wrong_answers_of_one_set():
    # Neighbours 0 and 1 are one picture (re-encoded); by gap alone both would be chosen.
    to_reference = np.array([0.95, 0.95, 0.90, 0.80])
    same = np.eye(4, dtype=bool)
    same[0, 1] = same[1, 0] = True
    assert _closest_gaps([10, 11, 12, 13], to_reference, 0.96, [0.01, 0.01], 2, same) == [10, 12]
    assert _closest_gaps([10, 11, 12, 13], to_reference, 0.96, None, 2, same) == [10, 12]
    assert _closest_gaps([10, 11, 12, 13], to_reference, 0.96, None, 2, np.eye(4, dtype=bool)) == [
        10,
        11,
    ]


# --- the batch's gold (pipeline.prepare_gold: Param gold_source) -------------------------------


@pytest.fixture
def batch_copy(demo_batch, tmp_path):
    """A copy of the matched demo batch with its provided sets checked, to change freely."""
    _, batch = demo_batch
    copy = tmp_path / "batch"
    shutil.copytree(batch, copy, ignore=shutil.ignore_patterns("gold", "gold.json"))
    pipeline.check_known_answers(copy)
    return copy


def _keep_queries(batch: Path, n: int) -> None:
    """Keep the first ``n`` model questions (the small demo dataset gives fewer than 8 sets
    once the 8 questions' 24 pictures are left out)."""
    path = batch / "similarity.json"
    similarity = json.loads(path.read_text())
    similarity["queries"] = similarity["queries"][:n]
    path.write_text(json.dumps(similarity))


def _gold_state(batch: Path) -> tuple[list[dict], list[dict], dict]:
    known = json.loads((batch / "known_answers.json").read_text())
    listing = json.loads((batch / "sources.json").read_text())["known_answers"]["images"]
    return known, listing, json.loads((batch / "gold.json").read_text())


def test_generated_gold_replaces_the_provided_sets_one_per_hit_never_a_model_picture(
    batch_copy, embedder
):
    _keep_queries(batch_copy, 5)
    similarity = json.loads((batch_copy / "similarity.json").read_text())
    queries = len(similarity["queries"])
    pipeline.prepare_gold(batch_copy, embedder, "generated", seed=7)
    known, listing, summary = _gold_state(batch_copy)
    assert summary["source"] == "generated" and summary["generated"] == len(known)
    assert len(known) == pipeline.gold_count(queries) and all(r["generated"] for r in known)
    assert {i["name"] for i in listing} == {n for r in known for n in r["hashes"]}
    assert all(Path(i["path"]).parent == batch_copy / "gold" for i in listing)
    shown = {m["sha256"] for q in similarity["queries"] for m in q["matches"]}
    assert not shown & {h for r in known for h in r["hashes"].values()}
    assert summary["gaps"]["gold"]["questions"] == len(known)

    # Again (a retried task): the same sets, listed once.
    pipeline.prepare_gold(batch_copy, embedder, "generated", seed=7)
    assert _gold_state(batch_copy)[:2] == (known, listing)

    # The crowd stage gives every HIT a set of its own.
    from include.crowd.stage import gold_source

    assert gold_source(batch_copy) == "generated"


def test_both_takes_generated_sets_first_and_fills_in_with_provided_ones(
    batch_copy, embedder, monkeypatch
):
    provided, _, _ = (json.loads((batch_copy / "known_answers.json").read_text()), None, None)
    monkeypatch.setattr(pipeline, "gold_count", lambda queries: 3)  # fewer than the 8 queries
    pipeline.prepare_gold(batch_copy, embedder, "both", seed=7)
    known, listing, summary = _gold_state(batch_copy)
    assert summary == summary | {"source": "both", "generated": 3, "provided": len(provided)}
    assert [r["set_id"] for r in known] == ["gen1", "gen2", "gen3"] + [
        r["set_id"] for r in provided
    ]
    assert {i["name"] for i in listing} == {n for r in known for n in r["hashes"]}

    # Asked for generated only, too few sets is an error before anything is spent.
    with pytest.raises(ValueError, match="only 3 could be generated.*set gold_source to both"):
        pipeline.prepare_gold(batch_copy, embedder, "generated", seed=7)

    # Provided only: the provided sets as checked, and the generated files are not listed.
    pipeline.prepare_gold(batch_copy, embedder, "provided", seed=7)
    known, listing, summary = _gold_state(batch_copy)
    assert known == provided and summary["source"] == "provided"
    assert all(Path(i["path"]).parent != batch_copy / "gold" for i in listing)


def test_a_provided_file_with_a_generated_name_is_refused(batch_copy, embedder):
    sources = json.loads((batch_copy / "sources.json").read_text())
    first = sources["known_answers"]["images"][0]
    sources["known_answers"]["images"].append({**first, "name": "gen1.jpg"})
    (batch_copy / "sources.json").write_text(json.dumps(sources))
    with pytest.raises(ValueError, match="holds a file named 'gen1.jpg'"):
        pipeline.prepare_gold(batch_copy, embedder, "both", seed=7)


def test_generated_only_needs_no_provided_sets(demo_batch, embedder, tmp_path):
    _, batch = demo_batch
    copy = tmp_path / "batch"
    shutil.copytree(batch, copy, ignore=shutil.ignore_patterns("gold", "gold.json"))
    _keep_queries(copy, 5)
    pipeline.skip_known_answers(copy)
    assert json.loads((copy / "known_answers.json").read_text()) == []
    with pytest.raises(ValueError, match="no gold set for the HITs"):
        pipeline.prepare_gold(copy, embedder, "provided", seed=1)
    summary = pipeline.prepare_gold(copy, embedder, "generated", seed=1)
    assert summary["generated"] == pipeline.gold_count(5) and summary["provided"] == 0


def test_the_bounded_thumbnail_cache_changes_no_set(demo_batch, generated, embedder, tmp_path):
    from include.image_similarity import gold

    _, batch = demo_batch
    result, _ = generated
    images, vectors, scores = batch_inputs(batch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gold, "THUMB_CACHE", 1)  # every thumbnail read again when next needed
        again = generate_gold(
            images, vectors, embedder, tmp_path / "out", 6, seed=3, model_scores=scores
        )
    assert [r["hashes"] for r in again.records] == [r["hashes"] for r in result.records]
