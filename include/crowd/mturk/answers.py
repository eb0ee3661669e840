"""Assignments as MTurk returns them, read into ``platform.Submission``: the answer is
``QuestionFormAnswers`` XML, written by whoever submitted it, so it is read defensively (size
cap, broken XML, fields answered twice, no field name) and never raises on what a worker sent."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from include.common.text import shown
from include.crowd.platform import PlatformError, Submission

MAX_ANSWER_BYTES = 64 * 1024
_STATUSES = {"Submitted": "submitted", "Approved": "approved", "Rejected": "rejected"}


def parse_answers(answer_xml: str | None) -> tuple[dict[str, str], list[str]]:
    """Return ``{QuestionIdentifier: FreeText}`` and the problems found reading it."""
    if not answer_xml:
        return {}, ["the assignment has no answer"]
    if len(answer_xml.encode("utf-8")) > MAX_ANSWER_BYTES:
        return {}, [f"the answer is larger than {MAX_ANSWER_BYTES} bytes"]
    try:
        root = ET.fromstring(answer_xml.encode("utf-8"))
    except ET.ParseError as error:
        return {}, [f"the answer is not valid XML: {error}"]
    answers: dict[str, str] = {}
    problems = []
    for answer in root:
        if _local(answer.tag) != "Answer":
            continue
        parts = {_local(child.tag): (child.text or "") for child in answer}
        name = parts.get("QuestionIdentifier", "").strip()
        value = parts.get("FreeText", parts.get("SelectionIdentifier", "")).strip()
        if not name:
            problems.append("an answer has no QuestionIdentifier")
        elif name in answers:
            problems.append(f"field {shown(name)} is answered twice")
        else:
            answers[name] = value
    return answers, problems


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def submission(assignment: dict) -> Submission:
    """One assignment (``ListAssignmentsForHIT``'s shape) as a ``Submission``."""
    try:
        ids = (assignment["AssignmentId"], assignment["HITId"], assignment["WorkerId"])
    except (KeyError, TypeError) as error:
        raise PlatformError(f"MTurk returned an assignment without {error}") from error
    try:
        answers, problems = parse_answers(assignment.get("Answer"))
    except Exception as error:  # noqa: BLE001 - hostile input must not stop the review
        answers, problems = {}, [f"the answer cannot be read ({type(error).__name__})"]
    status = _STATUSES.get(assignment.get("AssignmentStatus"))
    if status is None:
        unknown = shown(assignment.get("AssignmentStatus"))
        raise PlatformError(f"assignment {shown(ids[0])} has an unknown status {unknown}")
    submit, accept = assignment.get("SubmitTime"), assignment.get("AcceptTime")
    return Submission(
        id=ids[0],
        task_id=ids[1],
        worker_id=ids[2],
        status=status,
        answers=answers,
        problems=tuple(problems),
        submitted_at=submit.astimezone(UTC).isoformat() if isinstance(submit, datetime) else None,
        accepted_at=accept.astimezone(UTC).isoformat() if isinstance(accept, datetime) else None,
    )
