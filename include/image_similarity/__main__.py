"""Command line for the similarity stage alone, without Airflow.

    python -m include.image_similarity match --dataset DIR --queries DIR --out matches.json [--k 3]

writes ``{"<query file name>": [{"name": "<dataset file name>", "score": <cosine>}, ...]}``
ordered best first, and prints the files it left out with the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from include.image_similarity.settings import DEFAULTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m include.image_similarity")
    commands = parser.add_subparsers(dest="command", required=True)
    match = commands.add_parser("match", help="find the k most similar dataset images per query")
    match.add_argument("--dataset", required=True, type=Path, help="folder of dataset images")
    match.add_argument("--queries", required=True, type=Path, help="folder of query images")
    match.add_argument("--out", required=True, type=Path, help="where to write matches.json")
    embedding, matching = DEFAULTS.embedding, DEFAULTS.matching
    match.add_argument(
        "--k", type=int, default=matching.k, help="matches per query (default %(default)s)"
    )
    match.add_argument("--model", default=embedding.model, help="model spec (default %(default)s)")
    match.add_argument(
        "--cache",
        default=embedding.cache,
        help="embedding cache folder or s3://bucket/prefix ('' to disable; default %(default)s)",
    )
    match.add_argument("--model-dir", default=".cache/models", help="converted model cache")
    match.add_argument("--batch-size", type=int, default=embedding.batch_size)
    match.add_argument(
        "--runtime",
        choices=("keras", "litert"),
        default=embedding.runtime,
        help="what runs the model: keras, or litert (converted once, the same vectors, faster "
        "on CPUs; default %(default)s)",
    )
    match.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=matching.rerank,
        help="re-order the --shortlist nearest by spatial verification (--no-rerank: rank by "
        "cosine alone)",
    )
    match.add_argument(
        "--shortlist",
        type=int,
        default=matching.rerank_shortlist,
        help="images re-ranked per query (default %(default)s)",
    )
    match.add_argument("--sheets", type=Path, help="also write contact sheets to this folder")
    match.add_argument(
        "--follow-external-symlinks",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.sources.follow_external_symlinks,
        help="also read symbolic links to images outside the --dataset and --queries folders "
        "(--no-follow-external-symlinks: report and skip them)",
    )
    return parser


def _match(args: argparse.Namespace) -> int:
    from include.image_similarity import pipeline
    from include.image_similarity.cache import EmbeddingCache, store_for_location
    from include.image_similarity.embedding import Embedder
    from include.image_similarity.rerank import RerankConfig

    if args.k < 1 or args.shortlist < 1:
        print("--k and --shortlist must be at least 1", file=sys.stderr)
        return 2
    embedder = Embedder(
        args.model, model_dir=args.model_dir, batch_size=args.batch_size, runtime=args.runtime
    )
    cache = None
    if args.cache:
        cache = EmbeddingCache(store_for_location(args.cache, embedder.model_id), embedder.model_id)
    work = Path(tempfile.mkdtemp(prefix="image-similarity-"))
    try:
        pipeline.list_sources(
            work,
            {"dataset": args.dataset, "queries": args.queries},
            follow_external_symlinks=args.follow_external_symlinks,
        )
        stats = pipeline.embed_collections(work, embedder, cache)
        config = RerankConfig(shortlist=args.shortlist) if args.rerank else None
        matches = pipeline.match_queries(work, args.k, rerank_config=config)
        if args.sheets:
            from include.image_similarity.contact_sheet import write_contact_sheets

            write_contact_sheets(pipeline.read_json(work / "similarity.json"), args.sheets)
        problems = pipeline.problems_of(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pipeline.write_json(args.out, matches)
    print(
        f"wrote {args.out}: {len(matches)} queries, k={args.k} "
        f"({stats['embedded']} images embedded, {stats['from_cache']} from cache)"
    )
    for problem in problems:
        print(f"skipped {problem['collection']}/{problem['name']}: {problem['reason']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        return _match(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
