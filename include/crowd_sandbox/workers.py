"""Simulated workers: threads that use the sandbox's worker site exactly as a person would.

``--workers "diligent:6,careless:3,spammer:1"`` starts that many workers. Each one loops:
list the HITs it can find (``GET /?workerId=W``), open one it has not done, accept it (the
preview page's ``form#accept``), load the question frame (the ``iframe#question`` of the page
the accept redirects to), look at the pictures, think for a while, fill the form and post it
to the form's action (the site's ``/mturk/externalSubmit``). Workers read nothing but the
HTML and images a browser would load; they never touch the database or the requester API.

Worker ids are deterministic: ``A`` + the profile name in capitals + a 1-based number
(``ADILIGENT01``, ``ACARELESS03``, ``ASPAMMER01``); they are registered with the sandbox
(with the qualification profile in ``PROFILES``) before any worker starts.

Profiles (``PROFILES``, the one table to change):

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
============ ========= ========================================= ===========================

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
- text inputs and ``<textarea>`` get a short sentence (kept within ``minlength``/``maxlength``);
  ``email``, ``url``, ``tel``, ``number``/``range`` (within ``min``/``max``), ``date``, ``time``,
  ``datetime-local``, ``month``, ``week`` and ``color`` inputs get a value of their type; a
  pre-filled value is kept;
- the first submit button is "clicked" (its ``name=value`` is sent if it has a name); disabled
  controls, file inputs, buttons and controls without a ``name`` are left out, as a browser does.

If nothing but ``assignmentId`` would be sent, a field ``answer=<sentence>`` is added.

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
   ``data:`` URLs; anything else counts as unavailable, like a picture that fails to load),
   reduces each to a 32x32 greyscale thumbnail and scores each option by zero-mean normalised
   cross-correlation (ZNCC) with the target, or by colour (8x8x8 RGB histogram intersection,
   mapped to [-1, 1]) when that says "alike" more. The most similar option is the right one, except
   that when the best score is below ``NONE_THRESHOLD`` and the group has an option without an
   image ("None of these"), that option is. Options whose image fails to load are never the
   right one; with no target (or no loadable option image) the question is answered as a guess.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import random
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlencode, urljoin, urlsplit, urlunsplit

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


# --- profiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How one kind of worker behaves; see the table in the module docstring."""

    name: str
    looks: bool
    """Whether the worker looks at the images at all (if not, it guesses)."""
    accuracy: float
    """When looking: the probability of picking the most similar option (else another one)."""
    first_option_share: float
    """When not looking: the share of these workers who always pick the first option (the
    others pick uniformly at random). Chosen once per worker."""
    speed: float
    """Multiplies ``seconds_per_assignment``."""
    registration: dict[str, Any]
    """The worker profile registered with the sandbox (checked by qualification requirements).
    Approval rates are high for all, as on MTurk, where they say little about quality."""
    sentences: tuple[str, ...]
    """What the worker writes into free-text fields."""


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "diligent",
            looks=True,
            accuracy=0.97,
            first_option_share=0.0,
            speed=1.0,
            registration={
                "PercentAssignmentsApproved": 99,
                "NumberHITsApproved": 5000,
                "Locale": {"Country": "US"},
                "Masters": True,
            },
            sentences=(
                "Compared every option with the target carefully.",
                "The chosen picture shows the same scene as the target.",
                "Checked the details; this is my best answer.",
            ),
        ),
        Profile(
            "careless",
            looks=True,
            accuracy=0.60,
            first_option_share=0.0,
            speed=0.6,
            registration={
                "PercentAssignmentsApproved": 97,
                "NumberHITsApproved": 1500,
                "Locale": {"Country": "US"},
                "Masters": False,
            },
            sentences=("looks ok", "fine", "similar"),
        ),
        Profile(
            "spammer",
            looks=False,
            accuracy=0.0,
            first_option_share=0.5,
            speed=0.25,
            registration={
                "PercentAssignmentsApproved": 95,
                "NumberHITsApproved": 1000,
                "Locale": {"Country": "US"},
                "Masters": False,
            },
            sentences=("good", "nice", "ok"),
        ),
    )
}

THINK_JITTER = (0.7, 1.3)
"""Each think time is ``seconds_per_assignment * profile.speed * uniform(*THINK_JITTER)``."""
IDLE_SECONDS = 1.0
"""How long (times a random factor in [0.5, 1.5]) a worker waits when it has nothing to do."""
MAX_BACKOFF_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 5.0
MAX_PAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_BYTES = 20 * 1024 * 1024
THUMB_SIDE = 32
NONE_THRESHOLD = 0.15
"""Below this best ZNCC, an option without an image ("None of these") is the right answer.

Low on purpose: an off-centre crop with a brightness change and blur scores about 0.25 against
its source on 32x32 thumbnails, while unrelated pictures score around 0 (measured on the demo's
known-answer sets)."""
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_WORKER_SPEC = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(\S+?)\s*$")


def parse_spec(spec: str) -> list[tuple[Profile, int]]:
    """Parse ``"diligent:6,careless:3,spammer:1"``; raise ``ValueError`` saying what is wrong."""
    if not spec or not spec.strip():
        raise ValueError('--workers is empty; give "profile:count" pairs, e.g. "diligent:2"')
    known = ", ".join(PROFILES)
    parsed: list[tuple[Profile, int]] = []
    seen: set[str] = set()
    for part in spec.split(","):
        match = _WORKER_SPEC.match(part)
        if not match:
            raise ValueError(
                f'--workers: {part.strip()!r} is not "profile:count" (profiles: {known})'
            )
        name, count_text = match.group(1).lower(), match.group(2)
        if name not in PROFILES:
            raise ValueError(f"--workers: unknown profile {name!r} (profiles: {known})")
        if name in seen:
            raise ValueError(f"--workers: profile {name!r} is given twice")
        try:
            count = int(count_text)
        except ValueError:
            raise ValueError(
                f"--workers: the count of {name!r} must be a whole number, not {count_text!r}"
            ) from None
        if count < 1:
            raise ValueError(f"--workers: the count of {name!r} must be at least 1, not {count}")
        seen.add(name)
        parsed.append((PROFILES[name], count))
    return parsed


def worker_ids(spec: str) -> list[tuple[str, Profile]]:
    """The workers a spec starts, as ``(worker id, profile)``, in spec order."""
    found = []
    for profile, count in parse_spec(spec):
        width = max(2, len(str(count)))
        for index in range(1, count + 1):
            found.append((f"A{profile.name.upper()}{index:0{width}d}", profile))
    return found


# --- a small DOM ----------------------------------------------------------------------------

_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    order: int = 0

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def iter(self, *tags: str) -> Iterable[Node]:
        """This node's descendants in document order (``template`` contents excluded)."""
        for child in self.children:
            if child.tag == "template":
                continue
            if not tags or child.tag in tags:
                yield child
            yield from child.iter(*tags)

    def ancestors(self) -> Iterable[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def contains(self, other: Node) -> bool:
        return any(a is self for a in other.ancestors())

    def all_text(self) -> str:
        return "".join(self.text) + "".join(child.all_text() for child in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.count = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("option", "optgroup"):  # an open <option> ends where the next one starts
            for index in range(len(self.stack) - 1, 0, -1):
                if self.stack[index].tag in ("select", "datalist"):
                    break
                if self.stack[index].tag == "option":
                    del self.stack[index:]
                    break
        self.count += 1
        parent = self.stack[-1]
        node = Node(tag, {k.lower(): v or "" for k, v in attrs}, parent, order=self.count)
        parent.children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse_html(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- understanding a form -------------------------------------------------------------------


@dataclass
class Option:
    value: str
    image: str | None  # absolute URL (or data: URL) of the option's picture


@dataclass
class Question:
    """A radio group: one value must be chosen."""

    name: str
    options: list[Option]
    target: str | None = None  # absolute URL of the target picture, if any

    @property
    def has_images(self) -> bool:
        return self.target is not None and any(o.image for o in self.options)


@dataclass
class Control:
    kind: str  # hidden, text, textarea, select, checkbox, submit, ...
    name: str
    value: str
    attrs: dict[str, str]
    options: list[tuple[str, bool]] = field(default_factory=list)  # select: (value, disabled)


@dataclass
class Form:
    action: str | None  # absolute URL, or None when the page gives none
    controls: list[Control]  # every control but radios, in document order
    questions: list[Question]  # radio groups, in document order


def understand(html: str, url: str) -> Form:
    """Find the form of a question page, its fields and its image questions."""
    root = parse_html(html)
    base = url
    for node in root.iter("base"):
        if node.get("href"):
            base = urljoin(url, node.get("href"))
            break

    forms = [f for f in root.iter("form") if any(True for _ in _controls_of(root, f))]
    form = next(
        (f for f in forms if (f.get("action") or "").rstrip("/").endswith("/mturk/externalSubmit")),
        forms[0] if forms else None,
    )
    action = None
    if form is not None and (form.get("action") or "").strip():
        action = urljoin(base, form.get("action", "").strip())
    nodes = list(_controls_of(root, form))

    def img_url(img: Node) -> str | None:
        src = (img.get("src") or "").strip()
        return urljoin(base, src) if src else None

    radios: dict[str, list[Node]] = {}
    controls: list[Control] = []
    for node in nodes:
        if "disabled" in node.attrs or not node.get("name"):
            continue
        name = node.get("name") or ""
        if node.tag == "textarea":
            controls.append(Control("textarea", name, node.all_text(), node.attrs))
        elif node.tag == "select":
            options = [
                (o.get("value") if "value" in o.attrs else o.all_text().strip(), _disabled(o))
                for o in node.iter("option")
            ]
            controls.append(
                Control("select", name, "", node.attrs, [(v or "", d) for v, d in options])
            )
        elif node.tag == "button":
            if (node.get("type") or "submit").lower() == "submit":
                controls.append(Control("submit", name, node.get("value") or "", node.attrs))
        else:
            kind = (node.get("type") or "text").lower()
            if kind == "radio":
                radios.setdefault(name, []).append(node)
            else:
                value = node.get("value") or ("on" if kind == "checkbox" else "")
                controls.append(Control(kind, name, value, node.attrs))

    # option images
    labels_for: dict[str, list[Node]] = {}
    for label in root.iter("label"):
        if label.get("for"):
            labels_for.setdefault(label.get("for") or "", []).append(label)
    option_img: dict[int, Node] = {}  # id(radio) -> img
    groups: dict[str, Node] = {}  # name -> smallest element holding the whole group
    for name, members in radios.items():
        groups[name] = _common_ancestor(members)
        for radio in members:
            img = _option_image(radio, members, labels_for, groups[name])
            if img is not None:
                option_img[id(radio)] = img
    option_imgs = {id(img) for img in option_img.values()}

    all_imgs = [img for img in root.iter("img") if id(img) not in option_imgs and img_url(img)]
    claimed = {
        id(img): img.get("data-question")
        for img in all_imgs
        if img.get("data-question") and _is_target(img)
    }
    questions = []
    for name, members in radios.items():
        target = next((img for img in all_imgs if claimed.get(id(img)) == name), None)
        if target is None:
            target = _nearest_target(groups[name], members[0], all_imgs, claimed)
        options = [
            Option(
                radio.get("value") if "value" in radio.attrs else "on",
                img_url(option_img[id(radio)]) if id(radio) in option_img else None,
            )
            for radio in members
        ]
        questions.append(Question(name, options, img_url(target) if target is not None else None))
    return Form(action, controls, questions)


def _disabled(option: Node) -> bool:
    return "disabled" in option.attrs or any(
        a.tag == "optgroup" and "disabled" in a.attrs for a in option.ancestors()
    )


def _controls_of(root: Node, form: Node | None) -> Iterable[Node]:
    """The controls a form submits (its descendants and ``form="its id"`` ones)."""
    form_id = form.get("id") if form is not None else None
    for node in root.iter("input", "select", "textarea", "button"):
        if form is None:
            yield node
        elif form.contains(node) and not node.get("form"):
            yield node
        elif form_id and node.get("form") == form_id:
            yield node


def _common_ancestor(nodes: Sequence[Node]) -> Node:
    if len(nodes) == 1:
        return nodes[0]
    chain = [nodes[0], *nodes[0].ancestors()]
    for candidate in chain:
        if all(candidate is n or candidate.contains(n) for n in nodes[1:]):
            return candidate
    return chain[-1]


def _is_target(img: Node) -> bool:
    return any(n.get("data-role") == "target" for n in [img, *img.ancestors()])


def _first_img(node: Node) -> Node | None:
    if node.tag == "img":
        return node
    return next((img for img in node.iter("img") if img.get("src")), None)


def _option_image(
    radio: Node, members: Sequence[Node], labels_for: dict[str, list[Node]], group: Node
) -> Node | None:
    labels = [a for a in radio.ancestors() if a.tag == "label"]
    if radio.get("id"):
        labels += labels_for.get(radio.get("id") or "", [])
    for label in labels:
        img = _first_img(label)
        if img is not None:
            return img
    if len(members) < 2:
        return None
    for ancestor in radio.ancestors():
        if ancestor is group or any(m is not radio and ancestor.contains(m) for m in members):
            return None
        img = next((i for i in ancestor.iter("img") if i.get("src") and not _is_target(i)), None)
        if img is not None:
            return img
    return None


def _nearest_target(
    group: Node, first: Node, images: Sequence[Node], claimed: dict[int, str | None]
) -> Node | None:
    free = [img for img in images if id(img) not in claimed]
    for block in [group, *group.ancestors()]:
        inside = [img for img in free if block.contains(img)]
        if not inside:
            continue
        marked = [img for img in inside if _is_target(img)]
        pool = marked or inside
        before = [img for img in pool if img.order < first.order]
        return before[-1] if before else pool[0]
    return None


# --- looking at pictures --------------------------------------------------------------------


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> np.ndarray | None:
    """A zero-mean, unit-norm ``side`` x ``side`` greyscale thumbnail (None if undecodable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (side * 2, side * 2))
            grey = image.convert("L").resize((side, side), Image.Resampling.BOX)
    except Exception:  # noqa: BLE001 - a picture that does not decode is just not seen
        return None
    pixels = np.asarray(grey, dtype=np.float64).ravel()
    pixels -= pixels.mean()
    norm = float(np.linalg.norm(pixels))
    return pixels / norm if norm > 1e-6 else pixels


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """ZNCC of two thumbnails, in [-1, 1] (0 when either is flat)."""
    return float(np.dot(a, b))


def colours(data: bytes) -> np.ndarray | None:
    """A normalised 8x8x8 RGB histogram of a small copy (None if undecodable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (128, 128))
            rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.uint16) // 32
    except Exception:  # noqa: BLE001 - a picture that does not decode is just not seen
        return None
    bins = np.bincount((rgb[..., 0] * 64 + rgb[..., 1] * 8 + rgb[..., 2]).ravel(), minlength=512)
    return bins / bins.sum()


def colour_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection mapped to [-1, 1], comparable with ZNCC."""
    return 2.0 * float(np.minimum(a, b).sum()) - 1.0


def best_option(
    question: Question, fetch: Callable[[str], bytes | None]
) -> tuple[int | None, list[float | None]]:
    """The index of the option that looks most like the target, and every option's score.

    None when the worker cannot tell (no target, or neither it nor any option image loads).
    """
    scores: list[float | None] = [None] * len(question.options)
    target_data = fetch(question.target) if question.target else None
    target = thumbnail(target_data) if target_data else None
    if target is None:
        return None, scores
    target_colours = colours(target_data)
    for index, option in enumerate(question.options):
        data = fetch(option.image) if option.image else None
        thumb = thumbnail(data) if data else None
        if thumb is not None:
            # Layout (ZNCC) or colour, whichever says "alike" more: a shifted crop of a star
            # field has no layout in common with its source, but the same colours.
            score = similarity(target, thumb)
            option_colours = colours(data)
            if target_colours is not None and option_colours is not None:
                score = max(score, colour_similarity(target_colours, option_colours))
            scores[index] = score
    seen = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not seen:
        return None, scores
    best_score, best = max(seen)
    if best_score < NONE_THRESHOLD:
        imageless = [i for i, o in enumerate(question.options) if o.image is None]
        if imageless:
            return imageless[0], scores
    return best, scores


# --- answering ------------------------------------------------------------------------------


@dataclass
class Answer:
    fields: list[tuple[str, str]]
    choices: dict[str, str]  # radio group -> chosen value
    notes: dict[str, str]  # radio group -> how it was chosen (looked/erred/guessed/first)


def answer_form(
    form: Form,
    profile: Profile,
    rng: random.Random,
    fetch: Callable[[str], bytes | None],
    *,
    first_option: bool = False,
) -> Answer:
    """Fill every field of a form as a worker of ``profile`` would (see the module docstring).

    ``first_option``: this (not looking) worker always takes a radio group's first option.
    """
    fields: list[tuple[str, str]] = []
    choices: dict[str, str] = {}
    notes: dict[str, str] = {}
    for question in form.questions:
        options = question.options
        if profile.looks:
            best = None
            if question.has_images and len(options) > 1:
                best, _ = best_option(question, fetch)
            if best is None:
                index, note = rng.randrange(len(options)), "guessed"
            elif rng.random() < profile.accuracy:
                index, note = best, "looked"
            else:
                index = rng.choice([i for i in range(len(options)) if i != best])
                note = "erred"
        elif first_option:
            index, note = 0, "first"
        else:
            index, note = rng.randrange(len(options)), "random"
        choices[question.name] = options[index].value
        notes[question.name] = note

    submit_done = False
    for control in form.controls:
        kind, name = control.kind, control.name
        if kind in ("file", "button", "reset", "image"):
            continue
        if kind == "submit":
            if not submit_done:
                submit_done = True
                if name:
                    fields.append((name, control.value))
            continue
        if kind == "checkbox":
            continue  # below, per group
        if kind == "hidden" or "readonly" in control.attrs:
            fields.append((name, control.value))
        elif kind == "select":
            fields.extend((name, v) for v in _pick_select(control, profile, rng))
        else:
            fields.append((name, _typed_value(control, profile, rng)))

    checkboxes: dict[str, list[Control]] = {}
    for control in form.controls:
        if control.kind == "checkbox":
            checkboxes.setdefault(control.name, []).append(control)
    for name, boxes in checkboxes.items():
        if not profile.looks:
            ticked = [boxes[0]] if len(boxes) == 1 or rng.random() < 0.5 else boxes
        else:
            ticked = [b for b in boxes if rng.random() < 0.5] or [rng.choice(boxes)]
        fields.extend((name, b.value) for b in ticked)

    fields.extend(choices.items())
    if not fields or all(name == "assignmentId" for name, _ in fields):
        fields.append(("answer", rng.choice(profile.sentences)))
    return Answer(fields, choices, notes)


def _pick_select(control: Control, profile: Profile, rng: random.Random) -> list[str]:
    usable = [v for v, disabled in control.options if not disabled]
    real = [v for v in usable if v] or usable
    if not real:
        return []
    if not profile.looks:
        return [real[0]]
    if "multiple" in control.attrs and len(real) > 1:
        return [v for v in real if rng.random() < 0.5] or [rng.choice(real)]
    return [rng.choice(real)]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _typed_value(control: Control, profile: Profile, rng: random.Random) -> str:
    kind, attrs = control.kind, control.attrs
    if control.value.strip():
        return control.value
    if kind in ("number", "range"):
        low, high = _number(attrs.get("min")), _number(attrs.get("max"))
        if kind == "range":
            low, high = low if low is not None else 0.0, high if high is not None else 100.0
        if low is not None and high is not None and high >= low:
            if attrs.get("step") == "any":
                return f"{rng.uniform(low, high):.2f}"
            if math.ceil(low) <= math.floor(high):
                return str(rng.randint(math.ceil(low), math.floor(high)))
            return _plain(low)
        return _plain(low if low is not None else high if high is not None else 1.0)
    fixed = {
        "email": "worker@example.com",
        "url": "http://example.com/",
        "tel": "5555550100",
        "date": attrs.get("min") or "2024-01-01",
        "time": attrs.get("min") or "12:00",
        "datetime-local": attrs.get("min") or "2024-01-01T12:00",
        "month": attrs.get("min") or "2024-01",
        "week": attrs.get("min") or "2024-W01",
        "color": "#808080",
    }
    if kind in fixed:
        return fixed[kind]
    text = rng.choice(profile.sentences)
    minimum = int(_number(attrs.get("minlength")) or 0)
    while len(text) < minimum:
        text = f"{text} {rng.choice(profile.sentences)}"
    maximum = _number(attrs.get("maxlength"))
    if maximum is not None and maximum >= 1:
        text = text[: int(maximum)]
    return text


# --- HTTP like a browser, on this machine only ----------------------------------------------


class NotLocal(Exception):
    """A URL that is not on this machine (never fetched)."""


class _LocalRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed: Callable[[str], bool]) -> None:
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        if not self.allowed(newurl):
            raise NotLocal(f"refusing to follow a redirect off this machine: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Browser:
    """GET and POST to the sandbox and other local servers (no proxies, no remote hosts)."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._own_host = (urlsplit(self.base_url).hostname or "").lower()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _LocalRedirects(self.is_local)
        )

    def is_local(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return parts.scheme in ("http", "https") and (host in LOCAL_HOSTS or host == self._own_host)

    def _open(self, url: str, data: bytes | None, limit: int) -> tuple[str, str]:
        if not self.is_local(url):
            raise NotLocal(url)
        request = urllib.request.Request(url, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with self._opener.open(request, timeout=self.timeout) as response:
            body = response.read(limit + 1)
            if len(body) > limit:
                raise ValueError(f"{url} is larger than {limit} bytes")
            charset = response.headers.get_content_charset() or "utf-8"
            return response.geturl(), body.decode(charset, "replace")

    def get(self, url: str) -> tuple[str, str]:
        """GET a page: ``(final URL, text)``; raises for non-2xx answers."""
        return self._open(url, None, MAX_PAGE_BYTES)

    def post(self, url: str, fields: Sequence[tuple[str, str]]) -> tuple[str, str]:
        return self._open(url, urlencode(list(fields)).encode("utf-8"), MAX_PAGE_BYTES)

    def image(self, url: str) -> bytes | None:
        """An image's bytes, or None when it is not local or fails to load."""
        if url.startswith("data:"):
            return _data_url(url)
        if not self.is_local(url):
            return None
        try:
            with self._opener.open(url, timeout=self.timeout) as response:
                body = response.read(MAX_IMAGE_BYTES + 1)
        except (OSError, ValueError, NotLocal) as error:
            log.debug("image %s did not load: %s", url, error)
            return None
        return body if len(body) <= MAX_IMAGE_BYTES else None


def _data_url(url: str) -> bytes | None:
    header, sep, payload = url.partition(",")
    if not sep:
        return None
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None


# --- pages of the worker site ---------------------------------------------------------------

_HIT_PATH = re.compile(r"^/hit/([^/?#]+)/?$")


def hits_on_list_page(html: str, url: str) -> list[str]:
    """HIT ids linked from the HIT list page (``/hit/<HITId>`` links), in page order."""
    found: list[str] = []
    origin = urlsplit(url).netloc
    for anchor in parse_html(html).iter("a"):
        target = urlsplit(urljoin(url, anchor.get("href") or ""))
        match = _HIT_PATH.match(target.path)
        if match and target.netloc == origin and match.group(1) not in found:
            found.append(match.group(1))
    return found


def accept_form(html: str, url: str) -> tuple[str, list[tuple[str, str]]] | None:
    """The preview page's ``form#accept``: ``(action URL, hidden fields)``."""
    root = parse_html(html)
    form = next((f for f in root.iter("form") if f.get("id") == "accept"), None)
    if form is None:
        return None
    fields = [
        (node.get("name") or "", node.get("value") or "")
        for node in form.iter("input")
        if node.get("name") and (node.get("type") or "text").lower() == "hidden"
    ]
    return urljoin(url, form.get("action") or url), fields


def question_frame(html: str, url: str) -> str | None:
    """The URL of the page's ``iframe#question`` (the first iframe if none has that id)."""
    frames = [f for f in parse_html(html).iter("iframe") if f.get("src")]
    frame = next((f for f in frames if f.get("id") == "question"), frames[0] if frames else None)
    return urljoin(url, frame.get("src") or "") if frame is not None else None


# --- the workers ----------------------------------------------------------------------------


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

    @property
    def style(self) -> str:
        if self.profile.looks:
            return "looks"
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
        """Do one HIT if there is one to do; return whether there was."""
        page_url, html = self.browser.get(self._list_url())
        now = time.monotonic()
        todo = [
            hit_id
            for hit_id in hits_on_list_page(html, page_url)
            if hit_id not in self.done and self._skip_until.get(hit_id, (0.0, 0))[0] <= now
        ]
        if not todo:
            return False
        hit_id = self.rng.choice(todo)
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
        form = understand(question, frame_url)
        cache: dict[str, bytes | None] = {}

        def fetch(url: str) -> bytes | None:
            if url not in cache:
                cache[url] = self.browser.image(url)
            return cache[url]

        answer = answer_form(form, self.profile, rng, fetch, first_option=self.first_option)
        self.answered += 1
        fields = [(k, v) for k, v in answer.fields if k != "assignmentId"]
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
