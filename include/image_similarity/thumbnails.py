"""The batch's re-ranking thumbnails on disk, stored beside its vectors.

Re-ranking lines each query up with its shortlist on 128-pixel greyscale thumbnails
(``rerank.thumbnail``). Decoding a file again for them costs 2 ms a JPEG frame and 6 ms a PNG,
as much as the re-ranking itself, so the embedding step keeps the thumbnail of every image it
decodes for the model (a resize of the picture already in memory) and ``merge_shards`` writes
them here:

- ``thumbnails.npz``: each thumbnail's content hash, shape and byte offset, the long side, the
  model's pixel area the images were decoded at and the name of the pixel file;
- ``thumbnails-<token>.bin``: the pixels, one thumbnail after another (``uint8``, row-major).

The index is written last, so a crash leaves the previous pair whole. A thumbnail is read with
one positioned read when asked for. Images whose vector came from the embedding cache were not
decoded: the previous pair's thumbnail is carried over when there is one, else re-ranking
decodes the file, at the same decode as the embedding step (``rerank.open_thumbnail_source``
with the area stored here), so a stored thumbnail and a decoded one are the same pixels and a
run ranks the same either way. Thumbnails only save time: a missing, damaged or foreign file is
logged and the files are decoded instead, never an error.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from include.common.files import UNREADABLE_ARCHIVE, atomic_file
from include.image_similarity.rerank import DEFAULT_THUMB_SIDE
from include.image_similarity.vectors import member_shape

log = logging.getLogger(__name__)

THUMBNAILS_FILE = "thumbnails.npz"
PIXELS_FILE = re.compile(r"thumbnails-[0-9a-f]{32}\.bin")
CONTENT_HASH = re.compile(r"[0-9a-f]{64}")
# The fewest pixels a thumbnail has (1 x 128): no file holds more thumbnails than its pixels
# allow, which bounds what a crafted index may make a task allocate before it is refused.
MIN_THUMB_PIXELS = DEFAULT_THUMB_SIDE


def pack_thumbnails(thumbs: dict[str, np.ndarray], area: int) -> dict[str, np.ndarray]:
    """Thumbnails by content hash, made from decodes for a model fed ``area`` pixels, as the
    arrays an embedding shard file holds them in."""
    hashes = list(thumbs)
    return {
        "thumb_area": np.array(area, np.int64),
        "thumb_hashes": np.array(hashes, dtype="U64"),
        "thumb_shapes": np.array([thumbs[h].shape for h in hashes], np.int64).reshape(-1, 2),
        "thumb_pixels": (
            np.concatenate([thumbs[h].reshape(-1) for h in hashes])
            if hashes
            else np.zeros(0, np.uint8)
        ),
    }


def shard_area(archive) -> int | None:
    """The area the thumbnails of an open shard archive were decoded at (None: none kept)."""
    if "thumb_area" not in archive.files:
        return None
    area = archive["thumb_area"]
    return int(area) if area.shape == () and area.dtype.kind == "i" and area > 0 else None


def unpack_thumbnails(archive, name: str = "a shard file") -> Iterator[tuple[str, np.ndarray]]:
    """The thumbnails ``pack_thumbnails`` wrote into an open ``.npz`` archive (file ``name``;
    none in an older file); thumbnails that do not fit their shapes are left out."""
    if "thumb_hashes" not in archive.files or shard_area(archive) is None:
        return
    count, size = member_shape(archive, "thumb_hashes"), member_shape(archive, "thumb_pixels")
    if len(count) != 1 or len(size) != 1 or count[0] * MIN_THUMB_PIXELS > size[0]:
        log.warning("not keeping the thumbnails of %s: more than its pixels can hold", name)
        return
    hashes, shapes, pixels = (archive[k] for k in ("thumb_hashes", "thumb_shapes", "thumb_pixels"))
    if not (
        shapes.shape == (len(hashes), 2)
        and shapes.dtype.kind == "i"
        and pixels.dtype == np.uint8
        and pixels.ndim == 1
        and _valid_shapes(shapes)
        and int(shapes.prod(axis=1).sum()) == len(pixels)
    ):
        log.warning("not keeping the thumbnails of %s: they do not fit their shapes", name)
        return
    start = 0
    for digest, (height, width) in zip(hashes, shapes.tolist(), strict=True):
        if CONTENT_HASH.fullmatch(str(digest)):  # a content hash, nothing else is stored
            yield str(digest), pixels[start : start + height * width].reshape(height, width)
        start += height * width


def _regular_file(path: Path) -> int:
    """The size of a regular file; anything else (a FIFO would block the read) is refused."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path.name} is not a regular file")
    return info.st_size


def _disjoint_within(offsets: np.ndarray, sizes: np.ndarray, size: int) -> bool:
    """Every thumbnail's bytes (``offsets``, ``sizes``) lie inside a file of ``size`` bytes and
    no two overlap, so no thumbnail is read from another's pixels."""
    if len(offsets) == 0:
        return True
    if offsets.min() < 0 or offsets.max() > size:  # before adding: no int64 wrap-around
        return False
    order = np.argsort(offsets, kind="stable")
    starts, ends = offsets[order], offsets[order] + sizes[order]
    return bool(ends[-1] <= size and (ends[:-1] <= starts[1:]).all())


def _valid_shapes(shapes: np.ndarray) -> bool:
    """Every shape is a thumbnail's: both sides at least 1, the longer one the thumbnail side."""
    return bool(
        len(shapes) == 0 or (shapes.min() >= 1 and (shapes.max(axis=1) == DEFAULT_THUMB_SIDE).all())
    )


def write_thumbnails(batch_dir: Path, sources: Iterable[tuple[str, np.ndarray]], area: int) -> int:
    """Write the batch's thumbnails (content hash, thumbnail; the first of a hash is kept),
    decoded for a model fed ``area`` pixels, and remove older pixel files; returns how many
    were written."""
    for pattern in (".thumbnails-*.part", f".{THUMBNAILS_FILE}.*.part"):
        for leftover in batch_dir.glob(pattern):  # of writes a crash cut short
            leftover.unlink(missing_ok=True)
    name = f"thumbnails-{uuid.uuid4().hex}.bin"
    hashes: list[str] = []
    shapes: list[tuple[int, int]] = []
    offsets: list[int] = []
    seen: set[str] = set()
    with atomic_file(batch_dir / name) as handle:
        written = 0
        for digest, thumb in sources:
            if digest in seen or not CONTENT_HASH.fullmatch(digest):
                continue
            seen.add(digest)
            pixels = np.ascontiguousarray(thumb, np.uint8)
            hashes.append(digest)
            shapes.append(pixels.shape)
            offsets.append(written)
            handle.write(pixels.tobytes())
            written += pixels.size
    order = np.argsort(np.array(hashes, dtype="S64"), kind="stable")  # looked up by bisection
    with atomic_file(batch_dir / THUMBNAILS_FILE) as handle:
        np.savez(
            handle,
            hashes=np.array(hashes, dtype="S64")[order],
            shapes=np.array(shapes, np.int64).reshape(-1, 2)[order],
            offsets=np.array(offsets, np.int64)[order],
            side=DEFAULT_THUMB_SIDE,
            area=area,
            pixels_file=name,
        )
    for old in batch_dir.glob("thumbnails-*.bin"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return len(hashes)


@dataclass(frozen=True)
class StoredThumbnails:
    """The batch's thumbnails: ``hashes`` sorted (ASCII), each one's ``offsets`` in the pixel
    file ``path`` and its ``shapes``; ``get`` reads one from disk when asked. About 90 bytes of
    memory an image (no dictionary of every hash)."""

    path: Path | None
    hashes: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    area: int | None  # the model's pixel area the images were decoded at (None: unknown)

    def __len__(self) -> int:
        return len(self.hashes)

    def _position(self, digest: str) -> int | None:
        key = np.array(digest.encode("ascii", "replace")[:64], dtype="S64")
        i = int(np.searchsorted(self.hashes, key))
        return i if i < len(self.hashes) and self.hashes[i] == key else None

    def __contains__(self, digest: str) -> bool:
        return self._position(digest) is not None

    def get(self, digest: str) -> np.ndarray | None:
        """The thumbnail of this content, or None (not stored, or the pixel file cut short)."""
        return next((thumb for _, thumb in self.items([digest])), None)

    def items(self, digests: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(hash, thumbnail) of those of ``digests`` that are stored and readable, read through
        one handle on the pixel file."""
        if self.path is None:
            return
        try:
            with self.path.open("rb") as handle:
                for digest in digests:
                    i = self._position(digest)
                    thumb = None if i is None else self._read(handle.fileno(), i)
                    if thumb is not None:
                        yield digest, thumb
        except OSError as exc:
            log.warning("cannot read thumbnails from %s: %s", self.path.name, exc)

    def _read(self, fd: int, i: int) -> np.ndarray | None:
        (height, width), offset = self.shapes[i].tolist(), int(self.offsets[i])
        data = os.pread(fd, height * width, offset)
        if len(data) != height * width:
            log.warning("%s is cut short: that thumbnail is decoded instead", self.path.name)
            return None
        return np.frombuffer(data, np.uint8).reshape(height, width).copy()


NO_THUMBNAILS = StoredThumbnails(
    None, np.zeros(0, "S64"), np.zeros(0, np.int64), np.zeros((0, 2), np.int64), None
)


def load_thumbnails(batch_dir: Path) -> StoredThumbnails:
    """The batch's stored thumbnails; none (and a warning if the files are damaged) when they
    cannot be used: re-ranking then decodes the image files."""
    index_path = batch_dir / THUMBNAILS_FILE
    if not index_path.exists():
        return NO_THUMBNAILS
    try:
        _regular_file(index_path)
        with np.load(index_path, allow_pickle=False) as archive:
            name = str(archive["pixels_file"])
            if not PIXELS_FILE.fullmatch(name):
                raise ValueError(f"it names {name[:80]!r} as its pixels")
            size = _regular_file(batch_dir / name)
            count = member_shape(archive, "hashes")
            if len(count) != 1 or count[0] * MIN_THUMB_PIXELS > size:
                raise ValueError(f"it names {count} thumbnails, more than {name} can hold")
            hashes, shapes, offsets, side, area = (
                archive[k] for k in ("hashes", "shapes", "offsets", "side", "area")
            )
        sizes = shapes.prod(axis=1) if shapes.ndim == 2 else None
        if not (
            side.shape == () and int(side) == DEFAULT_THUMB_SIDE
            and area.shape == () and area.dtype.kind == "i" and 0 < int(area) < 2**31
            and hashes.ndim == 1 and hashes.dtype == np.dtype("S64")
            and (len(hashes) < 2 or bool((hashes[1:] > hashes[:-1]).all()))
            and shapes.shape == (len(hashes), 2) and shapes.dtype.kind == "i"
            and offsets.shape == (len(hashes),) and offsets.dtype.kind == "i"
            and _valid_shapes(shapes)
            and _disjoint_within(offsets, sizes, size)
        ):  # fmt: skip
            raise ValueError("its hashes, shapes and offsets do not describe its pixel file")
    except UNREADABLE_ARCHIVE as exc:
        log.warning(
            "not using the stored thumbnails (%s: %s): re-ranking decodes the image files",
            THUMBNAILS_FILE,
            exc,
        )
        return NO_THUMBNAILS
    return StoredThumbnails(batch_dir / name, hashes, offsets, shapes, int(area))
