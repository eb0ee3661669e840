"""Tests for the batch's stored re-ranking thumbnails (``thumbnails.py``)."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest

from include.image_similarity.thumbnails import (
    NO_THUMBNAILS,
    THUMBNAILS_FILE,
    load_thumbnails,
    pack_thumbnails,
    unpack_thumbnails,
    write_thumbnails,
)

SHAPES = [(72, 128), (128, 128), (128, 40), (1, 128), (128, 1)]
AREA = 224 * 224


def _thumbs(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{i:064x}"[::-1]: rng.integers(0, 256, SHAPES[i % len(SHAPES)], np.uint8) for i in range(n)
    }


def _rewrite_index(batch_dir, **changes):
    path = batch_dir / THUMBNAILS_FILE
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays.update(changes)
    with path.open("wb") as handle:
        np.savez(handle, **{k: v for k, v in arrays.items() if v is not None})


def _fifo_instead(path):
    path.unlink()
    os.mkfifo(path)


def _pixels(batch_dir):
    (path,) = batch_dir.glob("thumbnails-*.bin")
    return path


def test_thumbnails_are_written_and_read_back_one_at_a_time(tmp_path):
    thumbs = _thumbs(12)
    assert write_thumbnails(tmp_path, thumbs.items(), AREA) == 12
    stored = load_thumbnails(tmp_path)
    assert len(stored) == 12 and stored.area == AREA
    for digest, thumb in thumbs.items():
        assert digest in stored
        np.testing.assert_array_equal(stored.get(digest), thumb)
    assert stored.get("f" * 64) is None and "f" * 64 not in stored
    assert stored.get("not a hash ☃") is None
    assert dict(stored.items(["f" * 64, *thumbs])).keys() == thumbs.keys()


def test_a_new_write_replaces_the_old_pixels_and_keeps_the_first_of_a_hash(tmp_path):
    first, second = _thumbs(3, seed=1), _thumbs(3, seed=2)
    write_thumbnails(tmp_path, first.items(), AREA)
    (tmp_path / ".thumbnails-x.part").write_bytes(b"killed write")
    digest = next(iter(second))
    assert write_thumbnails(tmp_path, [*second.items(), (digest, first[digest])], AREA) == 3
    assert len(list(tmp_path.glob("thumbnails-*.bin"))) == 1
    assert not list(tmp_path.glob(".thumbnails-*"))
    np.testing.assert_array_equal(load_thumbnails(tmp_path).get(digest), second[digest])


def test_no_thumbnails_file_means_none_stored(tmp_path):
    assert load_thumbnails(tmp_path) is NO_THUMBNAILS
    write_thumbnails(tmp_path, [], AREA)
    stored = load_thumbnails(tmp_path)
    assert len(stored) == 0 and stored.get("0" * 64) is None


def test_shard_members_round_trip_and_older_or_damaged_shards_give_none(caplog):
    thumbs = _thumbs(7)
    buffer = io.BytesIO()
    np.savez(buffer, hashes=np.array([]), **pack_thumbnails(thumbs, AREA))
    with np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False) as archive:
        back = dict(unpack_thumbnails(archive))
    assert back.keys() == thumbs.keys()
    for digest, thumb in thumbs.items():
        np.testing.assert_array_equal(back[digest], thumb)
    older = io.BytesIO()
    np.savez(older, hashes=np.array([]))
    with np.load(io.BytesIO(older.getvalue()), allow_pickle=False) as archive:
        assert list(unpack_thumbnails(archive)) == []
    packed = pack_thumbnails(thumbs, AREA)
    for damage in (
        {"thumb_pixels": packed["thumb_pixels"][:-1]},  # one pixel short
        {"thumb_shapes": packed["thumb_shapes"] * 2},  # sides of 256
        {"thumb_shapes": packed["thumb_shapes"].astype(np.float64)},
        {"thumb_pixels": packed["thumb_pixels"].astype(np.int16)},
        {"thumb_shapes": packed["thumb_shapes"][:-1]},
        {"thumb_area": np.array(0)},
        {"thumb_area": np.array(5.0)},
        {"thumb_area": None},  # thumbnails whose decode is not known
    ):
        damaged = io.BytesIO()
        np.savez(damaged, **{k: v for k, v in {**packed, **damage}.items() if v is not None})
        with (
            caplog.at_level(logging.WARNING),
            np.load(io.BytesIO(damaged.getvalue()), allow_pickle=False) as archive,
        ):
            assert list(unpack_thumbnails(archive)) == []
    assert "not keeping the thumbnails of a shard file: they do not fit" in caplog.text


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / THUMBNAILS_FILE).write_bytes(b"PK\x03\x04 not a zip"),
        lambda d: (d / THUMBNAILS_FILE).write_bytes(b""),
        lambda d: _rewrite_index(d, pixels_file=np.array("../vectors.npy")),
        lambda d: _rewrite_index(d, pixels_file=np.array("thumbnails-" + "0" * 32 + ".bin")),
        lambda d: _rewrite_index(d, pixels_file=None),
        lambda d: _pixels(d).unlink(),
        lambda d: _pixels(d).write_bytes(_pixels(d).read_bytes()[:-1]),
        lambda d: _rewrite_index(d, side=np.array(64)),
        lambda d: _rewrite_index(d, area=None),
        lambda d: _rewrite_index(d, area=np.array(-5)),
        lambda d: _rewrite_index(d, area=np.array("50176")),
        lambda d: _rewrite_index(d, offsets=np.array([10**12, 0, 0, 0, 0])),
        lambda d: _rewrite_index(d, offsets=np.array([-1, 0, 0, 0, 0])),
        lambda d: _rewrite_index(d, offsets=np.zeros(4, np.int64)),
        lambda d: _rewrite_index(d, shapes=np.full((5, 2), 200)),
        lambda d: _rewrite_index(d, shapes=np.zeros((5, 2), np.int64)),
        lambda d: _rewrite_index(d, shapes=np.full((5, 2), 128.0)),
        lambda d: _rewrite_index(d, hashes=np.array(["a", "b", "c", "d", "e"])),  # unicode
        lambda d: _rewrite_index(d, hashes=np.array([b"e", b"d", b"c", b"b", b"a"], "S64")),
        lambda d: _rewrite_index(d, hashes=np.array([b"a", b"a", b"c", b"d", b"e"], "S64")),
        lambda d: _rewrite_index(d, offsets=np.array([2**63 - 1, 0, 0, 0, 0])),  # wraps around
        lambda d: _rewrite_index(d, offsets=np.zeros(5, np.int64)),  # all on the same bytes
        lambda d: _rewrite_index(  # more hashes than the pixels can hold: refused unread
            d, hashes=np.array([f"{i:064x}".encode() for i in range(10_000)], "S64")
        ),
        lambda d: _fifo_instead(d / THUMBNAILS_FILE),  # would block a read forever
        lambda d: _fifo_instead(_pixels(d)),
        lambda d: ((d / THUMBNAILS_FILE).unlink(), (d / THUMBNAILS_FILE).mkdir()),
    ],
)
def test_damaged_or_foreign_files_are_not_used(tmp_path, damage, caplog):
    """Stored thumbnails only save time: a file that does not describe its pixels is logged
    and left unused (re-ranking decodes the images), never followed outside the batch."""
    (tmp_path / "vectors.npy").write_bytes(b"\x00" * 10**6)  # what a crafted name points at
    write_thumbnails(tmp_path, _thumbs(5).items(), AREA)
    damage(tmp_path)
    with caplog.at_level(logging.WARNING):
        stored = load_thumbnails(tmp_path)
    assert stored is NO_THUMBNAILS
    assert "not using the stored thumbnails" in caplog.text


def test_shard_thumbnails_that_are_not_content_hashes_or_too_many_are_dropped(caplog):
    thumbs = _thumbs(3)
    odd = {"../../etc/passwd": thumbs[next(iter(thumbs))], "é" * 64: thumbs[next(iter(thumbs))]}
    buffer = io.BytesIO()
    np.savez(buffer, **pack_thumbnails({**thumbs, **odd}, AREA))
    with np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False) as archive:
        assert dict(unpack_thumbnails(archive)).keys() == thumbs.keys()
    packed = pack_thumbnails(thumbs, AREA)
    packed["thumb_hashes"] = np.array(list(packed["thumb_hashes"]) * 1000)  # 3,000 names
    buffer = io.BytesIO()
    np.savez(buffer, **packed)
    with (
        caplog.at_level(logging.WARNING),
        np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False) as archive,
    ):
        assert list(unpack_thumbnails(archive)) == []
    assert "more than its pixels can hold" in caplog.text


def test_only_content_hashes_are_written(tmp_path):
    thumbs = _thumbs(2)
    assert write_thumbnails(tmp_path, [*thumbs.items(), ("é" * 64, thumbs[next(iter(thumbs))])],
                            AREA) == 2  # fmt: skip


def test_a_pixel_file_cut_short_after_loading_gives_none_not_garbage(tmp_path, caplog):
    thumbs = _thumbs(5)
    write_thumbnails(tmp_path, thumbs.items(), AREA)
    stored = load_thumbnails(tmp_path)
    _pixels(tmp_path).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert all(stored.get(digest) is None for digest in thumbs)
    assert "cut short" in caplog.text
