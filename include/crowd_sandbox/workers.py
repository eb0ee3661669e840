"""Simulated workers: threads that use the sandbox's worker site exactly as a person would.

``--workers "diligent:6,careless:3,spammer:1"`` starts that many workers; a total and shares,
``--workers "20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"``, starts that many in
all, the shares (in [0, 1], summing to 1 within 1e-6) rounded to counts that sum to the total
by the largest remainder (ties: the larger share, then the profile named first; a share that
rounds to 0 starts nobody), here 14 diligent and 2 each of the others. At most 1000 workers
in all.

Each one loops: list the HITs it can find (``GET /?workerId=W``; a worker the requester
blocked passes over the HITs the list marks blocked, so it never works on them), pick up to
``HITS_PER_LIST`` of those it has not done, in a random order, and for each in turn (the list
is loaded again when they are done): open it, accept it (the preview page's ``form#accept``;
a HIT that filled up meanwhile is skipped for a while), load the question frame (the
``iframe#question`` of the page the accept redirects to), look at the pictures, think for a
while, fill the form and post it to the form's action (the site's ``/mturk/externalSubmit``).
A HIT page that cannot be accepted for want of a qualification, and offers its test ("Take the
qualification test") or a request, makes the worker follow that link, answer the test like any
form (``simulated_worker/qualifying``; each type at most once every ``QUALIFY_EVERY_SECONDS``)
and, once granted, load the HIT again and accept it.
Workers read nothing but the HTML and images a browser would load; they never touch the
database or the requester API.
This module is the crowd (the threads); what one worker is made of is in ``simulated_worker/``:
``profiles``, ``page`` (understanding), ``perception``, ``answering`` and ``browser``.

Worker ids are deterministic: ``A`` + the profile name in capitals + a 1-based number
(``ADILIGENT01``, ``ACARELESS03``, ``ASPAMMER01``, ``ASTRATEGIC01``); they are registered with
the sandbox (with the qualification profile in ``PROFILES``) before any worker starts.

Profiles (``PROFILES`` in ``simulated_worker/profiles.py``, the one table to change):

============ ========= ========================================= ===========================
profile      looks at  picks                                     time per assignment
             images
============ ========= ========================================= ===========================
diligent     yes       the most similar option 97 % of the time,  1.0 x ``seconds``
                       else a random other option
careless     yes       the most similar option 60 % of the time,  0.6 x ``seconds``
                       else a random other option
spammer      no        half of the spammers (chosen per worker,  0.25 x ``seconds``
                       by the seed) always the first option, the
                       others a uniformly random option
strategic    yes       per image question: where the option      0.5 x ``seconds``
                       pictures look unrelated to each other
                       (mean pairwise similarity below 0.45,
                       ``careful_below``) like diligent, 97 %;
                       where they look alike (e.g. neighbouring
                       video frames) a uniformly random option
============ ========= ========================================= ===========================

The strategic worker games known-answer checks the way people do: it answers the questions
that look easy well and guesses on the hard ones. It tells them apart only by what the page
shows: it loads every option picture of every image question and scores each pair of them at
a glance, 32x32 ZNCC or colour (``perception.options_alike``); clearly different
pictures score about -0.4 to 0.2, frames a few percent of a pan apart about 0.7 to 0.95. It
never reads field names, option order or attributes to find the known-answer question.

Every think time is also scaled by a random factor in [0.7, 1.3]. With ``--worker-seed`` the
n-th assignment a worker answers is answered the same way on every run (the answer's random
generator is seeded from the seed, the worker id and n), whatever the threads' interleaving.

How a question page is understood (for HIT authors)
---------------------------------------------------

The page is parsed with ``html.parser``; no script runs.

*The form.* The first ``<form>`` whose action ends in ``/mturk/externalSubmit``, else the
first ``<form>`` with controls, else every control in the page. It is posted (form-encoded) to
its action if that URL is on this machine (127.0.0.1, localhost or the sandbox's own host),
else to ``<turkSubmitTo>/mturk/externalSubmit``, else to the sandbox's externalSubmit.
``assignmentId`` is taken from the frame's URL when the form has no such field or leaves it
empty (what MTurk's usual ``turkGetParam`` script does in a browser).

*Every field gets a valid value*, so any HTMLQuestion collects assignments:

- hidden inputs (and read-only ones) are sent as they are;
- each radio group (inputs sharing a ``name``) gets exactly one value: an image question (below)
  is answered by looking, any other group by a random pick (a spammer may always take the first);
- each group of check boxes gets a random non-empty subset ticked;
- each ``<select>`` gets one option, skipping disabled ones and an empty-valued placeholder;
- a group of check boxes or a ``<select multiple>`` whose controls say
  ``data-min-selections``/``data-max-selections`` (a QuestionForm's Min/MaxSelectionCount, as
  the sandbox renders it) gets that many choices;
- text inputs and ``<textarea>`` get a short sentence (kept within ``minlength``/``maxlength``);
  ``email``, ``url``, ``tel``, ``number``/``range`` (within ``min``/``max``), ``date``, ``time``,
  ``datetime-local``, ``month``, ``week`` and ``color`` inputs get a value of their type; a
  pre-filled value is kept;
- the first submit button is "clicked" (its ``name=value`` is sent if it has a name); disabled
  controls, file inputs, buttons and controls without a ``name`` are left out, as a browser does.

If nothing but ``assignmentId`` would be sent, a field ``answer=<sentence>`` is added.

*Crowd HTML Elements.* A page with a ``<crowd-form>`` is answered the way the browser's
``crowd-html-elements.js`` submits it (``crowd_elements.crowd_page``): its fields are the
``crowd-*`` fields and native controls inside the crowd-form, filled by the rules above
(``crowd-radio-group`` and ``crowd-classifier``/``crowd-image-classifier`` are questions with one
pick, ``crowd-checkbox`` groups check boxes, ``crowd-input``/``crowd-text-area`` text; native
radios are image questions as anywhere else), and the post is ``assignmentId`` plus one field,
``taskAnswers``, the JSON MTurk stores for a crowd-form, to ``<turkSubmitTo>/mturk/externalSubmit``.

*Image questions.* A radio group is an image question when its options show images:

1. an option's image is the first ``<img>`` inside its ``<label>`` (a label wrapping the input,
   or ``<label for="the input's id">``); failing that, the first ``<img>`` in the nearest
   enclosing element that holds no other option of the same group (``<div><img><input></div>``);
2. the target (query) image is, in order of preference:
   a. an ``<img data-role="target" data-question="NAME">`` where NAME is the radio group's name
      (``data-role`` may also be on an element wrapping the ``<img>``);
   b. going up from the smallest element that holds the whole group (e.g. its ``<fieldset>`` or
      ``<section>``), at the first level that holds images which are nobody's option image:
      those marked ``data-role="target"`` if any, and of these the nearest one *before* the
      group's first option (else the nearest after it).

   Recommended markup, one block per question::

       <fieldset>
         <img data-role="target" src="...query.jpg">
         <label><input type="radio" name="q1" value="a" required><img src="...a.jpg"></label>
         <label><input type="radio" name="q1" value="b"><img src="...b.jpg"></label>
         <label><input type="radio" name="q1" value="none"> None of these</label>
       </fieldset>

3. the worker fetches the target and option images (``http``/``https`` URLs on this machine, or
   ``data:`` URLs; anything else counts as unavailable, like a picture that fails to load) and
   lines each option up with the target, as a careful person does (``perception.look``): the
   whole target fitted inside the option at 70 to 100 % of its width and any position, and the
   target's central part likewise (zero-mean normalised cross-correlation, ZNCC, on 64-pixel
   greyscale copies), beside their colours (8x8x8 RGB histogram intersection, mapped to
   [-1, 1]). Of the options the whole target fits inside (``WHOLE_MATCH``), the best fit is
   the right one: of neighbouring video frames, the one that holds all of a cropped view. Else
   the option that resembles the target most is, except that when even it is below
   ``NONE_THRESHOLD`` (in ``perception``) and the group has an option without an image ("None
   of these"), that option is. Options whose image fails to load
   are never the right one; with no target (or no loadable option image) the question is
   answered as a guess. A strategic worker first scores the option images against each other
   (options without an image and images that fail to load are left out; with fewer than two
   loadable option images it guesses).

The log line of each submit says per radio group how it was chosen: ``looked`` (the most
similar option), ``erred`` (another one), ``guessed`` (could not tell), ``skimmed`` (a
strategic worker's random pick), ``first`` or ``random`` (a worker who does not look).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
import urllib.error
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from include.crowd_sandbox.crowd_elements import crowd_page
from include.crowd_sandbox.simulated_worker.answering import answer_form
from include.crowd_sandbox.simulated_worker.browser import Browser, NotLocal
from include.crowd_sandbox.simulated_worker.page import (
    accept_form,
    hits_on_list_page,
    question_frame,
    understand,
)
from include.crowd_sandbox.simulated_worker.perception import best_option, options_alike
from include.crowd_sandbox.simulated_worker.profiles import (
    MAX_WORKERS,
    PROFILES,
    Profile,
    format_spec,
    parse_spec,
    worker_ids,
)
from include.crowd_sandbox.simulated_worker.qualifying import qualification_offers, qualify

# A worker's parts live in simulated_worker/; the tests import these names from here.
__all__ = [
    "MAX_WORKERS",
    "PROFILES",
    "Browser",
    "SimulatedWorker",
    "SimulatedWorkers",
    "answer_form",
    "best_option",
    "format_spec",
    "hits_on_list_page",
    "options_alike",
    "parse_spec",
    "question_frame",
    "understand",
    "worker_ids",
]

log = logging.getLogger(__name__)

THINK_JITTER = (0.7, 1.3)
"""Each think time is ``seconds_per_assignment * profile.speed * uniform(*THINK_JITTER)``."""
IDLE_SECONDS = 1.0
"""How long (times a random factor in [0.5, 1.5]) a worker waits when it has nothing to do."""
MAX_BACKOFF_SECONDS = 30.0
HITS_PER_LIST = 5
"""How many HITs of one look at the list a worker goes through before loading the list again
(as a person works down a page; it also spares a big sandbox most of its list pages)."""
QUALIFY_EVERY_SECONDS = 60.0
"""A worker takes a qualification type's test (or requests it) at most this often."""


class SkipHit(Exception):
    """This HIT cannot be done now (not accepted, no question frame, ...)."""


class SimulatedWorker(threading.Thread):
    def __init__(
        self,
        worker_id: str,
        profile: Profile,
        browser: Browser,
        *,
        seconds_per_assignment: float,
        seed: str,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=f"crowd-worker-{worker_id}", daemon=True)
        self.worker_id = worker_id
        self.profile = profile
        self.browser = browser
        self.seconds_per_assignment = max(0.0, seconds_per_assignment)
        self.seed = seed
        self.stopping = stopping
        self.rng = random.Random(f"{seed}:{worker_id}:loop")
        self.first_option = (
            not profile.looks
            and random.Random(f"{seed}:{worker_id}:style").random() < profile.first_option_share
        )
        self.answered = 0
        self.done: set[str] = set()
        self._skip_until: dict[str, tuple[float, int]] = {}
        self._picked: list[str] = []  # HITs of the last look at the list, still to try
        self._tests_tried: dict[str, float] = {}  # qualification type -> when (monotonic)

    @property
    def style(self) -> str:
        if self.profile.looks:
            return "looks" if self.profile.careful_below is None else "looks where it is easy"
        return "first-option" if self.first_option else "random"

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                worked = self.step()
                failures = 0
                if not worked:
                    self.stopping.wait(IDLE_SECONDS * self.rng.uniform(0.5, 1.5))
            except Exception as error:  # noqa: BLE001 - a worker survives anything, and retries
                if self.stopping.is_set():
                    return  # a request cut short by the stop is no failure to report
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
                log.warning(
                    "worker %s: %s: %s (retrying in %.1f s)",
                    self.worker_id,
                    type(error).__name__,
                    error,
                    delay,
                )
                self.stopping.wait(delay)

    def _list_url(self) -> str:
        return f"{self.browser.base_url}/?{urlencode({'workerId': self.worker_id})}"

    def step(self) -> bool:
        """Try one HIT if there is one to do; return whether there was."""
        if not self._picked:
            page_url, html = self.browser.get(self._list_url())
            now = time.monotonic()
            todo = [
                hit_id
                for hit_id in hits_on_list_page(html, page_url)
                if hit_id not in self.done and self._skip_until.get(hit_id, (0.0, 0))[0] <= now
            ]
            if not todo:
                return False
            self._picked = self.rng.sample(todo, min(HITS_PER_LIST, len(todo)))
        hit_id = self._picked.pop(0)
        try:
            self.do_hit(hit_id)
        except SkipHit as reason:
            _, strikes = self._skip_until.get(hit_id, (0.0, 0))
            self._skip_until[hit_id] = (
                time.monotonic() + min(120.0, 5.0 * 2**strikes),
                strikes + 1,
            )
            log.debug("worker %s skips HIT %s: %s", self.worker_id, hit_id, reason)
        return True

    def do_hit(self, hit_id: str) -> None:
        base = self.browser.base_url
        preview_url = f"{base}/hit/{hit_id}?{urlencode({'workerId': self.worker_id})}"
        try:
            preview_url, preview = self.browser.get(preview_url)
        except urllib.error.HTTPError as error:
            raise SkipHit(f"preview answered {error.code}") from None
        found = accept_form(preview, preview_url)
        if found is None and self._qualify(preview, preview_url):
            preview_url, preview = self.browser.get(preview_url)  # qualified now: reload
            found = accept_form(preview, preview_url)
        action, hidden = found or (f"{base}/hit/{hit_id}/accept", [])
        if not any(name == "workerId" for name, _ in hidden):
            hidden.append(("workerId", self.worker_id))
        try:
            page_url, page = self.browser.post(action, hidden)
        except urllib.error.HTTPError as error:
            raise SkipHit(f"accept answered {error.code}") from None
        frame = question_frame(page, page_url)
        if frame is None:
            raise SkipHit("the accepted HIT's page has no question frame")
        params = parse_qs(urlsplit(frame).query)
        assignment_id = (params.get("assignmentId") or [""])[0]
        if not assignment_id or assignment_id == "ASSIGNMENT_ID_NOT_AVAILABLE":
            raise SkipHit("the HIT was not accepted (no assignment id in the question frame)")

        started = time.monotonic()
        rng = random.Random(f"{self.seed}:{self.worker_id}:answer:{self.answered}")
        think = self.seconds_per_assignment * self.profile.speed * rng.uniform(*THINK_JITTER)
        frame_url, question = self._retry(lambda: self.browser.get(frame))
        crowd = crowd_page(question, frame_url)  # a <crowd-form>: sent as its script sends it
        form = crowd.form if crowd is not None else understand(question, frame_url)
        cache: dict[str, bytes | None] = {}

        def fetch(url: str) -> bytes | None:
            if url not in cache:
                cache[url] = self.browser.image(url)
            return cache[url]

        answer = answer_form(form, self.profile, rng, fetch, first_option=self.first_option)
        self.answered += 1
        fields = [(k, v) for k, v in answer.fields if k != "assignmentId"]
        if crowd is not None:
            fields = crowd.submission(fields)
        given = next((v for k, v in answer.fields if k == "assignmentId"), "")
        if given in ("", "ASSIGNMENT_ID_NOT_AVAILABLE"):
            given = assignment_id
        fields.insert(0, ("assignmentId", given))
        submit_to = self._submit_url(form.action, params)

        if self.stopping.wait(max(0.0, think - (time.monotonic() - started))):
            return  # stopped while thinking: the assignment is left as it is
        self._retry(lambda: self.browser.post(submit_to, fields))
        self.done.add(hit_id)
        log.info(
            "worker %s (%s) submitted HIT %s assignment %s: %s",
            self.worker_id,
            self.profile.name,
            hit_id,
            given,
            ", ".join(f"{q}={v} ({answer.notes[q]})" for q, v in answer.choices.items())
            or f"{len(fields) - 1} fields",
        )

    def _qualify(self, page: str, url: str) -> bool:
        """Take the qualification tests (or send the requests) a HIT page offers, each type at
        most once every ``QUALIFY_EVERY_SECONDS``; return whether one was granted."""
        granted = False
        for type_id, offer in qualification_offers(page, url):
            now = time.monotonic()
            if now - self._tests_tried.get(type_id, -QUALIFY_EVERY_SECONDS) < QUALIFY_EVERY_SECONDS:
                continue
            self._tests_tried[type_id] = now
            rng = random.Random(f"{self.seed}:{self.worker_id}:qualify:{len(self._tests_tried)}")
            outcome = qualify(
                self.browser,
                offer,
                self.profile,
                rng,
                self.browser.image,
                first_option=self.first_option,
            )
            log.info("worker %s asked for qualification %s: %s", self.worker_id, type_id, outcome)
            granted = granted or outcome == "Granted"
        return granted

    def _submit_url(self, action: str | None, params: dict[str, list[str]]) -> str:
        if action and self.browser.is_local(action):
            return action
        turk = (params.get("turkSubmitTo") or [""])[0].rstrip("/")
        if turk and self.browser.is_local(turk):
            return f"{turk}/mturk/externalSubmit"
        return f"{self.browser.base_url}/mturk/externalSubmit"

    def _retry(self, call: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        """Retry a request of an accepted assignment a few times (server errors, timeouts)."""
        for attempt in range(3):
            try:
                return call()
            except urllib.error.HTTPError as error:
                if error.code < 500 or attempt == 2:
                    raise SkipHit(f"the site answered {error.code}") from None
            except (OSError, NotLocal) as error:
                if attempt == 2 or isinstance(error, NotLocal):
                    raise
            if self.stopping.wait(0.5 * 2**attempt):
                raise SkipHit("stopping")
        raise AssertionError("unreachable")


class SimulatedWorkers:
    """The simulated crowd of a sandbox: ``start()`` registers and starts it, ``stop()`` ends it."""

    def __init__(
        self,
        base_url: str,
        spec: str,
        *,
        seconds_per_assignment: float = 2.0,
        seed: int | None = None,
        register: Callable[..., Any] | None = None,
    ) -> None:
        self.specs = worker_ids(spec)  # validates the spec (ValueError)
        if seconds_per_assignment < 0:
            raise ValueError("--seconds-per-assignment must not be negative")
        parts = urlsplit(base_url)
        if parts.hostname in ("0.0.0.0", "::", ""):  # a wildcard bind is reached via loopback
            port = f":{parts.port}" if parts.port else ""
            base_url = urlunsplit((parts.scheme, f"127.0.0.1{port}", parts.path, "", ""))
        self.base_url = base_url.rstrip("/")
        self.seconds_per_assignment = seconds_per_assignment
        self.seed = str(seed) if seed is not None else secrets.token_hex(8)
        self.register = register
        self._stopping = threading.Event()
        self.workers: list[SimulatedWorker] = []

    def start(self) -> SimulatedWorkers:
        if self.workers:
            return self
        browser = Browser(self.base_url)
        for worker_id, profile in self.specs:
            if self.register is not None:
                self.register(worker_id, **profile.registration)
            self.workers.append(
                SimulatedWorker(
                    worker_id,
                    profile,
                    browser,
                    seconds_per_assignment=self.seconds_per_assignment,
                    seed=self.seed,
                    stopping=self._stopping,
                )
            )
        for worker in self.workers:
            worker.start()
        log.info(
            "%d simulated workers: %s",
            len(self.workers),
            ", ".join(f"{w.worker_id} ({w.profile.name}, {w.style})" for w in self.workers),
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker and wait for them (at most ``timeout`` seconds in all)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))
        stuck = [w.worker_id for w in self.workers if w.is_alive()]
        if stuck:
            log.warning("simulated workers still busy after %.0f s: %s", timeout, ", ".join(stuck))
