"""Approximate search (faiss) beside the exact top-k the similarity stage runs: build time,
search time, peak memory and recall@k against the exact search.

    python benchmarks/ann.py [--sizes 100000,1000000] [--queries 1000] [--k 3]
                             [--hnsw-max 100000] [--workdir DIR] [--quick]

The vectors: N unit vectors of 1280 dimensions (EfficientNet-Lite0's) drawn around 2,000
centres, as the embeddings of a video's frames gather by scene; the queries: dataset rows with
a little noise added, near duplicates of one frame each (the product's case). Each method runs
on the same vectors in its own child process (its peak RSS is its own):

- exact: ``include.image_similarity.index.top_k``, what the DAG runs (blocked, in memory);
- faiss ``IVF-Flat``: nlist = 4 x sqrt(N) lists, trained on 40 vectors a list, searched with
  nprobe 8 and 32 (the index holds every vector as float32);
- faiss ``IVF-SQ8``: the same lists, vectors held as 8-bit scalars (a quarter of the memory);
- faiss ``HNSW-Flat``: M 32, efConstruction 80, searched with efSearch 32 and 128; only up to
  ``--hnsw-max`` vectors, as its build is slow.

Recall@k is the share of the exact search's top-k rows the method also returns; "source
first" the share of queries whose source row is the method's first match. The speed-up is the
exact search's time over the method's build plus search (an index built once and searched by
many batches would pay its build once: the search column alone says what that gains).
This is a measurement, not a test: the exit code is 1 only when a child process fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, peak_rss_bytes, render  # noqa: E402

DIMENSIONS = 1280
CENTRES = 2000
SPREAD = 0.9  # noise around a centre, per dimension (the centres are standard normal)
QUERY_NOISE = 0.03  # a near duplicate: its source row plus this much noise per dimension
RESULT_PREFIX = "ANN-RESULT "
METHODS = ("exact", "ivf-flat", "ivf-sq8", "hnsw")
DEFAULT_WORKDIR = ROOT / ".artifacts" / "ann"


def vectors(size: int, queries: int, seed: int = 0):
    """The dataset (float32, unit rows), the queries and each query's source row."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIMENSIONS), dtype=np.float32)
    data = np.empty((size, DIMENSIONS), np.float32)
    for start in range(0, size, 50_000):
        rows = min(50_000, size - start)
        block = centres[rng.integers(0, CENTRES, rows)]
        block += SPREAD * rng.standard_normal((rows, DIMENSIONS), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)  # by block: no copy of all
        data[start : start + rows] = block
    sources = rng.choice(size, queries, replace=False)
    query = data[sources] + QUERY_NOISE * rng.standard_normal((queries, DIMENSIONS), np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return data, query, sources


def _searches(index, query, k: int, settings: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Search ``index`` once per setting value; each run's time and found rows."""
    runs = []
    for name, values in settings.items():
        for value in values:
            if name == "nprobe":
                index.nprobe = value
            else:
                index.hnsw.efSearch = value
            started = time.perf_counter()
            _, found = index.search(query, k)
            runs.append(
                {
                    "setting": f"{name} {value}",
                    "search_s": time.perf_counter() - started,
                    "indices": found.tolist(),
                }
            )
    return runs


def child(method: str, size: int, queries: int, k: int) -> dict[str, Any]:
    """Run one method over the benchmark's vectors; its times, found rows and peak RSS."""
    import numpy as np

    data, query, sources = vectors(size, queries)
    rss_data = peak_rss_bytes()
    if method == "exact":
        from include.image_similarity.index import top_k

        started = time.perf_counter()
        found = top_k(query, data, k)
        runs = [
            {
                "setting": "",
                "search_s": time.perf_counter() - started,
                "indices": found.indices.tolist(),
            }
        ]
        build_s = 0.0
    else:
        import faiss

        started = time.perf_counter()
        if method == "hnsw":
            index = faiss.IndexHNSWFlat(DIMENSIONS, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            settings = {"efSearch": [32, 128]}
        else:
            lists = int(4 * np.sqrt(size))
            kind = "Flat" if method == "ivf-flat" else "SQ8"
            index = faiss.index_factory(
                DIMENSIONS, f"IVF{lists},{kind}", faiss.METRIC_INNER_PRODUCT
            )
            sample = np.random.default_rng(1).choice(size, min(size, 40 * lists), replace=False)
            index.train(data[np.sort(sample)])
            settings = {"nprobe": [8, 32]}
        index.add(data)
        build_s = time.perf_counter() - started
        runs = _searches(index, query, k, settings)
    return {
        "method": method,
        "size": size,
        "queries": queries,
        "build_s": build_s,
        "runs": runs,
        "sources": sources.tolist(),
        "peak_rss": peak_rss_bytes(),
        "rss_data": rss_data,
    }


def spawn(method: str, size: int, args: argparse.Namespace) -> dict[str, Any] | None:
    print(f"{method}: {args.queries:,} queries over {size:,} vectors ...", flush=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", method, "--sizes", str(size)]
        + ["--queries", str(args.queries), "--k", str(args.k)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    print(f"{method} over {size:,} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    return None


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    """The share of the exact top-k rows also found (a missing slot, -1, finds nothing)."""
    pairs = zip(found, exact, strict=True)
    hits = sum(len({i for i in mine if i >= 0} & set(truth)) for mine, truth in pairs)
    return hits / sum(len(truth) for truth in exact)


def source_first(found: list[list[int]], sources: list[int]) -> float:
    pairs = zip(found, sources, strict=True)
    return sum(mine[0] == source for mine, source in pairs) / len(sources)


def rows_of(results: list[dict[str, Any]]) -> list[list[str]]:
    exact = next(r for r in results if r["method"] == "exact")
    exact_run = exact["runs"][0]
    exact_s = exact_run["search_s"]
    rows = []
    for result in results:
        for run in result["runs"]:
            spent = result["build_s"] + run["search_s"]
            rows.append(
                [
                    f"{result['size']:,}",
                    f"{result['method']} {run['setting']}".strip(),
                    f"{result['build_s']:.1f} s" if result["method"] != "exact" else "-",
                    f"{run['search_s']:.2f} s",
                    f"{recall(run['indices'], exact_run['indices']):.3f}",
                    f"{source_first(run['indices'], result['sources']):.3f}",
                    f"{result['peak_rss'] / 1024**2:,.0f} MB",
                    f"{max(0, result['peak_rss'] - result['rss_data']) / 1024**2:,.0f} MB",
                    f"{exact_s / spent:.2f}x" if result["method"] != "exact" else "1.00x",
                    f"{exact_s / run['search_s']:.1f}x",
                ]
            )
    return rows


HEADER = [
    "vectors",
    "method",
    "build",
    "search",
    "recall@k",
    "source first",
    "peak RSS",
    "of it after the vectors",
    "vs exact (build + search)",
    "vs exact (search alone)",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest size for HNSW")
    parser.add_argument("--quick", action="store_true", help="20,000 vectors, 200 queries")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries = "20000", 200
    args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.size_list or min(args.size_list) < 1000 or args.queries < 1 or args.k < 1:
        parser.error("--sizes needs sizes of 1,000 or more; --queries and --k must be positive")
    if args.queries > min(args.size_list):
        parser.error("--queries cannot exceed the smallest size (queries are dataset rows)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = child(args.child, args.size_list[0], args.queries, args.k)
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    ok = True
    rows = []
    for size in args.size_list:
        methods = [m for m in METHODS if m != "hnsw" or size <= args.hnsw_max]
        results = [spawn(method, size, args) for method in methods]
        ok = ok and all(results)
        if results[0] is None:
            continue  # no exact search: nothing to compare with
        rows += rows_of([r for r in results if r])
    print()
    print(machine_line(("faiss", "faiss-cpu"), ("NumPy", "numpy")))
    print()
    print(render(HEADER, rows))
    print(
        f"\n{args.queries:,} queries, k={args.k}; {DIMENSIONS}-d unit vectors around {CENTRES:,} "
        f"centres (noise {SPREAD} a dimension), queries = dataset rows + noise {QUERY_NOISE} a "
        "dimension; each method in its own process on the same vectors; peak RSS includes the "
        "vectors themselves"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
