"""MTurk's ``QuestionForm``: parse it (refusing what MTurk refuses), render it as the worker's
web form, and turn the submitted form into ``QuestionFormAnswers``.

Sources (MTurk API reference, 2017-01-17):

- ``ApiReference_QuestionFormDataStructureArticle``: a ``QuestionForm`` holds ``Overview`` and
  ``Question`` elements in any order, at least one ``Question``; a question has a
  ``QuestionIdentifier``, an optional ``DisplayName`` and ``IsRequired``, a ``QuestionContent``
  and an ``AnswerSpecification`` (``FreeTextAnswer``, ``SelectionAnswer``); content is
  ``Title``, ``Text``, ``List``/``ListItem``, ``Binary`` (``MimeType``, ``DataURL``,
  ``AltText``), ``EmbeddedBinary`` and ``FormattedContent``. ``FreeTextAnswer`` has
  ``Constraints`` (``IsNumeric`` ``minValue``/``maxValue``, ``Length``
  ``minLength``/``maxLength``, ``AnswerFormatRegex`` ``regex``/``errorText``/``flags``),
  ``DefaultText`` and ``NumberOfLinesSuggestion``; ``SelectionAnswer`` has
  ``MinSelectionCount``, ``MaxSelectionCount`` (both default 1), ``StyleSuggestion``
  (radiobutton, checkbox, list, dropdown, combobox, multichooser) and ``Selections``
  (``Selection``: ``SelectionIdentifier`` with ``Text``, ``FormattedContent`` or ``Binary``;
  ``OtherSelection``, a free-text answer).
- ``ApiReference_SchemaLocationArticle``: "Beginning Tuesday, December 12th 2017 the
  QuestionForm structure will no longer support the FileUploadAnswer element and the
  Application element" (2017-11-06 schema): both are refused at parse time here too.
- ``ApiReference_FormattedContentXHTMLArticle``: formatted content is an XHTML subset in CDATA;
  no JavaScript, no ``class``/``style``/``id``; only the listed tags. The sandbox checks it
  against an allow-list at CreateHIT and renders only allowed tags and attributes (URLs
  http, https, ftp or mailto only), everything else escaped.
- ``ApiReference_QuestionFormAnswersDataStructureArticle``: one ``Answer`` per question the
  worker answered: ``QuestionIdentifier`` with ``FreeText``, or ``SelectionIdentifier`` (one
  per selected choice) and/or ``OtherSelectionText``.

The worker UI of MTurk enforces ``IsRequired``, the selection counts and the free-text
constraints before it submits; ``answers`` enforces the same rules on the posted form and
raises ``RequestError`` (nothing is stored) naming the question and the rule.
Where the reference leaves a detail open the sandbox chooses, and says so: ``IsNumeric``
accepts integers and decimals (``-3``, ``2.5``; no exponents); ``AnswerFormatRegex`` is a Python
``re.search`` (anchor it with ``^...$`` as MTurk's examples do), ``flags="i"`` ignoring case;
an answer of only white space counts as no answer. ``IsNumeric`` takes ASCII digits only (not
"３" or "٣", which a browser's number field refuses too).

The requester's regex runs on the worker's answer in a child Python process
(``_RegexProcess``), at most ``REGEX_TIMEOUT_SECONDS`` per answer: a catastrophically
backtracking regex (``^(a+)+$`` against ``aaa…!``) would otherwise hold the sandbox's state lock
for hours. An answer whose check runs out of time is refused (nothing is stored, the page says
why) and the child is replaced. A ``<!DOCTYPE>`` anywhere before the root (after a processing
instruction or a byte order mark too) is refused before any entity is expanded.

HTML field names and values are positional, never the requester's identifiers (so a
qualification test does not show its SelectionIdentifiers to the worker): question ``i`` is the
field ``qf.i``; a selection answer's values are the choice indexes ``0``, ``1``, ... and
``other``; the "other" text is ``qf.i.other``. Other fields (``assignmentId`` ...) are ignored.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import logging
import re
import select
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from html.entities import name2codepoint
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.question_xml import (
    _ANSWERS_CLOSE,
    _ANSWERS_OPEN,
    _NOT_XML,
    MAX_ANSWER_BYTES,
    MAX_QUESTION_BYTES,
    DoctypeNotAllowed,
    _too_large,
    answers_xml,
    question_kind,
    xml_root,
)
from include.crowd_sandbox.question_xml import (
    element_children as _children,
)
from include.crowd_sandbox.question_xml import (
    local_name as _local,
)

XML_PARSE_ERROR = "AWS.MechanicalTurk.XMLParseError"
TEMPLATES = Path(__file__).resolve().parent / "templates"
STYLES = ("radiobutton", "checkbox", "list", "dropdown", "combobox", "multichooser")
FIELD_PREFIX = "qf."
MAX_FORMATTED_DEPTH = 100  # elements nested in FormattedContent (a sanity bound of the sandbox)
OTHER = "other"

# ApiReference_FormattedContentXHTMLArticle: the tags MTurk accepts in FormattedContent.
ALLOWED_TAGS = frozenset(
    "a b big blockquote br center cite code col colgroup dd del dl dt em font h1 h2 h3 h4 h5 h6 "
    "hr i img ins li ol p pre q s small strike strong sub sup table tbody td tfoot th thead tr "
    "tt u ul".split()
)
_CELL = frozenset({"align", "valign", "colspan", "rowspan", "width", "bgcolor"})
ALLOWED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "title"}),
    "img": frozenset({"src", "alt", "width", "height", "border", "align", "title"}),
    "table": frozenset({"border", "cellpadding", "cellspacing", "width", "align", "bgcolor"}),
    "td": _CELL,
    "th": _CELL,
    "tr": frozenset({"align", "valign", "bgcolor"}),
    "col": frozenset({"span", "width", "align"}),
    "colgroup": frozenset({"span", "width", "align"}),
    "font": frozenset({"color", "size", "face"}),
    "ol": frozenset({"start", "type"}),
    "ul": frozenset({"type"}),
    "p": frozenset({"align"}),
    "hr": frozenset({"width", "size", "align"}),
    "q": frozenset({"cite"}),
    **{f"h{n}": frozenset({"align"}) for n in range(1, 7)},
}
_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
_URL_SCHEMES = frozenset({"http", "https", "ftp", "mailto"})
_VOID_TAGS = frozenset({"br", "hr", "img", "col"})
_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
REGEX_TIMEOUT_SECONDS = 1.0
"""How long one AnswerFormatRegex may run on one answer before the answer is refused."""
log = logging.getLogger(__name__)


# --- the parsed form ------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentItem:
    """One piece of content: ``kind`` is title, text, list, binary or formatted."""

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()
    media: str = ""  # binary: image, video, audio or another MIME type
    url: str = ""
    alt: str = ""
    width: str = ""
    height: str = ""
    html: Markup = Markup("")  # formatted: sanitised XHTML

    @property
    def plain(self) -> str:
        """The item as plain text (a dropdown option shows this)."""
        if self.kind == "formatted":
            return re.sub(r"\s+", " ", self.html.striptags()).strip()
        if self.kind == "binary":
            return self.alt
        return " ".join(self.items) if self.kind == "list" else self.text


@dataclass(frozen=True)
class FreeText:
    numeric: bool = False
    min_value: Decimal | None = None
    max_value: Decimal | None = None
    min_length: int | None = None
    max_length: int | None = None
    regexes: tuple[tuple[str, str, str], ...] = ()  # (regex, errorText, flags)
    default_text: str | None = None
    lines: int = 1


@dataclass(frozen=True)
class Choice:
    identifier: str
    content: ContentItem


@dataclass(frozen=True)
class Selection:
    choices: tuple[Choice, ...]
    min_count: int = 1
    max_count: int = 1
    style: str = ""
    other: FreeText | None = None

    @property
    def widget(self) -> str:
        """radio, checkbox, select or multiselect: how the choices are shown."""
        many = self.max_count > 1
        if self.style in ("list", "dropdown", "combobox", "multichooser"):
            return "multiselect" if many else "select"
        if self.style == "checkbox" or many:
            return "checkbox"
        return "radio"


@dataclass(frozen=True)
class Question:
    identifier: str
    display_name: str | None
    required: bool
    content: tuple[ContentItem, ...]
    answer: FreeText | Selection
    kind: str = "question"
    position: int = 0  # 0-based among the form's questions: its field is ``qf.<position>``

    @property
    def label(self) -> str:
        """How the page names the question: its DisplayName, else "Question <n>"."""
        return self.display_name or f"Question {self.position + 1}"


@dataclass(frozen=True)
class Overview:
    content: tuple[ContentItem, ...]
    kind: str = "overview"


@dataclass(frozen=True)
class QuestionForm:
    items: tuple[Overview | Question, ...]
    questions: tuple[Question, ...] = field(default=())


# --- parse ----------------------------------------------------------------------------------


def _fail(message: str) -> RequestError:
    return RequestError(f"The QuestionForm is not valid: {message}", XML_PARSE_ERROR)


def _only(element: ET.Element, name: str, *, required: bool = False) -> ET.Element | None:
    found = [child for child in _children(element) if _local(child) == name]
    if len(found) > 1:
        raise _fail(f"{_local(element)} has more than one {name}.")
    if required and not found:
        raise _fail(f"{_local(element)} needs a {name}.")
    return found[0] if found else None


def _text(element: ET.Element | None) -> str | None:
    return None if element is None else (element.text or "").strip()


def _integer(element: ET.Element | None, name: str, low: int | None = None) -> int | None:
    value = _text(element)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise _fail(f"{name} must be a whole number, not {value!r}.") from None
    if low is not None and number < low:
        raise _fail(f"{name} must be at least {low}, not {number}.")
    return number


def _attribute_int(element: ET.Element, name: str) -> int | None:
    value = element.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise _fail(f"{_local(element)} {name} must be a whole number, not {value!r}.") from None


def parse(question_xml: str) -> QuestionForm:
    """Parse and check a ``QuestionForm``; raise ``RequestError`` (``XMLParseError``) when MTurk
    would refuse it, or when it uses what the sandbox cannot show (none today beyond what the
    2017-11-06 schema removed). The result is immutable and cached per XML string."""
    if not isinstance(question_xml, str):
        raise _fail("the Question must be a string of XML.")
    return _parse(question_xml)


@functools.lru_cache(maxsize=64)
def _parse(question_xml: str) -> QuestionForm:
    if len(question_xml.encode("utf-8")) > MAX_QUESTION_BYTES:
        raise RequestError(
            f"The Question is larger than {MAX_QUESTION_BYTES} bytes.", XML_PARSE_ERROR
        )
    root = _xml_root(question_xml.strip())
    if _local(root) != "QuestionForm":
        raise _fail(f"the root element must be QuestionForm, not {_local(root)}.")
    items: list[Overview | Question] = []
    seen: set[str] = set()
    for child in _children(root):
        name = _local(child)
        if name == "Overview":
            items.append(Overview(_content(child)))
        elif name == "Question":
            question = dataclasses.replace(_question(child), position=len(seen))
            if question.identifier in seen:
                raise _fail(
                    f"QuestionIdentifier {question.identifier!r} is used by more than one "
                    "Question; each must be unique in the form."
                )
            seen.add(question.identifier)
            items.append(question)
        else:
            raise _fail(f"QuestionForm may hold only Overview and Question, not {name}.")
    questions = tuple(item for item in items if isinstance(item, Question))
    if not questions:
        raise _fail("a QuestionForm needs at least one Question.")
    return QuestionForm(tuple(items), questions)


def _xml_root(xml: str) -> ET.Element:
    try:
        return xml_root(xml)
    except DoctypeNotAllowed:
        raise _fail("a document type declaration (<!DOCTYPE>) is not allowed.") from None
    except ET.ParseError as error:
        raise _fail(f"the XML is not well-formed ({error}).") from None


def _question(element: ET.Element) -> Question:
    for child in _children(element):
        if _local(child) not in (
            "QuestionIdentifier",
            "DisplayName",
            "IsRequired",
            "QuestionContent",
            "AnswerSpecification",
        ):
            raise _fail(f"Question may not hold {_local(child)}.")
    identifier = _text(_only(element, "QuestionIdentifier", required=True)) or ""
    if not identifier:
        raise _fail("a QuestionIdentifier is empty.")
    required_text = _text(_only(element, "IsRequired"))
    if required_text not in (None, "true", "false", "1", "0"):
        raise _fail(f"IsRequired must be true or false, not {required_text!r}.")
    content = _content(_only(element, "QuestionContent", required=True))
    spec = _only(element, "AnswerSpecification", required=True)
    kinds = _children(spec)
    if len(kinds) != 1:
        raise _fail(f"the AnswerSpecification of {identifier!r} must hold exactly one answer.")
    kind = _local(kinds[0])
    if kind == "FreeTextAnswer":
        answer: FreeText | Selection = _free_text(kinds[0])
    elif kind == "SelectionAnswer":
        answer = _selection(kinds[0], identifier)
    elif kind == "FileUploadAnswer":
        raise _fail(
            f"question {identifier!r} uses FileUploadAnswer, which MTurk no longer supports "
            "(removed in the 2017-11-06 QuestionForm schema); the crowd sandbox refuses it too."
        )
    else:
        raise _fail(f"unknown answer specification {kind}.")
    return Question(
        identifier=identifier,
        display_name=_text(_only(element, "DisplayName")),
        required=required_text in ("true", "1"),
        content=content,
        answer=answer,
    )


def _free_text(element: ET.Element) -> FreeText:
    numeric, low, high, min_length, max_length = False, None, None, None, None
    regexes: list[tuple[str, str, str]] = []
    constraints = _only(element, "Constraints")
    for constraint in _children(constraints) if constraints is not None else []:
        name = _local(constraint)
        if name == "IsNumeric":
            numeric = True
            low, high = (_decimal(constraint, a) for a in ("minValue", "maxValue"))
            if low is not None and high is not None and low > high:
                raise _fail(f"IsNumeric minValue {low} is above maxValue {high}.")
        elif name == "Length":
            min_length = _attribute_int(constraint, "minLength")
            max_length = _attribute_int(constraint, "maxLength")
            if (min_length or 0) < 0 or (max_length is not None and max_length < 0):
                raise _fail("Length minLength and maxLength cannot be negative.")
            if min_length is not None and max_length is not None and min_length > max_length:
                raise _fail(f"Length minLength {min_length} is above maxLength {max_length}.")
        elif name == "AnswerFormatRegex":
            regex, flags = constraint.get("regex"), constraint.get("flags") or ""
            if regex is None:
                raise _fail("AnswerFormatRegex needs a regex attribute.")
            if set(flags) - {"i"}:
                raise _fail(f"AnswerFormatRegex flags may only be 'i', not {flags!r}.")
            try:
                re.compile(regex)
            except re.error as error:
                raise _fail(
                    f"AnswerFormatRegex {regex!r} is not a valid regex ({error})."
                ) from None
            regexes.append((regex, constraint.get("errorText") or "", flags))
        else:
            raise _fail(f"Constraints may not hold {name}.")
    default = _only(element, "DefaultText")
    lines = _integer(_only(element, "NumberOfLinesSuggestion"), "NumberOfLinesSuggestion", 1)
    return FreeText(
        numeric=numeric,
        min_value=low,
        max_value=high,
        min_length=min_length,
        max_length=max_length,
        regexes=tuple(regexes),
        default_text=None if default is None else (default.text or ""),
        lines=min(lines or 1, 50),
    )


def _decimal(element: ET.Element, name: str) -> Decimal | None:
    value = element.get(name)
    if value is None:
        return None
    if not _NUMBER.match(value.strip()):
        raise _fail(f"IsNumeric {name} must be a number, not {value!r}.")
    return Decimal(value.strip())


def _selection(element: ET.Element, question: str) -> Selection:
    low = _integer(_only(element, "MinSelectionCount"), "MinSelectionCount", 0)
    high = _integer(_only(element, "MaxSelectionCount"), "MaxSelectionCount", 1)
    style = _text(_only(element, "StyleSuggestion")) or ""
    if style and style not in STYLES:
        raise _fail(f"StyleSuggestion must be one of {', '.join(STYLES)}, not {style!r}.")
    selections = _only(element, "Selections", required=True)
    choices: list[Choice] = []
    other = None
    for child in _children(selections):
        name = _local(child)
        if name == "Selection":
            identifier = _text(_only(child, "SelectionIdentifier", required=True)) or ""
            if not identifier:
                raise _fail(f"a SelectionIdentifier of question {question!r} is empty.")
            if any(c.identifier == identifier for c in choices):
                raise _fail(
                    f"SelectionIdentifier {identifier!r} appears twice in question {question!r}."
                )
            shown = [c for c in _children(child) if _local(c) != "SelectionIdentifier"]
            if len(shown) != 1:
                raise _fail(
                    f"selection {identifier!r} needs exactly one of Text, FormattedContent or "
                    "Binary."
                )
            if _local(shown[0]) not in ("Text", "FormattedContent", "Binary"):
                raise _fail(f"a Selection may not hold {_local(shown[0])}.")
            choices.append(Choice(identifier, _item(shown[0])))
        elif name == "OtherSelection":
            if other is not None:
                raise _fail(f"question {question!r} has more than one OtherSelection.")
            other = _free_text(child)
        else:
            raise _fail(f"Selections may not hold {name}.")
    if not choices:
        raise _fail(f"question {question!r} needs at least one Selection.")
    low = 1 if low is None else low
    high = 1 if high is None else high
    if low > high:
        raise _fail(
            f"question {question!r}: MinSelectionCount {low} is above MaxSelectionCount {high}."
        )
    if low > len(choices) + (other is not None):
        raise _fail(
            f"question {question!r}: MinSelectionCount {low} is more than its "
            f"{len(choices) + (other is not None)} choices."
        )
    return Selection(tuple(choices), low, high, style, other)


def _content(element: ET.Element | None) -> tuple[ContentItem, ...]:
    if element is None:
        return ()
    return tuple(_item(child) for child in _children(element))


def _text_only(element: ET.Element) -> None:
    """MTurk's schema types these as strings: markup inside them is not rendered but refused
    (FormattedContent's XHTML goes in a CDATA section)."""
    inner = _children(element)
    if inner:
        raise _fail(
            f"{_local(element)} holds text only, not <{_local(inner[0])}> (put XHTML in "
            "FormattedContent, inside <![CDATA[ ... ]]>)."
        )


def _item(element: ET.Element) -> ContentItem:
    name = _local(element)
    if name in ("Title", "Text", "FormattedContent"):
        _text_only(element)
    if name in ("Title", "Text"):
        return ContentItem(name.lower(), text=(element.text or "").strip())
    if name == "List":
        items = []
        for child in _children(element):
            if _local(child) != "ListItem":
                raise _fail(f"a List may hold only ListItem, not {_local(child)}.")
            _text_only(child)
            items.append((child.text or "").strip())
        return ContentItem("list", items=tuple(items))
    if name == "Binary":
        mime = _only(element, "MimeType", required=True)
        media = _text(_only(mime, "Type", required=True)) or ""
        sub = _text(_only(mime, "SubType")) or ""
        return ContentItem(
            "binary",
            media=media if media in ("image", "video", "audio") else f"{media}/{sub}",
            url=_url(_text(_only(element, "DataURL", required=True)) or "", media == "image"),
            alt=_text(_only(element, "AltText", required=True)) or "",
        )
    if name == "EmbeddedBinary":
        mime = _only(element, "EmbeddedMimeType", required=True)
        media = _text(_only(mime, "Type", required=True)) or ""
        return ContentItem(
            "binary",
            media=media,
            url=_url(_text(_only(element, "DataURL", required=True)) or "", media == "image"),
            alt=_text(_only(element, "AltText", required=True)) or "",
            width=str(_integer(_only(element, "Width"), "Width", 0) or ""),
            height=str(_integer(_only(element, "Height"), "Height", 0) or ""),
        )
    if name == "FormattedContent":
        return ContentItem("formatted", html=sanitise(element.text or ""))
    if name == "Application":
        raise _fail(
            "Application content (Java applets, Flash) is no longer supported by MTurk "
            "(removed in the 2017-11-06 QuestionForm schema); the crowd sandbox refuses it too."
        )
    raise _fail(f"unknown content element {name}.")


def _url(url: str, image: bool = False) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https") or (image and scheme == "data" and url[5:11] == "image/"):
        return url
    raise _fail(f"DataURL {url[:80]!r} must be an http or https URL.")


def sanitise(xhtml: str) -> Markup:
    """FormattedContent as safe HTML: well-formed XHTML of ``ALLOWED_TAGS`` with
    ``ALLOWED_ATTRIBUTES`` only (MTurk's rules); anything else is refused (``RequestError``)."""
    # XHTML's named entities (&nbsp; ...) as character references; comments are dropped.
    xhtml = _ENTITY.sub(
        lambda m: f"&#{name2codepoint[m.group(1)]};" if m.group(1) in name2codepoint else m[0],
        xhtml,
    )
    try:
        root = ET.fromstring(f"<formatted>{xhtml}</formatted>")
    except ET.ParseError as error:
        raise _fail(f"FormattedContent must be well-formed XHTML ({error}).") from None
    parts: list[str] = [str(escape(root.text or ""))]
    for child in root:
        _emit(child, parts)
    return Markup("".join(parts))


def _emit(element: ET.Element, parts: list[str], depth: int = 1) -> None:
    if not isinstance(element.tag, str):  # a processing instruction
        raise _fail("FormattedContent may not hold processing instructions.")
    tag = element.tag
    if depth > MAX_FORMATTED_DEPTH:
        raise _fail(f"FormattedContent nests elements more than {MAX_FORMATTED_DEPTH} deep.")
    if tag not in ALLOWED_TAGS:
        raise _fail(f"FormattedContent may not use the <{tag}> element.")
    allowed = ALLOWED_ATTRIBUTES.get(tag, frozenset())
    attributes = []
    for name, value in element.attrib.items():
        if name not in allowed:
            raise _fail(f"FormattedContent may not use the {name} attribute on <{tag}>.")
        if name in _URL_ATTRIBUTES:
            scheme = urlsplit(value.strip()).scheme.lower()
            if scheme not in _URL_SCHEMES:
                raise _fail(
                    f"a URL in FormattedContent must be http, https, ftp or mailto: {value!r}."
                )
        attributes.append(f' {name}="{escape(value)}"')
    if tag == "a":
        attributes.append(' target="_blank" rel="noopener noreferrer"')
    parts.append(f"<{tag}{''.join(attributes)}>")
    if tag in _VOID_TAGS:
        if len(element) or (element.text or "").strip():
            raise _fail(f"<{tag}> in FormattedContent must be empty.")
    else:
        parts.append(str(escape(element.text or "")))
        for child in element:
            _emit(child, parts, depth + 1)
        parts.append(f"</{tag}>")
    parts.append(str(escape(element.tail or "")))


# --- render ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(
    form: QuestionForm,
    *,
    action: str,
    hidden: dict[str, str],
    preview: bool = False,
    title: str = "HIT",
) -> str:
    """A whole HTML page (the question frame's page): the form, posting to ``action`` with the
    ``hidden`` fields first. ``preview``: the Submit button is disabled and a notice says to
    accept the HIT first (MTurk shows a QuestionForm's preview without a working Submit)."""
    return (
        _environment()
        .get_template("question_form_page.html")
        .render(
            title=title,
            body=render_fragment(form, action=action, hidden=hidden, preview=preview),
            worker_id=None,
            page="",
            embedded=True,
        )
    )


def render_fragment(
    form: QuestionForm, *, action: str, hidden: dict[str, str], preview: bool = False
) -> Markup:
    """The ``<form method="post" action=...>`` alone, to embed in another page."""
    html = (
        _environment()
        .get_template("question_form.html")
        .render(form=form, action=action, hidden=list(hidden.items()), preview=preview)
    )
    return Markup(html)


# --- answers --------------------------------------------------------------------------------


def answers(form: QuestionForm, fields: Sequence[tuple[str, str]]) -> str:
    """The ``QuestionFormAnswers`` XML of a submitted form, as MTurk stores it.

    Checks what MTurk's worker UI checks before it submits (``IsRequired``, Min/Max selection
    counts, the free-text Constraints) and raises ``RequestError`` naming the question and the
    rule when the form breaks one. An unanswered optional question has no ``Answer`` (MTurk:
    "an Answer element for each question ... for which the Worker provided an answer").
    ``question_xml``'s rules apply: characters XML cannot hold become U+FFFD, the XML is ASCII
    with character references, and more than ``MAX_ANSWER_BYTES`` raises ``AnswerTooLarge``.
    """
    posted: dict[str, list[str]] = {}
    for name, value in fields:
        if name.startswith(FIELD_PREFIX):
            posted.setdefault(name, []).append(value)
    known = {f"{FIELD_PREFIX}{i}" for i in range(len(form.questions))}
    known |= {f"{name}.{OTHER}" for name in known}
    unknown = sorted(set(posted) - known)
    if unknown:
        raise RequestError(
            f"The form has no field {unknown[0]!r}: reload the HIT and retry. Nothing was "
            "submitted."
        )
    size = len(_ANSWERS_OPEN) + len(_ANSWERS_CLOSE)
    if sum(len(v) for values in posted.values() for v in values) > MAX_ANSWER_BYTES:
        raise _too_large(MAX_ANSWER_BYTES)
    out = []
    for index, question in enumerate(form.questions):
        name = f"{FIELD_PREFIX}{index}"
        values = posted.get(name, [])
        answer = ET.Element("Answer")
        ET.SubElement(answer, "QuestionIdentifier").text = _xml_text(question.identifier)
        if isinstance(question.answer, FreeText):
            if len(values) > 1:
                raise _problem(question, "send one answer, not several.")
            text = values[0] if values else ""
            if not text.strip():
                if question.required:
                    raise _problem(question, "an answer is required.")
                continue
            _check_text(question, question.answer, text)
            ET.SubElement(answer, "FreeText").text = _xml_text(text)
        else:
            chosen = _choices(question, question.answer, [v for v in values if v != ""])
            if not chosen:
                continue
            other_text = None
            for pick in chosen:
                if pick == OTHER:
                    other_text = (posted.get(f"{name}.{OTHER}") or [""])[0]
                else:
                    choice = question.answer.choices[int(pick)]
                    ET.SubElement(answer, "SelectionIdentifier").text = _xml_text(choice.identifier)
            if other_text is not None:
                if not other_text.strip():
                    raise _problem(question, "type your answer for the “other” choice.")
                assert question.answer.other is not None
                _check_text(question, question.answer.other, other_text)
                ET.SubElement(answer, "OtherSelectionText").text = _xml_text(other_text)
        out.append(ET.tostring(answer, encoding="us-ascii").decode("ascii"))
        size += len(out[-1])
        if size > MAX_ANSWER_BYTES:
            raise _too_large(MAX_ANSWER_BYTES)
    if not out:
        return _ANSWERS_OPEN[:-1] + " />"
    return _ANSWERS_OPEN + "".join(out) + _ANSWERS_CLOSE


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _problem(question: Question, message: str) -> RequestError:
    return RequestError(f"“{question.label}”: {message} Nothing was submitted.")


def _choices(question: Question, spec: Selection, values: list[str]) -> list[str]:
    valid = {str(i) for i in range(len(spec.choices))} | ({OTHER} if spec.other else set())
    for value in values:
        if value not in valid:
            raise _problem(question, f"{value[:40]!r} is not one of its choices.")
    if len(set(values)) != len(values):
        raise _problem(question, "a choice was sent twice.")
    count = len(values)
    if count == 0:
        if question.required:
            raise _problem(question, "an answer is required: choose " + _count(spec) + ".")
        return []
    if not spec.min_count <= count <= spec.max_count:
        raise _problem(question, f"choose {_count(spec)}, not {count}.")
    # In the order the form shows them.
    order = [str(i) for i in range(len(spec.choices))] + [OTHER]
    return sorted(values, key=order.index)


def _count(spec: Selection) -> str:
    low, high = max(spec.min_count, 1), spec.max_count
    if low == high:
        return f"{low} choice" + ("s" if low > 1 else "")
    return f"between {low} and {high} choices"


def _check_text(question: Question, spec: FreeText, text: str) -> None:
    if spec.numeric:
        stripped = text.strip()
        if not _NUMBER.match(stripped):
            raise _problem(question, f"the answer must be a number, not {text[:40]!r}.")
        try:
            number = Decimal(stripped)
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise _problem(question, "the answer must be a number.") from None
        if spec.min_value is not None and number < spec.min_value:
            raise _problem(question, f"the number must be at least {spec.min_value}.")
        if spec.max_value is not None and number > spec.max_value:
            raise _problem(question, f"the number must be at most {spec.max_value}.")
    if spec.min_length is not None and len(text) < spec.min_length:
        raise _problem(question, f"the answer must be at least {spec.min_length} characters.")
    if spec.max_length is not None and len(text) > spec.max_length:
        raise _problem(question, f"the answer must be at most {spec.max_length} characters.")
    for regex, error_text, flags in spec.regexes:
        found = _REGEXES.search(regex, text, re.IGNORECASE if "i" in flags else 0)
        if found is None:
            log.warning(
                "AnswerFormatRegex %r ran out of time on a %d-character answer",
                regex[:200],
                len(text),
            )
            raise _problem(
                question,
                f"the answer could not be checked against its AnswerFormatRegex within "
                f"{REGEX_TIMEOUT_SECONDS:g} s (the requester's regex backtracks too much on "
                "this answer); change the answer, or the requester the regex.",
            )
        if not found:
            raise _problem(question, error_text or f"the answer must match {regex}.")


# The child that runs requesters' regexes: one request per line, JSON [regex, text, flags],
# answered "1" (found) or "0". SIGALRM's default action ends it if a search outlives the
# parent's wait by far (so an orphan does not spin on for hours).
_REGEX_CHILD = """
import json, re, signal, sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
for line in sys.stdin:
    regex, text, flags, limit = json.loads(line)
    signal.alarm(limit)
    found = re.search(regex, text, flags) is not None
    signal.alarm(0)
    sys.stdout.write("1\\n" if found else "0\\n"); sys.stdout.flush()
"""


class _RegexProcess:
    """``re.search`` in a child Python, with a time limit (``REGEX_TIMEOUT_SECONDS``).

    Python's ``re`` cannot be interrupted and holds the interpreter while it runs, so a
    requester's regex runs in a process of its own, killed and replaced when it takes too long.
    One child serves every thread, one search at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[str] | None = None
        atexit.register(self.stop)

    def search(self, regex: str, text: str, flags: int) -> bool | None:
        """Whether ``regex`` matches somewhere in ``text``; None when it ran out of time. A
        child that died between searches is replaced and asked again; if no child can be
        started at all, the search runs here, without a time limit (and says so in the log)."""
        request = json.dumps([regex, text, flags, int(REGEX_TIMEOUT_SECONDS) + 5]) + "\n"
        with self._lock:
            for _ in range(2):
                try:
                    child = self._start()
                except OSError as error:
                    log.warning("AnswerFormatRegex runs without a time limit: %s", error)
                    return re.search(regex, text, flags) is not None
                try:
                    assert child.stdin is not None
                    child.stdin.write(request)
                    child.stdin.flush()
                    line = self._line(child, REGEX_TIMEOUT_SECONDS)
                except (OSError, ValueError):  # a broken pipe: the child had died
                    line = ""
                if line in ("0", "1"):
                    return line == "1"
                self._stop_locked()
                if line is None:  # still searching when the time ran out
                    return None
            return None

    def _start(self) -> subprocess.Popen[str]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _REGEX_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="ascii",
        )
        if self._line(self._child, 30.0) != "ready":
            self._stop_locked()
            raise OSError("the regex process did not start")
        assert self._child is not None
        return self._child

    @staticmethod
    def _line(child: subprocess.Popen[str], timeout: float) -> str | None:
        """The child's next line ("" at its end), or None when none came within ``timeout``."""
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], timeout)
        return child.stdout.readline().strip() if ready else None

    def _stop_locked(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()


_REGEXES = _RegexProcess()


def answer_pairs(answer_xml: str) -> list[tuple[str, str]]:
    """``(QuestionIdentifier, shown value)`` per Answer of a ``QuestionFormAnswers`` (for the
    "submitted" page): FreeText, or the SelectionIdentifiers and OtherSelectionText joined."""
    pairs = []
    for answer in ET.fromstring(answer_xml):
        values = {_local(c): [] for c in answer}
        for child in answer:
            values[_local(child)].append(child.text or "")
        identifier = (values.pop("QuestionIdentifier", None) or [""])[0]
        shown = [v for key in ("FreeText", "SelectionIdentifier") for v in values.get(key, [])]
        shown += [f"other: {v}" for v in values.get("OtherSelectionText", [])]
        pairs.append((identifier, ", ".join(shown)))
    return pairs


def submitted_answers(question_xml: str, fields: Sequence[tuple[str, str]]) -> str:
    """The ``QuestionFormAnswers`` a HIT's submitted form becomes (``Sandbox.submit``): for a
    QuestionForm, ``answers`` (checked; ``RequestError`` when the form breaks a rule); for an
    HTMLQuestion or ExternalQuestion, one FreeText ``Answer`` per field (``answers_xml``), the
    ``assignmentId`` field left out, as MTurk's externalSubmit does."""
    if question_kind(question_xml) == "QuestionForm":
        return answers(parse(question_xml), fields)
    return answers_xml([(k, v) for k, v in fields if k != "assignmentId"])
