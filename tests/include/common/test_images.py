from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from include.common.image_files import MAX_FILE_BYTES
from include.common.images import (
    DecodeError,
    FitInside,
    InputSize,
    load_for_model,
    open_image,
)
from testsupport.imagekit import save, textured, write_bad_files

# A network input of 224x224 pixels (InputSize has no default area: the stage's settings hold it).
MODEL_INPUT = InputSize(area=224 * 224)


def test_input_size_keeps_aspect_ratio_of_a_video_frame():
    assert MODEL_INPUT.for_image(1280, 720) == (288, 160)
    assert MODEL_INPUT.for_image(720, 1280) == (160, 288)
    assert MODEL_INPUT.for_image(500, 500) == (224, 224)


def test_extreme_panorama_is_clamped_to_three_to_one():
    width, height = MODEL_INPUT.for_image(10000, 500)
    assert width / height == pytest.approx(3.0, rel=0.15)


def test_video_frame_is_not_centre_cropped(tmp_path):
    # Left and right edges are red and blue: both must survive into the model input.
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, :100] = (255, 0, 0)
    frame[:, -100:] = (0, 0, 255)
    path = save(Image.fromarray(frame), tmp_path / "frame.png")
    array = load_for_model(path, MODEL_INPUT)
    assert array.shape == (160, 288, 3)
    assert array[80, 2, 0] > 200 and array[80, -3, 2] > 200


def test_exif_orientation_is_applied(tmp_path):
    image = textured(200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert open_image(path).size == (100, 200)
    assert load_for_model(path, MODEL_INPUT).shape[:2] == (320, 160)


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "LA", "RGBA", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = textured(64, 48)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 200)
    else:
        image = base.convert(mode)
    ext = "tif" if mode in ("CMYK", "I;16") else "png"
    path = save(image, tmp_path / f"image.{ext}")
    decoded = open_image(path)
    assert decoded.mode == "RGB" and decoded.size == (64, 48)


def test_transparent_pixels_are_composited_on_white(tmp_path):
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    decoded = open_image(save(image, tmp_path / "clear.png"))
    assert decoded.getpixel((5, 5)) == (255, 255, 255)


def test_large_jpeg_uses_draft_mode(tmp_path):
    path = save(textured(1280, 720), tmp_path / "big.jpg", quality=90)
    # Draft decodes at a libjpeg scale that still covers the model input (288x160).
    assert open_image(path, fit=MODEL_INPUT).size == (320, 180)
    assert open_image(path).size == (1280, 720)


def test_bad_files_are_named_with_a_reason(tmp_path):
    kinds = write_bad_files(tmp_path)
    reasons = {}
    for name in kinds:
        with pytest.raises(DecodeError) as caught:
            open_image(tmp_path / name)
        assert caught.value.name == name
        reasons[name] = caught.value.reason
    assert "zero-byte" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "corrupt" in reasons["corrupt.jpg"]
    assert "not an image" in reasons["notes.txt"]


def test_decompression_bomb_gets_a_clear_message(tmp_path):
    path = save(Image.new("L", (4000, 3000)), tmp_path / "huge.png")
    with pytest.raises(DecodeError) as caught:
        open_image(path, max_pixels=10_000_000)
    assert "decompression bomb" in caught.value.reason
    assert "4000x3000" in caught.value.reason


def _with_alpha(image: Image.Image) -> Image.Image:
    """``image`` fading from transparent (left) to opaque, its left fifth fully transparent."""
    width, height = image.size
    alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    alpha[:, : width // 5] = 0  # colour under full transparency must not show through
    image = image.convert("RGBA")
    image.putalpha(Image.fromarray(alpha))
    return image


def _palette_with_transparency(image: Image.Image) -> Image.Image:
    image = image.convert("P")
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("RGB", lambda im: im),
        ("L", lambda im: im.convert("L")),
        ("1", lambda im: im.convert("1")),
        ("P", lambda im: im.convert("P")),
        ("P+transparency", _palette_with_transparency),
        ("RGBA", _with_alpha),
        ("LA", lambda im: _with_alpha(im).convert("LA")),
        ("I;16", lambda im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 200)),
        ("CMYK", lambda im: im.convert("CMYK")),
    ],
)
def test_a_picture_shrunk_while_decoding_looks_like_the_full_decode_shrunk(tmp_path, mode, make):
    ext = "tif" if mode == "CMYK" else "png"
    path = save(make(textured(1000, 700, seed=4)), tmp_path / f"picture.{ext}")
    # Needed at 100x70: shrunk by 5 (not 10), so the final resize still has twice the pixels.
    shrunk = open_image(path, fit=FitInside(100, 70))
    assert shrunk.mode == "RGB" and shrunk.size == (200, 140)
    reference = np.asarray(open_image(path).reduce(5), dtype=np.int16)
    difference = np.abs(np.asarray(shrunk, dtype=np.int16) - reference)
    assert difference.max() <= 2 and difference.mean() < 0.5


def test_exif_rotation_is_applied_to_a_shrunk_png(tmp_path):
    image = np.zeros((400, 1000, 3), np.uint8)
    image[:, :100] = (255, 0, 0)  # the left edge is red; shown upright it is the top edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(Image.fromarray(image), tmp_path / "rotated.png", exif=exif)
    decoded = open_image(path, fit=FitInside(100, 250))
    assert decoded.size == (200, 500)  # portrait, shrunk by 2
    assert decoded.getpixel((100, 5))[0] > 200 and decoded.getpixel((100, 400))[0] < 50
    width, height = MODEL_INPUT.for_image(400, 1000)
    assert load_for_model(path, MODEL_INPUT).shape[:2] == (height, width)


def test_an_animated_gif_with_thousands_of_frames_decodes_its_first_frame(tmp_path):
    palette = [v for i in range(256) for v in (i, 255 - i, 0)]
    frames = []
    for i in range(3000):
        frame = Image.new("P", (32, 32), i % 256)
        frame.putpalette(palette)
        frames.append(frame)
    path = tmp_path / "animation.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=10)
    decoded = open_image(path, fit=MODEL_INPUT)
    assert decoded.mode == "RGB" and decoded.getpixel((3, 3)) == (0, 255, 0)
    assert load_for_model(path, MODEL_INPUT).shape == (224, 224, 3)


def test_content_in_a_format_outside_the_image_extensions_is_refused(tmp_path):
    # Pillow reads PPM and ICO, but the listing only admits JPEG, PNG, WebP, BMP, GIF and TIFF
    # names: a file whose content is another format is refused, whatever it is named.
    for name, fmt in (("portable.png", "PPM"), ("icon.jpg", "ICO")):
        path = save(textured(32, 32), tmp_path / name, format=fmt)
        with pytest.raises(DecodeError) as caught:
            open_image(path, fit=MODEL_INPUT)
        assert "not an image this tool reads" in caught.value.reason


def test_webp_counts_four_times_its_pixels_against_the_limit(tmp_path):
    webp = save(textured(200, 200), tmp_path / "picture.webp", quality=80)
    png = save(textured(200, 200), tmp_path / "picture.png")
    assert open_image(png, max_pixels=100_000).size == (200, 200)
    with pytest.raises(DecodeError) as caught:
        open_image(webp, max_pixels=100_000)
    assert "limit of 0.025 MP for WEBP" in caught.value.reason
    assert open_image(webp, max_pixels=160_000).size == (200, 200)


def test_a_file_too_large_for_any_image_is_refused_unread(tmp_path):
    path = tmp_path / "sparse.png"
    with open(path, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(DecodeError) as caught:
        open_image(path, fit=MODEL_INPUT)
    assert "limit for an image file" in caught.value.reason


def _mutations(data: bytes, rng: np.random.Generator, count: int):
    """``count`` broken versions of ``data``: flipped bytes, cuts, overwritten header fields."""
    for i in range(count):
        broken = bytearray(data)
        if i % 3 == 0:
            for _ in range(int(rng.integers(1, 8))):
                broken[int(rng.integers(len(broken)))] = int(rng.integers(256))
        elif i % 3 == 1:
            broken = broken[: int(rng.integers(1, len(broken)))]
        else:
            at = int(rng.integers(min(len(broken), 64)))
            broken[at : at + 4] = b"\xff\xff\xff\x7f"  # a huge length or dimension
        yield bytes(broken)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP"])
def test_broken_files_of_every_format_decode_or_are_named_never_crash(tmp_path, fmt):
    exif = Image.Exif()
    exif[0x0112] = 6
    extra = {"exif": exif} if fmt in ("JPEG", "PNG", "TIFF", "WEBP") else {}
    buffer = io.BytesIO()
    textured(96, 64, seed=3).save(buffer, format=fmt, **extra)
    rng = np.random.default_rng(sum(map(ord, fmt)))
    path = tmp_path / f"broken.{fmt.lower()}"
    outcomes = set()
    for data in _mutations(buffer.getvalue(), rng, 60):
        path.write_bytes(data)
        try:
            decoded = open_image(path, fit=MODEL_INPUT)
        except DecodeError as exc:
            assert exc.name == path.name and exc.reason
            outcomes.add("named")
        else:
            assert decoded.mode == "RGB"
            outcomes.add("decoded")
    assert "named" in outcomes
