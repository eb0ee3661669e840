"""Simulated workers: the spec, how they read forms and pictures, and a crowd doing real HITs."""

from __future__ import annotations

import base64
import io
import random
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from include.crowd_sandbox import workers
from include.crowd_sandbox.workers import (
    PROFILES,
    Browser,
    SimulatedWorkers,
    answer_form,
    best_option,
    hits_on_list_page,
    parse_spec,
    question_frame,
    understand,
    worker_ids,
)
from testsupport.imagekit import textured

# --- pictures and a tiny local web server ---------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def altered(image: Image.Image, seed: int = 0) -> Image.Image:
    """A slightly different copy: a small crop, brighter, a little noise, another size."""
    width, height = image.size
    copy = image.crop((6, 4, width - 5, height - 3)).resize((width * 3 // 4, height * 3 // 4))
    copy = ImageEnhance.Brightness(copy).enhance(1.15)
    pixels = np.asarray(copy, dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-12, 13, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


class Files:
    """Serve byte strings at paths from a thread on 127.0.0.1 (GET only)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                body = files.get(urlsplit(self.path).path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def files() -> Iterator[Files]:
    server = Files()
    yield server
    server.close()


def similarity_page(images: dict[str, str], questions) -> str:
    """An image-similarity form: per question a target and three labelled option images."""
    blocks = []
    for question in questions:
        options = "".join(
            f'<label><input type="radio" name="{question}" value="opt{i}" required>'
            f'<img src="{images[f"{question}-opt{i}"]}" width="120"></label>'
            for i in range(3)
        )
        blocks.append(
            f"<fieldset><legend>Which picture shows the same scene?</legend>"
            f'<img data-role="target" src="{images[f"{question}-target"]}">{options}</fieldset>'
        )
    return (
        '<!DOCTYPE html><html><head><script src="https://assets.example.com/x.js"></script>'
        '</head><body><form method="post" action="https://www.mturk.com/mturk/externalSubmit">'
        '<input type="hidden" name="assignmentId" id="assignmentId" value="">'
        + "".join(blocks)
        + '<input type="submit" id="submitButton" value="Submit"></form></body></html>'
    )


def similarity_images(add, correct: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Targets and options (the ``correct`` one an altered copy of its target); path→URL."""
    urls = {}
    for number, (question, right) in enumerate(correct.items()):
        target = textured(160, 120, seed=seed + 100 * number)
        urls[f"{question}-target"] = add(f"/img/{question}-target.png", png(target))
        for i in range(3):
            picture = (
                altered(target, i)
                if i == right
                else textured(160, 120, seed + 100 * number + i + 1)
            )
            urls[f"{question}-opt{i}"] = add(f"/img/{question}-opt{i}.png", png(picture))
    return urls


# --- the spec -------------------------------------------------------------------------------


def test_spec_gives_counts_and_deterministic_ids():
    parsed = parse_spec("diligent:6, careless:3 ,spammer:1")
    assert [(p.name, n) for p, n in parsed] == [("diligent", 6), ("careless", 3), ("spammer", 1)]
    ids = worker_ids("diligent:2,spammer:1")
    assert [(w, p.name) for w, p in ids] == [
        ("ADILIGENT01", "diligent"),
        ("ADILIGENT02", "diligent"),
        ("ASPAMMER01", "spammer"),
    ]
    assert all(re.fullmatch(r"A[A-Z0-9]+", w) for w, _ in worker_ids("careless:120"))
    assert worker_ids("careless:120")[-1][0] == "ACARELESS120"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lazy:2", "unknown profile 'lazy'"),
        ("diligent:0", "at least 1"),
        ("diligent:-2", "at least 1"),
        ("diligent:two", "whole number"),
        ("diligent:1.5", "whole number"),
        ("diligent", 'not "profile:count"'),
        ("diligent:2,,spammer:1", 'not "profile:count"'),
        ("diligent:1,diligent:2", "given twice"),
        ("", "empty"),
    ],
)
def test_bad_spec_is_a_clear_value_error(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_spec(spec)
    with pytest.raises(ValueError, match=re.escape(message)):
        SimulatedWorkers("http://127.0.0.1:1", spec)


# --- reading forms --------------------------------------------------------------------------

QUESTION_URL = "http://127.0.0.1:8911/hit/H1/question?assignmentId=A1&hitId=H1&workerId=W"

LAYOUTS = """<html><body><form action="/mturk/externalSubmit" method="post">
<input type="hidden" name="assignmentId" value="">
<img src="/static/logo.png" alt="logo">
<fieldset><img data-role="target" src="img/t1.png">
  <label><input type="radio" name="q1" value="a" required><img src="img/a1.png"> A</label>
  <label><input type="radio" name="q1" value="b"><img src="img/b1.png"> B</label>
  <label><input type="radio" name="q1" value="none"> None of these</label>
</fieldset>
<section><p><span data-role="target"><img src="http://127.0.0.1:9/t2.png"></span></p>
  <table><tr>
  <td><input type="radio" id="q2a" name="q2" value="a"><label for="q2a"><img src="a2.png"></label>
  <td><div><img src="b2.png"><br><input type="radio" name="q2" value="b"></div>
  </table>
</section>
<div class="question"><img src="t3.png"><div class="options">
  <label><input type="radio" name="q3" value="x"><img src="x3.png"></label>
  <label><input type="radio" name="q3" value="y"><img src="y3.png"></label>
</div></div>
<div id="targets"><img data-role="target" data-question="q4" src="t4.png"></div>
<div><label><input type="radio" name="q4" value="1"><img src="o4.png"></label>
  <label><input type="radio" name="q4" value="2"><img src="p4.png"></label></div>
<template><input name="ignored" type="text"></template>
</form></body></html>"""


def test_layouts_give_each_radio_group_its_target_and_option_images():
    form = understand(LAYOUTS, QUESTION_URL)
    assert form.action == "http://127.0.0.1:8911/mturk/externalSubmit"
    base = "http://127.0.0.1:8911/hit/H1/"
    found = {q.name: (q.target, [(o.value, o.image) for o in q.options]) for q in form.questions}
    assert found == {
        "q1": (
            base + "img/t1.png",
            [("a", base + "img/a1.png"), ("b", base + "img/b1.png"), ("none", None)],
        ),
        "q2": ("http://127.0.0.1:9/t2.png", [("a", base + "a2.png"), ("b", base + "b2.png")]),
        "q3": (base + "t3.png", [("x", base + "x3.png"), ("y", base + "y3.png")]),
        "q4": (base + "t4.png", [("1", base + "o4.png"), ("2", base + "p4.png")]),
    }
    assert [c.name for c in form.controls] == ["assignmentId"]  # template content is inert


UNKNOWN_FORM = """<!DOCTYPE html><html><head><base href="http://127.0.0.1:8911/assets/">
<style>p { color: red }</style><script>var x = "<input name='fake'>";</script></head><body>
<crowd-instructions>Rate the picture.</crowd-instructions>
<form id="mturk_form" method="post" action="https://www.mturk.com/mturk/externalSubmit">
<input type="hidden" name="assignmentId" id="assignmentId" value="">
<input type="hidden" name="batch" value="b-7">
<p>Is it sharp? <input type="radio" name="sharp" value="yes"> yes
   <input type="radio" name="sharp" value="no"> no</p>
<p>Quality <select name="quality" required><option value="">Choose…</option>
  <option value="bad" disabled>bad</option><option value="ok">ok<option>great</select></p>
<p>Tags <select name="tags" multiple><option>sky<option>sea</select></p>
<textarea name="comment" required maxlength="12"></textarea>
<input name="summary" required minlength="60">
<input type="text" name="prefilled" value="keep me">
<input type="email" name="mail"> <input type="number" name="stars" min="1" max="5">
<input type="range" name="slider"> <input type="date" name="day"> <input type="url" name="site">
<input type="checkbox" name="agree" value="yes" required>
<input type="checkbox" name="colours" value="red"><input type=checkbox name=colours value=blue>
<input type="text" name="off" disabled> <input type="file" name="upload"> <input type="text">
<input type="text" name="outside-but-mine" form="mturk_form">
<button type="button" name="helper">Help</button>
<input type="submit" name="action" value="Submit"><input type="submit" name="other" value="No">
</form>
<input type="text" name="outside" value="not submitted">
</body></html>"""


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("seed", range(5))
def test_an_unknown_form_gets_every_field_filled(profile, seed):
    form = understand(UNKNOWN_FORM, QUESTION_URL)
    assert form.action == "https://www.mturk.com/mturk/externalSubmit"
    answer = answer_form(form, PROFILES[profile], random.Random(seed), lambda url: None)
    got: dict[str, list[str]] = {}
    for name, value in answer.fields:
        got.setdefault(name, []).append(value)
    assert set(got) == {
        "assignmentId", "batch", "sharp", "quality", "tags", "comment", "summary", "prefilled",
        "mail", "stars", "slider", "day", "site", "agree", "colours", "outside-but-mine", "action",
    }  # fmt: skip
    single = {name: values[0] for name, values in got.items() if name not in ("tags", "colours")}
    assert all(len(got[name]) == 1 for name in single)
    assert single["batch"] == "b-7" and single["prefilled"] == "keep me"
    assert single["sharp"] in ("yes", "no") and answer.choices == {"sharp": single["sharp"]}
    assert single["quality"] in ("ok", "great")
    assert set(got["tags"]) <= {"sky", "sea"} and got["tags"]
    assert 1 <= len(single["comment"]) <= 12
    assert len(single["summary"]) >= 60 and single["outside-but-mine"].strip()
    assert "@" in single["mail"] and single["site"].startswith("http")
    assert single["stars"] in {"1", "2", "3", "4", "5"} and 0 <= int(single["slider"]) <= 100
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", single["day"])
    assert single["agree"] == "yes" and set(got["colours"]) <= {"red", "blue"} and got["colours"]
    assert single["action"] == "Submit"


def test_a_page_without_form_fields_still_gets_an_answer():
    form = understand("<html><body><p>Just look at this.</p></body></html>", QUESTION_URL)
    answer = answer_form(form, PROFILES["careless"], random.Random(0), lambda url: None)
    assert [name for name, _ in answer.fields] == ["answer"]
    # controls outside any <form> count when the page has no form
    form = understand(
        '<p><input type="radio" name="r" value="1"><input name="t"></p>', QUESTION_URL
    )
    fields = dict(answer_form(form, PROFILES["diligent"], random.Random(0), lambda u: None).fields)
    assert fields["r"] == "1" and fields["t"]


def test_list_page_and_frame_parsing():
    page = (
        '<ul><li><a href="/hit/3ABC?workerId=W">one</a><li><a href="/hit/3DEF?workerId=W">two</a>'
        '<li><a href="http://elsewhere.example/hit/3XYZ">no</a><li><a href="/hit/3ABC/accept">x</a>'
        '<li><a href="/hit/3ABC?workerId=W">dup</a></ul>'
    )
    assert hits_on_list_page(page, "http://127.0.0.1:8911/?workerId=W") == ["3ABC", "3DEF"]
    frame = '<iframe id="question" src="/hit/3ABC/question?assignmentId=A9&amp;hitId=3ABC">'
    assert question_frame(frame, "http://127.0.0.1:8911/hit/3ABC?workerId=W") == (
        "http://127.0.0.1:8911/hit/3ABC/question?assignmentId=A9&hitId=3ABC"
    )


# --- looking at pictures --------------------------------------------------------------------


def test_best_option_finds_the_altered_copy_over_http(files):
    browser = Browser("http://127.0.0.1:1")
    for right in range(3):
        correct = {"q1": right, "q2": (right + 1) % 3}
        urls = similarity_images(files.add, correct, seed=10 * right)
        form = understand(similarity_page(urls, correct), files.url + "/question")
        for question in form.questions:
            best, scores = best_option(question, browser.image)
            assert best == correct[question.name], scores
            assert scores[best] > 0.8 > max(s for i, s in enumerate(scores) if i != best)


def test_images_off_this_machine_are_never_fetched_and_data_urls_are_seen(monkeypatch):
    browser = Browser("http://127.0.0.1:1")

    def forbidden(*args, **kwargs):
        raise AssertionError("tried to fetch a remote image")

    monkeypatch.setattr(browser._opener, "open", forbidden)
    assert browser.image("https://example.com/a.png") is None
    assert browser.image("http://10.1.2.3/a.png") is None
    assert browser.image("ftp://127.0.0.1/a.png") is None
    data = png(textured(32, 32, seed=1))
    assert browser.image("data:image/png;base64," + base64.b64encode(data).decode()) == data


def _accuracy(files, profile: str, trials: int) -> tuple[float, list[str]]:
    correct = {"q1": 2, "q2": 1}
    urls = similarity_images(files.add, correct, seed=3)
    form = understand(similarity_page(urls, correct), files.url + "/question")
    browser, cache = Browser("http://127.0.0.1:1"), {}

    def fetch(url):
        if url not in cache:
            cache[url] = browser.image(url)
        return cache[url]

    right, notes = 0, []
    for seed in range(trials):
        answer = answer_form(form, PROFILES[profile], random.Random(seed), fetch)
        right += sum(answer.choices[q] == f"opt{i}" for q, i in correct.items())
        notes += answer.notes.values()
    return right / (2 * trials), notes


def test_profiles_are_right_as_often_as_documented(files):
    diligent, notes = _accuracy(files, "diligent", 150)
    assert diligent >= 0.93 and set(notes) <= {"looked", "erred"}
    careless, _ = _accuracy(files, "careless", 150)
    assert 0.5 <= careless <= 0.7
    spammer, notes = _accuracy(files, "spammer", 150)
    assert 0.2 <= spammer <= 0.47 and set(notes) == {"random"}

    form = understand(similarity_page(
        {f"q1-{k}": "data:," for k in ("target", "opt0", "opt1", "opt2")}, ["q1"]
    ), QUESTION_URL)  # fmt: skip
    for seed in range(5):
        answer = answer_form(
            form, PROFILES["spammer"], random.Random(seed), lambda u: None, first_option=True
        )
        assert answer.choices == {"q1": "opt0"} and answer.notes == {"q1": "first"}


def test_a_shifted_crop_of_a_star_field_is_recognised_by_its_colours(files):
    # Sparse points: a crop shifted by a tenth of the frame shares no layout with its source
    # (ZNCC about 0), but a worker still sees the same dark, starry picture.
    rng = np.random.default_rng(7)
    sky = np.zeros((360, 640, 3), dtype=np.uint8)
    ys, xs = rng.integers(0, 360, 400), rng.integers(0, 640, 400)
    sky[ys, xs] = rng.integers(120, 256, (400, 3))
    field = Image.fromarray(sky)
    target = files.add("/sky.png", png(field))
    crop = field.crop((64, 36, 640, 360)).resize((640, 360))
    options = [
        files.add("/o0.png", png(textured(640, 360, seed=3))),
        files.add("/o1.png", png(crop)),
        files.add("/o2.png", png(textured(640, 360, seed=4))),
    ]
    page = (
        f'<form><fieldset><img data-role="target" src="{target}">'
        + "".join(
            f'<label><input type="radio" name="q" value="{i}"><img src="{u}"></label>'
            for i, u in enumerate(options)
        )
        + '<label><input type="radio" name="q" value="none">None of these</label></fieldset></form>'
    )
    question = understand(page, files.url + "/").questions[0]
    assert best_option(question, Browser(files.url).image)[0] == 1


def test_a_none_option_is_chosen_when_no_picture_matches(files):
    target = files.add("/t.png", png(textured(120, 90, seed=1)))
    # Plain gradients: nothing like the textured target (ZNCC about -0.3). Two random textures
    # of the same generator correlate at about 0.2 on 32x32 thumbnails, above NONE_THRESHOLD.
    gradient = Image.linear_gradient("L")
    unrelated = [gradient.resize((120, 90)), gradient.rotate(90).resize((120, 90))]
    options = [files.add(f"/o{i}.png", png(image)) for i, image in enumerate(unrelated)]
    page = (
        f'<form><fieldset><img data-role="target" src="{target}">'
        + "".join(
            f'<label><input type="radio" name="q" value="{i}"><img src="{u}"></label>'
            for i, u in enumerate(options)
        )
        + '<label><input type="radio" name="q" value="none">None of these</label></fieldset></form>'
    )
    question = understand(page, files.url + "/").questions[0]
    assert best_option(question, Browser(files.url).image)[0] == 2


# --- a crowd on a stand-in worker site (the URL contract of worker_site.py) -----------------


class FakeSite:
    """The worker-site URL contract, for one HIT with ``slots`` assignments."""

    def __init__(self, question_html: str, slots: int, *, refuse: frozenset[str] = frozenset()):
        self.submitted: list[dict[str, str]] = []
        self.accepted: dict[str, str] = {}  # assignment -> worker
        self.hits = {"3HIT": question_html}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: str = "", location: str | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                worker = query.get("workerId", "")
                done = {s["workerId"] for s in site.submitted} | set(site.accepted.values())
                if parts.path == "/":
                    links = ""
                    if len(site.accepted) < slots and worker not in done:
                        links = f'<a href="/hit/3HIT?workerId={worker}">Pick images</a>'
                    self._send(200, f"<html><body>{links}</body></html>")
                elif parts.path == "/hit/3HIT":
                    assignment = query.get("assignmentId", "ASSIGNMENT_ID_NOT_AVAILABLE")
                    src = "/hit/3HIT/question?" + urlencode(
                        {
                            "assignmentId": assignment,
                            "hitId": "3HIT",
                            "workerId": worker,
                            "turkSubmitTo": site.url,
                        }
                    )
                    self._send(
                        200,
                        f'<iframe id="question" src="{src.replace("&", "&amp;")}"></iframe>'
                        '<form id="accept" method="post" action="/hit/3HIT/accept">'
                        f'<input type="hidden" name="workerId" value="{worker}">'
                        "<button>Accept</button></form>",
                    )
                elif parts.path == "/hit/3HIT/question":
                    html = site.hits["3HIT"].replace(
                        "https://www.mturk.com/mturk/externalSubmit",
                        f"{site.url}/mturk/externalSubmit",
                    )
                    self._send(200, html)
                else:
                    self._send(404, "no")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qsl(self.rfile.read(length).decode())
                fields = dict(form)
                path = urlsplit(self.path).path
                if path == "/hit/3HIT/accept":
                    worker = fields["workerId"]
                    if worker in refuse or len(site.accepted) >= slots:
                        self._send(409, "not for you")
                        return
                    assignment = f"ASG{len(site.accepted)}"
                    site.accepted[assignment] = worker
                    self._send(
                        303, location=f"/hit/3HIT?workerId={worker}&assignmentId={assignment}"
                    )
                elif path == "/mturk/externalSubmit":
                    fields["workerId"] = site.accepted[fields["assignmentId"]]
                    site.submitted.append(fields)
                    self._send(303, location=f"/?workerId={fields['workerId']}")
                else:
                    self._send(404, "no")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(condition, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def test_a_crowd_does_a_hit_through_the_site_contract(files, monkeypatch, caplog):
    monkeypatch.setattr(workers, "IDLE_SECONDS", 0.1)
    correct = {"left": 1, "right": 2}
    page = similarity_page(similarity_images(files.add, correct), correct)
    site = FakeSite(page, slots=3, refuse=frozenset({"ACARELESS01"}))
    registered = {}
    crowd = SimulatedWorkers(
        site.url,
        "diligent:2,careless:1,spammer:1",
        seconds_per_assignment=0.05,
        seed=1,  # diligent workers err 3 % of the time; with this seed their first answers do not
        register=lambda worker_id, **profile: registered.__setitem__(worker_id, profile),
    )
    caplog.set_level("INFO", logger=workers.__name__)
    try:
        crowd.start()
        assert set(registered) == {"ADILIGENT01", "ADILIGENT02", "ACARELESS01", "ASPAMMER01"}
        assert registered["ADILIGENT01"]["Masters"] is True
        assert registered["ASPAMMER01"]["Locale"] == {"Country": "US"}
        wait_for(lambda: len(site.submitted) == 3)
    finally:
        started = time.monotonic()
        crowd.stop()
        assert time.monotonic() - started < 3
        site.close()
    assert not any(w.is_alive() for w in crowd.workers)
    by_worker = {s["workerId"]: s for s in site.submitted}
    assert set(by_worker) == {"ADILIGENT01", "ADILIGENT02", "ASPAMMER01"}  # careless refused
    for fields in site.submitted:
        assert fields["assignmentId"].startswith("ASG")  # filled in from the frame's URL
        assert fields["left"] in {"opt0", "opt1", "opt2"} and fields["right"] in {
            "opt0", "opt1", "opt2"
        }  # fmt: skip
    for worker in ("ADILIGENT01", "ADILIGENT02"):
        assert (by_worker[worker]["left"], by_worker[worker]["right"]) == ("opt1", "opt2")
    submitted_logs = [r.getMessage() for r in caplog.records if "submitted HIT 3HIT" in r.message]
    assert len(submitted_logs) == 3 and any("left=opt1 (looked)" in m for m in submitted_logs)


def test_stop_is_prompt_while_thinking_and_the_crowd_survives_a_dead_site(monkeypatch):
    site = FakeSite("<form><input name='x'></form>", slots=5)
    crowd = SimulatedWorkers(site.url, "diligent:2", seconds_per_assignment=60, seed=1).start()
    wait_for(lambda: len(site.accepted) == 2)
    started = time.monotonic()
    crowd.stop()
    assert time.monotonic() - started < 2 and not site.submitted
    site.close()

    dead = SimulatedWorkers(site.url, "spammer:1", seconds_per_assignment=0, seed=1).start()
    time.sleep(0.5)  # connection refused: logged, backed off, still running
    assert dead.workers[0].is_alive()
    started = time.monotonic()
    dead.stop()
    assert time.monotonic() - started < 2


# --- the real sandbox -----------------------------------------------------------------------


def _answers(xml: str) -> dict[str, str]:
    ns = {
        "a": "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"
    }  # noqa: E501
    root = ET.fromstring(xml)
    return {
        answer.findtext("a:QuestionIdentifier", namespaces=ns): answer.findtext(
            "a:FreeText", namespaces=ns
        )
        for answer in root.findall("a:Answer", ns)
    }


def real_hit_answers(running, page: str, assignments: int) -> dict[str, dict[str, str]]:
    """Create a HIT showing ``page`` on the ``running`` sandbox through boto3, wait until its
    simulated workers submitted ``assignments`` assignments; return their answers by worker."""
    question = (
        '<HTMLQuestion xmlns="http://mechanicalturk.amazonaws.com/'
        'AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd">'
        f"<HTMLContent><![CDATA[{page}]]></HTMLContent><FrameHeight>800</FrameHeight>"
        "</HTMLQuestion>"
    )
    mturk = running.client()
    hit_id = mturk.create_hit(
        Title="Which picture shows the same scene?",
        Description="Pick the matching picture",
        Reward="0.05",
        MaxAssignments=assignments,
        LifetimeInSeconds=600,
        AssignmentDurationInSeconds=300,
        Question=question,
    )["HIT"]["HITId"]

    def submitted():
        found = mturk.list_assignments_for_hit(
            HITId=hit_id, AssignmentStatuses=["Submitted"], MaxResults=10
        )["Assignments"]
        return found if len(found) == assignments else None

    try:
        found = wait_for(submitted, timeout=60, every=0.5)
    except AssertionError:
        log = "".join(running.log)
        raise AssertionError(f"no {assignments} submissions; sandbox log:\n{log}") from None
    return {a["WorkerId"]: _answers(a["Answer"]) for a in found}


def test_simulated_workers_do_a_real_hit_end_to_end(sandbox_factory, files):
    running = sandbox_factory(
        "--workers", "diligent:2,spammer:1", "--seconds-per-assignment", "0.2", "--worker-seed", "1"
    )
    correct = {"first": 2, "second": 0}
    page = similarity_page(similarity_images(files.add, correct, seed=5), correct)
    answers = real_hit_answers(running, page, assignments=3)
    assert set(answers) == {"ADILIGENT01", "ADILIGENT02", "ASPAMMER01"}
    for worker in ("ADILIGENT01", "ADILIGENT02"):
        assert answers[worker]["first"] == "opt2" and answers[worker]["second"] == "opt0"
    assert answers["ASPAMMER01"]["first"] in {"opt0", "opt1", "opt2"}
    assert "submitted HIT" in "".join(running.log)
