"""match_queries: cosine shortlist, re-ranked by spatial verification (no model: vectors by hand).

The vectors are written by hand so the cosine order is known and wrong on purpose (a neighbouring
frame ranks above the query's source); the images are real files, as the re-ranker reads them.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from include.common.images import InputSize
from include.image_similarity import pipeline
from include.image_similarity.rerank import RerankConfig
from include.image_similarity.settings import DEFAULTS
from include.image_similarity.vectors import load_vectors, write_vectors

FRAME = (320, 180)
# Cosine similarity of each frame to the query: frame3 (a neighbour) beats frame2 (the source).
COSINES = {"frame0.png": 0.60, "frame1.png": 0.90, "frame2.png": 0.93, "frame3.png": 0.95,
           "frame4.png": 0.88, "frame5.png": 0.50}  # fmt: skip


def _texture(seed: int = 0, size: tuple[int, int] = (1000, 600)) -> Image.Image:
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(size[1] // 20, size[0] // 20)).astype(np.uint8)
    image = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
    return image.filter(ImageFilter.GaussianBlur(3)).convert("RGB")


def _pan(photo: Image.Image, i: int) -> Image.Image:
    x, y, width = 20 + 60 * i, 40 + 10 * i, 600
    return photo.resize(FRAME, Image.Resampling.LANCZOS, box=(x, y, x + width, y + width * 0.5625))


def _crop_of(frame: Image.Image) -> Image.Image:
    """An off-centre 85 % crop of ``frame``, brighter, blurred: what a query looks like."""
    width, height = frame.size
    box = (width * 0.14, height * 0.02, width * 0.99, height * 0.87)
    image = frame.resize(frame.size, Image.Resampling.LANCZOS, box=box)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * 1.2 + 10, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))


@pytest.fixture
def batch(tmp_path):
    """A batch folder after list_sources and a hand-made embed step."""
    dataset, queries, known = tmp_path / "dataset", tmp_path / "queries", tmp_path / "known"
    for folder in (dataset, queries, known):
        folder.mkdir()
    photo = _texture()
    frames = [_pan(photo, i) for i in range(6)]
    for i, frame in enumerate(frames):
        frame.save(dataset / f"frame{i}.png")
    _crop_of(frames[2]).save(queries / "query.jpg", quality=80)
    batch_dir = tmp_path / "batch"
    pipeline.list_sources(
        batch_dir, {"dataset": dataset, "queries": queries, "known_answers": known}
    )
    listings = pipeline.load_listings(batch_dir)
    hashes, vectors = [], []
    dim = len(COSINES) + 1
    for image in listings["dataset"].images:
        cosine = COSINES[image.name]
        vector = np.zeros(dim, np.float32)
        vector[0] = cosine
        vector[1 + int(image.name[5])] = np.sqrt(1 - cosine**2)
        hashes.append(image.sha256)
        vectors.append(vector)
    query_vector = np.zeros(dim, np.float32)
    query_vector[0] = 1.0
    hashes.append(listings["queries"].images[0].sha256)
    vectors.append(query_vector)
    write_vectors(batch_dir, hashes, np.stack(vectors), "hand-made")
    return batch_dir


def test_cosine_alone_ranks_the_neighbour_first(batch):
    matches = pipeline.match_queries(batch, k=3, rerank_config=None)
    assert [m["name"] for m in matches["query.jpg"]] == ["frame3.png", "frame2.png", "frame1.png"]
    similarity = pipeline.read_json(batch / "similarity.json")
    assert similarity["rerank"] is None
    assert [m["alignment"] for m in similarity["queries"][0]["matches"]] == [None] * 3


def test_reranking_puts_the_source_frame_first_and_keeps_cosine_scores(batch):
    matches = pipeline.match_queries(batch, k=3)
    ranked = matches["query.jpg"]
    assert ranked[0] == {"name": "frame2.png", "score": pytest.approx(0.93, abs=1e-5)}
    assert len(ranked) == 3 and len({m["name"] for m in ranked}) == 3
    assert {m["name"] for m in ranked} <= {"frame1.png", "frame2.png", "frame3.png", "frame4.png"}
    similarity = pipeline.read_json(batch / "similarity.json")
    assert similarity["rerank"]["shortlist"] == 20
    first = similarity["queries"][0]["matches"][0]
    assert first["rank"] == 1 and first["alignment"] > 0.9


def test_k_above_the_shortlist_still_gets_k_matches(batch):
    matches = pipeline.match_queries(batch, k=5, rerank_config=RerankConfig(shortlist=2))
    assert len(matches["query.jpg"]) == 5
    assert matches["query.jpg"][0]["name"] == "frame2.png"


def test_an_unreadable_candidate_is_named_and_not_promoted(batch, caplog):
    listing = pipeline.load_listings(batch)["dataset"]
    next(i for i in listing.images if i.name == "frame2.png").path.write_bytes(b"not a picture")
    with caplog.at_level(logging.WARNING, logger="include.image_similarity.pipeline"):
        matches = pipeline.match_queries(batch, k=3)
    assert "re-ranking without frame2.png" in caplog.text
    names = [m["name"] for m in matches["query.jpg"]]
    assert len(names) == 3 and names[0] != "frame2.png"


def test_an_unreadable_query_keeps_the_cosine_order(batch, caplog):
    query = pipeline.load_listings(batch)["queries"].images[0]
    query.path.unlink()
    with caplog.at_level(logging.WARNING, logger="include.image_similarity.pipeline"):
        matches = pipeline.match_queries(batch, k=3)
    assert "re-ranking without query.jpg" in caplog.text
    assert [m["name"] for m in matches["query.jpg"]] == ["frame3.png", "frame2.png", "frame1.png"]


def test_k_below_one_is_refused(batch):
    with pytest.raises(ValueError, match="k must be at least 1"):
        pipeline.match_queries(batch, k=0)


# --- sharded embedding (a stand-in embedder: the plan, the shards and the merge are tested) ---


class _HashEmbedder:
    """Embeds by content hash (a deterministic unit vector); files named bad* fail to decode."""

    model_id = "hash-embedder"
    input_size = InputSize(DEFAULTS.embedding.image_area)

    def __init__(self):
        self.seen: list[str] = []

    def embed(self, images, cache=None, *, label="images", thumbnails=False):
        from include.image_similarity.embedding import EmbedResult
        from include.image_similarity.sources import Problem

        result = EmbedResult()
        for image in images:
            self.seen.append(image.name)
            if image.name.startswith("bad"):
                result.problems.append(Problem(image.name, "is corrupt", stage="decode"))
                continue
            rng = np.random.default_rng(int(image.sha256[:8], 16))
            vector = rng.normal(size=8).astype(np.float32)
            result.vectors[image.sha256] = vector / np.linalg.norm(vector)
            if thumbnails:  # a picture of its own per content, as the real one decodes
                result.thumbnails[image.sha256] = rng.integers(0, 256, (72, 128), np.uint8)
            result.embedded += 1
        return result


def _by_bytes(_collection, folder):
    """Lists a folder by hashing its files only (the fake files are not pictures): decoding
    happens at embedding time."""
    from include.image_similarity.sources import ImageFile, Listing

    files = sorted(Path(folder).iterdir())
    images = [
        ImageFile(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in files
    ]
    return Listing(str(folder), images, [])


@pytest.fixture
def listed(tmp_path):
    """A listed batch: 7 dataset images (one undecodable), 3 queries (one a dataset copy)."""
    dataset, queries, known = tmp_path / "dataset", tmp_path / "queries", tmp_path / "known"
    for folder in (dataset, queries, known):
        folder.mkdir()
    for i in range(6):
        (dataset / f"img{i}.png").write_bytes(f"image {i}".encode())
    (dataset / "bad.png").write_bytes(b"broken")
    (queries / "q0.png").write_bytes(b"query 0")
    (queries / "q1.png").write_bytes(b"query 1")
    (queries / "copy.png").write_bytes(b"image 3")  # the same content as img3.png
    batch_dir = tmp_path / "batch"
    pipeline.list_sources(
        batch_dir, {"dataset": dataset, "queries": queries, "known_answers": known}, _by_bytes
    )
    return batch_dir


def _vectors(batch_dir):
    stored = load_vectors(batch_dir)
    return dict(zip(stored.hashes, stored.read_all(), strict=True))


def test_small_batches_are_one_shard(listed):
    assert pipeline.plan_shards(listed, shard_size=2, fan_out_above=9) == [
        {"shard": 0, "shards": 1}
    ]
    assert pipeline.read_json(listed / "shards.json") == {"images": 9, "shards": 1}


def test_shards_cover_every_image_once_and_merge_like_one_shard(listed, tmp_path):
    single = tmp_path / "single"
    import shutil

    shutil.copytree(listed, single)
    one = _HashEmbedder()
    pipeline.embed_collections(single, one, None)

    plan = pipeline.plan_shards(listed, shard_size=2, fan_out_above=3)
    assert plan == [{"shard": i, "shards": 5} for i in range(5)]
    embedder = _HashEmbedder()
    stats = [pipeline.embed_shard(listed, embedder, None, **shard) for shard in reversed(plan)]
    # 9 distinct contents (copy.png repeats img3.png): each embedded exactly once overall.
    assert sorted(embedder.seen) == sorted(one.seen) and len(embedder.seen) == 9
    assert sum(s["images"] for s in stats) == 9 and sum(s["failed"] for s in stats) == 1
    merged = pipeline.merge_shards(listed)
    assert merged == {"shards": 5, "vectors": 8, "failed": 1}
    sharded, whole = _vectors(listed), _vectors(single)
    assert sharded.keys() == whole.keys()
    for digest, vector in whole.items():
        np.testing.assert_array_equal(sharded[digest], vector)
    problems = pipeline.problems_of(listed)
    assert [(p["collection"], p["name"], p["stage"]) for p in problems] == [
        ("dataset", "bad.png", "decode")
    ]
    # Merging again (a retried task) changes nothing.
    pipeline.merge_shards(listed)
    assert len(pipeline.problems_of(listed)) == 1


class _CachedEmbedder(_HashEmbedder):
    """As if every vector came from the embedding cache: no image is decoded, no thumbnail."""

    def embed(self, images, cache=None, *, label="images", thumbnails=False):
        return super().embed(images, cache, label=label, thumbnails=False)


def _stored_thumbnails(batch_dir):
    from include.image_similarity.thumbnails import load_thumbnails

    stored = load_thumbnails(batch_dir)
    return {h: stored.get(h) for h in _vectors(batch_dir) if h in stored}


def test_the_merge_keeps_the_thumbnails_of_decoded_images_and_carries_cached_ones_over(listed):
    plan = pipeline.plan_shards(listed, shard_size=2, fan_out_above=3)
    for shard in plan:
        pipeline.embed_shard(listed, _HashEmbedder(), None, **shard)
    pipeline.merge_shards(listed)
    first = _stored_thumbnails(listed)
    assert first.keys() == _vectors(listed).keys()  # every image that has a vector
    assert all(t.shape == (72, 128) and t.dtype == np.uint8 for t in first.values())
    # A rerun whose vectors all come from the cache decodes nothing: the thumbnails stay.
    for shard in pipeline.plan_shards(listed, shard_size=100, fan_out_above=3):
        pipeline.embed_shard(listed, _CachedEmbedder(), None, **shard)
    pipeline.merge_shards(listed)
    again = _stored_thumbnails(listed)
    assert again.keys() == first.keys()
    for digest, thumb in first.items():
        np.testing.assert_array_equal(again[digest], thumb)
    assert len(list(listed.glob("thumbnails-*.bin"))) == 1
    # An image gone from the sources loses its thumbnail with its vector.
    gone = pipeline.load_listings(listed)["dataset"].images[0]
    gone.path.unlink()
    folders = {name: listed.parent / name for name in ("dataset", "queries")}
    pipeline.list_sources(listed, {**folders, "known_answers": listed.parent / "known"}, _by_bytes)
    for shard in pipeline.plan_shards(listed, shard_size=100, fan_out_above=3):
        pipeline.embed_shard(listed, _CachedEmbedder(), None, **shard)
    pipeline.merge_shards(listed)
    assert _stored_thumbnails(listed).keys() == first.keys() - {gone.sha256}


def test_shards_with_unreadable_thumbnails_merge_without_them(listed, caplog):
    """Thumbnails only save time: a shard whose thumbnail members are damaged, crafted or of
    another decode merges its vectors and loses its thumbnails, named in the log."""
    plan = pipeline.plan_shards(listed, shard_size=3, fan_out_above=3)
    for shard in plan:
        pipeline.embed_shard(listed, _HashEmbedder(), None, **shard)
    paths = sorted((listed / "vectors").glob("shard-*.npz"))
    assert len(paths) == 3
    _rewrite_npz(paths[0], thumb_pixels=np.array([{"a": 1}] * 1000, dtype=object))  # pickles
    _rewrite_npz(paths[1], thumb_area=np.array(640 * 360))  # decoded for another model size
    with caplog.at_level(logging.WARNING):
        merged = pipeline.merge_shards(listed)
    assert merged == {"shards": 3, "vectors": 8, "failed": 1}
    assert f"not keeping the thumbnails of {paths[0].name}" in caplog.text
    assert f"not keeping the thumbnails of {paths[1].name}: decoded at another area" in caplog.text
    with np.load(paths[2], allow_pickle=False) as archive:
        kept = {str(h) for h in archive["thumb_hashes"]}
    assert kept and _stored_thumbnails(listed).keys() == kept


def test_a_missing_shard_stops_the_merge(listed):
    plan = pipeline.plan_shards(listed, shard_size=4, fan_out_above=3)
    pipeline.embed_shard(listed, _HashEmbedder(), None, **plan[0])
    with pytest.raises(FileNotFoundError, match="2 of 3 embedding shards are missing"):
        pipeline.merge_shards(listed)


def test_a_new_plan_removes_the_shards_of_the_old_one(listed):
    for shard in pipeline.plan_shards(listed, shard_size=2, fan_out_above=3):
        pipeline.embed_shard(listed, _HashEmbedder(), None, **shard)
    (shard,) = pipeline.plan_shards(listed, shard_size=2, fan_out_above=100)
    assert sorted(p.name for p in (listed / "vectors").iterdir()) == []
    pipeline.embed_shard(listed, _HashEmbedder(), None, **shard)
    assert pipeline.merge_shards(listed)["vectors"] == 8


def test_shard_settings_are_checked(listed):
    with pytest.raises(ValueError, match="embedding shard size must be at least 1"):
        pipeline.plan_shards(listed, shard_size=0)
    with pytest.raises(ValueError, match="9 images to embed in shards of 2 make 5 shards, more "
                       "than the 4 mapped tasks Airflow allows.*raise shard_size"):  # fmt: skip
        pipeline.plan_shards(listed, shard_size=2, fan_out_above=0, max_shards=4)
    with pytest.raises(ValueError, match="shard 3 of 2 does not exist"):
        pipeline.embed_shard(listed, _HashEmbedder(), None, shard=3, shards=2)


def test_fewer_dataset_images_than_k_gives_fewer_matches_and_says_so(batch, caplog):
    with caplog.at_level(logging.WARNING, logger="include.image_similarity.pipeline"):
        matches = pipeline.match_queries(batch, k=10)
    assert len(matches["query.jpg"]) == 6
    assert "only 6 dataset images for k=10" in caplog.text


def test_an_empty_dataset_or_query_folder_stops_the_run_naming_it(tmp_path):
    for folder in ("dataset", "queries", "known"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (64, 36), "red").save(tmp_path / "queries" / "q.png")
    sources = {
        "dataset": tmp_path / "dataset",
        "queries": tmp_path / "queries",
        "known_answers": tmp_path / "known",
    }
    with pytest.raises(ValueError, match=r"the dataset source .*dataset holds no image files"):
        pipeline.list_sources(tmp_path / "batch", sources)


# --- contact sheets and the listing's log ------------------------------------------------------


def test_each_query_gets_a_contact_sheet_named_after_its_stem(batch):
    pipeline.match_queries(batch, k=3)
    written = pipeline.contact_sheets(batch)
    assert [path.name for path in written] == ["query.sheet.jpg"]
    assert sorted(p.name for p in (batch / "contact_sheets").iterdir()) == ["query.sheet.jpg"]
    with Image.open(written[0]) as sheet:
        assert sheet.format == "JPEG" and sheet.width > sheet.height


def test_queries_sharing_a_stem_get_distinct_sheets_whatever_their_order():
    from include.image_similarity.contact_sheet import sheet_file_names

    names = ["q1.jpg", "q1.png", "a b.jpg", "a_b.jpg", "x.jpg", "Q2.jpg", "q2.png", "<b>.jpg"]
    expected = {
        "q1.jpg": "q1.jpg.sheet.jpg",  # q1.jpg and q1.png share a stem: whole names
        "q1.png": "q1.png.sheet.jpg",
        "a b.jpg": "a_b.jpg.sheet.jpg",  # the same once file-system-safe: numbered by name
        "a_b.jpg": "a_b.jpg_2.sheet.jpg",
        "x.jpg": "x.sheet.jpg",
        "Q2.jpg": "Q2.jpg.sheet.jpg",  # one file on a case-insensitive file system
        "q2.png": "q2.png.sheet.jpg",
        "<b>.jpg": "b.sheet.jpg",
    }
    assert dict(zip(names, sheet_file_names(names), strict=True)) == expected
    backwards = names[::-1]
    assert dict(zip(backwards, sheet_file_names(backwards), strict=True)) == expected


def test_a_listing_without_known_answers_names_no_placeholder(tmp_path, caplog):
    for folder in ("dataset", "queries"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 36), "red").save(tmp_path / folder / "a.png")
    sources = {"dataset": tmp_path / "dataset", "queries": tmp_path / "queries"}
    with caplog.at_level(logging.INFO):
        counts = pipeline.list_sources(tmp_path / "batch", sources)
    assert counts == {"dataset": 1, "queries": 1, "known_answers": 0}
    assert pipeline.load_listings(tmp_path / "batch")["known_answers"].images == []
    assert "listed 1 dataset images, 1 queries (0 files skipped, 0 hidden)" in caplog.text
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "known" in m.replace(str(tmp_path), "")], messages
    assert [m.split(" images in ")[1].split(" (")[0] for m in messages if " images in " in m] == [
        str(tmp_path / "dataset"),
        str(tmp_path / "queries"),
    ]


# --- the top-k search cut into dataset shards (vectors by hand, no re-ranker) -----------------


@pytest.fixture
def wide(tmp_path):
    """A listed batch with vectors: 60 dataset images, 6 queries. Every third dataset image
    holds one of a few vectors whose dot products are exact (halves and ones), so exact ties
    straddle every shard boundary; a query is a byte copy of a dataset image (never its own
    match), and two dataset files share a content."""
    dataset, queries, known = tmp_path / "dataset", tmp_path / "queries", tmp_path / "known"
    for folder in (dataset, queries, known):
        folder.mkdir()
    for i in range(60):
        (dataset / f"img{i:02d}.png").write_bytes(f"image {i}".encode())
    (dataset / "twin.png").write_bytes(b"image 7")
    for i in range(5):
        (queries / f"q{i}.png").write_bytes(f"query {i}".encode())
    (queries / "copy.png").write_bytes(b"image 30")
    batch_dir = tmp_path / "batch"
    from include.image_similarity.sources import ImageFile, Listing

    def resolve(_collection, folder):
        images = [
            ImageFile(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
            for p in sorted(Path(folder).iterdir())
        ]
        return Listing(str(folder), images, [])

    pipeline.list_sources(
        batch_dir, {"dataset": dataset, "queries": queries, "known_answers": known}, resolve
    )
    exact = np.array(
        [[1, 0, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]],
        np.float32,
    )
    rng = np.random.default_rng(7)
    rows: dict[str, np.ndarray] = {}
    listings = pipeline.load_listings(batch_dir)
    for n, image in enumerate(listings["dataset"].images):
        if image.sha256 not in rows:
            vector = exact[n // 3 % 3] if n % 3 == 0 else rng.normal(size=8).astype(np.float32)
            rows[image.sha256] = vector / np.linalg.norm(vector)
    for n, image in enumerate(listings["queries"].images):
        rows.setdefault(image.sha256, exact[n % 3])
    write_vectors(batch_dir, list(rows), np.stack(list(rows.values())), "hand-made")
    return batch_dir


def _search_in_shards(batch_dir, shard_size, k):
    plan = pipeline.plan_search(batch_dir, shard_size=shard_size, fan_out_above=0)
    for shard in reversed(plan):  # the order the tasks run in does not matter
        pipeline.search_shard(batch_dir, **shard, shortlist=k)
    return len(plan)


@pytest.mark.parametrize("shard_size", [1, 7, 13, 30, 61])
def test_the_search_in_dataset_shards_gives_the_matches_of_one_search(
    wide, shard_size, monkeypatch
):
    whole = pipeline.match_queries(wide, k=5, rerank_config=None)
    detailed = pipeline.read_json(wide / "similarity.json")
    monkeypatch.setattr(pipeline, "DEFAULT_DATASET_BLOCK", 4)  # a shard read in blocks of 4
    shards = _search_in_shards(wide, shard_size, 5)
    assert shards == -(-60 // shard_size)  # 60 contents: twin.png is a copy of img07.png
    merged = pipeline.match_queries(wide, k=5, rerank_config=None, searched=shards)
    assert merged == whole
    assert pipeline.read_json(wide / "similarity.json") == detailed
    # The ties (cosine 1 with 7 images) went to the earlier images; the query copied from
    # img30 never matches it.
    first = [m["name"] for m in merged["q0.png"]]
    assert first == ["img03.png", "img12.png", "img21.png", "img30.png", "img39.png"]
    assert "img30.png" not in [m["name"] for m in merged["copy.png"]]


@pytest.mark.parametrize("seed", range(5))
def test_expanding_distinct_contents_takes_a_shortcut_with_the_same_result(seed):
    """When no two dataset files share a content, ``_expand`` maps rows to images directly;
    the general per-content path must give the same top-k, misses (-1) included."""
    rng = np.random.default_rng(seed)
    images, queries, shortlist = 40, 6, 5
    dataset_rows = rng.permutation(100)[:images]  # each image its own row of the vectors file
    rows = pipeline._distinct(dataset_rows)
    assert np.array_equal(rows, dataset_rows)
    indices = np.stack([rng.permutation(images)[:shortlist] for _ in range(queries)])
    scores = -np.sort(-rng.random((queries, shortlist)), axis=1).astype(np.float32)
    indices[0, 3:], scores[0, 3:] = -1, -np.inf  # a query with fewer candidates than the list
    scores[1, 1:3] = scores[1, 1]  # a tie
    # In the search's order: best first, ties to the earlier row, misses last.
    order = np.lexsort((np.where(indices < 0, images, indices), -scores), axis=1)
    indices, scores = np.take_along_axis(indices, order, 1), np.take_along_axis(scores, order, 1)
    found = pipeline.TopK(indices, scores)
    fast = pipeline._expand(found, dataset_rows, rows, shortlist)
    of_row = {int(row): position for position, row in enumerate(rows)}
    images_of = np.array([of_row[int(row)] for row in dataset_rows])
    general = pipeline._expand_by_content(found, images_of, shortlist)
    assert np.array_equal(fast.indices, indices)  # rows are images in listing order here
    assert np.array_equal(general.indices, fast.indices)
    assert np.array_equal(general.scores, fast.scores)


def test_small_datasets_are_searched_by_one_task_and_a_new_plan_drops_the_old(wide):
    assert pipeline.plan_search(wide, shard_size=5, fan_out_above=60) == [{"shard": 0, "shards": 1}]
    _search_in_shards(wide, 15, 3)
    assert len(list((wide / "matching").glob("search-*.npz"))) == 4
    _search_in_shards(wide, 40, 3)
    assert sorted(p.name for p in (wide / "matching").iterdir()) == [
        "plan.npz",
        "search-00000-of-00002.npz",
        "search-00001-of-00002.npz",
    ]
    with pytest.raises(ValueError, match="search shard size must be at least 1"):
        pipeline.plan_search(wide, shard_size=0)
    with pytest.raises(ValueError, match="search shard 2 of 2 does not exist"):
        pipeline.search_shard(wide, 2, 2, shortlist=3)


def _rewrite_npz(path, **changes):
    """Rewrite an .npz file the stage wrote with some members changed (None: left out)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays.update(changes)
    with path.open("wb") as handle:
        np.savez(handle, **{key: value for key, value in arrays.items() if value is not None})


def _damage_search(batch_dir, name, **changes):
    _rewrite_npz(batch_dir / "matching" / name, **changes)


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (lambda d: (d / "matching" / "search-00001-of-00003.npz").unlink(), "cannot be read"),
        (
            lambda d: (d / "matching" / "search-00002-of-00003.npz").write_bytes(b"PK"),
            "cannot be read",
        ),
        (
            lambda d: _damage_search(d, "search-00000-of-00003.npz", start=np.int64(1)),
            "is not the search of shard 1 of 3",
        ),
        (
            lambda d: _damage_search(d, "search-00001-of-00003.npz", indices=np.full((6, 4), 20)),
            "is not the search of shard 2 of 3",
        ),
        (
            lambda d: _damage_search(
                d, "search-00002-of-00003.npz", scores=np.full((6, 4), np.nan, np.float32)
            ),
            "is not the search of shard 3 of 3",
        ),
        (
            lambda d: _damage_search(d, "search-00000-of-00003.npz", plan=np.array("0" * 64)),
            "for these 6 queries",
        ),
        (lambda d: pipeline.search_shard(d, 1, 3, shortlist=2), "with a shortlist of 4"),
        (
            lambda d: _damage_search(
                d, "search-00000-of-00003.npz", indices=np.tile(np.int64([3, 3, 1, 2]), (6, 1))
            ),
            "is not the search of shard 1 of 3",
        ),
        (
            lambda d: _damage_search(
                d,
                "search-00001-of-00003.npz",
                indices=np.full((6, 4), -1),
                scores=np.full((6, 4), 5.0, np.float32),
            ),
            "is not the search of shard 2 of 3",
        ),
        (
            lambda d: _damage_search(
                d, "search-00002-of-00003.npz", scores=np.full((6, 4), np.inf, np.float32)
            ),
            "is not the search of shard 3 of 3",
        ),
        (
            lambda d: _damage_search(d, "search-00000-of-00003.npz", start=np.array("0")),
            "is not the search of shard 1 of 3",
        ),
        (
            lambda d: _damage_search(d, "search-00000-of-00003.npz", indices=np.array("a")),
            "is not the search",
        ),
    ],
)
def test_a_missing_stale_or_damaged_search_is_refused_naming_it(wide, damage, refusal):
    assert _search_in_shards(wide, 21, 4) == 3
    damage(wide)
    with pytest.raises(ValueError, match=refusal) as caught:
        pipeline.match_queries(wide, k=4, rerank_config=None, searched=3)
    assert "run that search again" in str(caught.value)
    assert not (wide / "matches.json").exists()


def _hashes_archive(batch_dir, **changes):
    _rewrite_npz(batch_dir / "vector_hashes.npz", **changes)


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (lambda d, v: np.save(v.path, np.zeros((64, 8), np.float32)), "does not hold one float32"),
        (lambda d, v: np.save(v.path, np.zeros((65, 8), np.float64)), "does not hold one float32"),
        (lambda d, v: v.path.write_bytes(v.path.read_bytes()[:300]), "does not hold one float32"),
        (lambda d, v: np.save(v.path, np.zeros((65, 8), ">f4")), "does not hold one float32"),
        (
            lambda d, v: np.save(v.path, np.asfortranarray(np.ones((65, 8), np.float32))),
            "does not hold one float32",
        ),
        (lambda d, v: v.path.unlink(), "cannot be read"),
        (lambda d, v: (d / "vector_hashes.npz").write_bytes(b"PK\x03\x04"), "cannot be read"),
        (
            lambda d, v: _hashes_archive(d, vectors_file=np.array("../../etc/passwd")),
            "names '../../etc/passwd' as its vectors",
        ),
        (lambda d, v: _hashes_archive(d, vectors_file=None), "cannot be read"),
    ],
)
def test_vectors_missing_damaged_or_not_of_their_hashes_are_refused(wide, damage, refusal):
    stored = load_vectors(wide)
    assert len(stored.hashes) == stored.shape[0] == 65 and stored.model_id == "hand-made"
    damage(wide, stored)
    with pytest.raises(ValueError, match=refusal) as caught:
        pipeline.match_queries(wide, k=3, rerank_config=None)
    assert "merge the embeddings again" in str(caught.value)


def test_a_vector_that_is_not_finite_is_refused_naming_its_row(wide):
    stored = load_vectors(wide)
    vectors = stored.read_all()
    vectors[5, 2] = np.nan
    write_vectors(wide, stored.hashes, vectors, "hand-made")
    with pytest.raises(ValueError, match=r"vectors-[0-9a-f]{32}\.npy row 5 is not a vector"):
        pipeline.match_queries(wide, k=3, rerank_config=None)


def test_a_new_pair_of_vector_files_replaces_the_old_and_leftovers_go(wide):
    old = load_vectors(wide)
    vectors = old.read_all()
    (wide / f".{old.path.name}.abc.part").write_bytes(b"a killed write")
    (wide / "vectors.npz").write_bytes(b"an older layout")
    write_vectors(wide, old.hashes, vectors, "hand-made")
    new = load_vectors(wide)
    assert new.path != old.path and not old.path.exists()
    assert sorted(p.name for p in wide.glob("*vectors*")) == [new.path.name]
    np.testing.assert_array_equal(new.read_all(), vectors)


def test_a_search_task_reads_its_plan_and_vectors_not_the_listing(wide):
    pipeline.match_queries(wide, k=3, rerank_config=None)
    whole = pipeline.read_json(wide / "matches.json")
    plan = pipeline.plan_search(wide, shard_size=25, fan_out_above=0)
    listing = (wide / "sources.json").read_bytes()
    (wide / "sources.json").unlink()
    for shard in plan:
        pipeline.search_shard(wide, **shard, shortlist=3)
    (wide / "sources.json").write_bytes(listing)
    assert pipeline.match_queries(wide, k=3, rerank_config=None, searched=3) == whole


def test_a_plan_of_other_vectors_or_another_listing_is_refused(wide):
    plan = pipeline.plan_search(wide, shard_size=25, fan_out_above=0)
    with pytest.raises(ValueError, match="is not a plan of 2 search shards"):
        pipeline.search_shard(wide, 0, 2, shortlist=3)
    stored = load_vectors(wide)
    write_vectors(wide, stored.hashes + ["f" * 64], np.vstack(
        [stored.read_all(), np.eye(1, 8, dtype=np.float32)]), "hand-made")  # fmt: skip
    with pytest.raises(ValueError, match="is not a plan of 3 search shards over these vectors"):
        pipeline.search_shard(wide, **plan[0], shortlist=3)
    (wide / "matching" / "plan.npz").write_bytes(b"not a plan")
    with pytest.raises(ValueError, match="the search plan cannot be read"):
        pipeline.search_shard(wide, **plan[0], shortlist=3)
    # Searched, then the listing changes (a query left out): the merge refuses the searches.
    for shard in pipeline.plan_search(wide, shard_size=25, fan_out_above=0):
        pipeline.search_shard(wide, **shard, shortlist=3)
    sources = pipeline.read_json(wide / "sources.json")
    sources["queries"]["images"].pop()
    pipeline.write_json(wide / "sources.json", sources)
    with pytest.raises(ValueError, match="for these 5 queries"):
        pipeline.match_queries(wide, k=3, rerank_config=None, searched=3)


def test_vectors_naming_a_content_twice_are_refused(wide):
    stored = load_vectors(wide)
    hashes = stored.hashes[:-1] + [stored.hashes[0]]
    write_vectors(wide, hashes, stored.read_all(), "hand-made")
    with pytest.raises(ValueError, match="names a content twice"):
        pipeline.plan_search(wide)


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"dataset_rows": np.int64(3)}, "is not a plan"),
        ({"query_rows": np.array(["a", "b"])}, "is not a plan"),
        ({"dataset_rows": np.array([1.5, 2.5])}, "is not a plan"),
        ({"shards": np.array("3")}, "is not a plan"),
        ({"digest": np.array([1, 2])}, "is not a plan"),
        ({"query_rows": None}, "the search plan cannot be read"),
    ],
)
def test_a_damaged_plan_is_refused_before_any_search(wide, changes, refusal):
    plan = pipeline.plan_search(wide, shard_size=25, fan_out_above=0)
    _rewrite_npz(wide / "matching" / "plan.npz", **changes)
    with pytest.raises(ValueError, match=refusal) as caught:
        pipeline.search_shard(wide, **plan[0], shortlist=3)
    assert "plan the search again" in str(caught.value)
    assert not list((wide / "matching").glob("search-*.npz"))


def test_more_shards_than_airflow_maps_are_refused_before_any_file(wide):
    with pytest.raises(ValueError, match="60 distinct dataset images to search in shards of 1 "
                       "make 60 shards, more than the 50 mapped tasks Airflow allows"):  # fmt: skip
        pipeline.plan_search(wide, shard_size=1, fan_out_above=0, max_shards=50)
    assert not (wide / "matching").exists()
    assert len(pipeline.plan_search(wide, shard_size=2, fan_out_above=0, max_shards=50)) == 30


def test_files_of_one_content_rank_alike_however_the_dataset_is_cut(tmp_path):
    """1280-long random vectors: unlike the hand-made ones, their products round differently
    in blocks of other shapes. Copies of a content are each other's equals in every search:
    the earlier file first, one score, and the same scores in every layout."""
    from include.image_similarity.sources import ImageFile, Listing

    rng = np.random.default_rng(11)
    contents = [rng.normal(size=1280).astype(np.float32) for _ in range(24)]
    dataset, queries, known = tmp_path / "dataset", tmp_path / "queries", tmp_path / "known"
    for folder in (dataset, queries, known):
        folder.mkdir()
    layout = [*range(24), 3, 17, 3, 9]  # copies, far apart in the listing
    for n, content in enumerate(layout):
        (dataset / f"d{n:03d}.png").write_bytes(f"content {content}".encode())
    vector_of = {f"content {c}".encode(): v / np.linalg.norm(v) for c, v in enumerate(contents)}
    for q in range(6):
        near = contents[(3, 17, 9, 3, 5, 17)[q]] + 0.6 * rng.normal(size=1280).astype(np.float32)
        (queries / f"q{q}.png").write_bytes(f"query {q}".encode())
        vector_of[f"query {q}".encode()] = near / np.linalg.norm(near)

    def resolve(_collection, folder):
        images = [
            ImageFile(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
            for p in sorted(Path(folder).iterdir())
        ]
        return Listing(str(folder), images, [])

    batch = tmp_path / "batch"
    sources = {"dataset": dataset, "queries": queries, "known_answers": known}
    pipeline.list_sources(batch, sources, resolve)
    hashes, rows = [], []
    for folder in (dataset, queries):
        for path in sorted(folder.iterdir()):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in hashes:
                hashes.append(digest)
                rows.append(vector_of[path.read_bytes()])
    write_vectors(batch, hashes, np.stack(rows), "random")
    whole = pipeline.match_queries(batch, k=4, rerank_config=None)
    assert [m["name"] for m in whole["q0.png"]][:3] == ["d003.png", "d024.png", "d026.png"]
    assert len({m["score"] for m in whole["q0.png"][:3]}) == 1
    for shard_size in range(1, 12):
        shards = _search_in_shards(batch, shard_size, 4)
        assert pipeline.match_queries(batch, k=4, rerank_config=None, searched=shards) == whole


def test_a_shard_whose_vectors_do_not_fit_its_hashes_stops_the_merge(listed):
    plan = pipeline.plan_shards(listed, shard_size=2, fan_out_above=3)
    for shard in plan:
        pipeline.embed_shard(listed, _HashEmbedder(), None, **shard)
    path = pipeline.shard_path(listed, 1, len(plan))
    with np.load(path, allow_pickle=False) as archive:
        vectors = archive["vectors"]
    _rewrite_npz(path, vectors=vectors[:-1])  # one vector fewer: every later row would shift
    with pytest.raises(ValueError, match=f"{path.name} does not hold 2 finite vectors"):
        pipeline.merge_shards(listed)
    assert not (listed / "vector_hashes.npz").exists()
    _rewrite_npz(path, vectors=np.full((2, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="embed that shard again"):
        pipeline.merge_shards(listed)


# --- re-ranking cut into query shards (real images, vectors by hand) -------------------------


@pytest.fixture
def panned(tmp_path):
    """12 frames of one camera pan and 5 queries (crops of frames 2, 4, 6, 8, 10) whose vectors
    put the next frame first by cosine, as neighbouring video frames do."""
    dataset, queries, known = tmp_path / "dataset", tmp_path / "queries", tmp_path / "known"
    for folder in (dataset, queries, known):
        folder.mkdir()
    photo = _texture(seed=3, size=(1600, 700))
    frames = [_pan(photo, i) for i in range(12)]
    for i, frame in enumerate(frames):
        frame.save(dataset / f"frame{i:02d}.png")
    for n, source in enumerate((2, 4, 6, 8, 10)):
        _crop_of(frames[source]).save(queries / f"query{n}.jpg", quality=85)
    batch_dir = tmp_path / "batch"
    pipeline.list_sources(
        batch_dir, {"dataset": dataset, "queries": queries, "known_answers": known}
    )
    listings = pipeline.load_listings(batch_dir)
    rng = np.random.default_rng(5)
    base = rng.normal(size=(12, 32)).astype(np.float32)
    path = np.cumsum(base, axis=0)  # neighbouring frames have near vectors
    hashes, vectors = [], []
    for i, image in enumerate(listings["dataset"].images):
        hashes.append(image.sha256)
        vectors.append(path[i] / np.linalg.norm(path[i]))
    for n, image in enumerate(listings["queries"].images):
        near = path[2 * n + 3] + 0.2 * path[2 * n + 2]  # closer to the next frame
        hashes.append(image.sha256)
        vectors.append(near / np.linalg.norm(near))
    write_vectors(batch_dir, hashes, np.stack(vectors), "hand-made")
    return batch_dir


def _rerank_in_shards(batch_dir, shard_size, k, config, searched=None):
    plan = pipeline.plan_rerank(
        batch_dir, k, rerank_config=config, searched=searched, shard_size=shard_size,
        fan_out_above=0,
    )  # fmt: skip
    for shard in reversed(plan):
        pipeline.rerank_shard(batch_dir, **shard, k=k, rerank_config=config)
    return len(plan)


@pytest.mark.parametrize("shard_size", [1, 2, 5])
@pytest.mark.parametrize("config", [RerankConfig(shortlist=6), None], ids=["rerank", "cosine"])
def test_reranking_in_query_shards_gives_the_matches_of_one_process(panned, shard_size, config):
    whole = pipeline.match_queries(panned, k=3, rerank_config=config)
    detailed = pipeline.read_json(panned / "similarity.json")
    shards = _rerank_in_shards(panned, shard_size, 3, config)
    assert shards == -(-5 // shard_size)
    joined = pipeline.write_matches(panned, 3, rerank_config=config, reranked=shards)
    assert joined == whole
    assert pipeline.read_json(panned / "similarity.json") == detailed
    # With the dataset searched in shards too, still the same.
    searched = _search_in_shards(panned, 5, pipeline.search_shortlist(3, config))
    shards = _rerank_in_shards(panned, shard_size, 3, config, searched=searched)
    assert pipeline.write_matches(panned, 3, rerank_config=config, reranked=shards) == whole
    if config:  # the alignment of every verified match came through the files
        aligned = [m["alignment"] for q in detailed["queries"] for m in q["matches"]]
        assert len(aligned) == 15 and all(isinstance(a, float) for a in aligned)


def test_reranking_reads_the_stored_thumbnails_and_decodes_only_what_is_missing(
    panned, monkeypatch, caplog
):
    from include.image_similarity.rerank import open_thumbnail_source, thumbnail
    from include.image_similarity.thumbnails import write_thumbnails

    config = RerankConfig()
    with caplog.at_level(logging.INFO, logger="include.image_similarity.pipeline"):
        decoded = pipeline.match_queries(panned, k=3, rerank_config=config)
    detailed = pipeline.read_json(panned / "similarity.json")
    assert "decoding 17 thumbnails the batch does not store" in caplog.text
    listings = pipeline.load_listings(panned)
    images = listings["dataset"].images + listings["queries"].images
    write_thumbnails(
        panned,
        [(i.sha256, thumbnail(open_thumbnail_source(i.path))) for i in images],
        DEFAULTS.embedding.image_area,
    )

    def no_decoding(*args, **kwargs):
        raise AssertionError("a thumbnail was decoded although the batch stores it")

    monkeypatch.setattr(pipeline, "open_thumbnail_source", no_decoding)
    assert pipeline.match_queries(panned, k=3, rerank_config=config) == decoded
    assert pipeline.read_json(panned / "similarity.json") == detailed
    shards = _rerank_in_shards(panned, 2, 3, config)
    assert pipeline.write_matches(panned, 3, rerank_config=config, reranked=shards) == decoded
    # A damaged pixel file is not used: the files are decoded again, with the same result.
    monkeypatch.undo()
    (pixels,) = panned.glob("thumbnails-*.bin")
    pixels.write_bytes(pixels.read_bytes()[:100])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert pipeline.match_queries(panned, k=3, rerank_config=config) == decoded
    assert "not using the stored thumbnails" in caplog.text
    assert "decoding 17 thumbnails" in caplog.text


@pytest.mark.slow
def test_a_rerun_from_the_cache_ranks_as_the_first_run_did(panned, embedder, tmp_path, caplog):
    """The first run keeps the thumbnails the embedding decoded; a rerun in a fresh batch whose
    vectors all come from the cache decodes them from the files instead. Both are the same
    pixels, so both runs write the same matches (1280x720 PNG frames and queries: a PNG has
    no draft decode, so any other decode size would give other thumbnails)."""
    from include.image_similarity.cache import EmbeddingCache, LocalChunkStore

    sources = {"known_answers": panned.parent / "known"}
    for name in ("dataset", "queries"):
        sources[name] = tmp_path / "large" / name
        sources[name].mkdir(parents=True)
        for small in sorted((panned.parent / name).iterdir()):
            large = Image.open(small).convert("RGB").resize((1280, 720), Image.Resampling.BICUBIC)
            large.save(sources[name] / f"{small.stem}.png")
    cache = EmbeddingCache(LocalChunkStore(tmp_path / "cache"), embedder.model_id)
    written = []
    for run in ("first", "rerun"):
        batch_dir = tmp_path / run
        pipeline.list_sources(batch_dir, sources)
        pipeline.embed_collections(batch_dir, embedder, cache)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="include.image_similarity.pipeline"):
            pipeline.match_queries(batch_dir, k=3, rerank_config=RerankConfig())
        decoded = "decoding 17 thumbnails the batch does not store" in caplog.text
        assert decoded == (run == "rerun")
        written.append(pipeline.read_json(batch_dir / "similarity.json"))
    for detailed in written:
        for query in detailed["queries"]:
            query["query"].pop("path")
            for match in query["matches"]:
                match.pop("path")
    assert written[0] == written[1]


def test_thumbnails_are_decoded_at_the_area_the_vectors_were_embedded_at(panned, monkeypatch):
    """Without stored thumbnails, re-ranking decodes the files as the embedding decoded them:
    at the pixel area of the vectors' model (its id says it), not at the default."""
    vectors = load_vectors(panned)
    write_vectors(
        panned, vectors.hashes, vectors.read_all(), "efficientnet_lite0-x-a100000-gem3-v1"
    )
    seen = []
    real = pipeline._thumbnails

    def spy(images, **kwargs):
        seen.append(kwargs["area"])
        return real(images, **kwargs)

    monkeypatch.setattr(pipeline, "_thumbnails", spy)
    pipeline.match_queries(panned, k=3, rerank_config=RerankConfig())
    assert seen == [100_000]


def _damage_rerank(batch_dir, name, **changes):
    _rewrite_npz(batch_dir / "matching" / name, **changes)


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (lambda d: (d / "matching" / "rerank-00001-of-00003.npz").unlink(), "cannot be read"),
        (
            lambda d: (d / "matching" / "rerank-00002-of-00003.npz").write_bytes(b"PK\x03\x04"),
            "cannot be read",
        ),
        (
            lambda d: _damage_rerank(d, "rerank-00000-of-00003.npz", key=np.array("0" * 64)),
            "is not the re-ranking of shard 1 of 3",
        ),
        (  # a match that was not in the query's shortlist
            lambda d: _damage_rerank(
                d, "rerank-00000-of-00003.npz", indices=np.array([[11, 0, 1]], np.int64)
            ),
            "is not the re-ranking of shard 1 of 3",
        ),
        (
            lambda d: _damage_rerank(
                d, "rerank-00001-of-00003.npz", alignment=np.full((2, 3), 7.0)
            ),
            "is not the re-ranking of shard 2 of 3",
        ),
        (
            lambda d: _damage_rerank(d, "rerank-00002-of-00003.npz", stop=np.int64(4)),
            "is not the re-ranking of shard 3 of 3",
        ),
        (  # shortlisted again with another k since
            lambda d: pipeline.plan_rerank(
                d, 2, rerank_config=RerankConfig(shortlist=4), shard_size=2, fan_out_above=0
            ),
            "shortlist the queries again",
        ),
    ],
)
def test_a_missing_stale_or_damaged_reranking_is_refused_naming_it(panned, damage, refusal):
    config = RerankConfig(shortlist=4)
    assert _rerank_in_shards(panned, 2, 3, config) == 3
    damage(panned)
    with pytest.raises(ValueError, match=refusal):
        pipeline.write_matches(panned, 3, rerank_config=config, reranked=3)
    assert not (panned / "matches.json").exists()


def test_a_shortlist_of_other_settings_or_damaged_is_refused(panned):
    config = RerankConfig(shortlist=4)
    pipeline.plan_rerank(panned, 3, rerank_config=config, shard_size=2, fan_out_above=0)
    with pytest.raises(ValueError, match="is not the shortlist of these 5 queries"):
        pipeline.rerank_shard(panned, 0, 3, 3, rerank_config=RerankConfig(shortlist=5))
    (panned / "matching" / "shortlist.npz").write_bytes(b"nothing")
    with pytest.raises(ValueError, match="the shortlist cannot be read.*shortlist the queries"):
        pipeline.rerank_shard(panned, 0, 3, 3, rerank_config=config)
    with pytest.raises(ValueError, match="re-ranking shard 3 of 3 does not exist"):
        pipeline.rerank_shard(panned, 3, 3, 3, rerank_config=config)
