"""Write aggregated results: ``results.json``, ``results.csv`` and a self-contained ``report.html``.

The report is one HTML file a person can open anywhere: no external CSS, scripts or fonts, every
image embedded as a small JPEG data URI (at most ``THUMBNAIL_PX`` on its longer side). Jinja2
autoescapes everything, so image names such as ``<script>.jpg`` are shown, never run. Workers
appear only under the pseudonyms the results already carry.

The CSV and the report show every aggregation method the results carry (``results["methods"]``,
in that order): the CSV has ``<method>_winner``, ``<method>_tie`` and ``<method>_confidence``
columns for each, the report a line per method on each query and a table of the methods; the
primary method's verdict is the one on top (``winner``, ``tie``, ... and the crowd's choice).

Every file is written to a temporary file in the output folder and renamed over the target, so a
reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from PIL import Image, ImageOps, UnidentifiedImageError

from include.common.files import write_text
from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
THUMBNAIL_PX = 200
JPEG_QUALITY = 82
FILES = {"json": "results.json", "csv": "results.csv", "html": "report.html"}
MIN_RANK_COLUMNS = 3
METHOD_COLUMNS = ("winner", "tie", "confidence")

Thumbnails = Callable[[ImageRef], "bytes | None"]


def write_results(
    results: dict, plans: list[HitPlan], out_dir: Path, *, thumbnails: Thumbnails
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``report.html`` into ``out_dir`` atomically.

    :param results: what ``include.crowd.aggregation.registry.aggregate`` returned.
    :param plans: the HITs' plans, for the images of each query and its candidates.
    :param out_dir: the folder to write (created if missing).
    :param thumbnails: returns an image's bytes (any format Pillow reads), or None when it is
        not available; the report then shows a placeholder.
    :return: ``{"json": path, "csv": path, "html": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Render everything before writing anything: a failure leaves the previous files in place.
    contents = {
        "json": json.dumps(results, indent=2, ensure_ascii=False) + "\n",
        "csv": results_to_csv(results),
        "html": render_report(results, plans, thumbnails=thumbnails),
    }
    paths = {kind: write_text(out_dir / FILES[kind], text) for kind, text in contents.items()}
    log.info(
        "wrote results of %d queries to %s (%s)",
        len(results["queries"]),
        out_dir,
        ", ".join(f"{path.name} {path.stat().st_size:,} B" for path in paths.values()),
    )
    return paths


def csv_columns(results: dict) -> list[str]:
    """The CSV header: one ``votes_rankN`` column per model rank (at least 3), the primary
    method's verdict, then three columns per method, named by the method."""
    ranks = max(
        [MIN_RANK_COLUMNS] + [c["rank"] or 0 for q in results["queries"] for c in q["candidates"]]
    )
    return [
        "query",
        "hit_id",
        "status",
        "winner",
        "tie",
        "confidence",
        *(f"votes_rank{rank}" for rank in range(1, ranks + 1)),
        "votes_none",
        "counted_votes",
        "agrees_with_model",
        "primary_method",
        *(f"{name}_{key}" for name in results["methods"] for key in METHOD_COLUMNS),
    ]


def results_to_csv(results: dict) -> str:
    """One row per query; ties list the tied options joined by ``|``; empty means none/unknown."""
    columns = csv_columns(results)
    buffer = io.StringIO()
    # RFC 4180 line ends: a field holding a lone CR or LF (a file name may) is then quoted.
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    for query in results["queries"]:
        row = {
            "query": query["query"],
            "hit_id": query["hit_id"],
            "status": query["status"],
            "winner": query["winner"],
            "tie": "|".join(query["tie"]),
            "confidence": query["confidence"],
            "votes_none": query["none"]["votes"],
            "counted_votes": query["counted_votes"],
            "agrees_with_model": query["agrees_with_model"],
            "primary_method": results["primary"],
        }
        for name, verdict in query["methods"].items():
            row[f"{name}_winner"] = verdict["winner"]
            row[f"{name}_tie"] = "|".join(verdict["tie"])
            row[f"{name}_confidence"] = verdict["confidence"]
        for column in columns:
            if column.startswith("votes_rank"):
                rank = int(column.removeprefix("votes_rank"))
                row[column] = next(
                    (c["votes"] for c in query["candidates"] if c["rank"] == rank), None
                )
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    return buffer.getvalue()


# A spreadsheet evaluates a cell that starts with one of these as a formula (CSV injection):
# such text cells get a leading apostrophe, which spreadsheets show as plain text (OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def thumbnail_data_uri(data: bytes | None, size: int = THUMBNAIL_PX) -> str | None:
    """A ``data:image/jpeg;base64,...`` URI of the image scaled to fit ``size`` px, or None
    when there are no bytes or Pillow cannot read them."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                background = Image.new("RGB", image.size, "white")
                background.paste(image, mask=image.getchannel("A"))
                image = background
            image = image.convert("RGB")
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        log.warning("cannot make a thumbnail (%s); the report shows a placeholder", error)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_report(results: dict, plans: list[HitPlan], *, thumbnails: Thumbnails) -> str:
    """Render ``report.html`` (see the module docstring) and return it."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["percent"] = _percent
    cache: dict[str, str | None] = {}

    def image(ref: ImageRef | None) -> str | None:
        if ref is None:
            return None
        key = ref.sha256 or ref.name
        if key not in cache:
            cache[key] = thumbnail_data_uri(thumbnails(ref))
        return cache[key]

    plan_by_query = {(plan.query.name, plan.hit_id): plan for plan in plans}
    queries = [
        _query_view(query, plan_by_query.get((query["query"], query["hit_id"])), image, results)
        for query in results["queries"]
    ]
    missing = sum(1 for uri in cache.values() if uri is None)
    if missing:
        log.warning("%d of %d images have no thumbnail in the report", missing, len(cache))
    summary = results["summary"]
    methods = [
        {**about, "name": name, "primary": name == results["primary"], **summary["methods"][name]}
        for name, about in results["methods"].items()
    ]
    return environment.get_template("report.html").render(
        results=results, summary=summary, queries=queries, methods=methods
    )


def _query_view(
    query: dict,
    plan: HitPlan | None,
    image: Callable[[ImageRef | None], str | None],
    results: dict,
) -> dict[str, Any]:
    refs = {o.image.name: o.image for o in plan.model.options if o.image} if plan else {}
    methods = [
        {
            **verdict,
            "name": name,
            "title": results["methods"][name]["title"],
            "reads": results["methods"][name]["reads"],
            "primary": name == results["primary"],
            "winner_label": _label(verdict["winner"]),
            "display_tie": [_label(name) for name in verdict["tie"]],
        }
        for name, verdict in query["methods"].items()
    ]
    tiles = [
        {
            **candidate,
            "label": candidate["name"],
            "image": image(refs.get(candidate["name"])),
            "is_none": False,
        }
        for candidate in query["candidates"]
    ]
    tiles.append(
        {
            "name": NONE_OF_THESE,
            "label": "None of these",
            "rank": None,
            "score": None,
            "image": None,
            "is_none": True,
            **query["none"],
        }
    )
    for tile in tiles:
        tile["winner"] = tile["name"] == query["winner"]
        tile["tied"] = tile["name"] in query["tie"]
        # The primary method's pick is the tile's colour; the others' picks are marked on it.
        tile["picks"] = [
            {"title": m["title"], "confidence": m["confidence"]}
            for m in methods
            if not m["primary"] and m["winner"] == tile["name"]
        ]
        tile["bar"] = round(100 * (tile["share"] or 0), 1)
    return {
        **query,
        "image": image(plan.query if plan else None),
        "tiles": tiles,
        "methods": methods,
        "display_tie": [_label(name) for name in query["tie"]],
        "winner_label": _label(query["winner"]),
    }


def _label(name: str | None) -> str | None:
    return "None of these" if name == NONE_OF_THESE else name


def _percent(share: float | None, digits: int = 0) -> str:
    return "–" if share is None else f"{100 * share:.{digits}f} %"
