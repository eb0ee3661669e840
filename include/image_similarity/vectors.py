"""A batch's merged embeddings on disk: ``vector_hashes.npz`` and ``vectors-<token>.npy``.

``vector_hashes.npz`` holds each row's content hash, the model id and the name of its matrix,
``vectors-<token>.npy`` (float32, one row per content). The hashes file is written last, so a
crash never pairs one merge's hashes with another's vectors. Rows are read with positioned
reads (a run of neighbouring rows in one read), so a task holds what it asked for and nothing of
the file stays mapped; a damaged or foreign file is an error that says to merge again.

``pipeline`` writes and searches them; ``gold`` reads them; neither imports the other for it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from include.common.files import UNREADABLE_ARCHIVE, atomic_file

VECTOR_HASHES_FILE = "vector_hashes.npz"


def save_archive(
    path: Path, hashes: list[str], vectors: np.ndarray | None, model_id: str, **extra
) -> None:
    """Write a vectors archive atomically (a temporary file, then a rename); without vectors,
    the hashes and model id alone (``vector_hashes.npz``)."""
    with atomic_file(path) as handle:
        arrays = {"hashes": np.array(hashes, dtype="U64"), "model_id": model_id, **extra}
        np.savez(handle, **arrays, **({} if vectors is None else {"vectors": vectors}))


def member_shape(archive, name: str) -> tuple[int, ...]:
    """The shape of an ``.npz`` member, from its header (the array is not read)."""
    with archive.zip.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read(member)
    return shape


def write_vector_files(
    batch_dir: Path,
    hashes: list[str],
    model_id: str,
    shape: tuple[int, int],
    fill: Callable[[np.ndarray], None],
) -> None:
    """Write a batch's vectors: a float32 matrix ``vectors-<token>.npy`` of ``shape`` (``fill``
    writes its rows into the memory-mapped file) and ``vector_hashes.npz``, which names that
    file and each row's content hash. The hashes file is written last, so a crash at any point
    leaves the previous pair whole; older matrices and leftovers of killed writes go."""
    for leftover in batch_dir.glob(".vectors-*.part"):
        leftover.unlink(missing_ok=True)
    name = f"vectors-{uuid.uuid4().hex}.npy"
    with atomic_file(batch_dir / name) as handle:
        if shape[0] and shape[1]:
            matrix = np.lib.format.open_memmap(
                handle.name, mode="w+", dtype=np.float32, shape=shape
            )
            fill(matrix)
            matrix.flush()
            del matrix
        else:
            np.save(handle, np.zeros(shape, np.float32), allow_pickle=False)
    save_archive(batch_dir / VECTOR_HASHES_FILE, hashes, None, model_id, vectors_file=name)
    for old in [*batch_dir.glob("vectors-*.npy"), batch_dir / "vectors.npz"]:
        if old.name != name:
            old.unlink(missing_ok=True)


def write_vectors(batch_dir: Path, hashes: list[str], vectors: np.ndarray, model_id: str) -> None:
    """Write a batch's vectors from one matrix in memory (``load_vectors`` reads them back)."""
    vectors = np.asarray(vectors, np.float32)

    def fill(matrix: np.ndarray) -> None:
        matrix[:] = vectors

    write_vector_files(batch_dir, list(hashes), model_id, vectors.shape, fill)


@dataclass(frozen=True)
class BatchVectors:
    """A batch's merged embeddings: row ``i`` of ``path`` (a float32 ``.npy`` matrix of
    ``shape`` whose rows start at byte ``offset``) is the image whose content hash is
    ``hashes[i]``. Rows are read when asked for, with positioned reads (a run of neighbouring
    rows in one read): a task holds what it asked for, and nothing of the file stays mapped."""

    hashes: list[str]
    path: Path
    shape: tuple[int, int]
    offset: int
    model_id: str

    def rows(self) -> dict[str, int]:
        return {h: i for i, h in enumerate(self.hashes)}

    def read(self, rows: list[int] | np.ndarray) -> np.ndarray:
        """These rows, in this order, as a float32 array in memory; a file cut short or a row
        that is not finite (a damaged file) is an error naming it."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        width = self.shape[1]
        block = np.empty((len(rows), width), np.float32)
        if not len(rows):
            return block
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise ValueError(f"rows outside {self.path.name}'s {self.shape[0]} rows")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1  # runs of consecutive rows
        row_bytes = 4 * width
        with self.path.open("rb") as handle:
            for begin, end in zip(
                [0, *breaks.tolist()], [*breaks.tolist(), len(rows)], strict=True
            ):
                data = os.pread(
                    handle.fileno(),
                    (end - begin) * row_bytes,
                    self.offset + int(ordered[begin]) * row_bytes,
                )
                if len(data) != (end - begin) * row_bytes:
                    raise ValueError(
                        f"{self.path.name} is cut short: merge the embeddings again "
                        "(task merge_embeddings)"
                    )
                block[order[begin:end]] = np.frombuffer(data, "<f4").reshape(-1, width)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = int(rows[np.argmin(finite)])
            raise ValueError(
                f"{self.path.name} row {row} is not a vector of finite numbers: merge the "
                "embeddings again (task merge_embeddings)"
            )
        return block

    def read_all(self) -> np.ndarray:
        return self.read(np.arange(self.shape[0]))


VECTORS_FILE = re.compile(r"vectors-[0-9a-f]{32}\.npy")


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """An ``.npy`` file's shape, dtype, Fortran order and the byte its data starts at."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"npy format {version} is not one numpy writes for these files")
        return shape, dtype, fortran, handle.tell()


def load_vectors(batch_dir: Path, *, with_hashes: bool = True) -> BatchVectors:
    """The batch's merged embeddings (``merge_shards``'s output), checked against each other:
    any file missing, damaged or not of this pair is an error that says to merge again.

    ``with_hashes=False`` reads no hash (a search task needs rows only): ``hashes`` is empty.
    """
    again = "merge the embeddings again (task merge_embeddings)"
    try:
        with np.load(batch_dir / VECTOR_HASHES_FILE, allow_pickle=False) as archive:
            hashes = [str(h) for h in archive["hashes"]] if with_hashes else []
            model_id = str(archive["model_id"])
            name = str(archive["vectors_file"])
        if not VECTORS_FILE.fullmatch(name):
            raise ValueError(f"it names {name[:80]!r} as its vectors")
        path = batch_dir / name
        shape, dtype, fortran, offset = _npy_header(path)
        size = path.stat().st_size
    except UNREADABLE_ARCHIVE as exc:
        raise ValueError(f"the batch's vectors cannot be read ({exc}): {again}") from exc
    count = len(hashes) if with_hashes else shape[0] if len(shape) == 2 else -1
    if (
        len(shape) != 2
        or dtype != np.dtype("<f4")
        or fortran
        or shape[0] != count
        or size != offset + 4 * shape[0] * shape[1]
    ):
        raise ValueError(
            f"{name} ({dtype}, {shape}, {size} bytes) does not hold one float32 vector for each "
            f"of the {count} images of {VECTOR_HASHES_FILE}: {again}"
        )
    return BatchVectors(hashes, path, (int(shape[0]), int(shape[1])), offset, model_id)
