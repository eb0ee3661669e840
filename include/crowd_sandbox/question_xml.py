"""The Question and answer XML of MTurk's data schemas: which kind a Question is
(HTMLQuestion, ExternalQuestion, QuestionForm), what it holds, and the ``QuestionFormAnswers``
XML a submitted form becomes."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from urllib.parse import urlsplit

from include.crowd_sandbox.protocol import RequestError

# CreateHIT's reference: "The XML question data must not be larger than 64 kilobytes (65,535
# bytes) in size, including whitespace."
MAX_QUESTION_BYTES = 65_535
# MTurk documents no limit on an assignment's answer data (the QuestionFormAnswers, Assignment
# and HTMLQuestion pages name none); the sandbox keeps the answer XML to 64 KiB, as big as the
# 64 KB MTurk allows a Question. Without a bound, one 4 MB form became 35 MB of state that every
# later call read back.
MAX_ANSWER_BYTES = 65_536

ANSWERS_NS = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd"
)
QUESTION_KINDS = ("HTMLQuestion", "ExternalQuestion", "QuestionForm")


class AnswerTooLarge(RequestError):
    """A submitted form whose ``QuestionFormAnswers`` would exceed ``MAX_ANSWER_BYTES``."""


# Characters XML 1.0 cannot hold, even as character references: written as they are, they
# would make the requester's XML parser fail on the whole answer.
_NOT_XML = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
_ANSWERS_OPEN = f'<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns="{ANSWERS_NS}">'
_ANSWERS_CLOSE = "</QuestionFormAnswers>"


def answers_xml(fields: Sequence[tuple[str, str]], limit: int = MAX_ANSWER_BYTES) -> str:
    """MTurk's ``QuestionFormAnswers`` for a submitted form: one ``Answer`` per field name.

    Repeated names (check boxes) are joined with ``|``, as MTurk's externalSubmit does.
    Characters XML cannot hold become U+FFFD. Raise ``AnswerTooLarge`` as soon as the XML
    would pass ``limit`` bytes, before the rest of the form is turned into XML.
    """
    merged: dict[str, list[str]] = {}
    for name, value in fields:
        merged.setdefault(name, []).append(value)
    size = len(_ANSWERS_OPEN) + len(_ANSWERS_CLOSE)
    answers = []
    for name, values in merged.items():
        text = "|".join(values)
        # Every character takes at least one byte: refuse a huge field before escaping it.
        if size + len(name) + len(text) > limit:
            raise _too_large(limit)
        answer = ET.Element("Answer")
        ET.SubElement(answer, "QuestionIdentifier").text = _NOT_XML.sub("\ufffd", name)
        ET.SubElement(answer, "FreeText").text = _NOT_XML.sub("\ufffd", text)
        # ASCII with character references for anything else, as MTurk's answers are.
        answers.append(ET.tostring(answer, encoding="us-ascii").decode("ascii"))
        size += len(answers[-1])
        if size > limit:
            raise _too_large(limit)
    if not answers:
        return _ANSWERS_OPEN[:-1] + " />"
    return _ANSWERS_OPEN + "".join(answers) + _ANSWERS_CLOSE


def _too_large(limit: int) -> AnswerTooLarge:
    return AnswerTooLarge(
        f"The answers come to more than {limit:,} bytes of QuestionFormAnswers XML, the most "
        "an assignment holds. Nothing was stored: submit shorter answers (fewer or smaller "
        "form fields)."
    )


class DoctypeNotAllowed(ValueError):
    """An XML document with a ``<!DOCTYPE>``: refused before any entity it declares is read."""


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that stops the parse at a ``<!DOCTYPE``, before its entities are read
    (wherever it is: after a processing instruction or a byte order mark too)."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise DoctypeNotAllowed


def xml_root(xml: str) -> ET.Element:
    """``ET.fromstring`` for requester- and worker-written XML: a document type declaration is
    refused (``DoctypeNotAllowed``), so an internal entity can never expand a 4 KB Question
    into megabytes of page on every view (MTurk's schemas have no use for one). Malformed XML
    raises ``ET.ParseError`` as before."""
    parser = ET.XMLParser(target=_NoDoctype())
    parser.feed(xml)
    return parser.close()


def local_name(element: ET.Element) -> str:
    """An element's tag without its namespace ("" for a comment or processing instruction)."""
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def element_children(element: ET.Element) -> list[ET.Element]:
    """An element's child elements (comments and processing instructions left out)."""
    return [child for child in element if isinstance(child.tag, str)]


def question_kind(question: str) -> str:
    """Return ``HTMLQuestion``, ``ExternalQuestion`` or ``QuestionForm``, or raise."""
    if len(question.encode("utf-8")) > MAX_QUESTION_BYTES:
        raise RequestError(
            f"The Question is larger than {MAX_QUESTION_BYTES} bytes.",
            "AWS.MechanicalTurk.XMLParseError",
        )
    try:
        root = xml_root(question.strip())
    except DoctypeNotAllowed:
        raise RequestError(
            "A document type declaration (<!DOCTYPE>) is not allowed in a Question.",
            "AWS.MechanicalTurk.XMLParseError",
        ) from None
    except ET.ParseError as error:
        raise RequestError(
            f"There was an error parsing the XML question or answer data in your request. "
            f"Please make sure the data is well-formed and validates against the appropriate "
            f"schema. Details: {error}",
            "AWS.MechanicalTurk.XMLParseError",
        ) from None
    kind = root.tag.rsplit("}", 1)[-1]
    if kind not in QUESTION_KINDS:
        raise RequestError(
            f"The Question must be an HTMLQuestion, ExternalQuestion or QuestionForm, not {kind}.",
            "AWS.MechanicalTurk.XMLParseError",
        )
    children = {child.tag.rsplit("}", 1)[-1]: child for child in root}
    if kind == "HTMLQuestion" and not (
        children.get("HTMLContent") is not None and "FrameHeight" in children
    ):
        raise RequestError(
            "An HTMLQuestion needs HTMLContent and FrameHeight.", "AWS.MechanicalTurk.XMLParseError"
        )
    if kind == "ExternalQuestion" and not ("ExternalURL" in children and "FrameHeight" in children):
        raise RequestError(
            "An ExternalQuestion needs ExternalURL and FrameHeight.",
            "AWS.MechanicalTurk.XMLParseError",
        )
    if kind == "ExternalQuestion":
        _check_external_url((children["ExternalURL"].text or "").strip())
    return kind


LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _check_external_url(url: str) -> None:
    """The ExternalQuestion reference: "This URL must use the HTTPS protocol." The sandbox
    also takes ``http`` on 127.0.0.1 or localhost (its own exception), so a rehearsal can
    serve its page on this machine."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if (
        parts is not None
        and host
        and (parts.scheme == "https" or (parts.scheme == "http" and host in LOCAL_HOSTS))
    ):
        return
    raise RequestError(
        f"The ExternalURL {url[:200]!r} must be an https URL (the sandbox also takes http on "
        "127.0.0.1 or localhost).",
        "AWS.MechanicalTurk.XMLParseError",
    )


def html_content(question: str) -> str | None:
    """The HTML of an HTMLQuestion (None for other kinds)."""
    root = xml_root(question.strip())
    for child in root:
        if child.tag.rsplit("}", 1)[-1] == "HTMLContent":
            return child.text or ""
    return None


def external_url(question: str) -> str | None:
    root = xml_root(question.strip())
    for child in root:
        if child.tag.rsplit("}", 1)[-1] == "ExternalURL":
            return (child.text or "").strip()
    return None
