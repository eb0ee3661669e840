"""Can a worker tell the gold question from the model question? Forty real HITs, made by the
crowd stage's own publish and create steps against moto's S3 server and the crowd sandbox (both
on 127.0.0.1), read back as a worker's browser gets them: the HIT's HTML from the sandbox and
every picture from S3 at its presigned URL.

The batch is built to show the signals the old layout leaked: a fixed pool of four known-answer
sets (so gold pictures recur across HITs), a dataset of mixed .png and .jpg files, pictures of
several resolutions, queries with one, two and three matches, and a second run of the campaign
a few seconds after the first (new queries, the same gold pool). botocore's clock runs fast
while HITs are created (each reading moves it on), as on a busy machine or a large batch, so URLs
signed one by one carry different times.

Each test looks for one kind of signal. What a worker can see is all a test uses to attack;
which question is gold (the plan, kept in S3) is used only to score the attack. All pictures
here share one aspect ratio: like the pictures themselves, that is seen by eye (see
``include/crowd/publish.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from include.crowd import stage
from include.crowd.layout import _field_names, request_token
from include.crowd.mturk.question import HTML_QUESTION_XMLNS, TOKEN_MARK
from include.crowd.records import HitPlan
from testsupport.crowd_batch import build_sources, write_batch
from testsupport.crowd_plans import crowd_settings
from testsupport.motokit import moto_s3, s3_client
from testsupport.platforms import mturk_platform
from testsupport.sandbox_process import start_sandbox

BATCH = "gold-signals"
BUCKET = "gold-signals"
PREFIX = "image-similarity"
FIRST_RUN, SECOND_RUN = 32, 8  # queries; 40 HITs in all
PAUSE_S = 3.5  # between the campaign's two runs
GOLD_SETS = 4
DATASET = 24
# Headers that differ per object whatever is served (or are about the response, not the object).
PER_OBJECT = {
    "etag",
    "last-modified",
    "date",
    "server",
    "x-amz-request-id",
    "x-amz-id-2",
    "x-amzn-requestid",
    "x-amz-content-sha256",
    "x-amz-checksum-crc32",  # moto repeats the upload's checksums
}


# --- the batch ---------------------------------------------------------------------------


def settings() -> stage.CrowdSettings:
    return crowd_settings(
        BATCH,
        s3_bucket=BUCKET,
        s3_prefix=PREFIX,
        hit_title="Which picture is the most similar?",
        hit_description="Compare pictures: for each question, pick the most similar option.",
        hit_keywords="images, similarity",
        assignments_per_hit=1,
        hit_lifetime_hours=1,
        assignment_duration_minutes=10,
        auto_approval_delay_hours=1,
        review_window_hours=1,
        reward_usd="0.05",
        bonus_usd="0.05",
        budget_usd=None,
        bonus_message="Right check answer: here is a bonus.",
        no_bonus_message="The check question was answered wrongly, so no bonus this time.",
    )


class FastClock:
    """botocore's clock, moved on by ``step`` seconds at every reading (as if each signature
    took that long): URLs signed one after the other get different ``X-Amz-Date`` values."""

    def __init__(self, step: float = 0.04) -> None:
        self.step = step
        self.readings = 0
        self._lock = threading.Lock()

    def __call__(self, remove_tzinfo: bool = True) -> datetime:
        with self._lock:
            self.readings += 1
            ahead = self.readings * self.step
        now = datetime.now(UTC) + timedelta(seconds=ahead)
        return now.replace(tzinfo=None) if remove_tzinfo else now


# --- what a worker sees ---------------------------------------------------------------------


@dataclass
class Picture:
    """One picture of a page, as the browser loads it."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    sha256: str  # the original's content hash (from the plan: for scoring only)

    @property
    def key(self) -> str:
        return urlsplit(self.url).path.lstrip("/").split("/", 1)[1]  # path-style: bucket first

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    @property
    def signed_at(self) -> str:
        return self.query.get("X-Amz-Date", [""])[0]

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.body))


@dataclass
class Shown:
    """One question as the page shows it."""

    field: str
    kind: str  # from the plan: for scoring only
    target: Picture
    options: list[Picture]
    radios: list[dict[str, str]]
    images: list[dict[str, str]]  # every <img>'s attributes but its src
    markup: str


@dataclass
class Page:
    plan: HitPlan
    html: str
    run: int
    questions: list[Shown] = field(default_factory=list)

    @property
    def pictures(self) -> list[Picture]:
        return [p for q in self.questions for p in (q.target, *q.options)]

    def question(self, kind: str) -> Shown:
        return next(q for q in self.questions if q.kind == kind)


class _Fieldsets(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[dict] = []
        self._lines = html.splitlines(keepends=True)
        self._start = 0
        self.html = html
        self.feed(html)

    def _offset(self) -> int:
        line, column = self.getpos()
        return sum(len(x) for x in self._lines[: line - 1]) + column

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if tag == "fieldset":
            self.blocks.append({"imgs": [], "radios": []})
            self._start = self._offset()
        elif tag == "img" and self.blocks:
            self.blocks[-1]["imgs"].append(attributes)
        elif tag == "input" and attributes.get("type") == "radio" and self.blocks:
            self.blocks[-1]["radios"].append(attributes)

    def handle_endtag(self, tag):
        if tag == "fieldset":
            self.blocks[-1]["markup"] = self.html[self._start : self._offset()]


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def read_pages(mturk, plans: list[HitPlan], run: int) -> list[Page]:
    """Each HIT's HTML from the sandbox, and every picture it shows from S3."""
    pages, blocks = [], []
    for plan in plans:
        xml = mturk.get_hit(HITId=plan.hit_id)["HIT"]["Question"]
        html = ET.fromstring(xml).find(f"{{{HTML_QUESTION_XMLNS}}}HTMLContent").text
        pages.append(Page(plan, html, run))
        found = _Fieldsets(html).blocks
        assert len(found) == 2, html
        for block in found:
            question = next(q for q in plan.questions if q.field == block["radios"][0]["name"])
            by_position = {str(o.position): o.image for o in question.options}
            shown = [by_position[r["value"]] for r in block["radios"]]
            block["question"] = question
            block["sources"] = [question.target, *(i for i in shown if i is not None)]
        blocks.append(found)
    wanted = [img["src"] for found in blocks for block in found for img in block["imgs"]]
    with ThreadPoolExecutor(8) as pool:
        fetched = dict(zip(wanted, pool.map(fetch, wanted), strict=True))
    for page, found in zip(pages, blocks, strict=True):
        for block in found:
            pictures = [
                Picture(img["src"], *fetched[img["src"]], sha256=source.sha256)
                for img, source in zip(block["imgs"], block["sources"], strict=True)
            ]
            page.questions.append(
                Shown(
                    field=block["question"].field,
                    kind=block["question"].kind,
                    target=pictures[0],
                    options=pictures[1:],
                    radios=block["radios"],
                    images=[{k: v for k, v in img.items() if k != "src"} for img in block["imgs"]],
                    markup=block["markup"],
                )
            )
    return pages


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list[Page]:
    root = tmp_path_factory.mktemp("gold-signals")
    sources = build_sources(
        root / "sources", queries=FIRST_RUN + SECOND_RUN, dataset=DATASET, gold_sets=GOLD_SETS
    )
    batch_dir = root / "batch"
    sandbox = start_sandbox(root / "sandbox.sqlite")
    try:
        with moto_s3() as endpoint, pytest.MonkeyPatch.context() as patch:
            s3 = s3_client(endpoint, signature_version="s3v4")
            s3.create_bucket(Bucket=BUCKET)
            mturk = sandbox.client()
            clock = FastClock()
            runs = []
            for run, queries in enumerate((FIRST_RUN, FIRST_RUN + SECOND_RUN), 1):
                if run > 1:
                    time.sleep(PAUSE_S)  # the campaign's next run, with new queries
                write_batch(batch_dir, sources, queries)
                stage.publish(batch_dir, s3, settings())
                with patch.context() as fast:
                    fast.setattr("botocore.auth.get_current_datetime", clock)
                    plans = stage.create(
                        batch_dir, s3, mturk_platform(mturk), settings(), exclusion_id=None
                    )
                runs.append(plans)
            first = {p.token for p in runs[0]}
            assert clock.readings > 200  # the clock did move on while HITs were made
            yield [
                *read_pages(mturk, runs[0], 1),
                *read_pages(mturk, [p for p in runs[1] if p.token not in first], 2),
            ]
    finally:
        sandbox.stop()


def test_the_batch_has_what_leaked_before(pages):
    """Not a signal: the inputs are what they must be for the other tests to mean something."""
    assert len(pages) == FIRST_RUN + SECOND_RUN >= 30
    assert {len(p.question("model").options) for p in pages} == {1, 2, 3}
    assert Counter(p.run for p in pages) == {1: FIRST_RUN, 2: SECOND_RUN}
    gold_sets = Counter(p.plan.gold.gold_set for p in pages)
    assert len(gold_sets) == GOLD_SETS and min(gold_sets.values()) >= 9  # gold recurs
    dataset = Counter(o.image.name for p in pages for o in p.plan.model.options if o.image)
    assert any(n.endswith(".png") for n in dataset) and any(n.endswith(".jpg") for n in dataset)
    assert max(dataset.values()) >= 3  # dataset pictures recur too
    assert all(pic.status == 200 and pic.body for p in pages for pic in p.pictures)


# --- linking HITs to each other -------------------------------------------------------------


def recurring(pages: list[Page], observed) -> dict:
    """Values of ``observed(picture)`` seen in more than one HIT, with the HITs."""
    seen = defaultdict(set)
    for page in pages:
        for picture in page.pictures:
            seen[observed(picture)].add(page.plan.token)
    return {value: hits for value, hits in seen.items() if len(hits) > 1}


def test_no_url_or_key_recurs_across_hits_and_none_can_be_computed(pages):
    assert recurring(pages, lambda p: p.url.split("?")[0]) == {}
    assert recurring(pages, lambda p: p.key) == {}
    for page in pages:
        for picture in page.pictures:
            # Nothing of the original (name, hash) is in the key; it is an opaque name.
            assert picture.sha256 not in picture.key
            assert re.fullmatch(rf"{PREFIX}/[a-z-]+/[0-9a-f]{{64}}\.jpg", picture.key), picture.key
    # The key's secret exists, and no page carries it.
    s3_secret = _secret_of_batch(pages)
    assert s3_secret and all(s3_secret not in page.html for page in pages)


def _secret_of_batch(pages: list[Page]) -> str:
    url = pages[0].pictures[0].url
    endpoint = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    s3 = s3_client(endpoint)
    name = f"{PREFIX}/batches/{BATCH}/secrets/hit-images.json"
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=name)["Body"].read())["key"]
    except s3.exceptions.NoSuchKey:
        return ""


def test_no_bytes_etag_or_length_links_a_picture_across_hits(pages):
    assert recurring(pages, lambda p: hashlib.sha256(p.body).hexdigest()) == {}
    assert recurring(pages, lambda p: p.headers["etag"]) == {}
    # A worker comparing two HITs by object size: every picture of a HIT has the same length,
    # so a length shared by two HITs links them all alike, never the gold pictures alone.
    for page in pages:
        assert len({int(p.headers["content-length"]) for p in page.pictures}) == 1
        assert all(len(p.body) == int(p.headers["content-length"]) for p in page.pictures)


# --- telling the questions apart inside one HIT ----------------------------------------------


def test_every_url_of_a_hit_is_signed_at_the_same_instant(pages):
    for page in pages:
        signed = {p.signed_at for p in page.pictures}
        assert len(signed) == 1 and "" not in signed, (page.plan.query.name, signed)
        unsigned = {
            tuple(sorted((k, *v) for k, v in p.query.items() if k != "X-Amz-Signature"))
            for p in page.pictures
        }
        assert len(unsigned) == 1  # the same expiry, credential and date everywhere
    assert len({page.pictures[0].signed_at for page in pages}) > 1  # the clock did move


def test_every_picture_is_a_jpeg_served_alike(pages):
    for page in pages:
        shared = {
            tuple(sorted((k, v) for k, v in p.headers.items() if k not in PER_OBJECT))
            for p in page.pictures
        }
        assert len(shared) == 1, shared  # Content-Type, Content-Length and the rest
        for picture in page.pictures:
            assert picture.key.endswith(".jpg")
            assert picture.headers["content-type"] == "image/jpeg"
            image = picture.image
            assert image.format == "JPEG" and image.mode == "RGB"
            assert not image.getexif() and "icc_profile" not in image.info
            assert not image.info.get("progressive")


def test_every_picture_of_a_hit_has_the_same_longest_side(pages):
    for page in pages:
        sides = {max(p.image.size) for p in page.pictures}
        assert len(sides) == 1, (page.plan.query.name, sides)
        assert 0 < sides.pop() <= 1024
    assert len({max(page.pictures[0].image.size) for page in pages}) > 5  # drawn per HIT


def test_last_modified_does_not_date_the_gold_pictures(pages):
    """In the campaign's second run the gold pool is old and the queries are new: a picture
    uploaded long before the others of its HIT would be a gold one."""
    for page in pages:
        times = [parsedate_to_datetime(p.headers["last-modified"]) for p in page.pictures]
        spread = (max(times) - min(times)).total_seconds()
        assert spread <= 2, (page.run, page.plan.query.name, spread)


def test_both_questions_look_the_same_but_for_their_pictures(pages):
    for page in pages:
        gold, model = page.question("gold"), page.question("model")
        assert len(gold.options) == len(model.options)  # k < 3: the gold drops wrong options
        assert [r["value"] for r in gold.radios] == [r["value"] for r in model.radios]
        assert gold.images == [
            {**img, "data-question": gold.field} if "data-question" in img else img
            for img in model.images
        ]  # alt texts, roles; no width, height, sizes or srcset
        assert all(set(img) <= {"alt", "data-role", "data-question"} for img in gold.images)

        def skeleton(shown: Shown) -> str:
            markup = re.sub(r"Question \d", "Question N", shown.markup.replace(shown.field, "F"))
            return re.sub(r'src="[^"]*"', 'src=""', markup)

        assert skeleton(gold) == skeleton(model)
        assert "None of these" in gold.markup and "None of these" in model.markup


def test_question_order_and_field_names_do_not_tell_and_cannot_be_recomputed(pages):
    """The plan's draws come from the batch id and the query's hash. A worker knows the batch
    id (the request token's prefix) and layout.py; if a page showed the query's hash, they
    could recompute the draws (field names, orders) and the token, and so name the model
    question (and the gold's right answer)."""
    gold_first = sum(page.questions[0].kind == "gold" for page in pages) / len(pages)
    assert 0.3 <= gold_first <= 0.7
    gold_field_lower = sum(
        page.question("gold").field < page.question("model").field for page in pages
    ) / len(pages)
    assert 0.3 <= gold_field_lower <= 0.7
    for page in pages:
        token = re.search(rf"<!-- {TOKEN_MARK}(\S+) -->", page.html).group(1)
        assert token.startswith(BATCH)
        fields = sorted(q.field for q in page.questions)
        visible = set(re.findall(r"[0-9a-f]{64}", page.html))
        assert visible, "the page shows no hash-like names at all"
        for candidate in visible:
            assert request_token(BATCH, candidate) != token
            assert sorted(_field_names(2, "hit", BATCH, candidate, "")) != fields
