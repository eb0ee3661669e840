"""Crowd HTML Elements offline: the sandbox's own ``crowd-html-elements.js`` and what a
``<crowd-form>`` submits.

MTurk HITs written with Crowd HTML Elements load ``https://assets.crowd.aws/crowd-html-elements.js``
and wrap their fields in ``<crowd-form>``. Offline that script cannot load, so the worker site
(``WorkerSite.question``) points the script's URL at ``/static/crowd-html-elements.js``, a local
implementation of the elements requesters use most (``static/crowd-html-elements.js``), and
nothing else in the page changes. ``rewrite_script_urls`` is that rewrite.

What a crowd-form submits (what MTurk stores): one answer, QuestionIdentifier ``taskAnswers``,
whose FreeText is JSON, a list holding one object with a property per named field:

================================= =============================================================
element                           property
================================= =============================================================
``crowd-input``,                  ``name: "text"`` (left out when empty)
``crowd-text-area``
``crowd-checkbox``,               ``name: {value: checked}``, ``value`` defaulting to ``"on"``;
``crowd-radio-button``            elements sharing a ``name`` share one object
``crowd-classifier``,             ``name: {"label": "chosen category"}`` (left out when none)
``crowd-image-classifier``
``<input type=radio|checkbox>``   like crowd-checkbox: ``name: {value: checked}`` for every
                                  input of the name
other ``<input>``, ``<textarea>``, ``name: "value"`` (left out when empty)
``<select>``
================================= =============================================================

Disabled fields, fields without a name and buttons give nothing. Not implemented: the other
elements (bounding boxes, entity annotation, ``crowd-classifier-multi-select``, ...: they show
their inner HTML and submit nothing) and ``<crowd-form answer-format="flatten-objects">`` (the
answer is always the one ``taskAnswers`` JSON). The browser builds this JSON
(``crowdTaskAnswers`` in the script) and posts it as the field ``taskAnswers``, with
``assignmentId``, to ``{turkSubmitTo}/mturk/externalSubmit`` (``turkSubmitTo`` taken from the
page's URL only when it is an http(s) URL on the script's or the page's origin, else the
script's origin: a crafted link can neither send the answers elsewhere nor make the form run a
``javascript:`` URL); ``task_answers`` here is the same
encoder in Python (same keys, same key order, same escaping: the tests compare the two in
Chromium), used by the simulated workers, which run no script (``crowd_page``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.crowd_sandbox.simulated_worker.page import (
    Control,
    Form,
    Node,
    Option,
    Question,
    parse_html,
    understand,
)

STATIC = Path(__file__).resolve().parent / "static"
SCRIPT_PATH = "/static/crowd-html-elements.js"
SCRIPT_FILE = STATIC / "crowd-html-elements.js"
TASK_ANSWERS = "taskAnswers"

# MTurk's loader (any version or query string, http, https or protocol-relative).
REMOTE_SCRIPT = re.compile(
    r"(?:https?:)?//assets\.crowd\.aws/crowd-html-elements[\w.-]*\.js(?:\?[^\"'\s<>]*)?",
    re.IGNORECASE,
)

# Elements that hold a worker's answer; the rest (crowd-button, crowd-instructions,
# crowd-alert, ...) only show things.
TEXT_ELEMENTS = ("crowd-input", "crowd-text-area")
TOGGLE_ELEMENTS = ("crowd-checkbox", "crowd-radio-button")
CLASSIFIERS = ("crowd-classifier", "crowd-image-classifier")
_NOT_SENT = ("submit", "button", "reset", "image", "file")


def rewrite_script_urls(html: str, base_url: str) -> str:
    """Point MTurk's crowd-html-elements.js at the sandbox's own copy."""
    local = base_url.rstrip("/") + SCRIPT_PATH
    return REMOTE_SCRIPT.sub(lambda _: local, html)  # a function: no backslash escapes


def script() -> bytes:
    return SCRIPT_FILE.read_bytes()


# --- the encoder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One field of a crowd-form as it is submitted, in document order.

    ``kind`` is ``text`` (``value`` is the text), ``toggle`` (``value`` is the property name
    under ``name``, ``checked`` its boolean) or ``label`` (``value`` is the chosen category).
    """

    kind: str
    name: str
    value: str
    checked: bool = False


def task_answers(entries: Iterable[Entry]) -> str:
    """The FreeText of MTurk's ``taskAnswers`` answer, byte for byte what the script sends."""
    result: dict[str, Any] = {}
    for entry in entries:
        if entry.kind == "toggle":
            box = result.get(entry.name)
            if not isinstance(box, dict):
                box = result[entry.name] = {}
            box[entry.value] = entry.checked
        elif entry.kind == "label":
            if entry.value:
                result[entry.name] = {"label": entry.value}
        elif entry.value != "":
            result[entry.name] = entry.value
    return json.dumps([_js_order(result)], ensure_ascii=False, separators=(",", ":"))


_INDEX = re.compile(r"^(?:0|[1-9][0-9]*)$")


def _js_order(value: Any) -> Any:
    """Order an object's keys as JavaScript does: array-index keys ascending, then the others
    in insertion order (so that ``json.dumps`` matches ``JSON.stringify``)."""
    if not isinstance(value, dict):
        return value
    indices = sorted((k for k in value if _INDEX.match(k) and int(k) < 2**32 - 1), key=int)
    others = [k for k in value if k not in set(indices)]
    return {k: _js_order(value[k]) for k in [*indices, *others]}


def categories(text: str | None) -> list[str]:
    """A classifier's ``categories`` attribute (``"['a', 'b']"`` or JSON) as a list."""
    return [a if a is not None and q == "'" else b for q, a, b in _quoted(text or "")]


def _quoted(text: str) -> list[tuple[str, str, str]]:
    return [
        ("'" if m.group(1) is not None else '"', m.group(1), m.group(2))
        for m in re.finditer(r"'([^']*)'|\"([^\"]*)\"", text)
    ]


# --- a crowd-form page, as a simulated worker reads it ---------------------------------------


@dataclass
class _Field:
    node: Node
    kind: str  # text, toggle, label, radio (native), checkbox (native), select
    name: str
    key: str  # the name it has in the Form handed to answer_form
    value: str = ""
    choice: str | None = None  # a crowd-radio-button: its option in its group's Question


@dataclass
class CrowdPage:
    """The fields of a page's first ``<crowd-form>``, and a ``Form`` for ``answer_form``.

    Native radios keep their name (so image questions are read as on any page); crowd elements
    get keys no page uses (``crowd-classifier[name]#3``). ``submission`` turns what
    ``answer_form`` filled in back into the ``taskAnswers`` field a browser posts.
    """

    form: Form
    fields: list[_Field] = field(default_factory=list)

    def entries(self, filled: Sequence[tuple[str, str]]) -> list[Entry]:
        given: dict[str, list[str]] = {}
        for key, value in filled:
            given.setdefault(key, []).append(value)
        entries = []
        radios_seen: set[tuple[str, str]] = set()
        for f in self.fields:
            values = given.get(f.key, [])
            if f.choice is not None:
                entries.append(Entry("toggle", f.name, f.value, f.choice in values))
            elif f.kind == "radio":
                # One radio of a name is checked: the first with the chosen value (as a person
                # clicks it); a later one with the same value is not, and, as in the script,
                # its false is the one the JSON keeps.
                first = (f.name, f.value) not in radios_seen
                radios_seen.add((f.name, f.value))
                entries.append(Entry("toggle", f.name, f.value, first and f.value in values))
            elif f.kind in ("toggle", "checkbox"):
                entries.append(Entry("toggle", f.name, f.value, f.value in values))
            elif f.kind == "label":
                entries.append(Entry("label", f.name, values[0] if values else ""))
            else:
                entries.append(Entry("text", f.name, values[0] if values else f.value))
        return entries

    def submission(self, filled: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The fields a browser posts besides ``assignmentId``: one, ``taskAnswers``."""
        return [(TASK_ANSWERS, task_answers(self.entries(filled)))]


def crowd_page(html: str, url: str) -> CrowdPage | None:
    """Read a page's ``<crowd-form>`` (None when it has none) as the script would submit it."""
    root = parse_html(html)
    crowd_form = next(iter(root.iter("crowd-form")), None)
    if crowd_form is None:
        return None
    native = understand(html, url)  # native radios: image questions as on any other page
    by_name = {q.name: q for q in native.questions}
    page = CrowdPage(Form(None, [], []))
    toggle_groups: dict[tuple[str, str], str] = {}
    radio_questions: dict[str, Question] = {}
    seen_native_radio: set[str] = set()
    for index, node in enumerate(_fields_of(crowd_form)):
        tag, name = node.tag, node.get("name") or ""
        if not name or "disabled" in node.attrs:
            continue
        if tag in TEXT_ELEMENTS:
            key = f"{tag}[{name}]#{index}"
            kind = (node.get("type") or "text").lower() if tag == "crowd-input" else "textarea"
            attrs = dict(node.attrs)
            if node.get("max-length"):
                attrs["maxlength"] = node.get("max-length") or ""
            page.form.controls.append(Control(kind, key, node.get("value") or "", attrs))
            page.fields.append(_Field(node, "text", name, key, node.get("value") or ""))
        elif tag == "crowd-checkbox":
            key = toggle_groups.setdefault((tag, name), f"{tag}[{name}]#{index}")
            value = node.get("value") or "on"
            page.form.controls.append(Control("checkbox", key, value, dict(node.attrs)))
            page.fields.append(_Field(node, "toggle", name, key, value))
        elif tag == "crowd-radio-button":
            group = next((a for a in node.ancestors() if a.tag == "crowd-radio-group"), None)
            key = f"crowd-radio-group#{group.order}" if group is not None else f"{tag}[{name}]"
            if key not in radio_questions:
                radio_questions[key] = Question(key, [])
                page.form.questions.append(radio_questions[key])
            choice = str(node.order)  # which button (names and values may repeat in a group)
            radio_questions[key].options.append(Option(choice, None))
            value = node.get("value") or "on"
            page.fields.append(_Field(node, "toggle", name, key, value, choice))
        elif tag in CLASSIFIERS:
            key = f"{tag}[{name}]#{index}"
            options = [Option(c, None) for c in categories(node.get("categories"))]
            if options:
                page.form.questions.append(Question(key, options))
                page.fields.append(_Field(node, "label", name, key))
        elif tag == "input":
            kind = (node.get("type") or "text").lower()
            if kind in _NOT_SENT:
                continue
            value = node.get("value") or ("on" if kind in ("radio", "checkbox") else "")
            if kind == "radio":
                if name not in seen_native_radio and name in by_name:
                    seen_native_radio.add(name)
                    page.form.questions.append(by_name[name])
                page.fields.append(_Field(node, "radio", name, name, value))
            elif kind == "checkbox":
                page.form.controls.append(Control("checkbox", name, value, dict(node.attrs)))
                page.fields.append(_Field(node, "checkbox", name, name, value))
            else:
                page.form.controls.append(Control(kind, name, value, dict(node.attrs)))
                page.fields.append(_Field(node, "text", name, name, value))
        elif tag == "textarea":
            # HTML drops one newline right after <textarea>: the browser's value has none.
            text = re.sub(r"^\r?\n", "", node.all_text())
            page.form.controls.append(Control("textarea", name, text, dict(node.attrs)))
            page.fields.append(_Field(node, "text", name, name, text))
        elif tag == "select":
            native_select = next((c for c in native.controls if c.name == name), None)
            options = native_select.options if native_select else []
            page.form.controls.append(Control("select", name, "", dict(node.attrs), options))
            first = next((v for v, disabled in options if not disabled), "")
            page.fields.append(_Field(node, "select", name, name, first))
    return page


def _fields_of(crowd_form: Node) -> Iterable[Node]:
    """The fields of a crowd-form in document order (anything inside a crowd field excluded:
    the script renders native controls there)."""
    crowd_fields = (*TEXT_ELEMENTS, *TOGGLE_ELEMENTS, *CLASSIFIERS)
    for node in crowd_form.iter(*crowd_fields, "input", "textarea", "select"):
        if any(a.tag in crowd_fields for a in node.ancestors()):
            continue
        yield node
