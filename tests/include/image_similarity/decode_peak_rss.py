"""Peak memory of decoding one huge PNG through the real decode paths, each in a fresh process.

    PYTHONPATH=. .venv/bin/python tests/include/image_similarity/decode_peak_rss.py [--side 9400]
        [--mode RGBA] [--max-pixels 100000000] [--paths model thumbnail sheet known]

writes a PNG of ``side`` x ``side`` pixels that is a few hundred KB on disk (rows of one grey
level compress about 1000:1), then, for each path, decodes it in a new Python process and prints
the peak resident memory (``VmHWM``, else ``ru_maxrss``) and what the decode added to the imports':

- ``model``: ``load_for_model`` (what the embedder runs per image);
- ``thumbnail``: ``open_thumbnail_source`` + ``thumbnail`` (the re-ranker's ``_thumbnails``);
- ``sheet``: ``render_contact_sheet`` of the image alone (one contact-sheet tile);
- ``known``: ``pipeline.check_known_answers`` on a set of four copies (the known-answer check).

``--max-pixels`` raises the pixel limit so an image above the default limit is decoded rather
than refused; without it each path uses its default.
``tests/include/image_similarity/test_decode_memory.py`` runs the same child (``run_child``) to
hold the decode to a memory bound.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
PATHS = ("model", "thumbnail", "sheet", "known")
# PNG colour type, bit depth and samples per pixel of each mode the script can write.
PNG_MODES = {
    "L": (0, 8, 1),
    "I;16": (0, 16, 1),
    "RGB": (2, 8, 3),
    "RGB;16": (2, 16, 3),
    "P": (3, 8, 1),
    "LA": (4, 8, 2),
    "RGBA": (6, 8, 4),
    "RGBA;16": (6, 16, 4),
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, side: int, mode: str = "RGBA", level: int = 9) -> Path:
    """Write a ``side`` x ``side`` PNG row by row (never more than one row in memory).

    ``level`` 1 writes twice as fast and four times larger (1.5 MB at 9,400 x 9,400).
    """
    colour_type, depth, samples = PNG_MODES[mode]
    row_bytes = side * samples * depth // 8
    deflate = zlib.compressobj(level)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, depth, colour_type, 0, 0, 0)))
        if mode == "P":
            out.write(_chunk(b"PLTE", bytes(v for i in range(256) for v in (i, 255 - i, i // 2))))
            out.write(_chunk(b"tRNS", bytes([0]) + bytes([255] * 255)))  # index 0 transparent
        for y in range(side):
            out.write(_chunk(b"IDAT", deflate.compress(b"\0" + bytes([y % 251 + 1]) * row_bytes)))
        out.write(_chunk(b"IDAT", deflate.flush()))
        out.write(_chunk(b"IEND", b""))
    return path


def _peak_mb() -> float:
    """This process's peak resident memory in MB.

    On Linux, ``ru_maxrss`` survives ``exec``: a child started by a large process (pytest with
    TensorFlow loaded) starts at its parent's peak. ``VmHWM`` is the peak of this process's own
    memory, so it is read when the kernel offers it.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KB on Linux


def _child(image: Path, paths: list[str], max_pixels: int | None, batch: Path | None) -> None:
    """Decode ``image`` through ``paths`` in this process; print one JSON line per path."""
    from include.common import images
    from include.common.images import DecodeError, InputSize, load_for_model
    from include.image_similarity import pipeline
    from include.image_similarity.contact_sheet import render_contact_sheet
    from include.image_similarity.rerank import open_thumbnail_source, thumbnail
    from include.image_similarity.settings import DEFAULTS

    if max_pixels:
        # Contact sheets take no limit argument: raise the default, for this process only.
        images.open_image.__kwdefaults__["max_pixels"] = max_pixels
    limit = {"max_pixels": max_pixels} if max_pixels else {}
    run = {
        "model": lambda: (
            load_for_model(image, InputSize(DEFAULTS.embedding.image_area), **limit).shape
        ),
        "thumbnail": lambda: thumbnail(open_thumbnail_source(image, **limit)).shape,
        "sheet": lambda: render_contact_sheet({"name": image.name, "path": str(image)}, []).size,
        "known": lambda: len(pipeline.check_known_answers(batch, **limit)),
    }
    for name in paths:
        before = _peak_mb()
        try:
            outcome = f"ok {run[name]()}"
        except (DecodeError, ValueError) as exc:
            outcome = f"refused: {exc}"
        peak = _peak_mb()
        result = {"path": name, "baseline_mb": before, "peak_mb": peak, "outcome": outcome}
        print(json.dumps(result))


def run_child(
    image: Path, paths: list[str], max_pixels: int | None = None, batch: Path | None = None
) -> list[dict]:
    """Decode ``image`` through ``paths`` in one fresh interpreter; return a dict per path."""
    command = [sys.executable, __file__, "--child", str(image), "--paths", *paths]
    if max_pixels:
        command += ["--max-pixels", str(max_pixels)]
    if batch:
        command += ["--batch", str(batch)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode:
        raise RuntimeError(f"decoding through {paths} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def measure(
    image: Path, paths: list[str], max_pixels: int | None = None, batch: Path | None = None
) -> list[dict]:
    """Run each path in its own fresh interpreter, so no peak hides another's."""
    return [result for name in paths for result in run_child(image, [name], max_pixels, batch)]


def _known_batch(image: Path, work: Path) -> Path:
    """A batch folder whose known-answer set is four hard links to ``image``."""
    from include.image_similarity import pipeline

    known = work / "known"
    known.mkdir()
    for role in ("", "_1st_match", "_2nd_match", "_3rd_match"):
        os.link(image, known / f"known1{role}.png")
    batch = work / "batch"
    pipeline.list_sources(batch, {"dataset": known, "queries": known, "known_answers": known})
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=9400)
    parser.add_argument("--mode", choices=sorted(PNG_MODES), default="RGBA")
    parser.add_argument("--max-pixels", type=int)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.paths, args.max_pixels, args.batch)
        return 0
    with tempfile.TemporaryDirectory(prefix="decode-rss-") as work:
        name = f"huge-{args.mode.replace(';', '')}.png"
        image = write_png(Path(work) / name, args.side, args.mode)
        batch = _known_batch(image, Path(work)) if "known" in args.paths else None
        print(
            f"{args.side}x{args.side} {args.mode} PNG, {image.stat().st_size / 1e3:.0f} KB on "
            f"disk, max_pixels={args.max_pixels or 'default'}"
        )
        for result in measure(image, args.paths, args.max_pixels, batch):
            print(
                f"  {result['path']:<9} peak {result['peak_mb']:7.0f} MB "
                f"(+{result['peak_mb'] - result['baseline_mb']:.0f} MB over imports)  "
                f"{result['outcome'][:110]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
