"""Decoding is bounded in memory: a picture that is small on disk but huge in pixels (a PNG of
9,400 x 9,400 is a few hundred KB) must not take gigabytes, whichever path opens it."""

from __future__ import annotations

import struct
import zlib

import pytest
from decode_peak_rss import run_child, write_png

from include.common.images import DecodeError, InputSize, load_for_model, open_image
from include.image_similarity.contact_sheet import render_contact_sheet
from include.image_similarity.rerank import open_thumbnail_source
from include.image_similarity.settings import DEFAULTS

MODEL_INPUT = InputSize(DEFAULTS.embedding.image_area)  # what the embedder decodes to

SIDE = 9400  # 88 MP: under Pillow's own limit, above ours
# One 4-byte copy of the picture is 337 MB and the interpreter with Pillow and NumPy about 40 MB;
# the decode before bounding took 1.7 GB for this picture (four to five full-size copies).
PEAK_BOUND_MB = 700


def test_a_huge_png_decodes_in_bounded_memory_through_every_path(tmp_path):
    image = write_png(tmp_path / "huge.png", SIDE, "RGBA", level=1)
    assert image.stat().st_size < 2_000_000
    # The limit is raised so the picture is decoded, not refused: the bound is on the decode.
    results = run_child(image, ["model", "thumbnail", "sheet"], max_pixels=100_000_000)
    assert [r["path"] for r in results] == ["model", "thumbnail", "sheet"]
    for result in results:
        assert result["outcome"].startswith("ok"), result
        assert result["peak_mb"] < PEAK_BOUND_MB, result


def _header_only_png(path, width: int, height: int):
    """A PNG that declares ``width`` x ``height`` pixels but holds none of them."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    data += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(data)
    return path


def test_a_picture_above_the_default_limit_is_refused_by_name_before_decoding(tmp_path):
    path = _header_only_png(tmp_path / "bomb.png", SIDE, SIDE)
    # Decoding would fail as truncated; the refusal comes first, from the header alone.
    for open_it in (
        lambda: load_for_model(path, MODEL_INPUT),
        lambda: open_thumbnail_source(path),
        lambda: open_image(path, fit=MODEL_INPUT),
    ):
        with pytest.raises(DecodeError) as caught:
            open_it()
        assert caught.value.name == "bomb.png"
        assert f"{SIDE}x{SIDE} = 88 megapixels" in caught.value.reason
        assert "decompression bomb" in caught.value.reason
    # A contact sheet shows a placeholder tile instead of failing.
    sheet = render_contact_sheet({"name": "bomb.png", "path": str(path)}, [])
    assert sheet.width > 0
