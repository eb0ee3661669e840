"""Contact sheets: one image per query showing it beside its matches, with rank, score and name.

A query's sheet is ``<query stem>.sheet.jpg`` (``q1.jpg`` → ``q1.sheet.jpg``): never the name of
the query itself, so a sheet cannot overwrite or pass for an image of the run. See
:func:`sheet_file_names` for queries that share a stem.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from include.common.files import atomic_file
from include.common.images import DecodeError, FitInside, open_image

log = logging.getLogger(__name__)

TILE = (320, 240)
CAPTION_HEIGHT = 54
MARGIN = 12
BACKGROUND = (245, 245, 245)
QUERY_FRAME = (33, 102, 172)
MATCH_FRAME = (120, 120, 120)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow built without FreeType: the bitmap font still works
        return ImageFont.load_default()


def _fit(name: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    if draw.textlength(name, font=font) <= width:
        return name
    while name and draw.textlength(name + "…", font=font) > width:
        name = name[:-1]
    return name + "…"


def _tile(path: Path, name: str) -> Image.Image:
    try:
        image = open_image(path, name, fit=FitInside(*TILE))  # never decoded at full size
    except DecodeError as exc:
        log.warning("contact sheet: %s", exc)
        return Image.new("RGB", TILE, (200, 200, 200))
    image.thumbnail(TILE, Image.Resampling.LANCZOS)
    tile = Image.new("RGB", TILE, BACKGROUND)
    tile.paste(image, ((TILE[0] - image.width) // 2, (TILE[1] - image.height) // 2))
    return tile


SHEET_SUFFIX = ".sheet.jpg"


def _file_system_safe(text: str) -> str:
    """Keep letters, digits, ``-``, ``_`` and ``.``; anything else becomes ``_``."""
    return re.sub(r"[^\w.-]+", "_", text, flags=re.UNICODE).strip("._") or "query"


def safe_file_stem(name: str) -> str:
    """Return a file-system-safe stem for a query name (keeps letters, digits, - _ .)."""
    return _file_system_safe(Path(name).stem)


def sheet_file_names(query_names: list[str]) -> list[str]:
    """Return the contact sheet file name of each query, in the order given.

    A sheet is ``<query stem>.sheet.jpg``. Queries whose stems coincide (``q1.jpg`` and
    ``q1.png``; letter case aside, for case-insensitive file systems) are each named after their
    whole file name instead (``q1.jpg.sheet.jpg``, ``q1.png.sheet.jpg``). Names that still
    coincide once made file-system-safe (``a b.jpg`` and ``a_b.jpg``) get ``_2``, ``_3``... in
    the order of the query names. The names depend on the set of queries, not on their order.
    """
    stems = [safe_file_stem(name) for name in query_names]
    shared = {stem for stem, n in Counter(s.casefold() for s in stems).items() if n > 1}
    bases = [
        _file_system_safe(name) if stem.casefold() in shared else stem
        for name, stem in zip(query_names, stems, strict=True)
    ]
    reserved = {base.casefold() for base in bases}
    names: list[str] = [""] * len(query_names)
    used: set[str] = set()
    for i in sorted(range(len(query_names)), key=lambda i: (query_names[i], i)):
        candidate, n = bases[i], 2
        while candidate.casefold() in used or (
            candidate != bases[i] and candidate.casefold() in reserved
        ):
            candidate, n = f"{bases[i]}_{n}", n + 1
        used.add(candidate.casefold())
        names[i] = candidate + SHEET_SUFFIX
    return names


def render_contact_sheet(query: dict, matches: list[dict]) -> Image.Image:
    """Draw ``query`` (name, path) left of its ``matches`` (rank, name, path, score)."""
    columns = 1 + max(len(matches), 1)
    width = MARGIN + columns * (TILE[0] + MARGIN)
    height = MARGIN + TILE[1] + CAPTION_HEIGHT + MARGIN
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = _font(18), _font(14)
    cells = [(query, "query", QUERY_FRAME)] + [
        (m, f"#{m['rank']}  cosine {m['score']:.3f}", MATCH_FRAME) for m in matches
    ]
    for column, (item, title, colour) in enumerate(cells):
        x = MARGIN + column * (TILE[0] + MARGIN)
        sheet.paste(_tile(Path(item["path"]), item["name"]), (x, MARGIN))
        draw.rectangle(
            (x - 2, MARGIN - 2, x + TILE[0] + 1, MARGIN + TILE[1] + 1), outline=colour, width=3
        )
        draw.text((x, MARGIN + TILE[1] + 6), title, fill=colour, font=big)
        draw.text(
            (x, MARGIN + TILE[1] + 30),
            _fit(item["name"], draw, small, TILE[0]),
            fill=(60, 60, 60),
            font=small,
        )
    if not matches:
        x = MARGIN + TILE[0] + MARGIN
        draw.text((x, MARGIN + TILE[1] // 2), "no match", fill=(150, 0, 0), font=big)
    return sheet


def write_contact_sheets(similarity: dict, out_dir: Path) -> list[Path]:
    """Write one JPEG per query of ``similarity.json`` into ``out_dir`` (named by
    :func:`sheet_file_names`); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = similarity["queries"]
    written = []
    file_names = sheet_file_names([entry["query"]["name"] for entry in entries])
    for entry, file_name in zip(entries, file_names, strict=True):
        path = out_dir / file_name
        with atomic_file(path) as handle:
            render_contact_sheet(entry["query"], entry["matches"]).save(handle, "JPEG", quality=90)
        written.append(path)
    log.info("wrote %d contact sheets to %s", len(written), out_dir)
    return written
