"""Small real images made on the fly for tests (no third-party files are committed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def textured(width: int = 320, height: int = 180, seed: int = 0) -> Image.Image:
    """A smooth random colour texture: different seeds give clearly different pictures."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write a corrupt, a truncated and a zero-byte JPEG and a text file; return name→kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(textured(seed=99))
    noise = np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8).tobytes()
    (folder / "corrupt.jpg").write_bytes(good[:2] + noise + good[302:])  # scrambled headers
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    return {
        "corrupt.jpg": "corrupt",
        "truncated.jpg": "truncated",
        "empty.jpg": "zero-byte",
        "notes.txt": "not an image",
    }
