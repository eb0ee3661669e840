"""Results files and the HTML report: CSV columns, escaping, no worker ids, embedded images,
well-formed HTML, atomic writes, and the report as Chromium draws it.

The browser test saves ``.artifacts/report/report.png`` (git-ignored) for a person to look at;
it uses the ``browser`` fixture of tests/conftest.py (Debian's Chromium, no browser download).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from include.crowd import report
from include.crowd.aggregation.registry import aggregate
from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef, Review
from include.crowd.report import results_to_csv, thumbnail_data_uri, write_results
from testsupport.crowd_answers import make_plan, make_review
from testsupport.imagekit import jpeg_bytes, textured

ARTIFACTS = Path(__file__).resolve().parents[3] / ".artifacts" / "report"
EVIL = '<script>alert("x")</script>&.jpg'
WORKER_PREFIX = "A9SECRETWORKER"
NOW = "2026-01-02T03:04:05Z"


def photo(name: str, box: tuple[int, int, int, int]) -> Image.Image:
    """A crop of one of scikit-image's bundled photographs (offline)."""
    from skimage import data

    return Image.fromarray(getattr(data, name)()).crop(box)


def sample_batch() -> tuple[list[HitPlan], list[Review], dict[str, bytes | None]]:
    """Five queries covering every case the report shows: agreement, disagreement, a tie with
    an escaped name, no answers yet, a missing and an unreadable thumbnail, invalid answers."""
    images: dict[str, bytes | None] = {
        "coffee_q.jpg": jpeg_bytes(photo("coffee", (40, 20, 560, 380))),
        "frame_0012.jpg": jpeg_bytes(photo("coffee", (0, 0, 600, 400))),
        "frame_0013.jpg": jpeg_bytes(photo("coffee", (100, 60, 520, 400))),
        "frame_0107.jpg": jpeg_bytes(photo("chelsea", (0, 0, 451, 300))),
        "rocket_q.jpg": jpeg_bytes(photo("rocket", (120, 0, 520, 427))),
        "frame_0301.jpg": jpeg_bytes(photo("astronaut", (0, 0, 512, 512))),
        "frame_0302.jpg": jpeg_bytes(photo("rocket", (0, 0, 640, 427))),
        "frame_0303.jpg": jpeg_bytes(textured(320, 200, seed=3)),
        EVIL: jpeg_bytes(photo("chelsea", (60, 20, 400, 280))),
        "frame_0400.jpg": jpeg_bytes(photo("chelsea", (0, 0, 451, 300))),
        "frame_0401.jpg": jpeg_bytes(textured(300, 300, seed=5)),
        "frame_0402.jpg": None,  # not found: a placeholder
        "astronaut_q.jpg": jpeg_bytes(photo("astronaut", (100, 0, 420, 300))),
        "frame_0500.jpg": jpeg_bytes(photo("astronaut", (0, 0, 512, 512))),
        "frame_0501.jpg": b"not an image",  # unreadable: a placeholder
        "frame_0502.jpg": jpeg_bytes(textured(seed=8)),
        "waiting_q.jpg": jpeg_bytes(textured(seed=9)),
    }
    coffee = make_plan(
        "coffee_q.jpg",
        ["frame_0012.jpg", "frame_0013.jpg", "frame_0107.jpg"],
        hit_id="3HITCOFFEE",
        order=(2, 3, 1),
        gold_correct=2,
    )
    rocket = make_plan(
        "rocket_q.jpg",
        ["frame_0301.jpg", "frame_0302.jpg", "frame_0303.jpg"],
        hit_id="3HITROCKET",
        order=(1, 3, 2),
        gold_correct=1,
    )
    cat = make_plan(
        EVIL,
        ["frame_0400.jpg", "frame_0401.jpg", "frame_0402.jpg"],
        hit_id="3HITCAT",
        gold_correct=3,
    )
    astronaut = make_plan(
        "astronaut_q.jpg",
        ["frame_0500.jpg", "frame_0501.jpg", "frame_0502.jpg"],
        hit_id="3HITASTRO",
        order=(3, 2, 1),
        gold_correct=3,
    )
    waiting = make_plan(
        "waiting_q.jpg", ["frame_0500.jpg", "frame_0303.jpg", "frame_0013.jpg"], hit_id=None
    )

    def worker(n: int) -> str:
        return f"{WORKER_PREFIX}{n:02d}"

    reviews = [make_review(coffee, worker(i), "frame_0012.jpg") for i in range(4)]
    reviews.append(make_review(coffee, worker(4), "frame_0013.jpg"))
    reviews += [make_review(rocket, worker(i), "frame_0302.jpg") for i in range(3)]
    reviews.append(make_review(rocket, worker(5), "frame_0301.jpg", gold_ok=False))
    reviews += [
        make_review(cat, worker(0), "frame_0400.jpg"),
        make_review(cat, worker(1), NONE_OF_THESE),
        make_review(cat, worker(2), "frame_0401.jpg", gold_ok=False),
        make_review(
            cat,
            worker(6),
            "frame_0400.jpg",
            valid=False,
            problems=("missing answer for <b>q2</b>",),
        ),
    ]
    return [coffee, rocket, cat, astronaut, waiting], reviews, images


@pytest.fixture(scope="module")
def sample() -> tuple[dict, list[HitPlan], dict[str, bytes | None]]:
    plans, reviews, images = sample_batch()
    spent = {"rewards": 260, "bonuses": 110, "fees": 74}
    return aggregate(plans, reviews, spent=spent, computed_at=NOW), plans, images


def thumbnails_from(images: dict[str, bytes | None]):
    def thumbnails(ref: ImageRef) -> bytes | None:
        return images.get(ref.name)

    return thumbnails


@pytest.fixture(scope="module")
def written(sample, tmp_path_factory) -> dict[str, Path]:
    results, plans, images = sample
    out = tmp_path_factory.mktemp("results")
    return write_results(results, plans, out, thumbnails=thumbnails_from(images))


VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())


class Page(HTMLParser):
    """Reads a page with html.parser: tag counts, images, text, and nesting errors."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter = Counter()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.stack: list[str] = []
        self.feed(html)
        self.close()
        self.errors += [f"unclosed <{tag}>" for tag in self.stack]

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_write_results_writes_three_files_and_no_temporaries(written, sample):
    results, _, _ = sample
    folder = written["html"].parent

    assert {kind: path.name for kind, path in written.items()} == {
        "json": "results.json",
        "csv": "results.csv",
        "html": "report.html",
    }
    assert sorted(p.name for p in folder.iterdir()) == [
        "report.html",
        "results.csv",
        "results.json",
    ]
    assert json.loads(written["json"].read_text(encoding="utf-8")) == results


def test_csv_has_one_row_per_query_with_rank_columns(sample):
    results, _, _ = sample

    rows = list(csv.DictReader(io.StringIO(results_to_csv(results))))

    assert list(rows[0]) == [
        "query", "hit_id", "status", "winner", "tie", "confidence",
        "votes_rank1", "votes_rank2", "votes_rank3", "votes_none", "counted_votes",
        "agrees_with_model", "primary_method",
        "majority_winner", "majority_tie", "majority_confidence",
        "dawid_skene_winner", "dawid_skene_tie", "dawid_skene_confidence",
        "wawa_winner", "wawa_tie", "wawa_confidence",
        "gold_skill_winner", "gold_skill_tie", "gold_skill_confidence",
    ]  # fmt: skip
    by_query = {row["query"]: row for row in rows}
    assert len(rows) == 5
    coffee = by_query["coffee_q.jpg"]
    assert coffee["winner"] == "frame_0012.jpg"
    assert (coffee["confidence"], coffee["agrees_with_model"]) == ("0.8", "true")
    votes = [coffee[f"votes_rank{r}"] for r in (1, 2, 3)] + [coffee["votes_none"]]
    assert votes == ["4", "1", "0", "0"]
    assert by_query["rocket_q.jpg"]["agrees_with_model"] == "false"
    assert by_query["rocket_q.jpg"]["votes_rank2"] == "3"  # the gold-failed vote is not there
    cat = by_query[EVIL]
    assert (cat["status"], cat["winner"]) == ("tie", "")
    assert cat["tie"] == f"frame_0400.jpg|{NONE_OF_THESE}"
    assert cat["agrees_with_model"] == ""
    waiting = by_query["waiting_q.jpg"]
    assert (waiting["status"], waiting["hit_id"], waiting["votes_rank1"]) == ("no votes", "", "0")
    assert float(coffee["dawid_skene_confidence"]) > 0.5
    assert coffee["dawid_skene_winner"] == "frame_0012.jpg"
    assert {row["primary_method"] for row in rows} == {"majority"}
    for row in rows:  # the top-level verdict is the primary method's
        assert [row[k] for k in ("winner", "tie", "confidence")] == [
            row[f"majority_{k}"] for k in ("winner", "tie", "confidence")
        ]


def test_report_escapes_names_and_runs_no_script(written):
    html = written["html"].read_text(encoding="utf-8")
    page = Page(html)

    assert page.tags["script"] == 0
    assert "<script>alert" not in html and "<b>q2</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;.jpg" in html
    assert EVIL in "".join(page.text)  # shown to the reader as written
    assert any(img.get("alt") == f"query {EVIL}" for img in page.images)


def test_no_worker_ids_in_any_file(written):
    for path in written.values():
        assert WORKER_PREFIX not in path.read_text(encoding="utf-8"), path.name
    assert "worker 1" in written["html"].read_text(encoding="utf-8")


def test_report_is_self_contained_with_small_embedded_jpegs(written):
    page = Page(written["html"].read_text(encoding="utf-8"))

    assert page.tags["link"] == 0
    assert all(url.startswith("data:image/jpeg;base64,") for url in page.urls), page.urls
    # 5 queries (one of them without answers) + 15 candidate tiles, less 2 without a picture.
    assert len(page.images) == 5 + 15 - 2
    for img in page.images:
        data = base64.b64decode(img["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "JPEG"
            assert max(thumb.size) <= report.THUMBNAIL_PX
    assert "".join(page.text).count("no image") == 2
    html = written["html"].read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "@import" not in html


def test_report_shows_status_of_each_query(written):
    text = " ".join(" ".join(Page(written["html"].read_text(encoding="utf-8")).text).split())

    assert "crowd: frame_0012.jpg · 80 %" in text
    assert "tie: frame_0400.jpg / None of these" in text
    assert text.count("no counted votes yet") == 2
    assert "differs from model" in text and "agrees with model" in text
    assert "$4.44" in text and "rewards $2.60" in text
    assert "missing answer for <b>q2</b> (×1)" in text


def page_text(html: str) -> str:
    return " ".join(" ".join(Page(html).text).split())


def test_a_third_method_appears_in_json_csv_and_report(written):
    results = json.loads(written["json"].read_text(encoding="utf-8"))
    rows = {r["query"]: r for r in csv.DictReader(io.StringIO(written["csv"].read_text()))}
    html = written["html"].read_text(encoding="utf-8")
    text = page_text(html)

    assert results["methods"]["wawa"]["title"] == "Wawa"
    coffee = next(q for q in results["queries"] if q["query"] == "coffee_q.jpg")
    assert coffee["methods"]["wawa"]["winner"] == "frame_0012.jpg"
    assert rows["coffee_q.jpg"]["wawa_winner"] == "frame_0012.jpg"
    assert rows["coffee_q.jpg"]["wawa_confidence"] == "1.0"  # the dissenter never agrees
    assert rows[EVIL]["wawa_tie"] == f"frame_0400.jpg|{NONE_OF_THESE}"
    assert "Wawa: frame_0012.jpg (100 %)" in text
    assert "Wawa: tie frame_0400.jpg / None of these" in text
    assert text.count("Wawa pick · 100 %") == 2  # coffee and rocket
    assert text.count("Wawa: no counted votes") == 2
    assert "agrees with Wawa" in text
    assert "<td>Wawa</td>" in html  # a row of the methods table, not the primary
    assert "<strong>Wawa</strong>: The counted votes again, each weighted" in html


def test_the_report_marks_the_primary_method_and_follows_it(sample):
    results, plans, images = sample
    by_ds = aggregate(*sample_batch()[:2], computed_at=NOW, primary="dawid_skene")

    default = page_text(report.render_report(results, plans, thumbnails=thumbnails_from(images)))
    html = report.render_report(by_ds, plans, thumbnails=thumbnails_from(images))
    text = page_text(html)
    rows = {r["query"]: r for r in csv.DictReader(io.StringIO(results_to_csv(by_ds)))}

    assert "Majority vote (primary):" in default and "Dawid-Skene (primary)" not in default
    assert "Majority vote: rank 1 chosen in 1 of 2 decided · Dawid-Skene 1 of 3" in default
    assert '<td>Dawid-Skene<span class="pill primary">primary</span></td>' in html
    assert "Dawid-Skene (primary): None of these (100 %)" in text
    assert "crowd: None of these · 100 %" in text  # Dawid-Skene decides the tied query
    assert "tie: frame_0400.jpg / None of these" not in text
    assert "Majority vote: tie frame_0400.jpg / None of these" in text
    assert "Majority vote pick · 80 %" in text  # the majority's pick, marked on its tile
    assert "Dawid-Skene: rank 1 chosen in 1 of 3 decided · Majority vote 1 of 2" in text
    assert {r["primary_method"] for r in rows.values()} == {"dawid_skene"}
    assert (rows[EVIL]["winner"], rows[EVIL]["tie"]) == (NONE_OF_THESE, "")
    assert rows[EVIL]["majority_tie"] == f"frame_0400.jpg|{NONE_OF_THESE}"


def test_report_is_well_formed_html(written):
    html = written["html"].read_text(encoding="utf-8")
    page = Page(html)

    assert html.startswith("<!DOCTYPE html>")
    assert page.errors == []
    assert page.tags["html"] == page.tags["head"] == page.tags["body"] == page.tags["title"] == 1
    assert page.tags["article"] == 5


def test_thumbnail_handles_transparency_and_rejects_garbage():
    rgba = Image.new("RGBA", (640, 320), (255, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")

    uri = thumbnail_data_uri(buffer.getvalue())

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.size == (200, 100)
        assert np.asarray(thumb.convert("RGB"))[50, 100].tolist() == pytest.approx(
            [255, 255, 255], abs=3
        )  # transparent → white, not black
    assert thumbnail_data_uri(None) is None
    assert thumbnail_data_uri(b"\xff\xd8 truncated") is None


def test_failed_render_keeps_previous_files_and_leaves_no_temporaries(sample, tmp_path):
    results, plans, images = sample
    write_results(results, plans, tmp_path, thumbnails=thumbnails_from(images))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(ref: ImageRef) -> bytes | None:
        raise ConnectionError("object store unreachable")

    changed = {**results, "computed_at": "later"}
    with pytest.raises(ConnectionError):
        write_results(changed, plans, tmp_path, thumbnails=broken)

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_report_in_chromium(written, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(written["html"], ARTIFACTS / "report.html")
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.on("request", lambda request: requests.append(request.url))
        page.goto(written["html"].as_uri())
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        broken = page.eval_on_selector_all(
            "img", "imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0).length"
        )
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        winners = page.locator(".tile.winner .name").all_inner_texts()
        picks = page.locator(".tile .pick").all_inner_texts()
        tied = page.locator(".tile.tied .name").all_inner_texts()
        page.set_viewport_size({"width": 420, "height": 900})
        narrow_overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        page.screenshot(path=str(ARTIFACTS / "report-narrow.png"), full_page=True)
    finally:
        page.close()

    assert broken == 0
    assert overflow <= 0 and narrow_overflow <= 0  # nothing sticks out, on a phone either
    assert winners == ["frame_0012.jpg", "frame_0302.jpg"]
    assert tied == ["frame_0400.jpg", "None of these"]
    assert sorted(picks) == sorted(
        ["Dawid-Skene pick · 100 %"] * 3
        + ["Wawa pick · 100 %"] * 2
        + ["Gold-anchored posterior pick · 100 %"] * 2
    )  # coffee and rocket: all three; the tied query: Dawid-Skene's "None of these"
    assert all(url.startswith(("file://", "data:")) for url in requests), requests


def test_csv_cells_a_spreadsheet_would_evaluate_are_neutralised(sample):
    results, _, _ = sample
    hostile = ["=HYPERLINK(\"http://x\",\"y\").jpg", "+1+1.png", "-2.jpg", "@SUM(A1).jpg",
               "\tTAB.jpg", "\rCR.jpg"]  # fmt: skip
    for name in hostile:
        results["queries"][0]["query"] = name
        results["queries"][0]["winner"] = name
        results["queries"][1]["query"] = "plain=name.jpg"

        rows = list(csv.DictReader(io.StringIO(results_to_csv(results), newline="")))

        assert rows[0]["query"] == "'" + name and rows[0]["winner"] == "'" + name
        assert rows[1]["query"] == "plain=name.jpg"  # only a leading character is dangerous
        assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())


def test_too_fast_assignments_are_counted_apart_and_workers_show_their_median_time():
    plans, reviews, images = sample_batch()
    quick = dataclasses.replace(
        reviews[0],
        assignment_id="A-quick",
        valid=False,
        counted=False,
        gold_correct=None,
        vote=None,
        too_fast=True,
        work_seconds=1.5,
        problems=["answered in under the minimum work time of 10 s"],
    )
    timed = [dataclasses.replace(r, work_seconds=20.0 + n) for n, r in enumerate(reviews)]
    results = aggregate(plans, [*timed, quick], computed_at=NOW)
    assert results["summary"]["too_fast"] == 1
    workers = {w["worker"]: w for w in results["workers"]}
    assert sum(w["too_fast"] for w in workers.values()) == 1
    assert all(w["median_seconds"] is not None for w in workers.values())
    text = page_text(report.render_report(results, plans, thumbnails=thumbnails_from(images)))
    assert "1 too fast" in text
    assert "answered in under the minimum work time of 10 s (×1)" in text
    assert "median time" in text and " s " in text


def test_an_adaptive_batch_shows_what_fixed_overlap_would_have_cost(sample, tmp_path):
    _, plans, images = sample
    batch, reviews, _ = sample_batch()
    fixed = {"assignments_per_hit": 7, "assignments": 35, "total_cents": 1520, "total": "$15.20"}
    spent = {"rewards": 260, "bonuses": 110, "fees": 74, "at_fixed_overlap": fixed}
    results = aggregate(batch, reviews, spent=spent, computed_at=NOW)
    assert results["summary"]["spent"]["at_fixed_overlap"] == fixed
    html = write_results(results, plans, tmp_path, thumbnails=thumbnails_from(images))["html"]
    text = page_text(html.read_text(encoding="utf-8"))
    assert "$4.44" in text
    assert "at a fixed 7 assignments per HIT about $15.20 (13 assignments, not 35)" in text
    # A batch at fixed overlap says nothing of it (the sample has no such figure).
    fixed_batch = page_text(
        write_results(*sample[:2], tmp_path / "fixed", thumbnails=thumbnails_from(images))[
            "html"
        ].read_text(encoding="utf-8")
    )
    assert "at a fixed" not in fixed_batch
