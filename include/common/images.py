"""Decode image files into RGB arrays sized for the network, reporting bad files instead of failing.

Every file goes through Pillow with the EXIF orientation applied and any mode (CMYK, palette,
greyscale, 16-bit, alpha) converted to RGB; alpha is composited on white so transparent areas look
as a person sees them. Any file may be hostile, so a decode is bounded:

- only a regular file is opened (a FIFO or a device would block or never end), and a file above
  ``image_files.MAX_FILE_BYTES`` is refused unread;
- only the formats of ``image_files.IMAGE_EXTENSIONS`` are tried (whatever the extension says), so a
  ".jpg" that is really PostScript never reaches Ghostscript;
- a picture above ``max_pixels`` is refused from its header, before any pixel is decoded;
- with ``fit`` (the model input, re-ranking thumbnails, contact sheets, the known-answer check),
  a large JPEG is decoded in draft mode, which lets libjpeg decode at 1/2, 1/4 or 1/8 scale
  directly (a 1280x720 frame needed at 288x160 is decoded at 320x180, several times faster), and
  any other picture is shrunk by a whole factor right after decoding, strip by strip, before any
  conversion: one full-size copy in the file's own mode is all a decode holds (libwebp holds
  more, so a WebP counts 4 times its pixels against the limit);
- only the first frame of an animated GIF, WebP or PNG, or the first page of a TIFF, is read.
"""

from __future__ import annotations

import functools
import math
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from include.common.image_files import (
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    NotARegularFile,
    describe_file_type,
    open_regular_file,
)

# A decode holds one full-size copy of the picture before it can be shrunk (PNG, WebP, GIF, TIFF
# and BMP cannot be decoded at a reduced size), at up to 4 bytes a pixel whatever the colour mode
# (Pillow stores RGB as RGBX; a progressive JPEG's coefficients take about 3). 50 MP, more than
# phones and most cameras give, bounds one decode near 200 MB above the process, and the
# embedder's two decode threads near 400 MB; a larger picture is refused by name as a possible
# decompression bomb. Above 89 MP Pillow's own check refuses it too, whatever this limit is.
DEFAULT_MAX_PIXELS = 50_000_000
# Formats whose decoder holds more than one 4-byte copy, counted as that many pixels against the
# limit: libwebp keeps two canvases and Pillow a copy of its output besides the picture.
_PIXEL_COST = {"WEBP": 4}
SIZE_MULTIPLE = 32
MAX_ASPECT = 3.0
# As Image.resize's reducing_gap: a picture is shrunk by a whole factor only while it stays at
# least twice the size it will be resized to, so the final resize still filters properly.
REDUCING_GAP = 2.0
_STRIP_PIXELS = 1 << 20  # pixels converted at a time while shrinking: 4 MB at 4 bytes a pixel
_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that shows the picture upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees
_DEEP_GREY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

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
    a 16:9 video frame at an area of 224*224 becomes 288x160, not a 224x224 centre crop. The area
    has no default here: the similarity stage's settings hold it (``image_area``).
    """

    area: int

    def for_image(self, width: int, height: int) -> tuple[int, int]:
        """Return ``(width, height)`` for an image of the given size."""
        aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
        target_h = math.sqrt(self.area / aspect)
        target_w = target_h * aspect
        return (_round_to_multiple(target_w), _round_to_multiple(target_h))


@dataclass(frozen=True)
class FitInside:
    """How a thumbnail is sized: as large as fits inside ``width`` x ``height``, aspect kept."""

    width: int
    height: int

    def for_image(self, width: int, height: int) -> tuple[int, int]:
        """Return ``(width, height)`` for an image of the given size (never enlarged)."""
        scale = min(self.width / width, self.height / height, 1.0)
        return (max(1, round(width * scale)), max(1, round(height * scale)))


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


def to_rgb(image: Image.Image, brightest: float | None = None) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white.

    16- and 32-bit greyscale is stretched so that ``brightest`` (by default the image's brightest
    pixel) becomes 255: 16-bit scans are often dark in 8 bits.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in _DEEP_GREY:
        array = np.asarray(image, dtype=np.float32)
        top = float(array.max() if brightest is None else brightest) or 1.0
        grey = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


@functools.cache
def _formats() -> tuple[str, ...]:
    """Pillow's formats for ``IMAGE_EXTENSIONS`` (JPEG's also opens MPO, a camera's JPEG)."""
    by_extension = Image.registered_extensions()
    return tuple(sorted({by_extension[ext] for ext in IMAGE_EXTENSIONS if ext in by_extension}))


def _formats_text() -> str:
    return ", ".join("WebP" if f == "WEBP" else f for f in _formats())


def open_image(
    path: str | Path,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fit: InputSize | FitInside | None = None,
) -> Image.Image:
    """Open, fully load and orient an image as RGB, or raise ``DecodeError`` saying why.

    With ``fit``, a large picture comes back smaller, but never smaller than the size ``fit``
    will resize it to, so the later resize only ever shrinks: a JPEG is decoded in draft mode,
    any other picture shrunk by a whole factor while it stays REDUCING_GAP times that size.
    Without ``fit`` it comes back at full size (and a decode may hold two or three copies).
    """
    path = Path(path)
    name = name or path.name
    try:
        info = path.stat()
    except OSError as exc:
        raise DecodeError(name, f"cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        kind = describe_file_type(info.st_mode)
        raise DecodeError(name, f"is {kind}, not a regular file; it was not opened")
    if info.st_size == 0:
        raise DecodeError(name, "is an empty (zero-byte) file")
    if info.st_size > MAX_FILE_BYTES:
        raise DecodeError(
            name,
            f"is {info.st_size / 2**20:,.0f} MB, above the {MAX_FILE_BYTES / 2**20:.0f} MB "
            "limit for an image file (possible decompression bomb); it was not read",
        )
    try:
        handle = open_regular_file(path)
    except NotARegularFile as exc:
        raise DecodeError(name, f"{exc.strerror}, not a regular file (it was replaced)") from exc
    except OSError as exc:
        raise DecodeError(name, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        with handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(Image.open(handle, formats=_formats()), name, max_pixels, fit)
    except DecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise DecodeError(
            name,
            f"is not an image this tool reads ({_formats_text()}), or its header is corrupt",
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(name, f"is too large to decode safely ({exc})") from exc
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise DecodeError(name, f"is truncated or incomplete ({text})") from exc
        raise DecodeError(name, f"is corrupt ({text})") from exc
    # Pillow raises these on broken headers and EXIF blocks.
    except (ValueError, SyntaxError, EOFError, struct.error, IndexError) as exc:
        raise DecodeError(name, f"is corrupt ({exc})") from exc


def _decode(
    image: Image.Image, name: str, max_pixels: int, fit: InputSize | FitInside | None
) -> Image.Image:
    width, height = image.size
    cost = _PIXEL_COST.get(image.format, 1)
    if width * height * cost > max_pixels:
        limit = f"{max_pixels / cost / 1e6:.3g} MP"
        if cost > 1:  # say why a smaller picture than the setting says is refused
            limit += f" for {image.format}, which takes {cost}x the memory of others to decode,"
        raise DecodeError(
            name,
            f"is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the limit "
            f"of {limit} (possible decompression bomb); shrink the image or raise the "
            "max-pixels setting if it is genuine",
        )
    if fit is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
        rotated = image.getexif().get(_ORIENTATION) in _SWAPS_AXES
        target_w, target_h = fit.for_image(*((height, width) if rotated else (width, height)))
        image.draft("RGB", (target_h, target_w) if rotated else (target_w, target_h))
    image.load()
    # Read after loading: a PNG may carry its EXIF block after the pixels.
    orientation = image.getexif().get(_ORIENTATION)
    # Deep greyscale is stretched by the brightest pixel of the whole picture, not of the shrunk
    # one, so shrinking does not change how it looks.
    brightest = image.getextrema()[1] if image.mode in _DEEP_GREY else None
    if fit is not None:
        width, height = image.size
        rotated = orientation in _SWAPS_AXES
        target_w, target_h = fit.for_image(*((height, width) if rotated else (width, height)))
        image = _shrink(image, (target_h, target_w) if rotated else (target_w, target_h))
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    return to_rgb(image, brightest)


# Modes Image.reduce handles without copying the picture first.
_REDUCED_IN_PLACE = frozenset({"L", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"})
# Alpha is averaged premultiplied (as Image.reduce does), so a transparent pixel's colour counts
# for nothing; converted back once the picture is small.
_UNPREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}


def _shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Reduce a loaded picture by the largest whole factor keeping it REDUCING_GAP x ``size``.

    Pictures with alpha, a palette or 16-bit pixels are reduced strip by strip, each strip
    converted on its own, so no second full-size copy is ever made: converting the whole picture
    would make one, and so does ``Image.reduce`` for RGBA (it premultiplies a full copy).
    """
    width, height = image.size
    factor = int(min(width / size[0], height / size[1]) / REDUCING_GAP)
    if factor < 2:
        return image
    if image.mode in _REDUCED_IN_PLACE:
        return image.reduce(factor)
    rows = factor * max(1, _STRIP_PIXELS // (width * factor))
    reduced = None
    for top in range(0, height, rows):
        strip = _reducible(image.crop((0, top, width, min(height, top + rows)))).reduce(factor)
        if reduced is None:
            shape = (math.ceil(width / factor), math.ceil(height / factor))
            reduced = Image.new(strip.mode, shape)
        reduced.paste(strip, (0, top // factor))
    if reduced.mode in _UNPREMULTIPLIED:
        reduced = reduced.convert(_UNPREMULTIPLIED[reduced.mode])
    return reduced


def _reducible(strip: Image.Image) -> Image.Image:
    """Return a strip in a mode Image.reduce averages correctly, keeping alpha and depth."""
    if strip.mode == "P":
        strip = strip.convert("RGBA" if "transparency" in strip.info else "RGB")
    elif strip.mode == "PA":
        strip = strip.convert("RGBA")
    if strip.mode in ("RGBA", "LA"):
        return strip.convert(strip.mode[:-1] + "a")
    if strip.mode.startswith("I;16"):
        return strip.convert("I")
    return strip if strip.mode in _REDUCED_IN_PLACE else strip.convert("RGB")


def load_for_model(
    path: str | Path,
    input_size: InputSize,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Return the image as a ``uint8`` array of shape ``(height, width, 3)`` sized for the model."""
    return model_array(open_image(path, name, max_pixels=max_pixels, fit=input_size), input_size)


def model_array(image: Image.Image, input_size: InputSize) -> np.ndarray:
    """An image ``open_image(fit=input_size)`` opened, as the model's ``uint8`` input array."""
    target_w, target_h = input_size.for_image(*image.size)
    image = _crop_to_aspect(image, target_w / target_h)
    image = image.resize((target_w, target_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.uint8)
