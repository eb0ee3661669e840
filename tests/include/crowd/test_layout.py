"""The HITs' layout: plans, the HTML workers see, qualification requirements, and real HITs
answered by the crowd sandbox's simulated workers and shown in a headless Chromium."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from include.crowd.layout import plan_hits, render_hit, render_question, request_token
from include.crowd.mturk.question import HTML_QUESTION_XMLNS, html_question
from include.crowd.mturk.requirements import qualification_requirements
from include.crowd.records import HitPlan, ImageRef
from testsupport.browserkit import local_page
from testsupport.imagekit import textured
from testsupport.sandbox_process import PROJECT_ROOT, RunningSandbox, start_sandbox

ARTIFACTS = PROJECT_ROOT / ".artifacts" / "crowd"
ANSWERS_NS = (
    "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd}"
)
TITLE = "Which picture is the most similar?"


# --- inputs ---------------------------------------------------------------------------------


def ref(name: str, content: bytes | None = None) -> ImageRef:
    sha = hashlib.sha256(content if content is not None else name.encode()).hexdigest()
    return ImageRef(name, sha, f"images/{sha}{Path(name).suffix}")


def query(name: str, k: int = 3) -> tuple[ImageRef, list[tuple[ImageRef, int, float]]]:
    stem = Path(name).stem
    return ref(name), [
        (ref(f"frame_{stem}_{r}.jpg"), r, round(0.9 - r / 20, 3)) for r in range(1, k + 1)
    ]


def gold_set(number: int):
    known = f"known{number}"
    return (
        known,
        ref(f"{known}.jpg"),
        ref(f"{known}_1st_match.jpg"),
        (ref(f"{known}_2nd_match.jpg"), ref(f"{known}_3rd_match.jpg")),
    )


QUERIES = [query(f"query_{i:02d}.jpg") for i in range(30)]
GOLD_SETS = [gold_set(n) for n in range(1, 5)]


def presigned(image: ImageRef) -> str:
    """An S3-presigned-looking URL: content-addressed, with ``&`` between its parameters."""
    return (
        f"https://crowd-bucket.s3.amazonaws.com/{image.key}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Expires=86400&X-Amz-Signature={image.sha256[:16]}"
    )


def question_xml(plan: HitPlan, image_url, *, frame_height: int = 0, **options) -> str:
    """The HIT as MTurk takes it: the rendered page in its ``HTMLQuestion`` envelope."""
    return html_question(render_question(plan, image_url, **options), frame_height=frame_height)


def html_of(xml: str) -> str:
    root = ET.fromstring(xml)
    assert root.tag == f"{{{HTML_QUESTION_XMLNS}}}HTMLQuestion"
    return root.find(f"{{{HTML_QUESTION_XMLNS}}}HTMLContent").text


# --- request tokens -------------------------------------------------------------------------


def test_request_tokens_are_stable_short_and_distinct():
    sha = "a" * 64
    token = request_token("2026-11-29_nightly", sha)
    assert token == request_token("2026-11-29_nightly", sha)
    assert token.startswith("2026-11-29_nightly-")
    assert token != request_token("2026-11-29_nightly", "b" * 64)
    assert token != request_token("2026-11-30_nightly", sha)
    weird = request_token("batch with spaces/and slashes " * 5, sha)
    assert len(weird) <= 64
    assert re.fullmatch(r"[A-Za-z0-9_-]+", weird)
    # Long batch ids share a prefix, but the hash covers the whole id.
    assert request_token("x" * 80 + "1", sha) != request_token("x" * 80 + "2", sha)
    with pytest.raises(ValueError, match="batch id"):
        request_token("", sha)


# --- plans ----------------------------------------------------------------------------------


def test_a_plan_is_the_same_on_every_call():
    first = plan_hits("batch-1", QUERIES, GOLD_SETS, seed=7)
    second = plan_hits("batch-1", list(QUERIES), list(reversed(GOLD_SETS)), seed=7)
    assert [p.to_json() for p in first] == [p.to_json() for p in second]
    assert [HitPlan.from_json(p.to_json()) for p in first] == first
    other_seed = plan_hits("batch-1", QUERIES, GOLD_SETS, seed=8)
    assert [p.to_json() for p in other_seed] != [p.to_json() for p in first]
    assert [p.token for p in other_seed] == [p.token for p in first]


def test_every_hit_has_a_gold_and_a_model_question_each_with_none_of_these_last():
    for plan, (query_image, matches) in zip(
        plan_hits("batch-1", QUERIES, GOLD_SETS), QUERIES, strict=True
    ):
        assert plan.batch_id == "batch-1"
        assert plan.query == query_image
        assert plan.token == request_token("batch-1", query_image.sha256)
        assert sorted(q.kind for q in plan.questions) == ["gold", "model"]

        model = plan.model
        assert model.target == query_image
        assert [o.position for o in model.options] == [1, 2, 3, 4]
        assert {(o.image, o.rank, o.score) for o in model.options[:3]} == set(matches)
        assert model.options[-1].image is None
        assert model.gold_set is None and model.correct_position is None

        gold = plan.gold
        set_id, target, correct, wrong = next(g for g in GOLD_SETS if g[0] == gold.gold_set)
        assert gold.target == target
        assert [o.position for o in gold.options] == [1, 2, 3, 4]
        assert gold.option(gold.correct_position).image == correct
        assert {o.image for o in gold.options[:3]} == {correct, *wrong}
        assert gold.options[-1].image is None


def test_known_answer_sets_rotate_in_balance_in_an_order_shuffled_per_batch():
    for n in (1, 3, 4, 10, 30):
        plans = plan_hits("batch-1", QUERIES[:n], GOLD_SETS)
        counts = Counter(p.gold.gold_set for p in plans)
        expected = {n // len(GOLD_SETS), -(-n // len(GOLD_SETS))}
        assert {counts[g[0]] for g in GOLD_SETS} <= expected
        assert sum(counts.values()) == n

    orders = {
        tuple(p.gold.gold_set for p in plan_hits(f"batch-{b}", QUERIES[:4], GOLD_SETS))
        for b in range(12)
    }
    assert len(orders) > 3  # the rotation order depends on the batch
    assert all(sorted(order) == ["known1", "known2", "known3", "known4"] for order in orders)


def test_adding_queries_keeps_the_created_hits_plans_and_continues_the_balance():
    first_run = QUERIES[::2]  # 15 queries
    created = {p.query.sha256: p for p in plan_hits("batch-1", first_run, GOLD_SETS, seed=3)}
    created = {
        sha: dataclasses.replace(p, hit_id=f"HIT{i}") for i, (sha, p) in enumerate(created.items())
    }

    everything = plan_hits("batch-1", QUERIES, GOLD_SETS, seed=3, existing=created)
    assert [p.query for p in everything] == [q for q, _ in QUERIES]
    for plan in everything:
        if plan.query.sha256 in created:
            assert plan is created[plan.query.sha256]
    counts = Counter(p.gold.gold_set for p in everything)
    assert max(counts.values()) - min(counts.values()) <= 1

    # Without the manifest, each HIT's own draws (field names, orders) still do not move.
    replanned = {p.query.sha256: p for p in plan_hits("batch-1", QUERIES, GOLD_SETS, seed=3)}
    for sha, plan in created.items():
        again = replanned[sha]
        assert [q.field for q in again.questions] == [q.field for q in plan.questions]
        assert [q.kind for q in again.questions] == [q.kind for q in plan.questions]
        assert again.model == plan.model

    stranger = dataclasses.replace(next(iter(created.values())), batch_id="batch-2")
    with pytest.raises(ValueError, match="belongs to batch 'batch-2'"):
        plan_hits("batch-1", QUERIES, GOLD_SETS, existing={stranger.query.sha256: stranger})


def test_own_gold_gives_every_hit_a_set_and_pictures_no_other_hit_shows():
    many_sets = [gold_set(n) for n in range(1, 31)]
    plans = plan_hits("batch-1", QUERIES, many_sets, own_gold=True)
    assert len({p.gold.gold_set for p in plans}) == len(QUERIES)
    shown = [
        image.sha256
        for p in plans
        for image in (p.gold.target, *(o.image for o in p.gold.options))
        if image is not None
    ]
    assert len(shown) == len(set(shown))
    # Too few sets: an error saying how many are missing, where the default reuses sets.
    with pytest.raises(ValueError, match="generate at least 26 more gold sets"):
        plan_hits("batch-1", QUERIES, GOLD_SETS, own_gold=True)
    assert len({p.gold.gold_set for p in plan_hits("batch-1", QUERIES, GOLD_SETS)}) == 4


def test_preferred_sets_are_each_used_once_before_any_other_set_is():
    """gold_source "both": generated sets first, the provided ones when they run out."""
    generated = [gold_set(n) for n in range(10, 16)]  # 6 sets
    pool = GOLD_SETS + generated
    preferred = [g[0] for g in generated]
    for n in (3, 6, 8, 10):
        plans = plan_hits("b", QUERIES[:n], pool, preferred=preferred)
        counts = Counter(p.gold.gold_set for p in plans)
        assert sum(counts[s] for s in preferred) == min(n, 6)
        assert max(counts.values()) == 1
    # Beyond the pool, the rotation stays balanced.
    counts = Counter(p.gold.gold_set for p in plan_hits("b", QUERIES, pool, preferred=preferred))
    assert {counts[g[0]] for g in pool} == {3}
    # Without preferred sets the plans are the ones made before this option existed.
    assert plan_hits("b", QUERIES, GOLD_SETS, preferred=[]) == plan_hits("b", QUERIES, GOLD_SETS)
    assert plan_hits("b", QUERIES, GOLD_SETS, preferred=["x"]) == plan_hits("b", QUERIES, GOLD_SETS)


def test_own_gold_continues_after_existing_plans_and_refuses_sets_sharing_a_picture():
    sets = [gold_set(n) for n in range(1, 11)]
    created = {p.query.sha256: p for p in plan_hits("batch-1", QUERIES[:4], sets, own_gold=True)}
    everything = plan_hits("batch-1", QUERIES[:10], sets, existing=created, own_gold=True)
    assert len({p.gold.gold_set for p in everything}) == 10
    with pytest.raises(ValueError, match="only 6 unused sets"):
        plan_hits("batch-1", QUERIES[:11], sets, existing=created, own_gold=True)
    # A set whose wrong answer is another set's correct one: a worker would see it twice.
    set_id, target, correct, (_, third) = gold_set(12)
    sharing = (set_id, target, correct, (sets[0][2], third))
    with pytest.raises(ValueError, match="share a picture"):
        plan_hits("batch-1", QUERIES[:2], [*sets, sharing], own_gold=True)
    assert len(plan_hits("batch-1", QUERIES[:2], [*sets, sharing])) == 2


def test_orders_and_positions_vary_across_hits_and_field_names_are_opaque():
    plans = plan_hits("batch-1", QUERIES, GOLD_SETS)
    correct_positions = Counter(p.gold.correct_position for p in plans)
    assert set(correct_positions) == {1, 2, 3}
    assert min(correct_positions.values()) >= 4  # 30 HITs: each position several times
    assert Counter(p.questions[0].kind for p in plans).keys() == {"gold", "model"}
    best_match_positions = {next(o.position for o in p.model.options if o.rank == 1) for p in plans}
    assert best_match_positions == {1, 2, 3}

    all_fields = []
    for plan in plans:
        fields = [q.field for q in plan.questions]
        assert len(set(fields)) == 2
        assert all(re.fullmatch(r"q_[0-9a-f]{6}", f) for f in fields)
        all_fields += fields
    assert len(set(all_fields)) > 50  # random per HIT, not "q_gold"/"q_model" in disguise


def test_few_matches_and_bad_inputs():
    (plan,) = plan_hits("batch-1", [query("tiny.jpg", k=2)], GOLD_SETS)
    assert [o.position for o in plan.model.options] == [1, 2, 3]
    assert sorted(o.rank for o in plan.model.options if o.image) == [1, 2]
    assert plan.model.options[-1].image is None

    many = (ref("q.jpg"), [(ref(f"m{r}.jpg"), r, 1 - r / 10) for r in (5, 1, 4, 2, 3)])
    (plan,) = plan_hits("batch-1", [many], GOLD_SETS)
    assert sorted(o.rank for o in plan.model.options if o.image) == [1, 2, 3]

    with pytest.raises(ValueError, match="no known-answer sets"):
        plan_hits("batch-1", QUERIES, [])
    with pytest.raises(ValueError, match="no matches"):
        plan_hits("batch-1", [(ref("lonely.jpg"), [])], GOLD_SETS)
    with pytest.raises(ValueError, match="'query_00.jpg' and 'copy.jpg' have the same content"):
        plan_hits(
            "batch-1",
            [QUERIES[0], (dataclasses.replace(QUERIES[0][0], name="copy.jpg"), QUERIES[0][1])],
            GOLD_SETS,
        )
    with pytest.raises(ValueError, match="'known1' appears twice"):
        plan_hits("batch-1", QUERIES, [GOLD_SETS[0], GOLD_SETS[0]])


def test_with_fewer_matches_the_gold_question_offers_as_many_pictures():
    kept_wrong = Counter()
    for k in (1, 2, 3):
        plans = plan_hits("batch-1", [query(f"q{k}_{i}.jpg", k=k) for i in range(12)], GOLD_SETS)
        for plan in plans:
            gold, model = plan.gold, plan.model
            assert len(gold.options) == len(model.options) == k + 1
            assert gold.options[-1].image is None and model.options[-1].image is None
            _, _, correct, wrong = next(g for g in GOLD_SETS if g[0] == gold.gold_set)
            assert gold.option(gold.correct_position).image == correct
            shown_wrong = {o.image for o in gold.options if o.image not in (None, correct)}
            assert len(shown_wrong) == k - 1 and shown_wrong <= set(wrong)
            if k == 2:
                kept_wrong[wrong.index(shown_wrong.pop())] += 1
    assert set(kept_wrong) == {0, 1}  # which wrong match stays is drawn per HIT

    # Three matches: the draws are those of plans made before gold questions could shrink
    # (a campaign's next run must not move them).
    plans = plan_hits("batch-1", QUERIES, GOLD_SETS, seed=7)
    text = json.dumps([[dataclasses.asdict(q) for q in p.questions] for p in plans], sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "ad34714d19ae4d0efcfaf70eb478eaefb1cc48584b6cb588aab3f98ef0ca2d77"
    )


# --- the HTML -------------------------------------------------------------------------------


class _Page(HTMLParser):
    """The page's fieldsets (as raw markup), images, radios and scripts."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.fieldsets: list[str] = []
        self.images: list[dict[str, str]] = []
        self.radios: list[dict[str, str]] = []
        self.scripts = 0
        self._start: int | None = None
        self.feed(html)

    def _offset(self) -> int:
        line, column = self.getpos()
        return sum(len(x) for x in self.html.splitlines(keepends=True)[: line - 1]) + column

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if tag == "fieldset":
            self._start = self._offset()
        elif tag == "img":
            self.images.append(attributes)
        elif tag == "input" and attributes.get("type") == "radio":
            self.radios.append(attributes)
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "fieldset":
            self.fieldsets.append(self.html[self._start : self._offset()])


def test_the_html_question_parses_and_follows_the_workers_conventions():
    plan = plan_hits("batch-1", QUERIES[:1], GOLD_SETS)[0]
    xml = question_xml(plan, presigned, title=TITLE)
    root = ET.fromstring(xml)
    assert root.find(f"{{{HTML_QUESTION_XMLNS}}}FrameHeight").text == "0"
    html = html_of(xml)
    page = _Page(html)

    assert '<form name="mturk_form" id="mturk_form" method="post" ' in html
    assert 'action="https://www.mturk.com/mturk/externalSubmit"' in html
    assert '<input type="hidden" name="assignmentId" id="assignmentId" value="">' in html
    assert page.scripts == 1
    assert not re.search(r"<(link|script)[^>]+(src|href)=", html)  # nothing external
    assert "@import" not in html and "url(" not in html

    assert len(page.fieldsets) == 2
    for number, (question, markup) in enumerate(
        zip(plan.questions, page.fieldsets, strict=True), 1
    ):
        assert f"<legend>Question {number}</legend>" in markup
        assert f'data-role="target" data-question="{question.field}"' in markup
        radios = re.findall(
            rf'<input type="radio" name="{question.field}" value="(\d)" required>', markup
        )
        assert radios == ["1", "2", "3", "4"]
        assert markup.count("<img") == 4  # the target and three options; none without image
        assert re.search(r"required> None of these</span></label>\s*</div>", markup)

    srcs = [img["src"] for img in page.images]
    assert [srcs[0], srcs[4]] == [presigned(q.target) for q in plan.questions]
    assert {img["alt"] for img in page.images} == {
        "Reference picture",
        "Option 1",
        "Option 2",
        "Option 3",
    }
    # ``&`` in presigned URLs is escaped in the markup and comes back intact.
    assert "&X-Amz-Expires" not in html and "&amp;X-Amz-Expires=86400&amp;X-Amz-Signature" in html
    assert all(src.startswith("https://crowd-bucket.s3.amazonaws.com/images/") for src in srcs)
    assert len(xml.encode()) < 16_000


def test_the_html_does_not_tell_which_question_is_gold_or_which_option_is_right():
    for plan in plan_hits("batch-1", QUERIES[:8], GOLD_SETS):
        html = html_of(question_xml(plan, presigned, title=TITLE))
        lowered = html.lower()
        assert "gold" not in lowered and "known" not in lowered and "model" not in lowered
        for question in plan.questions:
            for image in (question.target, *(o.image for o in question.options if o.image)):
                assert image.name not in html and Path(image.name).stem not in html
        assert plan.gold.gold_set not in html

        # Both questions have the very same markup, but for their field name and images.
        def skeleton(markup: str, field: str) -> str:
            markup = re.sub(r"Question \d", "Question N", markup.replace(field, "FIELD"))
            return re.sub(r'src="[^"]*"', 'src=""', markup)

        gold_markup, model_markup = (
            _Page(html).fieldsets[plan.questions.index(q)] for q in (plan.gold, plan.model)
        )
        assert skeleton(gold_markup, plan.gold.field) == skeleton(model_markup, plan.model.field)

        # What the HTML shows is the same whichever option is right and whichever question is
        # gold: only the plan (kept in S3) knows.
        gold = plan.gold
        moved = dataclasses.replace(
            gold, correct_position=gold.correct_position % 3 + 1, gold_set="known9"
        )
        swapped = tuple(
            dataclasses.replace(q, kind="model", gold_set=None, correct_position=None)
            if q.kind == "gold"
            else dataclasses.replace(q, kind="gold", gold_set="known1", correct_position=2)
            for q in plan.questions
        )
        for variant in (
            tuple(moved if q is gold else q for q in plan.questions),
            swapped,
        ):
            other = dataclasses.replace(plan, questions=variant)
            assert html_of(question_xml(other, presigned, title=TITLE)) == html


def test_everything_is_escaped():
    hostile = (ref('<script>alert("x")</script>.jpg'), [(ref("a'b\".jpg"), 1, 0.9)])
    plan = plan_hits("batch-1", [hostile], GOLD_SETS)[0]

    def url(image: ImageRef) -> str:
        return presigned(image) + '&x="><script>alert(1)</script>]]>'

    xml = question_xml(
        plan,
        url,
        title='Pick <b>one</b> & "win" ]]> <script>alert(2)</script>',
        instructions="First <i>paragraph</i>.\n\nSecond ]]> one\x00\x07, with \u00fcmlauts.",
    )
    html = html_of(xml)  # still well-formed XML
    page = _Page(html)
    assert page.scripts == 1
    assert "<b>" not in html and "<i>" not in html and "alert(1)</script>" not in html
    assert "Pick &lt;b&gt;one&lt;/b&gt; &amp; &#34;win&#34; ]]&gt;" in html
    assert "<p>Second ]]&gt; one, with \u00fcmlauts.</p>" in html
    assert all(img["src"].endswith('"><script>alert(1)</script>]]>') for img in page.images)


def test_render_refuses_urls_that_would_reveal_images_or_are_not_web_urls():
    plan = plan_hits("batch-1", QUERIES[:1], GOLD_SETS)[0]
    by_name = lambda image: f"https://bucket.example/{image.name}?sig=1"  # noqa: E731
    with pytest.raises(ValueError, match="contains 'query_00.jpg'|contains 'known"):
        question_xml(plan, by_name, title=TITLE)
    by_set = lambda image: f"https://bucket.example/known/{plan.gold.gold_set}/{image.sha256}"  # noqa: E731
    with pytest.raises(ValueError, match=f"contains '{plan.gold.gold_set}'"):
        question_xml(plan, by_set, title=TITLE)
    with pytest.raises(ValueError, match="http"):
        question_xml(plan, lambda image: "javascript:alert(1)", title=TITLE)
    huge = lambda image: presigned(image) + "&X-Amz-Security-Token=" + "t" * 9000  # noqa: E731
    with pytest.raises(ValueError, match="over MTurk's 65535"):
        question_xml(plan, huge, title=TITLE)
    assert "<FrameHeight>640</FrameHeight>" in question_xml(
        plan, presigned, title=TITLE, frame_height=640
    )


def test_render_hit_asks_for_the_urls_of_this_hit_only():
    plans = plan_hits("batch-1", QUERIES[:2], GOLD_SETS)
    asked = []

    def hit_urls(plan: HitPlan):
        asked.append(plan.token)
        return lambda image: presigned(image) + f"&hit={plan.token[-6:]}"

    for plan in plans:
        xml = html_question(render_hit(plan, hit_urls, title=TITLE), frame_height=640)
        assert xml == question_xml(plan, hit_urls(plan), title=TITLE, frame_height=640)
        srcs = {img["src"] for img in _Page(html_of(xml)).images}
        assert srcs and all(src.endswith(f"&hit={plan.token[-6:]}") for src in srcs)
    assert asked == [plans[0].token] * 2 + [plans[1].token] * 2


# --- real HITs in the crowd sandbox ---------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def altered(image: Image.Image, seed: int) -> Image.Image:
    """A slightly different shot of the same thing: cropped, brighter, resized, noisy."""
    width, height = image.size
    copy = image.crop((8, 6, width - 6, height - 4)).resize((width * 4 // 5, height * 4 // 5))
    copy = ImageEnhance.Brightness(copy).enhance(1.12)
    pixels = np.asarray(copy, dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-10, 11, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


class ImageServer:
    """Serve images by content hash from a thread on 127.0.0.1, at presigned-looking URLs."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = files.get(urlsplit(self.path).path)
                if found is None:
                    self.send_error(404)
                    return
                body, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, data: bytes) -> ImageRef:
        image = ref(name, data)
        content_type = "image/png" if name.endswith(".png") else "image/jpeg"
        self.files[f"/{image.key}"] = (data, content_type)
        return image

    def url(self, image: ImageRef) -> str:
        return (
            f"{self.base}/{image.key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600"
            f"&X-Amz-Signature={image.sha256[:24]}"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Scene:
    """Two queries, each with one clearly similar match (not always rank 1), and two gold sets."""

    queries: list
    gold_sets: list
    similar: dict[str, ImageRef]  # query sha256 -> the match that shows the same thing


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def scene(images) -> Scene:
    queries, similar = [], {}
    for number, best_rank in ((1, 2), (2, 1)):
        picture = textured(360, 270, seed=100 + number)
        query_image = images.add(f"query_{number}.jpg", jpeg(picture))
        same = images.add(f"frame_{number}_same.png", png(altered(picture, seed=number)))
        others = [
            images.add(
                f"frame_{number}_{k}.jpg", jpeg(textured(360, 270, seed=200 + 10 * number + k))
            )
            for k in (1, 2)
        ]
        ranked = others[:]
        ranked.insert(best_rank - 1, same)
        queries.append((query_image, [(m, r, 0.9 - r / 10) for r, m in enumerate(ranked, 1)]))
        similar[query_image.sha256] = same
    gold_sets = []
    for number in (1, 2):
        picture = textured(360, 270, seed=300 + number)
        gold_sets.append(
            (
                f"known{number}",
                images.add(f"known{number}.jpg", jpeg(picture)),
                images.add(f"known{number}_1st_match.jpg", jpeg(altered(picture, seed=9 + number))),
                (
                    images.add(
                        f"known{number}_2nd_match.png", png(textured(360, 270, seed=400 + number))
                    ),
                    images.add(
                        f"known{number}_3rd_match.jpg", jpeg(textured(360, 270, seed=500 + number))
                    ),
                ),
            )
        )
    return Scene(queries, gold_sets, similar)


@pytest.fixture
def sandbox_factory(tmp_path) -> Iterator:
    started: list[RunningSandbox] = []

    def factory(*args: str) -> RunningSandbox:
        running = start_sandbox(tmp_path / f"sandbox{len(started)}.sqlite", *args)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


def create_hit(mturk, plan: HitPlan, images: ImageServer, requirements=None) -> str:
    return mturk.create_hit(
        Title=TITLE,
        Description="Compare pictures: for each question, pick the most similar option.",
        Keywords="images, similarity",
        Reward="0.05",
        MaxAssignments=3,
        LifetimeInSeconds=3600,
        AssignmentDurationInSeconds=600,
        Question=question_xml(plan, images.url, title=TITLE),
        RequesterAnnotation=plan.batch_id,
        UniqueRequestToken=plan.token,
        QualificationRequirements=requirements or [],
    )["HIT"]["HITId"]


def answers(xml: str) -> dict[str, str | None]:
    root = ET.fromstring(xml)
    return {
        a.find(ANSWERS_NS + "QuestionIdentifier").text: a.find(ANSWERS_NS + "FreeText").text
        for a in root.findall(ANSWERS_NS + "Answer")
    }


def test_diligent_simulated_workers_answer_both_questions_right(sandbox_factory, scene, images):
    sandbox = sandbox_factory(
        "--workers", "diligent:3", "--seconds-per-assignment", "0.2", "--worker-seed", "1"
    )
    mturk = sandbox.client()
    done = mturk.create_qualification_type(
        Name="Did an earlier batch", Description="Excluded", QualificationTypeStatus="Active"
    )["QualificationType"]["QualificationTypeId"]
    requirements = qualification_requirements(
        min_approval_rate=95,
        min_approved_hits=100,
        locales=["US"],
        exclude_qualification_id=done,
        masters=True,
        environment="sandbox",
    )
    plans = plan_hits("batch-sandbox", scene.queries, scene.gold_sets, seed=1)
    hit_ids = {create_hit(mturk, plan, images, requirements): plan for plan in plans}

    deadline = time.monotonic() + 90
    submitted: dict[str, list[dict]] = {}
    while time.monotonic() < deadline:
        submitted = {
            hit_id: mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
            for hit_id in hit_ids
        }
        if all(len(listed) == 3 for listed in submitted.values()):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"workers did not finish: {submitted}\n{''.join(sandbox.log[-30:])}")

    for hit_id, plan in hit_ids.items():
        expected_model = next(
            o.position for o in plan.model.options if o.image == scene.similar[plan.query.sha256]
        )
        workers = set()
        for assignment in submitted[hit_id]:
            workers.add(assignment["WorkerId"])
            given = answers(assignment["Answer"])
            assert set(given) == {q.field for q in plan.questions}
            assert given[plan.gold.field] == str(plan.gold.correct_position), assignment
            assert given[plan.model.field] == str(expected_model), assignment
        assert workers == {"ADILIGENT01", "ADILIGENT02", "ADILIGENT03"}


# --- what a person sees ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


def test_a_person_previews_accepts_and_submits_the_hit_in_chromium(
    sandbox_factory, scene, images, browser, artifacts
):
    from playwright.sync_api import expect

    sandbox = sandbox_factory()
    mturk = sandbox.client()
    plan = plan_hits("batch-browser", scene.queries, scene.gold_sets, seed=1)[0]
    hit_id = create_hit(mturk, plan, images)
    foreign: list[str] = []
    worker = "A1LAYOUTPERSON"

    page = local_page(browser, (sandbox.url, images.base), foreign)
    page.goto(f"{sandbox.url}/hit/{hit_id}?workerId={worker}")
    expect(page.locator("#mode")).to_have_text("Preview")
    frame = page.frame_locator("#question")
    expect(frame.locator("#preview-note")).to_be_visible()
    expect(frame.locator("#preview-note")).to_contain_text("Accept the HIT to answer")
    expect(frame.locator("#submitButton")).to_be_disabled()
    expect(frame.locator("input[type=radio]:enabled")).to_have_count(0)
    expect(frame.locator("input[type=radio]")).to_have_count(8)
    expect(frame.locator("legend")).to_have_text(["Question 1", "Question 2"])
    # Every picture loaded (from the image server, at its presigned-looking URL).
    assert frame.locator("img").evaluate_all(
        "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"
    )
    page.wait_for_timeout(300)  # the frame is sized to its content on load
    page.screenshot(path=str(artifacts / "01-preview-laptop.png"), full_page=True)

    page.click("#accept-button")
    expect(page.locator("#mode")).to_have_text("Accepted")
    assignment_id = page.locator("#assignment-id").inner_text()
    expect(frame.locator("#assignmentId")).to_have_value(assignment_id)
    expect(frame.locator("#preview-note")).to_be_hidden()
    expect(frame.locator("#submitButton")).to_be_enabled()
    form = frame.locator("#mturk_form")
    assert form.evaluate("f => f.action") == f"{sandbox.url}/mturk/externalSubmit"
    assert form.evaluate("f => f.checkValidity()") is False  # both questions are required

    similar = next(o for o in plan.model.options if o.image == scene.similar[plan.query.sha256])
    choices = {
        plan.gold.field: str(plan.gold.correct_position),
        plan.model.field: str(similar.position),
    }
    for field, value in choices.items():
        frame.locator(f"label:has(input[name={field}][value='{value}'])").click()
    assert form.evaluate("f => f.checkValidity()") is True
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "02-answered-laptop.png"), full_page=True)
    frame.locator("#submitButton").click()
    page.wait_for_url(f"{sandbox.url}/?workerId={worker}&submitted={assignment_id}")

    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert assignment["WorkerId"] == worker
    assert answers(assignment["Answer"]) == choices
    assert foreign == []
    page.context.close()

    # The question page alone, as wide as MTurk frames it on a laptop.
    wide = local_page(browser, (sandbox.url, images.base), foreign)
    wide.goto(
        f"{sandbox.url}/hit/{hit_id}/question?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE"
        f"&hitId={hit_id}&turkSubmitTo={sandbox.url}"
    )
    wide.wait_for_timeout(300)
    wide.screenshot(path=str(artifacts / "03-question-laptop.png"), full_page=True)
    sizes = wide.locator("img").evaluate_all("imgs => imgs.map(i => i.clientWidth)")
    assert sizes[0] >= 310 and min(sizes[1:4]) >= 210  # big enough to compare
    wide.context.close()

    # On a phone: the question page fills the screen, as in MTurk's mobile view.
    phone = local_page(
        browser,
        (sandbox.url, images.base),
        foreign,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    phone.goto(
        f"{sandbox.url}/hit/{hit_id}/question?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE"
        f"&hitId={hit_id}&turkSubmitTo={sandbox.url}"
    )
    expect(phone.locator("#preview-note")).to_be_visible()
    phone.wait_for_timeout(300)
    phone.screenshot(path=str(artifacts / "04-preview-phone.png"), full_page=True)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling
    option_width = phone.locator(".option img").first.evaluate(
        "i => i.getBoundingClientRect().width"
    )
    assert option_width >= 150  # two options side by side, still big enough to compare
    assert foreign == []
    phone.context.close()
