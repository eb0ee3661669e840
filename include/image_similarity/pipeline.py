"""The similarity stage as steps over a batch folder: list → check gold → embed → match → sheets.

Each step reads what the previous one wrote into the batch folder and writes its own file, so
Airflow tasks (separate processes, possibly on different workers sharing storage) pass only the
folder path between them, and the command-line tool runs the same steps in one process.

Files in a batch folder:

- ``sources.json``: every image of the dataset, queries and known answers (name, path, sha256);
- ``similarity_settings.json``: the stage's settings (``settings.py``), stored by the DAG when
  it lists the sources;
- ``known_answers.json``: the gold sets HITs use: the validated provided known-answer sets,
  the generated ones (``gold.py``, in ``gold/``; records marked ``generated``), or both;
- ``gold.json``: where the gold comes from (``source``: provided, generated or both), how many
  sets were generated, and the cosine gaps of generated gold vs model questions;
- ``shards.json`` and ``vectors/shard-*.npz``: how the images to embed were cut into shards
  (one unless the batch is large; each shard may run on another worker) and each shard's
  vectors and left-out files;
- ``vector_hashes.npz`` and ``vectors-<token>.npy``: the embeddings of the dataset and the
  queries (the shards merged; a float32 matrix read row by row, one row per content), the
  content hash of each row and the name of the matrix it belongs with (written last, so a crash
  never pairs one merge's hashes with another's vectors);
- ``matching/``: the DAG's search and re-ranking cut into tasks: ``plan.npz`` and
  ``search-*.npz`` (each dataset shard's top-k), ``shortlist.npz`` (each query's nearest images
  by cosine) and ``rerank-*.npz`` (each query shard's re-ranked matches);
- ``matches.json``: ``{query name: [{"name": dataset name, "score": cosine}, ...]}``, best first
  (best by the re-ranker when it is on, so a lower cosine may come before a higher one);
- ``similarity.json``: the same matches with hashes, ranks and alignment scores, the model id,
  k and the re-ranker's settings;
- ``problems.json``: every file left out, with the reason;
- ``contact_sheets/<query stem>.sheet.jpg``: the query beside its matches and their scores
  (queries sharing a stem: ``contact_sheet.sheet_file_names``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from include.common.files import UNREADABLE_ARCHIVE, atomic_file, read_json, write_json
from include.common.images import DecodeError, InputSize, open_image
from include.image_similarity.cache import EmbeddingCache
from include.image_similarity.embedding import Embedder, model_area
from include.image_similarity.index import (
    DEFAULT_DATASET_BLOCK,
    TopK,
    merge_top_k,
    top_k_sharded,
)
from include.image_similarity.known_answers import parse_known_answer_sets
from include.image_similarity.rerank import (
    RerankConfig,
    open_thumbnail_source,
    rerank,
    thumbnail,
)
from include.image_similarity.settings import DEFAULTS
from include.image_similarity.sources import ImageFile, Listing, Problem, list_local_images
from include.image_similarity.thumbnails import (
    NO_THUMBNAILS,
    StoredThumbnails,
    load_thumbnails,
    pack_thumbnails,
    shard_area,
    unpack_thumbnails,
    write_thumbnails,
)
from include.image_similarity.vectors import (
    VECTOR_HASHES_FILE,
    BatchVectors,
    load_vectors,
    member_shape,
    save_archive,
    write_vector_files,
)

log = logging.getLogger(__name__)

COLLECTIONS = ("dataset", "queries", "known_answers")
SHARDS_DIR = "vectors"
MATCHING_DIR = "matching"
SEARCH_PLAN = "plan.npz"
SHORTLIST = "shortlist.npz"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _listing_to_dict(listing: Listing) -> dict:
    return {
        "source": listing.source,
        "images": [
            {"name": i.name, "path": str(i.path), "sha256": i.sha256, "size": i.size}
            for i in listing.images
        ],
        "problems": [p.as_dict() for p in listing.problems],
    }


def _listing_from_dict(data: dict) -> Listing:
    return Listing(
        source=data["source"],
        images=[
            ImageFile(i["name"], Path(i["path"]), i["sha256"], i["size"]) for i in data["images"]
        ],
        problems=[Problem(**p) for p in data["problems"]],
    )


def load_listings(batch_dir: Path) -> dict[str, Listing]:
    data = read_json(batch_dir / "sources.json")
    return {name: _listing_from_dict(data[name]) for name in COLLECTIONS}


def _record_problems(batch_dir: Path, problems: list[Problem], collection: str) -> None:
    """Merge ``problems`` into problems.json (idempotent when a step is retried)."""
    path = batch_dir / "problems.json"
    existing = read_json(path) if path.exists() else []
    seen = {(p["collection"], p["name"], p["stage"]) for p in existing}
    for problem in problems:
        entry = {"collection": collection, **problem.as_dict()}
        if (collection, problem.name, problem.stage) not in seen:
            existing.append(entry)
            seen.add((collection, problem.name, problem.stage))
    write_json(path, existing)


def list_sources(
    batch_dir: Path,
    sources: dict[str, str | Path],
    resolve: Callable[[str, str | Path], Listing] | None = None,
    *,
    follow_external_symlinks: bool = False,
) -> dict[str, int]:
    """List the three collections into ``sources.json``; returns image counts per collection.

    ``resolve(collection, source)`` turns a source into a Listing; by default a local folder,
    listed by ``list_local_images`` with ``follow_external_symlinks`` (a custom ``resolve`` must
    pass it to ``list_local_images`` itself). Hidden files, named in ``Listing.hidden``, are
    recorded in problems.json with the files left out. Known answers may be left out of
    ``sources`` (the command line has none): that collection is then empty, and unnamed in the log.
    """
    batch_dir.mkdir(parents=True, exist_ok=True)
    if resolve is None:

        def resolve(_collection: str, source: str | Path) -> Listing:
            return list_local_images(source, follow_external_symlinks=follow_external_symlinks)

    listings = {
        name: resolve(name, sources[name]) if name in sources else Listing(source="")
        for name in COLLECTIONS
    }
    for name in ("dataset", "queries"):
        if not listings[name].images:
            raise ValueError(
                f"the {name} source {listings[name].source} holds no image files; "
                "check the folder setting"
            )
    write_json(
        batch_dir / "sources.json", {n: _listing_to_dict(lst) for n, lst in listings.items()}
    )
    for name, listing in listings.items():
        _record_problems(batch_dir, listing.problems + listing.hidden, name)
    counts = {name: len(listing.images) for name, listing in listings.items()}
    listed = [f"{counts['dataset']} dataset images", f"{counts['queries']} queries"]
    if "known_answers" in sources:
        listed.append(f"{counts['known_answers']} known-answer files")
    log.info(
        "listed %s (%d files skipped, %d hidden)",
        ", ".join(listed),
        sum(len(lst.problems) for lst in listings.values()),
        sum(len(lst.hidden) for lst in listings.values()),
    )
    return counts


def check_known_answers(
    batch_dir: Path, max_pixels: int | None = None, *, required: bool = True
) -> list[dict]:
    """Validate known-answer names and decode every gold image; write ``known_answers.json``.

    A naming problem stops the run (``KnownAnswerError``) before any work is paid for; a set with
    an undecodable image is left out and reported, and the run stops only if no set remains
    (unless not ``required``: gold generated from the dataset may fill in for them).
    """
    listing = load_listings(batch_dir)["known_answers"]
    if not required and not listing.images:
        write_json(batch_dir / "known_answers.json", [])
        log.info("no provided known-answer sets: the gold is generated from the dataset")
        return []
    sets = parse_known_answer_sets(listing)
    usable, problems = [], []
    for known in sets:
        broken = []
        for image in known.files:
            try:
                kwargs = {"max_pixels": max_pixels} if max_pixels else {}
                # Decoded at model size: the check is whether it decodes, not what it shows.
                open_image(
                    image.path, image.name, fit=InputSize(DEFAULTS.embedding.image_area), **kwargs
                )
            except DecodeError as exc:
                broken.append(exc)
        if broken:
            for exc in broken:
                problems.append(
                    Problem(
                        exc.name,
                        f"{exc.reason}; known-answer set '{known.set_id}' is left out",
                        stage="known_answers",
                    )
                )
                log.warning(
                    "known-answer set %s left out: %s %s", known.set_id, exc.name, exc.reason
                )
        else:
            usable.append(known)
    _record_problems(batch_dir, problems, "known_answers")
    if not usable and required:
        raise ValueError(
            "no known-answer set is usable (every set has an unreadable image); see problems.json"
        )
    data = [
        known.as_dict() | {"hashes": {f.name: f.sha256 for f in known.files}} for known in usable
    ]
    write_json(batch_dir / "known_answers.json", data)
    log.info("%d known-answer sets ready (%d left out)", len(usable), len(sets) - len(usable))
    return data


def skip_known_answers(batch_dir: Path) -> None:
    """Generated gold only: the provided known-answer sets are neither checked nor used."""
    write_json(batch_dir / "known_answers.json", [])
    log.info("gold_source generated: the provided known-answer sets are not used")


GOLD_DIR = "gold"
GOLD_SUMMARY = "gold.json"


def gold_count(queries: int) -> int:
    """How many gold sets to generate for a batch of ``queries``: one per HIT, and a quarter
    more (at least two) for HITs asked again and for a campaign's reruns, whose earlier HITs
    keep their sets."""
    return queries + max(2, queries // 4)


def prepare_gold(
    batch_dir: Path,
    embedder: Embedder,
    source: str,
    *,
    seed: int,
    rerank_config: RerankConfig | None = None,
) -> dict:
    """Make the batch's gold: ``known_answers.json`` and the known-answers listing of
    ``sources.json`` become the provided sets, the sets generated from the dataset (``gold.py``,
    files in ``gold/``), or both; ``gold.json`` says which and how they compare.

    Run after ``match_queries`` (generation takes the model questions' cosine gaps and never
    uses a picture a model question shows) and after ``check_known_answers``. Running it again
    gives the same sets (the same inputs and ``seed``).

    :param source: ``provided``, ``generated`` or ``both`` (``settings.GOLD_SOURCES``).
    :raises ValueError: ``generated`` and fewer sets than queries could be made (nothing is
        spent yet: choose ``both`` or ``provided``, or add dataset images), or no gold at all.
    """
    from include.image_similarity.gold import (
        GoldError,
        batch_inputs,
        generate_gold,
        shown_pictures,
    )

    provided = [r for r in read_json(batch_dir / "known_answers.json") if not r.get("generated")]
    summary: dict = {"source": source, "provided": len(provided), "generated": 0}
    records = list(provided) if source != "generated" else []
    generated_files: list[ImageFile] = []
    if source in ("generated", "both"):
        images, vectors, scores = batch_inputs(batch_dir)
        similarity = read_json(batch_dir / "similarity.json")
        queries = len(similarity["queries"])
        wanted = gold_count(queries)
        try:
            result = generate_gold(
                images,
                vectors,
                embedder,
                batch_dir / GOLD_DIR,
                wanted,
                seed=seed,
                model_scores=scores,
                exclude=shown_pictures(similarity),
                rerank_config=rerank_config,
            )
        except GoldError as exc:
            if source == "generated":
                raise ValueError(
                    f"no gold could be generated from the dataset ({exc}); set gold_source to "
                    "both or provided, or add dataset images"
                ) from exc
            log.warning("no gold set could be generated (%s): the provided sets are used", exc)
        else:
            if source == "generated" and len(result.records) < queries:
                raise ValueError(
                    f"{queries} HITs each need a gold set of their own, but only "
                    f"{len(result.records)} could be generated from the dataset (the rest of its "
                    "pictures are shown by model questions or cannot be told from their "
                    "neighbours); set gold_source to both or provided, or add dataset images"
                )
            records = result.records + records
            generated_files = list(result.listing.images)
            summary |= {"generated": len(result.records), "gaps": result.gaps.as_dict()}
            if len(result.records) < queries and provided:
                log.warning(
                    "%d gold sets generated for %d HITs: the others get provided sets",
                    len(result.records),
                    queries,
                )
    if not records:
        raise ValueError(
            "no gold set for the HITs: no usable provided known-answer set and none generated"
        )
    _write_gold_listing(batch_dir, generated_files, keep_provided=source != "generated")
    write_json(batch_dir / "known_answers.json", records)
    write_json(batch_dir / GOLD_SUMMARY, summary)
    log.info(
        "gold: %s (%d generated, %d provided sets)",
        source,
        summary["generated"],
        len(records) - summary["generated"],
    )
    return summary


def _write_gold_listing(batch_dir: Path, generated: list[ImageFile], keep_provided: bool) -> None:
    """The known-answers listing of ``sources.json``: the provided files (unless not kept) and
    the generated ones; a generated name the provided folder also holds is an error."""
    data = read_json(batch_dir / "sources.json")
    gold_dir = (batch_dir / GOLD_DIR).resolve()
    images = [
        image
        for image in data["known_answers"]["images"]
        if keep_provided and Path(image["path"]).resolve().parent != gold_dir
    ]
    taken = {image["name"] for image in images}
    for image in generated:
        if image.name in taken:
            raise ValueError(
                f"the known-answers folder holds a file named {image.name!r}, a name generated "
                "gold uses; rename it (provided sets are named knownN...)"
            )
        images.append(
            {"name": image.name, "path": str(image.path), "sha256": image.sha256}
            | {"size": image.size}
        )
    data["known_answers"]["images"] = images
    write_json(batch_dir / "sources.json", data)


def _embedding_items(batch_dir: Path) -> list[tuple[str, ImageFile]]:
    """Dataset then queries, each content hash once (under the first collection holding it)."""
    listings = load_listings(batch_dir)
    seen: set[str] = set()
    items = []
    for name in ("dataset", "queries"):
        for image in listings[name].images:
            if image.sha256 not in seen:
                seen.add(image.sha256)
                items.append((name, image))
    return items


def shard_path(batch_dir: Path, shard: int, shards: int) -> Path:
    return batch_dir / SHARDS_DIR / f"shard-{shard:05d}-of-{shards:05d}.npz"


def plan_shards(
    batch_dir: Path,
    shard_size: int = DEFAULTS.embedding.shard_size,
    fan_out_above: int = DEFAULTS.embedding.fan_out_above_images,
    *,
    max_shards: int | None = None,
) -> list[dict[str, int]]:
    """Cut the images to embed into shards; write ``shards.json``; return one dict per shard.

    Up to ``fan_out_above`` images make one shard; above, shards of at most ``shard_size``
    images (balanced), which Airflow maps to parallel tasks. Shard files of an earlier plan
    (a retry with other settings) are removed, so the merge never mixes two plans.
    """
    images = len(_embedding_items(batch_dir))
    shards = _new_plan(
        images, shard_size, fan_out_above, max_shards,
        lambda i, n: shard_path(batch_dir, i, n),
        kind="embedding", noun="images to embed", size_param="shard_size",
    )  # fmt: skip
    write_json(batch_dir / "shards.json", {"images": images, "shards": shards})
    return [{"shard": i, "shards": shards} for i in range(shards)]


def embed_shard(
    batch_dir: Path,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    shard: int = 0,
    shards: int = 1,
) -> dict[str, int]:
    """Embed one shard's images into ``vectors/shard-*.npz``; returns counts for the log.

    Shards only write their own file (problems included), so parallel shards never touch a
    shared file; ``merge_shards`` assembles the batch's vectors and ``problems.json``.
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} does not exist")
    items = _embedding_items(batch_dir)
    mine = items[shard * len(items) // shards : (shard + 1) * len(items) // shards]
    hashes: list[str] = []
    vectors: list[np.ndarray] = []
    problems: list[dict] = []
    thumbs: dict[str, np.ndarray] = {}
    stats = {"images": len(mine), "embedded": 0, "from_cache": 0, "failed": 0}
    suffix = f" (shard {shard + 1} of {shards})" if shards > 1 else ""
    for name in ("dataset", "queries"):
        images = [image for collection, image in mine if collection == name]
        if not images:
            continue
        label = "dataset images" if name == "dataset" else "query images"
        result = embedder.embed(images, cache, label=f"{label}{suffix}", thumbnails=True)
        thumbs.update(result.thumbnails)
        problems += [{"collection": name, **p.as_dict()} for p in result.problems]
        for digest, vector in result.vectors.items():
            hashes.append(digest)
            vectors.append(vector)
        stats["embedded"] += result.embedded
        stats["from_cache"] += result.from_cache
        stats["failed"] += len(result.problems)
    path = shard_path(batch_dir, shard, shards)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_archive(
        path,
        hashes,
        np.stack(vectors) if vectors else np.zeros((0, 0), np.float32),
        embedder.model_id,
        problems=json.dumps(problems),
        **pack_thumbnails(thumbs, embedder.input_size.area),
    )
    return stats


def merge_shards(batch_dir: Path) -> dict[str, int]:
    """Merge the planned shards' vectors into ``vectors-*.npy`` (``vector_hashes.npz`` names each
    row and the file) and their problems into ``problems.json``; a missing shard, a shard of
    another model or one whose vectors do not fit its hashes is an error. Rows are copied one
    shard at a time into the memory-mapped file, so memory holds one shard's vectors, never the
    whole dataset's."""
    plan = read_json(batch_dir / "shards.json")
    shards = plan["shards"]
    paths = [shard_path(batch_dir, i, shards) for i in range(shards)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {shards} embedding shards are missing: {', '.join(missing[:5])}"
        )
    hashes: list[str] = []
    model_ids: set[str] = set()
    problems: list[dict] = []
    widths: list[int] = []
    for path in paths:  # an npz member is read when asked for: the vectors are not read here
        with np.load(path, allow_pickle=False) as archive:
            model_ids.add(str(archive["model_id"]))
            hashes += [str(h) for h in archive["hashes"]]
            problems += json.loads(str(archive["problems"]))
            widths.append(member_shape(archive, "vectors")[-1] if len(archive["hashes"]) else 0)
    if len(model_ids) > 1:
        raise ValueError(f"the shards were embedded with different models: {sorted(model_ids)}")
    for collection in ("dataset", "queries"):
        found = [Problem(p["name"], p["reason"], p["stage"]) for p in problems
                 if p["collection"] == collection]  # fmt: skip
        _record_problems(batch_dir, found, collection)
    dims = {width for width in widths if width}
    if len(dims) > 1:
        raise ValueError(f"the shards hold vectors of different lengths: {sorted(dims)}")
    model_id = model_ids.pop()
    write_vector_files(
        batch_dir,
        hashes,
        model_id,
        (len(hashes), dims.pop() if dims else 0),
        lambda matrix: _copy_shard_vectors(paths, matrix),
    )
    thumbs = _merge_thumbnails(batch_dir, paths, hashes, model_area(model_id))
    log.info(
        "merged %d shard%s: %d vectors (%d re-ranking thumbnails), %d files left out",
        shards,
        "" if shards == 1 else "s",
        len(hashes),
        thumbs,
        len(problems),
    )
    return {"shards": shards, "vectors": len(hashes), "failed": len(problems)}


def _merge_thumbnails(batch_dir: Path, paths: list[Path], hashes: list[str], area: int) -> int:
    """Write the thumbnails the shards decoded, then those of the batch's earlier thumbnails
    file that the shards lack (images whose vector came from the cache this time), for the
    images of ``hashes`` only, all decoded at the model's ``area``; returns how many. A shard
    whose thumbnails cannot be read, or were decoded at another area, only loses them (they
    save time, never decide a result): it is named in the log."""
    wanted = set(hashes)
    earlier = load_thumbnails(batch_dir)
    supplied: set[str] = set()

    def shard_thumbnails(path: Path) -> list[tuple[str, np.ndarray]]:
        try:
            with np.load(path, allow_pickle=False) as archive:
                decoded_at = shard_area(archive)
                if decoded_at not in (area, None):
                    log.warning("not keeping the thumbnails of %s: decoded at another "
                                "area (%s, not %s)", path.name, decoded_at, area)  # fmt: skip
                    return []
                return [(h, t) for h, t in unpack_thumbnails(archive, path.name) if h in wanted]
        except UNREADABLE_ARCHIVE as exc:
            log.warning("not keeping the thumbnails of %s: %s", path.name, exc)
            return []

    def sources() -> Iterator[tuple[str, np.ndarray]]:
        for path in paths:  # one shard's thumbnails in memory at a time
            for digest, thumb in shard_thumbnails(path):
                supplied.add(digest)
                yield digest, thumb
        if earlier.area == area:
            yield from earlier.items(h for h in hashes if h in earlier and h not in supplied)

    return write_thumbnails(batch_dir, sources(), area)


def _copy_shard_vectors(paths: list[Path], matrix: np.ndarray) -> None:
    """Copy the shards' vectors, in order, into ``matrix``; each shard must hold one vector per
    hash it names (a damaged shard file would shift every later row)."""
    start = 0
    for path in paths:
        with np.load(path, allow_pickle=False) as archive:
            block, named = archive["vectors"], len(archive["hashes"])
        if named and (block.ndim != 2 or len(block) != named or not np.isfinite(block).all()):
            raise ValueError(
                f"{path.name} does not hold {named} finite vectors: embed that shard again"
            )
        if named:
            matrix[start : start + named] = block
        start += named


def embed_collections(
    batch_dir: Path, embedder: Embedder, cache: EmbeddingCache | None
) -> dict[str, int]:
    """Embed the dataset and the queries into the batch's vectors in this process (one shard)."""
    (shard,) = plan_shards(batch_dir, fan_out_above=math.inf)
    stats = embed_shard(batch_dir, embedder, cache, **shard)
    merge_shards(batch_dir)
    return stats


DEFAULT_RERANK = RerankConfig() if DEFAULTS.matching.rerank else None


def _thumbnails(
    images: list[ImageFile],
    threads: int = 2,
    max_pixels: int | None = None,
    stored: StoredThumbnails = NO_THUMBNAILS,
    area: int = DEFAULTS.embedding.image_area,
) -> dict[str, np.ndarray | None]:
    """Return a greyscale thumbnail per content hash (None where the file can no longer be
    read): read from ``stored`` (the batch's, kept when embedding) or else decoded here as the
    embedding step decodes for a model fed ``area`` pixels (the same pixels either way)."""
    unique = {image.sha256: image for image in images}
    found: dict[str, np.ndarray | None] = dict(stored.items(unique))
    unique = {digest: image for digest, image in unique.items() if digest not in found}

    def one(image: ImageFile) -> np.ndarray | None:
        try:
            source = open_thumbnail_source(image.path, image.name, area=area, max_pixels=max_pixels)
            return thumbnail(source)
        except DecodeError as exc:
            log.warning("re-ranking without %s: %s", image.name, exc.reason)
            return None

    if unique:
        log.info("decoding %d thumbnails the batch does not store", len(unique))
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="thumbnail") as pool:
        found.update(zip(unique, pool.map(one, unique.values()), strict=True))
    return found


def _verify(
    queries: list[ImageFile],
    dataset: list[ImageFile],
    found,
    k: int,
    config: RerankConfig,
    max_pixels: int | None,
    stored: StoredThumbnails = NO_THUMBNAILS,
    area: int = DEFAULTS.embedding.image_area,
) -> tuple[np.ndarray, np.ndarray, list[list[float | None]]]:
    """Re-order each query's cosine shortlist by spatial verification; keep the first ``k``.

    Returns the new indices and cosine scores (``k`` columns) and the alignment score (ZNCC) of
    each kept match (None when it was not computed).
    """
    started = time.perf_counter()
    needed = list(queries) + [dataset[i] for i in np.unique(found.indices) if i >= 0]
    thumbs = _thumbnails(needed, max_pixels=max_pixels, stored=stored, area=area)
    flat = np.zeros((8, 8), np.uint8)  # an unreadable candidate correlates with nothing
    indices = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    alignment: list[list[float | None]] = []
    changed = 0
    for q, query in enumerate(queries):
        valid = found.indices[q] >= 0
        rows, cosines = found.indices[q][valid], found.scores[q][valid]
        query_thumb = thumbs.get(query.sha256)
        if query_thumb is None or len(rows) == 0:
            order, ncc = np.arange(len(rows)), [None] * len(rows)
        else:
            candidates = [thumbs.get(dataset[i].sha256) for i in rows]
            result = rerank(
                query_thumb, [flat if c is None else c for c in candidates], cosines, config
            )
            order, ncc = result.order, [float(x) for x in result.alignment.ncc]
        order = order[:k]
        indices[q, : len(order)] = rows[order]
        scores[q, : len(order)] = cosines[order]
        alignment.append([ncc[i] for i in order])
        changed += int(len(order) > 0 and order[0] != 0)
    log.info(
        "re-ranked %d queries by spatial verification (shortlist %d) in %.1f s: "
        "the first match changed for %d",
        len(queries),
        config.shortlist,
        time.perf_counter() - started,
        changed,
    )
    return indices, scores, alignment


@dataclass(frozen=True)
class _MatchInputs:
    """What a top-k search reads: the dataset and the queries that have a vector (listing
    order: ties go to the earlier dataset image) and each one's row in the vectors file."""

    batch_dir: Path
    dataset: list[ImageFile]
    queries: list[ImageFile]
    vectors: BatchVectors
    dataset_rows: np.ndarray
    query_rows: np.ndarray

    @cached_property
    def digest(self) -> str:
        """Names this search: the model, the vectors' shape, the dataset's and queries' rows."""
        return _rows_digest(
            self.dataset_rows, self.query_rows, self.vectors.shape, self.vectors.model_id
        )

    @cached_property
    def distinct_rows(self) -> np.ndarray:
        """The dataset's distinct rows, in the order of their first image (``_distinct``)."""
        return _distinct(self.dataset_rows)


def _rows_digest(
    dataset_rows: np.ndarray, query_rows: np.ndarray, shape: tuple, model_id: str
) -> str:
    digest = hashlib.sha256(repr((shape, model_id)).encode())
    for rows in (dataset_rows, query_rows):
        digest.update(len(rows).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(rows, np.int64).tobytes())
    return digest.hexdigest()


def _match_inputs(batch_dir: Path) -> _MatchInputs:
    listings = load_listings(batch_dir)
    vectors = load_vectors(batch_dir)
    row_of = vectors.rows()
    if len(row_of) != len(vectors.hashes):
        raise ValueError(
            f"{VECTOR_HASHES_FILE} names a content twice: merge the embeddings again "
            "(task merge_embeddings)"
        )
    dataset = [i for i in listings["dataset"].images if i.sha256 in row_of]
    queries = [i for i in listings["queries"].images if i.sha256 in row_of]
    if not dataset:
        raise ValueError("no dataset image could be decoded; see problems.json")
    return _MatchInputs(
        batch_dir,
        dataset,
        queries,
        vectors,
        np.array([row_of[i.sha256] for i in dataset], np.int64),
        np.array([row_of[i.sha256] for i in queries], np.int64),
    )


def _distinct(dataset_rows: np.ndarray) -> np.ndarray:
    """The distinct rows of the dataset, in the order of their first image. Files of one
    content share a row; the search scores each content once, so its files get one score
    (a product computed in other blocks may differ in its last bit) and stay in listing order."""
    rows, first = np.unique(dataset_rows, return_index=True)
    return rows[np.argsort(first, kind="stable")]


def _search(
    vectors: BatchVectors, query_rows: np.ndarray, rows: np.ndarray, shortlist: int
) -> TopK:
    """The ``shortlist`` nearest of these distinct dataset rows for every query row (indices are
    positions in ``rows``). A row is one content, so a query never matches its own content.
    The rows are read from disk one block at a time and merged as they come
    (``top_k_sharded``): memory holds one block's vectors and the queries', whatever the size."""
    block = DEFAULT_DATASET_BLOCK
    blocks = (
        (vectors.read(rows[i : i + block]), rows[i : i + block].tolist())
        for i in range(0, len(rows), block)
    )
    return top_k_sharded(
        vectors.read(query_rows), blocks, shortlist, query_hashes=query_rows.tolist()
    )


def _expand(found: TopK, dataset_rows: np.ndarray, rows: np.ndarray, shortlist: int) -> TopK:
    """From nearest distinct rows (``found`` indexes ``rows``) to nearest dataset images: every
    image of a content gets that content's score; ties go to the earlier image."""
    of_row = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, np.int64)
    of_row[rows] = np.arange(len(rows))
    images_of = of_row[dataset_rows]  # each dataset image's distinct row
    if len(np.unique(images_of)) == len(images_of):  # no two files of one content: positions
        first = np.empty(len(rows), np.int64)
        first[images_of] = np.arange(len(images_of))
        return TopK(np.where(found.indices >= 0, first[found.indices], -1), found.scores)
    return _expand_by_content(found, images_of, shortlist)


def _expand_by_content(found: TopK, images_of: np.ndarray, shortlist: int) -> TopK:
    """``_expand`` where contents may have several images (``images_of``: each dataset
    image's position in ``found``'s rows), each query's list cut to ``shortlist``."""
    wanted = set(found.indices[found.indices >= 0].tolist())
    by_content: dict[int, list[int]] = {content: [] for content in wanted}
    for image, content in enumerate(images_of.tolist()):
        if content in wanted:
            by_content[content].append(image)
    indices = np.full((len(found.indices), shortlist), -1, np.int64)
    scores = np.full((len(found.indices), shortlist), -np.inf, np.float32)
    for q in range(len(found.indices)):
        ranked = sorted(
            (-float(score), image)
            for content, score in zip(found.indices[q], found.scores[q], strict=True)
            if content >= 0
            for image in by_content[int(content)]
        )[:shortlist]
        for r, (score, image) in enumerate(ranked):
            indices[q, r], scores[q, r] = image, -score
    return TopK(indices, scores)


def _rescore(vectors: BatchVectors, query_rows: np.ndarray, dataset_rows: np.ndarray,
             found: TopK, block: int = 256) -> TopK:  # fmt: skip
    """Score each query's shortlist once more, pair by pair in float64, and re-sort it.

    The search's float32 products come from blocks whose shape depends on how the dataset was
    cut (BLAS rounds other shapes otherwise in the last bit), so the same pair could score
    0.887916 in one search and 0.887917 in a sharded one. Scored here, a pair always gets the
    same number, whatever the shards; ties still go to the earlier image."""
    indices = found.indices.copy()
    scores = np.full(indices.shape, -np.inf, np.float32)
    for q0 in range(0, len(indices), block):
        part = indices[q0 : q0 + block]
        valid = part >= 0
        wanted = np.unique(dataset_rows[part[valid]])
        if not len(wanted):
            continue
        table = vectors.read(wanted).astype(np.float64)
        candidates = table[np.searchsorted(wanted, dataset_rows[np.where(valid, part, 0)])]
        query = vectors.read(query_rows[q0 : q0 + block]).astype(np.float64)
        products = np.einsum("qd,qkd->qk", query, candidates).astype(np.float32)
        scores[q0 : q0 + block] = np.where(valid, products, -np.inf)
    tie = np.where(indices < 0, np.iinfo(np.int64).max, indices)
    order = np.lexsort((tie, -scores), axis=1)
    return TopK(np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, 1))


def search_shortlist(k: int, rerank_config: RerankConfig | None) -> int:
    """How many nearest images by cosine the search keeps per query: the re-ranker's shortlist
    (at least ``k``) when it is on, else ``k``."""
    return max(k, rerank_config.shortlist) if rerank_config else k


def _shard_bounds(images: int, shard: int, shards: int) -> tuple[int, int]:
    return shard * images // shards, (shard + 1) * images // shards


def search_path(batch_dir: Path, shard: int, shards: int) -> Path:
    return batch_dir / MATCHING_DIR / f"search-{shard:05d}-of-{shards:05d}.npz"


def _shard_count(items: int, shard_size: int, fan_out_above: int, max_shards: int | None, *,
                 kind: str, noun: str, size_param: str) -> int:  # fmt: skip
    """One shard up to ``fan_out_above`` items, else balanced shards of at most ``shard_size``;
    more shards than Airflow maps (``max_shards``) is an error naming the Param to raise."""
    if shard_size < 1 or fan_out_above < 0:
        raise ValueError(
            f"{kind} shard size must be at least 1 and the fan-out threshold not negative, "
            f"not {shard_size} and {fan_out_above}"
        )
    shards = 1 if items <= fan_out_above else math.ceil(items / shard_size)
    if max_shards is not None and shards > max_shards:
        raise ValueError(
            f"{items} {noun} in shards of {shard_size} make {shards} shards, more than the "
            f"{max_shards} mapped tasks Airflow allows ([core] max_map_length): raise "
            f"{size_param}"
        )
    return shards


def _new_plan(
    count: int,
    shard_size: int,
    fan_out_above: int,
    max_shards: int | None,
    path_of: Callable[[int, int], Path],
    *,
    kind: str,
    noun: str,
    size_param: str,
) -> int:
    """The shard count of a new plan over ``count`` items (``_shard_count``). The shard files of
    an earlier plan (``path_of`` another count) are removed, so a merge never mixes two plans."""
    shards = _shard_count(
        count, shard_size, fan_out_above, max_shards, kind=kind, noun=noun, size_param=size_param
    )
    first = path_of(0, shards)
    keep = {path_of(i, shards).name for i in range(shards)}
    for stale in first.parent.glob(first.name.split("-", 1)[0] + "-*.npz"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    if shards > 1:
        log.info("%d %s: %d shards of about %d", count, noun, shards, count // shards)
    return shards


def plan_search(
    batch_dir: Path,
    shard_size: int = DEFAULTS.matching.shard_size,
    fan_out_above: int = DEFAULTS.matching.fan_out_above_images,
    *,
    max_shards: int | None = None,
) -> list[dict[str, int]]:
    """Cut the top-k search into dataset shards: one, or above ``fan_out_above`` distinct
    dataset contents, shards of at most ``shard_size`` (balanced), which Airflow maps to
    parallel tasks (``search_shard``); ``match_queries(searched=...)`` merges them.

    Writes ``matching/plan.npz``: the vectors-file row of every dataset image and query, so a
    shard task reads its slice of them and its vectors, never the listing. Search files of an
    earlier plan are removed, so the merge never mixes two plans."""
    inputs = _match_inputs(batch_dir)
    shards = _new_plan(
        len(inputs.distinct_rows), shard_size, fan_out_above, max_shards,
        lambda i, n: search_path(batch_dir, i, n),
        kind="search", noun="distinct dataset images to search", size_param="match_shard_size",
    )  # fmt: skip
    with atomic_file(batch_dir / MATCHING_DIR / SEARCH_PLAN) as handle:
        np.savez(
            handle,
            dataset_rows=inputs.dataset_rows,
            query_rows=inputs.query_rows,
            shards=shards,
            digest=inputs.digest,
        )
    return [{"shard": i, "shards": shards} for i in range(shards)]


def _read_arrays(path: Path, keys: tuple[str, ...], what: str, again: str) -> list[np.ndarray]:
    """These members of an ``.npz`` file the stage wrote; unreadable is an error naming it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return [archive[key] for key in keys]
    except UNREADABLE_ARCHIVE as exc:
        raise ValueError(f"{what} cannot be read ({path.name}: {exc}): {again}") from exc


def _is_int(value: np.ndarray) -> bool:
    return value.shape == () and value.dtype.kind in "iu"


def _read_part(
    path: Path,
    what: str,
    members: tuple[str, ...],
    bounds: tuple[int, int],
    key: tuple[str, str],
    again: str,
) -> list[np.ndarray] | None:
    """The ``members`` of one shard's stage file, or None unless the file says it covers
    ``bounds`` (its ``start`` and ``stop``) and holds ``key`` (member name, value)."""
    *arrays, begin, end, stored = _read_arrays(
        path, (*members, "start", "stop", key[0]), what, again
    )
    written_for = (
        _is_int(begin)
        and _is_int(end)
        and (int(begin), int(end)) == bounds
        and stored.shape == ()
        and str(stored) == key[1]
    )
    return arrays if written_for else None


def search_shard(batch_dir: Path, shard: int, shards: int, shortlist: int) -> dict[str, int]:
    """Search one dataset shard of ``plan_search``'s plan for every query's ``shortlist``
    nearest contents; write its ``matching/search-*.npz`` (``match_queries(searched=shards)``
    merges them). Reads the plan's rows and the vectors of its shard, not the listing."""
    if not 0 <= shard < shards:
        raise ValueError(f"search shard {shard} of {shards} does not exist")
    if shortlist < 1:
        raise ValueError(f"the shortlist must be at least 1, not {shortlist}")
    vectors = load_vectors(batch_dir, with_hashes=False)
    again = "plan the search again (task plan_search)"
    planned, digest, dataset_rows, query_rows = _read_arrays(
        batch_dir / MATCHING_DIR / SEARCH_PLAN,
        ("shards", "digest", "dataset_rows", "query_rows"),
        "the search plan",
        again,
    )
    well_formed = (
        _is_int(planned)
        and digest.shape == ()
        and digest.dtype.kind == "U"
        and all(r.ndim == 1 and r.dtype == np.int64 for r in (dataset_rows, query_rows))
        and all(((r >= 0) & (r < vectors.shape[0])).all() for r in (dataset_rows, query_rows))
    )
    if not (
        well_formed
        and int(planned) == shards
        and str(digest) == _rows_digest(dataset_rows, query_rows, vectors.shape, vectors.model_id)
    ):
        raise ValueError(
            f"{SEARCH_PLAN} is not a plan of {shards} search shards over these vectors: {again}"
        )
    rows = _distinct(dataset_rows)
    start, stop = _shard_bounds(len(rows), shard, shards)
    found = _search(vectors, query_rows, rows[start:stop], shortlist)
    with atomic_file(search_path(batch_dir, shard, shards)) as handle:
        np.savez(
            handle,
            indices=found.indices,
            scores=found.scores,
            start=start,
            stop=stop,
            plan=str(digest),
        )
    return {"dataset_images": stop - start, "queries": len(query_rows)}


def _valid_top(indices: np.ndarray, scores: np.ndarray, shape: tuple[int, int], limit: int):
    """A top-k as the search writes it: ``shape``, each row's indices distinct and below
    ``limit`` (or -1 with score -inf), scores cosines (finite, within [-1, 1] and a rounding)."""
    if not (
        indices.dtype == np.int64
        and scores.dtype == np.float32
        and indices.shape == scores.shape == shape
    ):
        return False
    found = indices >= 0
    in_order = np.sort(indices, axis=1)
    repeated = (in_order[:, 1:] == in_order[:, :-1]) & (in_order[:, 1:] >= 0)
    return bool(
        np.all(indices >= -1)
        and np.all(indices < limit)
        and not repeated.any()
        and np.all(np.abs(scores[found]) <= 1.001)
        and np.all(scores[~found] == -np.inf)
    )


def _valid_reranked(indices: np.ndarray, scores: np.ndarray, alignment: np.ndarray,
                    shortlists: np.ndarray, k: int, limit: int) -> bool:  # fmt: skip
    """A re-ranking as ``rerank_shard`` writes it: ``k`` matches of each query, each one from
    that query's shortlist, and alignment scores within [-1, 1] (NaN where none)."""
    return (
        _valid_top(indices, scores, (len(shortlists), k), limit)
        and alignment.dtype == np.float64
        and alignment.shape == (len(shortlists), k)
        and not (np.abs(alignment) > 1.001).any()
        and all(
            set(row[row >= 0].tolist()) <= set(shortlist.tolist())
            for row, shortlist in zip(indices, shortlists, strict=True)
        )
    )


def _merge_searched(batch_dir: Path, inputs: _MatchInputs, shards: int, shortlist: int) -> TopK:
    """Merge the ``shards`` search files into one top-k of distinct contents; a file missing, of
    another plan or another shortlist, or not a search's output is an error naming it."""
    if shards < 1:
        raise ValueError(f"at least one search shard is needed, not {shards}")
    digest = inputs.digest
    contents = len(inputs.distinct_rows)
    parts = []
    for shard in range(shards):
        path = search_path(batch_dir, shard, shards)
        name = f"the search of shard {shard + 1} of {shards}"
        start, stop = _shard_bounds(contents, shard, shards)
        part = _read_part(path, name, ("indices", "scores"), (start, stop), ("plan", digest),
                          "run that search again")  # fmt: skip
        if part is None or not _valid_top(*part, (len(inputs.queries), shortlist), stop - start):
            raise ValueError(
                f"{path.name} is not {name} for these {len(inputs.queries)} queries with a "
                f"shortlist of {shortlist}: run that search again"
            )
        parts.append((TopK(*part), start))
    return merge_top_k(parts, shortlist)


def _shortlist(
    batch_dir: Path,
    inputs: _MatchInputs,
    k: int,
    rerank_config: RerankConfig | None,
    searched: int | None,
) -> TopK:
    """Each query's nearest dataset images by cosine (as many as ``search_shortlist``): searched
    here, or merged from ``searched`` search files; files of one content expanded, re-scored."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if len(inputs.dataset) < k:
        log.warning(
            "only %d dataset images for k=%d: queries get fewer matches", len(inputs.dataset), k
        )
    shortlist = search_shortlist(k, rerank_config)
    rows = inputs.distinct_rows
    if searched is None:
        found = _search(inputs.vectors, inputs.query_rows, rows, shortlist)
    else:
        found = _merge_searched(batch_dir, inputs, searched, shortlist)
    found = _expand(found, inputs.dataset_rows, rows, shortlist)
    return _rescore(inputs.vectors, inputs.query_rows, inputs.dataset_rows, found)


@dataclass(frozen=True)
class _Ranked:
    """Each query's ``k`` matches: dataset indices (-1: none), cosines and alignment (ZNCC;
    NaN where it was not computed)."""

    indices: np.ndarray
    scores: np.ndarray
    alignment: np.ndarray


def _rank(
    inputs: _MatchInputs,
    found: TopK,
    start: int,
    stop: int,
    k: int,
    rerank_config: RerankConfig | None,
    max_pixels: int | None,
) -> _Ranked:
    """Queries ``start:stop`` ranked: their shortlists re-ordered by spatial verification (or
    cut to ``k`` by cosine when the re-ranker is off)."""
    queries = inputs.queries[start:stop]
    part = TopK(found.indices[start:stop], found.scores[start:stop])
    alignment = np.full((len(queries), k), np.nan)
    if not rerank_config:
        return _Ranked(part.indices[:, :k], part.scores[:, :k], alignment)
    area = model_area(inputs.vectors.model_id)  # the decode the vectors were embedded from
    stored = load_thumbnails(inputs.batch_dir)
    if stored.area not in (area, None):
        log.warning("not using the stored thumbnails: decoded at %d pixels, the vectors at %d",
                    stored.area, area)  # fmt: skip
        stored = NO_THUMBNAILS
    indices, scores, ncc = _verify(
        queries, inputs.dataset, part, k, rerank_config, max_pixels, stored, area
    )
    for q, row in enumerate(ncc):
        alignment[q, : len(row)] = [np.nan if a is None else a for a in row]
    return _Ranked(indices, scores, alignment)


def _ranking_key(inputs: _MatchInputs, k: int, rerank_config: RerankConfig | None) -> str:
    """Names one ranking: the search's inputs, k and the re-ranker's settings."""
    settings = [inputs.digest, k, asdict(rerank_config) if rerank_config else None]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _write_matches(
    batch_dir: Path,
    inputs: _MatchInputs,
    ranked: _Ranked,
    k: int,
    rerank_config: RerankConfig | None,
) -> dict[str, list[dict]]:
    """Write ``matches.json`` and ``similarity.json`` from the ranked matches."""
    dataset, queries = inputs.dataset, inputs.queries
    matches: dict[str, list[dict]] = {}
    detailed = []
    for q, query in enumerate(queries):
        kept = [
            (dataset[i], float(s), None if np.isnan(a) else float(a))
            for i, s, a in zip(ranked.indices[q], ranked.scores[q], ranked.alignment[q],
                               strict=True)
            if i >= 0
        ]  # fmt: skip
        matches[query.name] = [{"name": d.name, "score": round(s, 6)} for d, s, _ in kept]
        detailed.append(
            {
                "query": {"name": query.name, "sha256": query.sha256, "path": str(query.path)},
                "matches": [
                    {
                        "rank": r + 1,
                        "name": d.name,
                        "sha256": d.sha256,
                        "path": str(d.path),
                        "score": round(s, 6),
                        "alignment": None if a is None else round(a, 4),
                    }
                    for r, (d, s, a) in enumerate(kept)
                ],
            }
        )
    write_json(batch_dir / "matches.json", matches)
    write_json(
        batch_dir / "similarity.json",
        {
            "model_id": inputs.vectors.model_id,
            "k": k,
            "dataset_size": len(dataset),
            "rerank": asdict(rerank_config) if rerank_config else None,
            "queries": detailed,
        },
    )
    log.info("matched %d queries against %d dataset images (k=%d)", len(queries), len(dataset), k)
    return matches


def match_queries(
    batch_dir: Path,
    k: int = DEFAULTS.matching.k,
    *,
    rerank_config: RerankConfig | None = DEFAULT_RERANK,
    max_pixels: int | None = None,
    searched: int | None = None,
) -> dict[str, list[dict]]:
    """Find each query's ``k`` nearest dataset images; write matches.json and similarity.json.

    With ``searched`` (the shard count of ``plan_search``), the top-k is merged from the files
    ``search_shard`` wrote, each shard searched by its own task; without, it is searched here.
    Everything else happens in this process (``plan_rerank``, ``rerank_shard`` and
    ``write_matches`` cut the re-ranking into tasks, with the same result).

    The nearest ``rerank_config.shortlist`` images by cosine are re-ordered by spatial
    verification (``rerank.py``), which tells neighbouring video frames apart; the score reported
    stays the cosine. ``rerank_config=None`` ranks by cosine alone.
    """
    inputs = _match_inputs(batch_dir)
    found = _shortlist(batch_dir, inputs, k, rerank_config, searched)
    ranked = _rank(inputs, found, 0, len(inputs.queries), k, rerank_config, max_pixels)
    return _write_matches(batch_dir, inputs, ranked, k, rerank_config)


def rerank_path(batch_dir: Path, shard: int, shards: int) -> Path:
    return batch_dir / MATCHING_DIR / f"rerank-{shard:05d}-of-{shards:05d}.npz"


def plan_rerank(
    batch_dir: Path,
    k: int = DEFAULTS.matching.k,
    *,
    rerank_config: RerankConfig | None = DEFAULT_RERANK,
    searched: int | None = None,
    shard_size: int = DEFAULTS.matching.rerank_shard_size,
    fan_out_above: int = DEFAULTS.matching.rerank_fan_out_above_queries,
    max_shards: int | None = None,
) -> list[dict[str, int]]:
    """Shortlist every query (as ``match_queries`` does, into ``matching/shortlist.npz``), then
    cut the queries into re-ranking shards: one, or above ``fan_out_above`` queries, shards of
    at most ``shard_size``, which Airflow maps to parallel tasks (``rerank_shard``);
    ``write_matches`` joins them. Re-ranking files of an earlier plan are removed."""
    inputs = _match_inputs(batch_dir)
    found = _shortlist(batch_dir, inputs, k, rerank_config, searched)
    shards = _new_plan(
        len(inputs.queries), shard_size, fan_out_above, max_shards,
        lambda i, n: rerank_path(batch_dir, i, n),
        kind="re-ranking", noun="queries to re-rank", size_param="rerank_shard_size",
    )  # fmt: skip
    with atomic_file(batch_dir / MATCHING_DIR / SHORTLIST) as handle:
        np.savez(
            handle,
            indices=found.indices,
            scores=found.scores,
            key=_ranking_key(inputs, k, rerank_config),
        )
    return [{"shard": i, "shards": shards} for i in range(shards)]


def _read_shortlist(batch_dir: Path, inputs: _MatchInputs, key: str, shortlist: int) -> TopK:
    again = "shortlist the queries again (task match_queries)"
    path = batch_dir / MATCHING_DIR / SHORTLIST
    indices, scores, stored = _read_arrays(
        path, ("indices", "scores", "key"), "the shortlist", again
    )
    if not (
        stored.shape == ()
        and str(stored) == key
        and _valid_top(indices, scores, (len(inputs.queries), shortlist), len(inputs.dataset))
    ):
        raise ValueError(
            f"{SHORTLIST} is not the shortlist of these {len(inputs.queries)} queries with these "
            f"settings: {again}"
        )
    return TopK(indices, scores)


def rerank_shard(
    batch_dir: Path,
    shard: int,
    shards: int,
    k: int = DEFAULTS.matching.k,
    *,
    rerank_config: RerankConfig | None = DEFAULT_RERANK,
    max_pixels: int | None = None,
) -> dict[str, int]:
    """Re-rank one shard of ``plan_rerank``'s queries; write ``matching/rerank-*.npz``."""
    if not 0 <= shard < shards:
        raise ValueError(f"re-ranking shard {shard} of {shards} does not exist")
    inputs = _match_inputs(batch_dir)
    key = _ranking_key(inputs, k, rerank_config)
    found = _read_shortlist(batch_dir, inputs, key, search_shortlist(k, rerank_config))
    start, stop = _shard_bounds(len(inputs.queries), shard, shards)
    ranked = _rank(inputs, found, start, stop, k, rerank_config, max_pixels)
    with atomic_file(rerank_path(batch_dir, shard, shards)) as handle:
        np.savez(
            handle,
            indices=ranked.indices,
            scores=ranked.scores,
            alignment=ranked.alignment,
            start=start,
            stop=stop,
            key=key,
        )
    return {"queries": stop - start}


def write_matches(
    batch_dir: Path,
    k: int = DEFAULTS.matching.k,
    *,
    rerank_config: RerankConfig | None = DEFAULT_RERANK,
    reranked: int,
) -> dict[str, list[dict]]:
    """Join the ``reranked`` re-ranking files into ``matches.json`` and ``similarity.json``; a
    file missing, of other settings or not a re-ranking of its queries' shortlists is an error
    naming it."""
    if reranked < 1:
        raise ValueError(f"at least one re-ranking shard is needed, not {reranked}")
    inputs = _match_inputs(batch_dir)
    key = _ranking_key(inputs, k, rerank_config)
    found = _read_shortlist(batch_dir, inputs, key, search_shortlist(k, rerank_config))
    parts: list[_Ranked] = []
    for shard in range(reranked):
        path = rerank_path(batch_dir, shard, reranked)
        name = f"the re-ranking of shard {shard + 1} of {reranked}"
        start, stop = _shard_bounds(len(inputs.queries), shard, reranked)
        part = _read_part(path, name, ("indices", "scores", "alignment"), (start, stop),
                          ("key", key), "run that re-ranking again")  # fmt: skip
        if part is None or not _valid_reranked(*part, found.indices[start:stop], k,
                                               len(inputs.dataset)):  # fmt: skip
            raise ValueError(
                f"{path.name} is not {name} for these {len(inputs.queries)} queries with these "
                "settings: run that re-ranking again"
            )
        parts.append(_Ranked(*part))
    ranked = _Ranked(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                       ("indices", "scores", "alignment")))  # fmt: skip
    return _write_matches(batch_dir, inputs, ranked, k, rerank_config)


def problems_of(batch_dir: Path) -> list[dict]:
    path = batch_dir / "problems.json"
    return read_json(path) if path.exists() else []


def contact_sheets(batch_dir: Path) -> list[Path]:
    """Write a contact sheet per query from ``similarity.json`` into ``contact_sheets/``."""
    from include.image_similarity.contact_sheet import write_contact_sheets

    similarity = read_json(batch_dir / "similarity.json")
    return write_contact_sheets(similarity, batch_dir / "contact_sheets")


def log_summary(batch_dir: Path) -> None:
    """Log every file left out (by name, with the reason) and where the results are."""
    problems = problems_of(batch_dir)
    for problem in problems:
        log.warning(
            "left out %s/%s (%s): %s",
            problem["collection"],
            problem["name"],
            problem["stage"],
            problem["reason"],
        )
    queries = len(read_json(batch_dir / "matches.json"))
    log.info(
        "results in %s: matches.json (%d queries), contact_sheets/, %d files left out",
        batch_dir,
        queries,
        len(problems),
    )
