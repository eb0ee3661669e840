from __future__ import annotations

import numpy as np
import pytest

from include.image_similarity.cache import (
    COMPACT_AFTER_CHUNKS,
    EmbeddingCache,
    LocalChunkStore,
    S3ChunkStore,
    store_for_location,
)
from testsupport import motokit
from testsupport.motokit import moto_s3


def vectors(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def s3_client():
    """A real S3 API: moto's server on 127.0.0.1 (no AWS traffic), through boto3."""
    with moto_s3() as url:
        client = motokit.s3_client(url)
        client.create_bucket(Bucket="cache-bucket")
        yield client


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalChunkStore(tmp_path / "model-a")
    client = request.getfixturevalue("s3_client")
    return S3ChunkStore(client, "cache-bucket", f"embeddings/{tmp_path.name}/model-a")


def test_vectors_survive_a_new_process(store):
    cache = EmbeddingCache(store, "model-a")
    cache.put_many(["h1", "h2"], vectors(2))
    reopened = EmbeddingCache(store, "model-a")
    got = reopened.get_many(["h1", "h2", "h3"])
    assert sorted(got) == ["h1", "h2"]
    np.testing.assert_array_equal(got["h2"], vectors(2)[1])


def test_a_retried_write_adds_no_chunk(store):
    cache = EmbeddingCache(store, "model-a")
    cache.put_many(["h1"], vectors(1))
    cache.put_many(["h1"], vectors(1))
    assert len(store.list()) == 1


def test_many_chunks_are_compacted_into_one(store):
    cache = EmbeddingCache(store, "model-a")
    for i in range(COMPACT_AFTER_CHUNKS + 1):
        cache.put_many([f"h{i}"], vectors(1, seed=i))
    assert len(store.list()) == 1
    assert len(EmbeddingCache(store, "model-a")) == COMPACT_AFTER_CHUNKS + 1


def test_an_unreadable_chunk_is_ignored_not_fatal(tmp_path):
    store = LocalChunkStore(tmp_path)
    EmbeddingCache(store, "m").put_many(["good"], vectors(1))
    (tmp_path / "broken.npz").write_bytes(b"half a file")
    assert list(EmbeddingCache(store, "m").get_many(["good"])) == ["good"]


def test_location_selects_the_store(tmp_path):
    local = store_for_location(str(tmp_path), "model-x")
    assert isinstance(local, LocalChunkStore) and local.folder == tmp_path / "model-x"
    s3 = store_for_location("s3://bucket/some/prefix", "model-x", lambda: object())
    assert isinstance(s3, S3ChunkStore) and s3.prefix == "some/prefix/model-x/"
    with pytest.raises(ValueError, match="needs an S3 client"):
        store_for_location("s3://bucket/p", "model-x")
