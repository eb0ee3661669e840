"""Qualification tests: the checks on a ``Test`` and its ``AnswerKey``, and the grading of a
worker's answers with the key.

Sources (MTurk API reference, 2017-01-17, and the legacy 2014-08-15 AnswerKey article):

- CreateQualificationType ``Test``: "Must not be longer than 65535 bytes. Must be a
  QuestionForm data structure. This parameter cannot be specified if AutoGranted is true."
  and "If this parameter is specified, TestDurationInSeconds must also be specified."
  ``AnswerKey``: "Must not be longer than 65535 bytes. ... If not specified, you must process
  Qualification requests manually."
- ``ApiReference_AnswerKeyDataStructureArticle``: an ``AnswerKey`` holds a ``Question`` per
  question of the test (``QuestionIdentifier``, one or more ``AnswerOption`` of one or more
  ``SelectionIdentifier`` and an ``AnswerScore``, optional ``DefaultScore``, 0 by default) and
  an optional ``QualificationValueMapping``. "The Worker must select all of the selections
  specified by the SelectionIdentifier elements, and no others, to earn the score"; a score
  "may be negative". Without a mapping "the sum of the scores of the answers is used as the
  Qualification value"; ``PercentageMapping``: the sum "divided by the maximum
  [``MaximumSummedScore``], multiplied by 100 and rounded to the nearest integer";
  ``ScaleMapping``: the sum "multiplied by the multiplier" (``SummedScoreMultiplier``, a
  decimal); ``RangeMapping``: the ``QualificationValue`` of the ``SummedScoreRange``
  (``InclusiveLowerBound``..``InclusiveUpperBound``) the sum falls in, else
  ``OutOfRangeQualificationValue``. "Ranges cannot overlap. If ranges overlap, the behavior is
  undefined": the sandbox refuses overlapping ranges.

The sandbox's own rules, where MTurk's documentation says nothing: every score, bound and value
is a whole number that fits a 32-bit integer (a Qualification's IntegerValue is one), a
``QuestionIdentifier`` of the key must be a question of the test and a ``SelectionIdentifier``
one of that question's selections (MTurk documents that they "correspond"), a question is keyed
once, and a computed value is kept within the 32-bit range. A key that breaks one of these is
refused at CreateQualificationType / UpdateQualificationType with ``XMLParseError``, so a
requester finds the mistake before any worker takes the test.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from include.crowd_sandbox import question_form
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.question_xml import DoctypeNotAllowed, xml_root
from include.crowd_sandbox.question_xml import element_children as _children
from include.crowd_sandbox.question_xml import local_name as _local

MAX_TEST_BYTES = 65_535
MAX_ANSWER_KEY_BYTES = 65_535
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
XML_PARSE_ERROR = "AWS.MechanicalTurk.XMLParseError"


@dataclass(frozen=True)
class KeyedQuestion:
    identifier: str
    options: tuple[tuple[frozenset[str], int], ...]  # (selections, AnswerScore)
    default: int = 0


@dataclass(frozen=True)
class AnswerKey:
    questions: tuple[KeyedQuestion, ...]
    mapping: str = "sum"  # sum, percentage, scale or range
    maximum: int = 0  # PercentageMapping's MaximumSummedScore
    multiplier: Decimal = Decimal(1)  # ScaleMapping's SummedScoreMultiplier
    ranges: tuple[tuple[int, int, int], ...] = ()  # (lower, upper, value)
    out_of_range: int = 0


def check_test(test: str) -> question_form.QuestionForm:
    """The parsed ``Test``; ``RequestError`` when it is too long or not a valid QuestionForm."""
    if len(test.encode("utf-8")) > MAX_TEST_BYTES:
        raise RequestError(
            f"The Test is longer than {MAX_TEST_BYTES} bytes.", "AWS.MechanicalTurk.ValidationError"
        )
    return question_form.parse(test)


def parse_answer_key(xml: str, form: question_form.QuestionForm) -> AnswerKey:
    """Parse and check an ``AnswerKey`` against the test it grades; raise ``RequestError``."""
    if len(xml.encode("utf-8")) > MAX_ANSWER_KEY_BYTES:
        raise RequestError(
            f"The AnswerKey is longer than {MAX_ANSWER_KEY_BYTES} bytes.",
            "AWS.MechanicalTurk.ValidationError",
        )
    try:
        root = xml_root(xml.strip())
    except DoctypeNotAllowed:
        raise _fail("a document type declaration (<!DOCTYPE>) is not allowed.") from None
    except ET.ParseError as error:
        raise _fail(f"the XML is not well-formed ({error}).") from None
    if _local(root) != "AnswerKey":
        raise _fail(f"the root element must be AnswerKey, not {_local(root)}.")
    selections = {
        q.identifier: (
            {c.identifier for c in q.answer.choices}
            if isinstance(q.answer, question_form.Selection)
            else None
        )
        for q in form.questions
    }
    questions: list[KeyedQuestion] = []
    key = AnswerKey(())
    mapping: AnswerKey | None = None
    for child in _children(root):
        name = _local(child)
        if name == "Question":
            keyed = _question(child, selections)
            if any(q.identifier == keyed.identifier for q in questions):
                raise _fail(f"question {keyed.identifier!r} is keyed more than once.")
            questions.append(keyed)
        elif name == "QualificationValueMapping":
            if mapping is not None:
                raise _fail("there is more than one QualificationValueMapping.")
            mapping = _mapping(child)
        else:
            raise _fail(
                f"AnswerKey may hold only Question and QualificationValueMapping, not {name}."
            )
    if not questions:
        raise _fail("an AnswerKey needs at least one Question.")
    key = mapping or key
    return AnswerKey(
        tuple(questions), key.mapping, key.maximum, key.multiplier, key.ranges, key.out_of_range
    )


def _question(element: ET.Element, selections: dict[str, set[str] | None]) -> KeyedQuestion:
    identifier = ""
    options: list[tuple[frozenset[str], int]] = []
    default = 0
    for child in _children(element):
        name = _local(child)
        if name == "QuestionIdentifier":
            identifier = (child.text or "").strip()
        elif name == "AnswerOption":
            chosen = frozenset(
                (c.text or "").strip()
                for c in _children(child)
                if _local(c) == "SelectionIdentifier"
            )
            scores = [c for c in _children(child) if _local(c) == "AnswerScore"]
            others = [
                _local(c)
                for c in _children(child)
                if _local(c) not in ("SelectionIdentifier", "AnswerScore")
            ]
            if others:
                raise _fail(f"an AnswerOption may not hold {others[0]}.")
            if not chosen or len(scores) != 1:
                raise _fail(
                    "an AnswerOption needs one or more SelectionIdentifier and one AnswerScore."
                )
            options.append((chosen, _whole(scores[0], "AnswerScore")))
        elif name == "DefaultScore":
            default = _whole(child, "DefaultScore")
        else:
            raise _fail(f"a Question of the AnswerKey may not hold {name}.")
    if not identifier:
        raise _fail("a Question of the AnswerKey needs a QuestionIdentifier.")
    if identifier not in selections:
        raise _fail(
            f"the AnswerKey keys question {identifier[:80]!r}, which the Test does not have."
        )
    known = selections[identifier]
    if known is None:
        raise _fail(
            f"question {identifier[:80]!r} is a free-text question: an AnswerKey scores only "
            "selections."
        )
    if not options:
        raise _fail(f"question {identifier[:80]!r} of the AnswerKey needs an AnswerOption.")
    for chosen, _ in options:
        unknown = sorted(chosen - known)
        if unknown:
            raise _fail(
                f"the AnswerKey names selection {unknown[0][:80]!r} of question "
                f"{identifier[:80]!r}, which the Test does not offer."
            )
    return KeyedQuestion(identifier, tuple(options), default)


def _mapping(element: ET.Element) -> AnswerKey:
    kinds = _children(element)
    if len(kinds) != 1:
        raise _fail(
            "a QualificationValueMapping holds exactly one of PercentageMapping, ScaleMapping "
            "or RangeMapping."
        )
    kind, name = kinds[0], _local(kinds[0])
    if name == "PercentageMapping":
        maximum = _whole(_one(kind, "MaximumSummedScore"), "MaximumSummedScore")
        if maximum <= 0:
            raise _fail(f"MaximumSummedScore must be above 0, not {maximum}.")
        return AnswerKey((), "percentage", maximum=maximum)
    if name == "ScaleMapping":
        text = (_one(kind, "SummedScoreMultiplier").text or "").strip()
        try:
            multiplier = Decimal(text)
        except InvalidOperation:
            raise _fail(f"SummedScoreMultiplier must be a number, not {text[:40]!r}.") from None
        if not multiplier.is_finite() or abs(multiplier) > INT_MAX:
            raise _fail(f"SummedScoreMultiplier {text[:40]!r} is out of range.")
        return AnswerKey((), "scale", multiplier=multiplier)
    if name == "RangeMapping":
        ranges: list[tuple[int, int, int]] = []
        out_of_range = None
        for child in _children(kind):
            if _local(child) == "SummedScoreRange":
                low = _whole(_one(child, "InclusiveLowerBound"), "InclusiveLowerBound")
                high = _whole(_one(child, "InclusiveUpperBound"), "InclusiveUpperBound")
                value = _whole(_one(child, "QualificationValue"), "QualificationValue")
                if low > high:
                    raise _fail(f"InclusiveLowerBound {low} is above InclusiveUpperBound {high}.")
                for other_low, other_high, _ in ranges:
                    if low <= other_high and other_low <= high:
                        raise _fail(
                            f"SummedScoreRange {low}..{high} overlaps {other_low}..{other_high}: "
                            "ranges cannot overlap."
                        )
                ranges.append((low, high, value))
            elif _local(child) == "OutOfRangeQualificationValue":
                if out_of_range is not None:
                    raise _fail("there is more than one OutOfRangeQualificationValue.")
                out_of_range = _whole(child, "OutOfRangeQualificationValue")
            else:
                raise _fail(f"RangeMapping may not hold {_local(child)}.")
        if not ranges or out_of_range is None:
            raise _fail(
                "a RangeMapping needs one or more SummedScoreRange and an "
                "OutOfRangeQualificationValue."
            )
        return AnswerKey((), "range", ranges=tuple(ranges), out_of_range=out_of_range)
    raise _fail(f"unknown QualificationValueMapping {name}.")


def selections_of(answer_xml: str) -> dict[str, frozenset[str]]:
    """Per QuestionIdentifier, the SelectionIdentifiers a ``QuestionFormAnswers`` chose."""
    chosen: dict[str, frozenset[str]] = {}
    for answer in ET.fromstring(answer_xml):
        identifier, picked = "", set()
        for child in answer:
            if _local(child) == "QuestionIdentifier":
                identifier = (child.text or "").strip()
            elif _local(child) == "SelectionIdentifier":
                picked.add((child.text or "").strip())
        chosen[identifier] = frozenset(picked)
    return chosen


def grade(key: AnswerKey, answer_xml: str) -> int:
    """The Qualification value a worker's ``QuestionFormAnswers`` earns with ``key``."""
    chosen = selections_of(answer_xml)
    total = 0
    for question in key.questions:
        picked = chosen.get(question.identifier, frozenset())
        total += next(
            (score for selections, score in question.options if selections == picked),
            question.default,
        )
    if key.mapping == "percentage":
        value = _round(Decimal(total) * 100 / key.maximum)
    elif key.mapping == "scale":
        value = _round(Decimal(total) * key.multiplier)
    elif key.mapping == "range":
        value = next((v for low, high, v in key.ranges if low <= total <= high), key.out_of_range)
    else:
        value = total
    return max(INT_MIN, min(INT_MAX, value))


def _round(number: Decimal) -> int:
    return int(number.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _whole(element: ET.Element, name: str) -> int:
    text = (element.text or "").strip()
    try:
        number = int(text)
    except ValueError:
        raise _fail(f"{name} must be a whole number, not {text[:40]!r}.") from None
    if not INT_MIN <= number <= INT_MAX:
        raise _fail(f"{name} {text[:40]} does not fit a 32-bit integer.")
    return number


def _one(element: ET.Element, name: str) -> ET.Element:
    found = [c for c in _children(element) if _local(c) == name]
    if len(found) != 1:
        raise _fail(f"{_local(element)} needs exactly one {name}.")
    return found[0]


def _fail(message: str) -> RequestError:
    return RequestError(f"The AnswerKey is not valid: {message}", XML_PARSE_ERROR)
