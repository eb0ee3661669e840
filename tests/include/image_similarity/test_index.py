from __future__ import annotations

import numpy as np
import pytest

from include.image_similarity.index import top_k


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
