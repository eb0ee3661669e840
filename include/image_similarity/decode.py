"""Decode image files into RGB arrays sized for the network, reporting bad files instead of failing.

Every file goes through Pillow with the EXIF orientation applied and any mode (CMYK, palette,
greyscale, alpha) converted to RGB; alpha is composited on white so transparent areas look as a
person sees them. Large JPEGs use Pillow's draft mode, which lets libjpeg decode at 1/2, 1/4 or
1/8 scale directly: a 1280x720 frame needed at 288x160 is decoded at 320x180, several times faster.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A picture above this many pixels is refused as a possible decompression bomb (Pillow's own
# default warns at 89 MP and fails at twice that; we fail at the first threshold, with a message).
DEFAULT_MAX_PIXELS = 89_478_485
SIZE_MULTIPLE = 32
MAX_ASPECT = 3.0

# Truncated files must fail, not decode to grey silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(ValueError):
    """A file that cannot be used as an image; ``reason`` says why in words a person can act on."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class InputSize:
    """How images are sized for the network: about ``area`` pixels, sides multiples of 32.

    The aspect ratio is kept (clamped to 1:3 .. 3:1) because the network is fully convolutional;
    a 16:9 video frame at the default area 224*224 becomes 288x160, not a 224x224 centre crop.
    """

    area: int = 224 * 224

    def for_image(self, width: int, height: int) -> tuple[int, int]:
        """Return ``(width, height)`` for an image of the given size."""
        aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
        target_h = math.sqrt(self.area / aspect)
        target_w = target_h * aspect
        return (_round_to_multiple(target_w), _round_to_multiple(target_h))


def _round_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def _crop_to_aspect(image: Image.Image, target_aspect: float) -> Image.Image:
    """Centre-crop only what exceeds the aspect clamp (panoramas), never ordinary frames."""
    width, height = image.size
    aspect = width / height
    if aspect > target_aspect * 1.02:
        new_w = int(round(height * target_aspect))
        left = (width - new_w) // 2
        return image.crop((left, 0, left + new_w, height))
    if aspect < target_aspect / 1.02:
        new_h = int(round(width / target_aspect))
        top = (height - new_h) // 2
        return image.crop((0, top, width, top + new_h))
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        return Image.fromarray((array / top * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees


def open_image(
    path: str | Path,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fit: InputSize | None = None,
) -> Image.Image:
    """Open, fully load and orient an image as RGB, or raise ``DecodeError`` saying why.

    With ``fit``, a JPEG is decoded in draft mode at the smallest scale that still covers the
    size ``fit`` will resize it to, so the later resize only ever shrinks.
    """
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DecodeError(name, f"cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise DecodeError(name, "is an empty (zero-byte) file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    name,
                    f"is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the limit "
                    f"of {max_pixels / 1e6:.0f} MP (possible decompression bomb); shrink the "
                    "image or raise the max-pixels setting if it is genuine",
                )
            if fit is not None and image.format == "JPEG":
                rotated = image.getexif().get(0x0112) in _SWAPS_AXES
                oriented = (height, width) if rotated else (width, height)
                target_w, target_h = fit.for_image(*oriented)
                image.draft("RGB", (target_h, target_w) if rotated else (target_w, target_h))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except DecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise DecodeError(
            name, "is not an image Pillow can read (unknown or corrupt format)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(name, f"is too large to decode safely ({exc})") from exc
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise DecodeError(name, f"is truncated or incomplete ({text})") from exc
        raise DecodeError(name, f"is corrupt ({text})") from exc
    except (ValueError, SyntaxError, EOFError) as exc:  # Pillow raises these on broken headers
        raise DecodeError(name, f"is corrupt ({exc})") from exc


def load_for_model(
    path: str | Path,
    input_size: InputSize,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Return the image as a ``uint8`` array of shape ``(height, width, 3)`` sized for the model."""
    image = open_image(path, name, max_pixels=max_pixels, fit=input_size)
    target_w, target_h = input_size.for_image(*image.size)
    image = _crop_to_aspect(image, target_w / target_h)
    image = image.resize((target_w, target_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.uint8)
