"""The similarity stage as steps over a batch folder: list → check gold → embed → match → sheets.

Each step reads what the previous one wrote into the batch folder and writes its own file, so
Airflow tasks (separate processes, possibly on different workers sharing storage) pass only the
folder path between them, and the command-line tool runs the same steps in one process.

Files in a batch folder:

- ``sources.json``: every image of the dataset, queries and known answers (name, path, sha256);
- ``known_answers.json``: the validated known-answer sets;
- ``vectors.npz``: the embeddings of the dataset and the queries, by content hash;
- ``matches.json``: ``{query name: [{"name": dataset name, "score": cosine}, ...]}``, best first;
- ``similarity.json``: the same matches with hashes and model ranks, the model id and k;
- ``problems.json``: every file left out, with the reason;
- ``contact_sheets/<query>.jpg``: the query beside its matches and their scores.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from include.image_similarity.cache import EmbeddingCache
from include.image_similarity.decode import DecodeError, open_image
from include.image_similarity.embedding import Embedder
from include.image_similarity.index import top_k
from include.image_similarity.known_answers import parse_known_answer_sets
from include.image_similarity.sources import ImageFile, Listing, Problem, list_local_images

log = logging.getLogger(__name__)

COLLECTIONS = ("dataset", "queries", "known_answers")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path):
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


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
) -> dict[str, int]:
    """List the three collections into ``sources.json``; returns image counts per collection.

    ``resolve(collection, source)`` turns a source into a Listing; by default a local folder.
    """
    batch_dir.mkdir(parents=True, exist_ok=True)
    resolve = resolve or (lambda _collection, source: list_local_images(source))
    listings = {name: resolve(name, sources[name]) for name in COLLECTIONS}
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
        _record_problems(batch_dir, listing.problems, name)
    counts = {name: len(listing.images) for name, listing in listings.items()}
    log.info(
        "listed %d dataset images, %d queries, %d known-answer files (%d files skipped)",
        counts["dataset"],
        counts["queries"],
        counts["known_answers"],
        sum(len(lst.problems) for lst in listings.values()),
    )
    return counts


def check_known_answers(batch_dir: Path, max_pixels: int | None = None) -> list[dict]:
    """Validate known-answer names and decode every gold image; write ``known_answers.json``.

    A naming problem stops the run (``KnownAnswerError``) before any work is paid for; a set with
    an undecodable image is left out and reported, and the run stops only if no set remains.
    """
    listing = load_listings(batch_dir)["known_answers"]
    sets = parse_known_answer_sets(listing)
    usable, problems = [], []
    for known in sets:
        broken = []
        for image in known.files:
            try:
                kwargs = {"max_pixels": max_pixels} if max_pixels else {}
                open_image(image.path, image.name, **kwargs)
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
    if not usable:
        raise ValueError(
            "no known-answer set is usable (every set has an unreadable image); see problems.json"
        )
    data = [
        known.as_dict() | {"hashes": {f.name: f.sha256 for f in known.files}} for known in usable
    ]
    write_json(batch_dir / "known_answers.json", data)
    log.info("%d known-answer sets ready (%d left out)", len(usable), len(sets) - len(usable))
    return data


def embed_collections(
    batch_dir: Path, embedder: Embedder, cache: EmbeddingCache | None
) -> dict[str, int]:
    """Embed the dataset and the queries into ``vectors.npz``; returns counts for the log."""
    listings = load_listings(batch_dir)
    hashes: list[str] = []
    vectors: list[np.ndarray] = []
    stats = {"embedded": 0, "from_cache": 0, "failed": 0}
    for name in ("dataset", "queries"):
        result = embedder.embed(listings[name].images, cache, label=f"{name} images")
        _record_problems(batch_dir, result.problems, name)
        for digest, vector in result.vectors.items():
            hashes.append(digest)
            vectors.append(vector)
        stats["embedded"] += result.embedded
        stats["from_cache"] += result.from_cache
        stats["failed"] += len(result.problems)
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
    tmp = batch_dir / ".vectors.part.npz"
    np.savez(tmp, hashes=np.array(hashes, dtype="U64"), vectors=matrix, model_id=embedder.model_id)
    tmp.replace(batch_dir / "vectors.npz")
    return stats


def match_queries(batch_dir: Path, k: int = 3) -> dict[str, list[dict]]:
    """Find each query's ``k`` nearest dataset images; write matches.json and similarity.json."""
    listings = load_listings(batch_dir)
    with np.load(batch_dir / "vectors.npz", allow_pickle=False) as archive:
        row_of = {str(h): i for i, h in enumerate(archive["hashes"])}
        all_vectors = archive["vectors"]
        model_id = str(archive["model_id"])
    dataset = [i for i in listings["dataset"].images if i.sha256 in row_of]
    queries = [i for i in listings["queries"].images if i.sha256 in row_of]
    if not dataset:
        raise ValueError("no dataset image could be decoded; see problems.json")
    if len(dataset) < k:
        log.warning("only %d dataset images for k=%d: queries get fewer matches", len(dataset), k)
    found = top_k(
        all_vectors[[row_of[q.sha256] for q in queries]],
        all_vectors[[row_of[d.sha256] for d in dataset]],
        k,
        query_hashes=[q.sha256 for q in queries],
        dataset_hashes=[d.sha256 for d in dataset],
    )
    matches: dict[str, list[dict]] = {}
    detailed = []
    for q, query in enumerate(queries):
        ranked = [
            (dataset[i], float(s))
            for i, s in zip(found.indices[q], found.scores[q], strict=True)
            if i >= 0
        ]
        matches[query.name] = [{"name": d.name, "score": round(s, 6)} for d, s in ranked]
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
                    }
                    for r, (d, s) in enumerate(ranked)
                ],
            }
        )
    write_json(batch_dir / "matches.json", matches)
    write_json(
        batch_dir / "similarity.json",
        {"model_id": model_id, "k": k, "dataset_size": len(dataset), "queries": detailed},
    )
    log.info("matched %d queries against %d dataset images (k=%d)", len(queries), len(dataset), k)
    return matches


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
