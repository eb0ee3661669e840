from __future__ import annotations

import numpy as np
import pytest
from imagekit import save, textured, write_bad_files
from PIL import Image

from include.image_similarity.decode import DecodeError, InputSize, load_for_model, open_image


def test_input_size_keeps_aspect_ratio_of_a_video_frame():
    assert InputSize().for_image(1280, 720) == (288, 160)
    assert InputSize().for_image(720, 1280) == (160, 288)
    assert InputSize().for_image(500, 500) == (224, 224)


def test_extreme_panorama_is_clamped_to_three_to_one():
    width, height = InputSize().for_image(10000, 500)
    assert width / height == pytest.approx(3.0, rel=0.15)


def test_video_frame_is_not_centre_cropped(tmp_path):
    # Left and right edges are red and blue: both must survive into the model input.
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, :100] = (255, 0, 0)
    frame[:, -100:] = (0, 0, 255)
    path = save(Image.fromarray(frame), tmp_path / "frame.png")
    array = load_for_model(path, InputSize())
    assert array.shape == (160, 288, 3)
    assert array[80, 2, 0] > 200 and array[80, -3, 2] > 200


def test_exif_orientation_is_applied(tmp_path):
    image = textured(200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert open_image(path).size == (100, 200)
    assert load_for_model(path, InputSize()).shape[:2] == (320, 160)


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
    assert open_image(path, fit=InputSize()).size == (320, 180)
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
