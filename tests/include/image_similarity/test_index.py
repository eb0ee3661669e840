from __future__ import annotations

import numpy as np
import pytest

from include.image_similarity.index import merge_top_k, top_k, top_k_sharded


def normalised(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries, dataset, k):
    scores = queries @ dataset.T
    order = np.lexsort((np.broadcast_to(np.arange(len(dataset)), scores.shape), -scores), axis=1)
    return order[:, :k]


@pytest.mark.parametrize("query_block, dataset_block", [(1024, 16384), (7, 13), (1, 1)])
def test_blocked_search_equals_brute_force(query_block, dataset_block):
    rng = np.random.default_rng(0)
    queries, dataset = normalised(rng, 40), normalised(rng, 301)
    found = top_k(queries, dataset, 5, query_block=query_block, dataset_block=dataset_block)
    np.testing.assert_array_equal(found.indices, brute_force(queries, dataset, 5))
    assert np.all(np.diff(found.scores, axis=1) <= 0)


def test_query_and_its_exact_copies_are_excluded():
    rng = np.random.default_rng(1)
    dataset = normalised(rng, 10)
    queries = dataset[[3]]
    hashes = [f"h{i}" for i in range(10)]
    hashes[7] = "h3"  # an exact copy of image 3 elsewhere in the dataset
    found = top_k(queries, dataset, 3, query_hashes=["h3"], dataset_hashes=hashes, dataset_block=4)
    assert 3 not in found.indices[0] and 7 not in found.indices[0]
    assert np.all(found.indices[0] >= 0)


def test_ties_go_to_the_lower_index_across_blocks():
    dataset = np.tile(np.array([[1.0, 0.0]], np.float32), (9, 1))
    found = top_k(np.array([[1.0, 0.0]], np.float32), dataset, 3, dataset_block=2)
    assert found.indices[0].tolist() == [0, 1, 2]


def test_fewer_dataset_images_than_k():
    rng = np.random.default_rng(2)
    found = top_k(normalised(rng, 2), normalised(rng, 2), 3)
    assert (found.indices[:, 2] == -1).all() and np.isneginf(found.scores[:, 2]).all()
    assert (found.indices[:, :2] >= 0).all()


def test_bad_arguments():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="k must be"):
        top_k(normalised(rng, 1), normalised(rng, 2), 0)
    with pytest.raises(ValueError, match="do not fit"):
        top_k(normalised(rng, 1, 4), normalised(rng, 2, 8), 1)


def _shards(dataset, sizes, hashes=None):
    start = 0
    for size in sizes:
        yield (
            dataset[start : start + size],
            None if hashes is None else hashes[start : start + size],
        )
        start += size


@pytest.mark.parametrize("sizes", [[301], [100, 100, 101], [1, 299, 1], [50] * 6 + [1]])
def test_sharded_search_equals_one_search(sizes):
    rng = np.random.default_rng(3)
    queries, dataset = normalised(rng, 40), normalised(rng, 301)
    dataset[200] = dataset[7]  # exact ties in different shards: the lower row wins, as unsharded
    dataset[150] = dataset[149]
    whole = top_k(queries, dataset, 5)
    sharded = top_k_sharded(queries, _shards(dataset, sizes), 5)
    np.testing.assert_array_equal(sharded.indices, whole.indices)
    # The same dot products, though BLAS may round the last bit differently for another shape.
    np.testing.assert_allclose(sharded.scores, whole.scores, rtol=0, atol=1e-6)


def test_sharded_search_excludes_copies_in_any_shard_and_reads_float16():
    rng = np.random.default_rng(4)
    dataset = normalised(rng, 60).astype(np.float16)
    queries = dataset[[3, 40]].astype(np.float32)
    hashes = [f"h{i}" for i in range(60)]
    hashes[55] = "h3"
    args = {"query_hashes": ["h3", "h40"]}
    whole = top_k(queries, dataset.astype(np.float32), 4, dataset_hashes=hashes, **args)
    sharded = top_k_sharded(queries, _shards(dataset, [20, 20, 20], hashes), 4, **args)
    np.testing.assert_array_equal(sharded.indices, whole.indices)
    assert not {3, 55} & set(sharded.indices[0].tolist())


def test_merge_keeps_empty_slots_last_and_checks_its_input():
    rng = np.random.default_rng(5)
    queries, dataset = normalised(rng, 3), normalised(rng, 4)
    sharded = top_k_sharded(queries, _shards(dataset, [2, 2]), 6)
    assert np.all(sharded.indices[:, 4:] == -1) and np.all(np.isneginf(sharded.scores[:, 4:]))
    np.testing.assert_array_equal(sharded.indices[:, :4], top_k(queries, dataset, 4).indices)
    with pytest.raises(ValueError):
        top_k_sharded(queries, iter([]), 3)
    with pytest.raises(ValueError):
        merge_top_k([], 3)
