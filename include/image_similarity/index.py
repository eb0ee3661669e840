"""Exact top-k cosine search in blocks, so memory stays bounded on large datasets.

Vectors are L2-normalised, so cosine similarity is a dot product. Queries and the dataset are both
cut into blocks; for each query block a running top-k is merged block by block, so peak memory is
``query_block * dataset_block`` scores, whatever the dataset size.

Ties are broken deterministically by dataset order (the lower index wins), so the same inputs
always give the same matches. A query's own image, and every exact copy of it (the same content
hash), is never its own match.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_QUERY_BLOCK = 1024
DEFAULT_DATASET_BLOCK = 16384


@dataclass(frozen=True)
class TopK:
    """``indices[q, r]`` is the dataset row of query ``q``'s rank-``r`` match (-1 if none)."""

    indices: np.ndarray
    scores: np.ndarray


def _merge(
    best_idx: np.ndarray, best_score: np.ndarray, idx: np.ndarray, score: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k best of two candidate lists per row: higher score first, then lower index."""
    all_idx = np.concatenate([best_idx, idx], axis=1)
    all_score = np.concatenate([best_score, score], axis=1)
    # Empty slots (-1) carry -inf and sort last; lexsort's last key is the primary one.
    tie_index = np.where(all_idx < 0, np.iinfo(np.int64).max, all_idx)
    order = np.lexsort((tie_index, -all_score), axis=1)[:, :k]
    return np.take_along_axis(all_idx, order, axis=1), np.take_along_axis(all_score, order, axis=1)


def _block_top(block: np.ndarray, take: int) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's ``take`` best columns of one block, ties going to the lower column."""
    n_rows = block.shape[0]
    # argpartition finds the k-th best score cheaply; columns strictly above it are all in, and
    # among columns equal to it only the lowest indices are kept, so ties stay deterministic.
    part = np.argpartition(-block, take - 1, axis=1)[:, :take]
    kth = np.min(np.take_along_axis(block, part, axis=1), axis=1, keepdims=True)
    greater = block > kth
    ties = (block == kth) & np.isfinite(block)
    room = take - greater.sum(axis=1)
    keep = greater | ties
    for row in np.flatnonzero(ties.sum(axis=1) > room):  # rare: several equal scores at the edge
        keep[row, np.flatnonzero(ties[row])[room[row] :]] = False
    rows, cols = np.nonzero(keep)  # row-major: rows ascending
    slots = np.arange(rows.size) - np.searchsorted(rows, rows)
    cand_idx = np.full((n_rows, take), -1, dtype=np.int64)
    cand_score = np.full((n_rows, take), -np.inf, dtype=np.float32)
    cand_idx[rows, slots] = cols
    cand_score[rows, slots] = block[rows, cols]
    return cand_idx, cand_score


def top_k(
    queries: np.ndarray,
    dataset: np.ndarray,
    k: int,
    *,
    query_hashes: list[str] | None = None,
    dataset_hashes: list[str] | None = None,
    query_block: int = DEFAULT_QUERY_BLOCK,
    dataset_block: int = DEFAULT_DATASET_BLOCK,
) -> TopK:
    """Return the ``k`` most similar dataset rows for every query row (cosine similarity).

    With hashes, dataset rows whose content hash equals the query's are excluded from its matches.
    When fewer than ``k`` rows remain, the missing ranks hold index -1 and score -inf.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    queries = np.asarray(queries, dtype=np.float32)
    # The dataset is converted one block at a time: a float16 or memory-mapped dataset is never
    # copied whole into float32.
    dataset = np.asarray(dataset)
    if queries.ndim != 2 or dataset.ndim != 2 or queries.shape[1] != dataset.shape[1]:
        raise ValueError(
            f"vector shapes do not fit: queries {queries.shape}, dataset {dataset.shape}"
        )
    if (query_hashes is None) != (dataset_hashes is None):
        raise ValueError("give both query_hashes and dataset_hashes, or neither")
    n_queries, n_dataset = len(queries), len(dataset)
    indices = np.full((n_queries, k), -1, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)

    hash_codes = None
    if query_hashes is not None:
        if len(query_hashes) != n_queries or len(dataset_hashes) != n_dataset:
            raise ValueError("one hash per vector is needed")
        # Map hashes to small integers once, so exclusion is an integer comparison per block.
        codes: dict[str, int] = {}
        dataset_codes = np.array([codes.setdefault(h, len(codes)) for h in dataset_hashes])
        query_codes = np.array([codes.get(h, -1) for h in query_hashes])
        hash_codes = (query_codes, dataset_codes)

    for q0 in range(0, n_queries, query_block):
        q1 = min(q0 + query_block, n_queries)
        best_idx, best_score = indices[q0:q1], scores[q0:q1]
        for d0 in range(0, n_dataset, dataset_block):
            d1 = min(d0 + dataset_block, n_dataset)
            block = queries[q0:q1] @ dataset[d0:d1].astype(np.float32, copy=False).T
            if hash_codes is not None:
                same = hash_codes[0][q0:q1, None] == hash_codes[1][None, d0:d1]
                block[same] = -np.inf
            take = min(k, d1 - d0)
            cand_idx, cand_score = _block_top(block, take)
            cand_idx = np.where(cand_idx >= 0, cand_idx + d0, -1)
            best_idx, best_score = _merge(best_idx, best_score, cand_idx, cand_score, k)
        indices[q0:q1], scores[q0:q1] = best_idx, best_score
    return TopK(indices=indices, scores=scores)


def merge_top_k(parts: Sequence[tuple[TopK, int]], k: int) -> TopK:
    """Merge the top-k of dataset shards into the top-k of the whole dataset.

    ``parts`` holds each shard's result (from ``top_k`` over that shard alone, same queries in
    the same order) with the dataset row its shard starts at. Ties go to the lower dataset row,
    as in one search over everything, so the merge gives the unsharded result (scores may differ
    in their last bit: BLAS rounds a product of another shape its own way).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if not parts:
        raise ValueError("no shard to merge")
    n_queries = parts[0][0].indices.shape[0]
    indices = np.full((n_queries, k), -1, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    for found, start in parts:
        if found.indices.shape[0] != n_queries or start < 0:
            raise ValueError("every shard must answer the same queries, from a row >= 0")
        shifted = np.where(found.indices >= 0, found.indices + start, -1)
        indices, scores = _merge(indices, scores, shifted, found.scores.astype(np.float32), k)
    return TopK(indices=indices, scores=scores)


def top_k_sharded(
    queries: np.ndarray,
    shards: Iterable[tuple[np.ndarray, list[str] | None]],
    k: int,
    *,
    query_hashes: list[str] | None = None,
) -> TopK:
    """Search shard after shard (each ``(vectors, hashes or None)``, e.g. memory-mapped, float16
    allowed) and merge as it goes: memory holds one shard, never the whole dataset."""
    start = 0
    merged: TopK | None = None
    for vectors, hashes in shards:
        found = top_k(
            queries,
            vectors,
            k,
            query_hashes=query_hashes if hashes is not None else None,
            dataset_hashes=hashes if query_hashes is not None else None,
        )
        parts = [(found, start)] if merged is None else [(merged, 0), (found, start)]
        merged = merge_top_k(parts, k)
        start += len(vectors)
    if merged is None:
        raise ValueError("no shard to search")
    return merged
