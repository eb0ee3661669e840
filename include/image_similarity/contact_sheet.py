"""Contact sheets: one image per query showing it beside its matches, with rank, score and name."""

from __future__ import annotations

import logging
import re
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


def safe_file_stem(name: str) -> str:
    """Return a file-system-safe stem for a query name (keeps letters, digits, - _ .)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem, flags=re.UNICODE).strip("._")
    return stem or "query"


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
    """Write one JPEG per query of ``similarity.json`` into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for entry in similarity["queries"]:
        stem = safe_file_stem(entry["query"]["name"])
        # Two queries may differ only in characters the stem drops: keep both sheets.
        candidate, n = stem, 2
        while candidate in used:
            candidate, n = f"{stem}_{n}", n + 1
        used.add(candidate)
        path = out_dir / f"{candidate}.jpg"
        with atomic_file(path) as handle:
            render_contact_sheet(entry["query"], entry["matches"]).save(handle, "JPEG", quality=90)
        written.append(path)
    log.info("wrote %d contact sheets to %s", len(written), out_dir)
    return written
