"""Embedding cache keyed by (model id, image content hash), in a local folder or an S3 prefix.

Vectors are stored in chunks (``.npz`` files holding hashes and vectors), written once and never
changed: a chunk's name is the hash of its contents, so a retried write is a no-op and two workers
writing at once cannot corrupt each other. Every write is atomic (temporary file + rename locally;
a single PUT on S3). Many small chunks are compacted into one now and then.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from include.common.files import atomic_file

log = logging.getLogger(__name__)

COMPACT_AFTER_CHUNKS = 32


class ChunkStore(Protocol):
    """Where cache chunks live; keys are file names inside the model's folder."""

    def list(self) -> list[str]: ...
    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes) -> None: ...
    def delete(self, key: str) -> None: ...


class LocalChunkStore:
    """Chunks as files in a local folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"LocalChunkStore({str(self.folder)!r})"

    def list(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.glob("*.npz"))

    def read(self, key: str) -> bytes:
        return (self.folder / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        with atomic_file(self.folder / key, prefix=".tmp-") as handle:
            handle.write(data)

    def delete(self, key: str) -> None:
        (self.folder / key).unlink(missing_ok=True)


class S3ChunkStore:
    """Chunks as objects under an S3 prefix, through a boto3 client (``S3Hook.get_conn()``)."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/"

    def __repr__(self) -> str:
        return f"S3ChunkStore('s3://{self.bucket}/{self.prefix}')"

    def list(self) -> list[str]:
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                if name.endswith(".npz") and "/" not in name:
                    keys.append(name)
        return sorted(keys)

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def store_for_location(location: str, model_id: str, s3_client_factory=None) -> ChunkStore:
    """Return the chunk store for ``location``: a local folder or ``s3://bucket/prefix``."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[5:].partition("/")
        if not bucket:
            raise ValueError(f"cache location {location!r} names no bucket")
        if s3_client_factory is None:
            raise ValueError("an S3 cache location needs an S3 client (aws connection)")
        key_prefix = f"{prefix.strip('/')}/{model_id}".lstrip("/")
        return S3ChunkStore(s3_client_factory(), bucket, key_prefix)
    return LocalChunkStore(Path(location) / model_id)


def _pack(hashes: list[str], vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, hashes=np.array(hashes, dtype="U64"), vectors=vectors.astype(np.float32))
    return buffer.getvalue()


def _unpack(data: bytes) -> tuple[list[str], np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return [str(h) for h in archive["hashes"]], archive["vectors"]


class EmbeddingCache:
    """Vectors of one model, looked up by image content hash."""

    def __init__(self, store: ChunkStore, model_id: str):
        self.store = store
        self.model_id = model_id
        self._vectors: dict[str, np.ndarray] | None = None
        self._chunks: list[str] = []

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            self._chunks = self.store.list()
            for key in self._chunks:
                try:
                    hashes, vectors = _unpack(self.store.read(key))
                except (OSError, ValueError, KeyError) as exc:
                    # A damaged chunk only costs recomputation, never a failed run.
                    log.warning(
                        "ignoring unreadable cache chunk %s in %s: %s",
                        key,
                        self.store,
                        exc,
                    )
                    continue
                self._vectors.update(zip(hashes, vectors, strict=True))
            log.info(
                "embedding cache %s: %d vectors in %d chunks",
                self.store,
                len(self._vectors),
                len(self._chunks),
            )
        return self._vectors

    def __len__(self) -> int:
        return len(self._load())

    def get_many(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors among ``hashes``."""
        vectors = self._load()
        return {h: vectors[h] for h in hashes if h in vectors}

    def put_many(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Store new vectors as one chunk (idempotent: the chunk is named by its content)."""
        if not hashes:
            return
        data = _pack(hashes, vectors)
        key = hashlib.sha256(data).hexdigest()[:32] + ".npz"
        self.store.write(key, data)
        cached = self._load()
        cached.update(zip(hashes, np.asarray(vectors, dtype=np.float32), strict=True))
        if key not in self._chunks:
            self._chunks.append(key)
        if len(self._chunks) > COMPACT_AFTER_CHUNKS:
            self.compact()

    def compact(self) -> None:
        """Rewrite all chunks as one, then remove the old ones (readers see either set whole)."""
        cached = self._load()
        if len(self._chunks) <= 1:
            return
        hashes = sorted(cached)
        data = _pack(hashes, np.stack([cached[h] for h in hashes]))
        key = hashlib.sha256(data).hexdigest()[:32] + ".npz"
        self.store.write(key, data)
        for old in self._chunks:
            if old != key:
                self.store.delete(old)
        log.info("compacted embedding cache %s: %d chunks into 1", self.store, len(self._chunks))
        self._chunks = [key]
