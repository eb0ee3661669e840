"""The MTurk requester operations, and what workers do (accept, submit, return), on one state.

Rules follow the MTurk API reference (2017-01-17): the HIT lifecycle (Assignable →
Unassignable → Reviewable → Reviewing / Disposed, expiry), assignment states (Submitted →
Approved / Rejected, OverrideRejection, auto-approval), ``UniqueRequestToken`` (24 h) on
CreateHIT, CreateHITWithHITType, SendBonus and CreateAdditionalAssignmentsForHIT, qualification
requirements checked when a worker previews or accepts, NotifyWorkers limits, and the account
balance charged with MTurk's fees. Every operation runs in one transaction of the state file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from include.crowd_sandbox import money
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.store import Store

TOKEN_LIFETIME_S = 24 * 3600
DEFAULT_AUTO_APPROVAL_S = 30 * 24 * 3600
OVERRIDE_REJECTION_WINDOW_S = 30 * 24 * 3600
DEFAULT_PAGE_SIZE = 10
DEFAULT_BALANCE = "10000.00"
# Ten years: past MTurk's longest timer (a HIT's year of lifetime), short of datetime's end.
MAX_CLOCK_ADVANCE_S = 10 * 365 * 24 * 3600
MAX_QUESTION_BYTES = 131_072
# MTurk documents no limit on an assignment's answer data (the QuestionFormAnswers, Assignment
# and HTMLQuestion pages name none); the sandbox keeps the answer XML to 64 KiB, as big as the
# 64 KB MTurk allows a Question. Without a bound, one 4 MB form became 35 MB of state that every
# later call read back.
MAX_ANSWER_BYTES = 65_536
MAX_NOTIFY_WORKERS = 100
MAX_SUBJECT = 200
MAX_MESSAGE = 4096

ANSWERS_NS = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd"
)
QUESTION_KINDS = ("HTMLQuestion", "ExternalQuestion", "QuestionForm")

# MTurk's system qualification types (the Masters id is the sandbox's).
PERCENT_APPROVED = "000000000000000000L0"
NUMBER_APPROVED = "00000000000000000040"
LOCALE = "00000000000000000071"
ADULT = "00000000000000000060"
MASTERS_SANDBOX = "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"
MASTERS_PRODUCTION = "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH"
SYSTEM_QUALIFICATIONS = {
    PERCENT_APPROVED: "PercentAssignmentsApproved",
    NUMBER_APPROVED: "NumberHITsApproved",
    LOCALE: "Locale",
    ADULT: "Adult",
    MASTERS_SANDBOX: "Masters",
    MASTERS_PRODUCTION: "Masters",
}

# What a worker profile holds when nobody says otherwise.
DEFAULT_WORKER = {
    "PercentAssignmentsApproved": 99,
    "NumberHITsApproved": 5000,
    "Locale": {"Country": "US"},
    "Adult": 1,
    "Masters": False,
}

_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_id(prefix: str = "", length: int = 30) -> str:
    """An MTurk-looking id: upper-case letters and digits (worker ids start with ``A``)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - len(prefix)))


class AnswerTooLarge(RequestError):
    """A submitted form whose ``QuestionFormAnswers`` would exceed ``MAX_ANSWER_BYTES``."""


class NotTheWorkersAssignment(RequestError):
    """A worker submitted an assignment that another worker accepted."""


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


def question_kind(question: str) -> str:
    """Return ``HTMLQuestion``, ``ExternalQuestion`` or ``QuestionForm``, or raise."""
    if len(question.encode("utf-8")) > MAX_QUESTION_BYTES:
        raise RequestError(
            f"The Question is larger than {MAX_QUESTION_BYTES} bytes.",
            "AWS.MechanicalTurk.XMLParseError",
        )
    try:
        root = ET.fromstring(question.strip())
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
    return kind


def html_content(question: str) -> str | None:
    """The HTML of an HTMLQuestion (None for other kinds)."""
    root = ET.fromstring(question.strip())
    for child in root:
        if child.tag.rsplit("}", 1)[-1] == "HTMLContent":
            return child.text or ""
    return None


def external_url(question: str) -> str | None:
    root = ET.fromstring(question.strip())
    for child in root:
        if child.tag.rsplit("}", 1)[-1] == "ExternalURL":
            return (child.text or "").strip()
    return None


class Sandbox:
    """MTurk's requester API and the worker actions, over a ``Store``."""

    def __init__(
        self,
        store: Store,
        *,
        initial_balance: str = DEFAULT_BALANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        with store.transaction():
            if store.meta("balance_cents") is None:
                store.set_meta("balance_cents", str(money.parse_amount(initial_balance)))
            self._offset = float(store.meta("clock_offset") or 0.0)

    # --- plumbing -----------------------------------------------------------------------------

    def call(self, operation: str, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        """Run one API operation atomically; raise ``MTurkError`` subclasses on failure."""
        handler = getattr(self, "op_" + operation, None)
        if handler is None:
            raise RequestError(
                f"The crowd sandbox does not implement {operation}.",
                "AWS.MechanicalTurk.UnsupportedOperation",
            )
        with self.store.transaction():
            self._refresh()
            return handler(params, request_id) or {}

    def _now(self) -> float:
        return float(self.clock()) + self._offset

    def now(self) -> float:
        """The sandbox's current time (epoch seconds, including any advance)."""
        return self._now()

    def advance_clock(self, seconds: float) -> float:
        """Move the sandbox's clock forward (tests: expiry, abandonment, auto-approval, token
        lifetime). The offset is part of the state, so a restart keeps the same time line."""
        if not 0 <= seconds <= MAX_CLOCK_ADVANCE_S:  # also refuses NaN
            raise ValueError(
                f"the clock moves forward by 0 to {MAX_CLOCK_ADVANCE_S} seconds at a time, "
                f"not {seconds}"
            )
        with self.store.transaction():
            self._offset += seconds
            self.store.set_meta("clock_offset", repr(self._offset))
            self._refresh()
            return self._now()

    def _balance(self) -> int:
        return int(self.store.meta("balance_cents") or 0)

    def _require_funds(self, cents: int) -> None:
        balance = self._balance()
        if cents > balance:
            raise RequestError(
                "This Requester has insufficient funds in their account to complete this "
                f"transaction (needs ${money.format_amount(cents)}, available "
                f"${money.format_amount(balance)}).",
                "AWS.MechanicalTurk.InsufficientFunds",
            )

    def _charge(self, cents: int, kind: str, detail: dict[str, Any]) -> None:
        self._require_funds(cents)
        self.store.set_meta("balance_cents", str(self._balance() - cents))
        self.store.add_ledger(kind, {**detail, "Charged": cents, "Time": self._now()})

    def _seen_token(self, operation: str, token: str | None) -> dict[str, Any] | None:
        if not token:
            return None
        return self.store.token(operation, token, self._now() - TOKEN_LIFETIME_S)

    def _remember_token(self, operation: str, token: str | None, doc: dict[str, Any]) -> None:
        if token:
            self.store.put_token(operation, token, self._now(), doc)

    def _hit(self, hit_id: str) -> dict[str, Any]:
        hit = self.store.hit(hit_id)
        if hit is None:
            raise RequestError(
                f"Hit {hit_id} does not exist.", "AWS.MechanicalTurk.HITDoesNotExist"
            )
        return hit

    def _assignment(self, assignment_id: str) -> dict[str, Any]:
        assignment = self.store.assignment(assignment_id)
        if assignment is None or assignment["AssignmentStatus"] == "Accepted":
            raise RequestError(
                f"Assignment {assignment_id} does not exist.",
                "AWS.MechanicalTurk.AssignmentDoesNotExist",
            )
        return assignment

    def _refresh(self) -> None:
        """Apply what time did: abandoned assignments free their slot, auto-approvals happen."""
        now = self._now()
        for assignment in self.store.all_assignments():
            status = assignment["AssignmentStatus"]
            if status == "Accepted" and now >= assignment["Deadline"]:
                self.store.delete_assignment(assignment["AssignmentId"])
                self.store.add_ledger("abandoned", {"AssignmentId": assignment["AssignmentId"]})
            elif status == "Submitted" and now >= assignment["AutoApprovalTime"]:
                hit = self.store.hit(assignment["HITId"])
                cost = self._approval_cost(hit)
                assignment.update(AssignmentStatus="Approved", ApprovalTime=now)
                self.store.put_assignment(assignment)
                balance = self._balance()
                self.store.set_meta("balance_cents", str(balance - cost))
                self.store.add_ledger(
                    "auto-approval",
                    {"AssignmentId": assignment["AssignmentId"], "Charged": cost, "Time": now},
                )

    def _approval_cost(self, hit: dict[str, Any]) -> int:
        reward = money.parse_amount(hit["Reward"])
        masters = any(
            SYSTEM_QUALIFICATIONS.get(q["QualificationTypeId"]) == "Masters"
            for q in hit.get("QualificationRequirements") or []
        )
        return reward + money.reward_fee(reward, hit["MaxAssignments"], masters)

    def hit_view(self, hit: dict[str, Any]) -> dict[str, Any]:
        """The HIT as GetHIT shows it now: status and assignment counts derived from state."""
        now = self._now()
        assignments = self.store.assignments_for_hit(hit["HITId"])
        pending = sum(a["AssignmentStatus"] == "Accepted" for a in assignments)
        completed = sum(a["AssignmentStatus"] in ("Approved", "Rejected") for a in assignments)
        remaining = max(0, hit["MaxAssignments"] - len(assignments))
        expired = now >= hit["Expiration"]
        if hit.get("Disposed"):
            status = "Disposed"
        elif not expired and remaining > 0:
            status = "Assignable"
        elif pending > 0:
            status = "Unassignable"
        else:
            status = "Reviewing" if hit.get("Reviewing") else "Reviewable"
        view = {k: v for k, v in hit.items() if k not in ("Disposed", "Reviewing")}
        view.update(
            HITStatus=status,
            NumberOfAssignmentsPending=pending,
            NumberOfAssignmentsAvailable=0 if expired or hit.get("Disposed") else remaining,
            NumberOfAssignmentsCompleted=completed,
        )
        return view

    def _page(self, items: list, params: dict[str, Any], scope: str) -> tuple[list, str | None]:
        size = params.get("MaxResults") or DEFAULT_PAGE_SIZE
        start = 0
        if params.get("NextToken"):
            try:
                decoded = json.loads(base64.urlsafe_b64decode(params["NextToken"].encode()))
                if decoded["s"] != scope:
                    raise ValueError("token from another listing")
                start = int(decoded["o"])
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                raise RequestError(
                    "The NextToken is not valid for this request.",
                    "AWS.MechanicalTurk.InvalidPaginationToken",
                ) from None
        page = items[start : start + size]
        more = start + size < len(items)
        token = None
        if more:
            token = base64.urlsafe_b64encode(
                json.dumps({"o": start + size, "s": scope}).encode()
            ).decode()
        return page, token

    # --- HIT types and HITs -------------------------------------------------------------------

    def _hit_type(self, params: dict[str, Any]) -> dict[str, Any]:
        reward = params["Reward"]
        money_cents = money.parse_amount(reward)
        if money_cents < 1:
            raise RequestError(
                "The reward must be at least $0.01.", "AWS.MechanicalTurk.InvalidReward"
            )
        _check_range(
            "AssignmentDurationInSeconds", params["AssignmentDurationInSeconds"], 30, 31536000
        )
        auto = params.get("AutoApprovalDelayInSeconds", DEFAULT_AUTO_APPROVAL_S)
        _check_range("AutoApprovalDelayInSeconds", auto, 0, 2592000)
        _check_length("Title", params["Title"], 1, 128)
        _check_length("Description", params["Description"], 1, 2000)
        if params.get("Keywords") is not None:
            _check_length("Keywords", params["Keywords"], 0, 1000)
        requirements = self._qualification_requirements(params.get("QualificationRequirements"))
        hit_type = {
            "Title": params["Title"],
            "Description": params["Description"],
            "Keywords": params.get("Keywords"),
            "Reward": money.format_amount(money_cents),
            "AssignmentDurationInSeconds": params["AssignmentDurationInSeconds"],
            "AutoApprovalDelayInSeconds": auto,
            "QualificationRequirements": requirements,
        }
        digest = hashlib.sha256(json.dumps(hit_type, sort_keys=True).encode()).digest()
        hit_type["HITTypeId"] = base64.b32encode(digest).decode()[:30]
        self.store.execute(
            "INSERT OR IGNORE INTO hit_types (id, doc) VALUES (?, ?)",
            (hit_type["HITTypeId"], json.dumps(hit_type, sort_keys=True)),
        )
        return hit_type

    def _qualification_requirements(self, requirements: list | None) -> list[dict[str, Any]]:
        checked = []
        for requirement in requirements or []:
            type_id = requirement["QualificationTypeId"]
            if type_id not in SYSTEM_QUALIFICATIONS:
                qtype = self.store.doc(
                    "SELECT doc FROM qualification_types WHERE id = ?", (type_id,)
                )
                if qtype is None:
                    raise RequestError(
                        f"QualificationType {type_id} does not exist.",
                        "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
                    )
            comparator = requirement["Comparator"]
            values = requirement.get("IntegerValues") or requirement.get("LocaleValues") or []
            if comparator in ("Exists", "DoesNotExist") and values:
                raise RequestError(f"The comparator {comparator} takes no values.")
            if comparator in ("In", "NotIn") and not values:
                raise RequestError(f"The comparator {comparator} needs at least one value.")
            if comparator not in ("Exists", "DoesNotExist", "In", "NotIn") and len(values) != 1:
                raise RequestError(f"The comparator {comparator} needs exactly one value.")
            if type_id == LOCALE and requirement.get("IntegerValues"):
                raise RequestError("The Locale qualification compares LocaleValues.")
            entry = dict(requirement)
            if entry.pop("RequiredToPreview", False) and "ActionsGuarded" not in entry:
                entry["ActionsGuarded"] = "PreviewAndAccept"
            entry.setdefault("ActionsGuarded", "Accept")
            checked.append(entry)
        return checked

    def _create_hit(self, hit_type: dict[str, Any], params: dict[str, Any], request_id: str):
        token = params.get("UniqueRequestToken")
        lifetime = params["LifetimeInSeconds"]
        _check_range("LifetimeInSeconds", lifetime, 30, 31536000)
        max_assignments = params.get("MaxAssignments", 1)
        _check_range("MaxAssignments", max_assignments, 1, 1_000_000)
        if params.get("RequesterAnnotation") is not None:
            _check_length("RequesterAnnotation", params["RequesterAnnotation"], 0, 255)
        if params.get("HITLayoutId") or params.get("HITLayoutParameters"):
            raise RequestError(
                "HIT layouts (HITLayoutId) are not available in the crowd sandbox; "
                "pass the Question instead.",
                "AWS.MechanicalTurk.HITLayoutDoesNotExist",
            )
        question = params.get("Question")
        if not question:
            raise RequestError("Either Question or HITLayoutId must be provided.")
        question_kind(question)
        now = self._now()
        hit = {
            "HITId": new_id(),
            "HITTypeId": hit_type["HITTypeId"],
            "HITGroupId": hit_type["HITTypeId"],
            "CreationTime": now,
            "Title": hit_type["Title"],
            "Description": hit_type["Description"],
            "Keywords": hit_type.get("Keywords"),
            "Question": question,
            "Reward": hit_type["Reward"],
            "MaxAssignments": max_assignments,
            "AutoApprovalDelayInSeconds": hit_type["AutoApprovalDelayInSeconds"],
            "AssignmentDurationInSeconds": hit_type["AssignmentDurationInSeconds"],
            "Expiration": now + lifetime,
            "RequesterAnnotation": params.get("RequesterAnnotation"),
            "QualificationRequirements": hit_type["QualificationRequirements"],
            "HITReviewStatus": "NotReviewed",
        }
        self._require_funds(max_assignments * self._approval_cost(hit))
        self.store.put_hit(hit)
        self._remember_token("CreateHIT", token, {"HITId": hit["HITId"], "RequestId": request_id})
        self.store.add_ledger("create-hit", {"HITId": hit["HITId"], "Time": now})
        return {"HIT": self.hit_view(hit)}

    def _check_hit_token(self, params: dict[str, Any]) -> None:
        seen = self._seen_token("CreateHIT", params.get("UniqueRequestToken"))
        if seen:
            raise RequestError(
                "There is already a HIT which exists with the same UniqueRequestToken as that "
                f"specified in the request. HIT ID: {seen['HITId']} "
                f"(original request {seen['RequestId']})",
                "AWS.MechanicalTurk.HitAlreadyExists",
            )

    def op_CreateHIT(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        self._check_hit_token(params)
        return self._create_hit(self._hit_type(params), params, request_id)

    def op_CreateHITType(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {"HITTypeId": self._hit_type(params)["HITTypeId"]}

    def op_CreateHITWithHITType(self, params: dict[str, Any], request_id: str):
        self._check_hit_token(params)
        hit_type = self.store.doc("SELECT doc FROM hit_types WHERE id = ?", (params["HITTypeId"],))
        if hit_type is None:
            raise RequestError(
                f"HITType {params['HITTypeId']} does not exist.",
                "AWS.MechanicalTurk.HITTypeDoesNotExist",
            )
        return self._create_hit(hit_type, params, request_id)

    def op_GetHIT(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {"HIT": self.hit_view(self._hit(params["HITId"]))}

    def op_ListHITs(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        hits = [h for h in self.store.hits() if not h.get("Disposed")]
        page, token = self._page(hits, params, "ListHITs")  # views only for the page's HITs
        return {
            "HITs": [self.hit_view(h) for h in page],
            "NextToken": token,
            "NumResults": len(page),
        }

    def op_ListReviewableHITs(self, params: dict[str, Any], request_id: str):
        wanted = params.get("Status", "Reviewable")
        hits = [self.hit_view(h) for h in self.store.hits()]
        hits = [
            h
            for h in hits
            if h["HITStatus"] == wanted
            and (not params.get("HITTypeId") or h["HITTypeId"] == params["HITTypeId"])
        ]
        page, token = self._page(hits, params, "ListReviewableHITs:" + wanted)
        return {"HITs": page, "NextToken": token, "NumResults": len(page)}

    def op_UpdateExpirationForHIT(self, params: dict[str, Any], request_id: str):
        hit = self._hit(params["HITId"])
        if hit.get("Disposed"):
            raise RequestError(
                f"Hit {hit['HITId']} has been deleted.", "AWS.MechanicalTurk.InvalidHITState"
            )
        expire_at: datetime = params["ExpireAt"]
        hit["Expiration"] = max(self._now(), expire_at.timestamp())
        self.store.put_hit(hit)
        return {}

    def op_UpdateHITReviewStatus(self, params: dict[str, Any], request_id: str):
        hit = self._hit(params["HITId"])
        status = self.hit_view(hit)["HITStatus"]
        revert = params.get("Revert", False)
        expected = "Reviewing" if revert else "Reviewable"
        if status != expected:
            raise RequestError(
                f"This HIT is currently in the state '{status}'. This operation can be called "
                f"with a status of: {expected}",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        hit["Reviewing"] = not revert
        self.store.put_hit(hit)
        return {}

    def op_DeleteHIT(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        hit = self._hit(params["HITId"])
        if hit.get("Disposed"):
            return {}
        view = self.hit_view(hit)
        unreviewed = [
            a
            for a in self.store.assignments_for_hit(hit["HITId"])
            if a["AssignmentStatus"] == "Submitted"
        ]
        if view["HITStatus"] not in ("Reviewable", "Reviewing") or unreviewed:
            detail = (
                f"{len(unreviewed)} submitted assignment(s) are neither approved nor rejected"
                if unreviewed and view["HITStatus"] in ("Reviewable", "Reviewing")
                else f"This HIT is currently in the state '{view['HITStatus']}'"
            )
            raise RequestError(
                f"{detail}. This operation can be called with a status of: Reviewable, "
                "Reviewing, once every submitted assignment is approved or rejected.",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        hit["Disposed"] = True
        self.store.put_hit(hit)
        return {}

    def op_CreateAdditionalAssignmentsForHIT(self, params: dict[str, Any], request_id: str):
        token = params.get("UniqueRequestToken")
        seen = self._seen_token("CreateAdditionalAssignmentsForHIT", token)
        if seen:
            raise RequestError(
                "The additional assignments for this UniqueRequestToken were already created "
                f"(original request {seen['RequestId']}).",
                "AWS.MechanicalTurk.DuplicateRequest",
            )
        hit = self._hit(params["HITId"])
        extra = params["NumberOfAdditionalAssignments"]
        _check_range("NumberOfAdditionalAssignments", extra, 1, 1_000_000)
        if hit.get("Disposed"):
            raise RequestError(
                f"Hit {hit['HITId']} has been deleted.", "AWS.MechanicalTurk.InvalidHITState"
            )
        before = hit["MaxAssignments"]
        if before < money.LARGE_HIT_ASSIGNMENTS <= before + extra:
            raise RequestError(
                "HITs created with fewer than 10 assignments cannot be extended to have 10 or "
                "more assignments.",
                "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease",
            )
        self._require_funds(extra * self._approval_cost(hit))
        hit["MaxAssignments"] = before + extra
        self.store.put_hit(hit)
        self._remember_token(
            "CreateAdditionalAssignmentsForHIT",
            token,
            {"HITId": hit["HITId"], "RequestId": request_id},
        )
        return {}

    # --- assignments ----------------------------------------------------------------------

    def op_ListAssignmentsForHIT(self, params: dict[str, Any], request_id: str):
        hit = self._hit(params["HITId"])
        statuses = params.get("AssignmentStatuses") or ["Submitted", "Approved", "Rejected"]
        found = [
            a
            for a in self.store.assignments_for_hit(hit["HITId"])
            if a["AssignmentStatus"] in statuses
        ]
        scope = "ListAssignmentsForHIT:" + hit["HITId"] + ":" + ",".join(sorted(statuses))
        page, token = self._page(found, params, scope)
        return {"Assignments": page, "NextToken": token, "NumResults": len(page)}

    def op_GetAssignment(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        assignment = self._assignment(params["AssignmentId"])
        return {"Assignment": assignment, "HIT": self.hit_view(self._hit(assignment["HITId"]))}

    def op_ApproveAssignment(self, params: dict[str, Any], request_id: str):
        assignment = self._assignment(params["AssignmentId"])
        status = assignment["AssignmentStatus"]
        now = self._now()
        if status == "Rejected" and params.get("OverrideRejection"):
            if now - assignment["RejectionTime"] > OVERRIDE_REJECTION_WINDOW_S:
                raise RequestError(
                    "A rejection can only be overridden within 30 days.",
                    "AWS.MechanicalTurk.InvalidAssignmentState",
                )
        elif status != "Submitted":
            allowed = (
                "Submitted"
                if status == "Approved"
                else "Submitted (or Rejected with OverrideRejection)"
            )
            raise RequestError(
                f"This operation can be called with a status of: {allowed}. Assignment "
                f"{assignment['AssignmentId']} is {status}.",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        if params.get("RequesterFeedback") is not None:
            _check_length("RequesterFeedback", params["RequesterFeedback"], 0, 1024)
        hit = self._hit(assignment["HITId"])
        self._charge(
            self._approval_cost(hit),
            "approval",
            {"AssignmentId": assignment["AssignmentId"], "WorkerId": assignment["WorkerId"]},
        )
        assignment.update(AssignmentStatus="Approved", ApprovalTime=now)
        assignment.pop("RejectionTime", None)
        if params.get("RequesterFeedback") is not None:
            assignment["RequesterFeedback"] = params["RequesterFeedback"]
        self.store.put_assignment(assignment)
        return {}

    def op_RejectAssignment(self, params: dict[str, Any], request_id: str):
        assignment = self._assignment(params["AssignmentId"])
        if params.get("RequesterFeedback") is None:
            raise RequestError("RejectAssignment needs RequesterFeedback.")
        _check_length("RequesterFeedback", params["RequesterFeedback"], 1, 1024)
        if assignment["AssignmentStatus"] != "Submitted":
            raise RequestError(
                "This operation can be called with a status of: Submitted. Assignment "
                f"{assignment['AssignmentId']} is {assignment['AssignmentStatus']}.",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        assignment.update(
            AssignmentStatus="Rejected",
            RejectionTime=self._now(),
            RequesterFeedback=params["RequesterFeedback"],
        )
        self.store.put_assignment(assignment)
        return {}

    # --- money and messages -----------------------------------------------------------------

    def op_SendBonus(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        token = params.get("UniqueRequestToken")
        seen = self._seen_token("SendBonus", token)
        if seen:
            raise RequestError(
                "The bonus for this UniqueRequestToken was already granted "
                f"(original request {seen['RequestId']}).",
                "AWS.MechanicalTurk.DuplicateRequest",
            )
        assignment = self._assignment(params["AssignmentId"])
        if assignment["WorkerId"] != params["WorkerId"]:
            raise RequestError(
                f"Assignment {assignment['AssignmentId']} was not done by worker "
                f"{params['WorkerId']}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if assignment["AssignmentStatus"] not in ("Approved", "Rejected"):
            raise RequestError(
                "A bonus can be paid for an assignment with a status of: Approved, Rejected. "
                f"Assignment {assignment['AssignmentId']} is {assignment['AssignmentStatus']}.",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        try:
            cents = money.parse_amount(params["BonusAmount"])
        except ValueError:
            raise RequestError(f"Invalid BonusAmount {params['BonusAmount']!r}.") from None
        if cents < 1:
            raise RequestError(
                "The bonus must be at least $0.01.", "AWS.MechanicalTurk.InvalidBonus"
            )
        _check_length("Reason", params["Reason"], 1, 4096)
        self._charge(
            cents + money.bonus_fee(cents),
            "bonus",
            {"AssignmentId": assignment["AssignmentId"], "WorkerId": assignment["WorkerId"]},
        )
        self.store.add_bonus(
            {
                "WorkerId": assignment["WorkerId"],
                "BonusAmount": money.format_amount(cents),
                "AssignmentId": assignment["AssignmentId"],
                "HITId": assignment["HITId"],
                "Reason": params["Reason"],
                "GrantTime": self._now(),
            }
        )
        self._remember_token(
            "SendBonus",
            token,
            {"AssignmentId": assignment["AssignmentId"], "RequestId": request_id},
        )
        return {}

    def op_ListBonusPayments(self, params: dict[str, Any], request_id: str):
        hit_id, assignment_id = params.get("HITId"), params.get("AssignmentId")
        if bool(hit_id) == bool(assignment_id):
            raise RequestError("Specify exactly one of HITId and AssignmentId.")
        if hit_id:
            self._hit(hit_id)
            found = self.store.bonuses(hit_id=hit_id)
        else:
            self._assignment(assignment_id)
            found = self.store.bonuses(assignment_id=assignment_id)
        page, token = self._page(found, params, f"ListBonusPayments:{hit_id}:{assignment_id}")
        return {"BonusPayments": page, "NextToken": token, "NumResults": len(page)}

    def op_NotifyWorkers(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        worker_ids = params["WorkerIds"]
        if not 1 <= len(worker_ids) <= MAX_NOTIFY_WORKERS:
            raise RequestError(
                f"WorkerIds must hold between 1 and {MAX_NOTIFY_WORKERS} worker ids, "
                f"got {len(worker_ids)}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        _check_length("Subject", params["Subject"], 1, MAX_SUBJECT)
        _check_length("MessageText", params["MessageText"], 1, MAX_MESSAGE)
        failures = []
        for worker_id in dict.fromkeys(worker_ids):
            worked = any(
                a["AssignmentStatus"] in ("Approved", "Rejected")
                for a in self.store.assignments_for_worker(worker_id)
            )
            if not worked:
                failures.append(
                    {
                        "NotifyWorkersFailureCode": "HardFailure",
                        "NotifyWorkersFailureMessage": (
                            f"Cannot send notification to {worker_id}: the worker has no "
                            "approved or rejected work for this requester."
                        ),
                        "WorkerId": worker_id,
                    }
                )
                continue
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": params["Subject"],
                    "MessageText": params["MessageText"],
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {"NotifyWorkersFailureStatuses": failures}

    def op_GetAccountBalance(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {"AvailableBalance": money.format_amount(self._balance()), "OnHoldBalance": "0.00"}

    # --- qualifications ---------------------------------------------------------------------

    def _qualification_type(self, type_id: str) -> dict[str, Any]:
        qtype = self.store.doc("SELECT doc FROM qualification_types WHERE id = ?", (type_id,))
        if qtype is None:
            raise RequestError(
                f"QualificationType {type_id} does not exist.",
                "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
            )
        return qtype

    def op_CreateQualificationType(self, params: dict[str, Any], request_id: str):
        _check_length("Name", params["Name"], 1, 1000)
        _check_length("Description", params["Description"], 1, 2000)
        if self.store.doc("SELECT doc FROM qualification_types WHERE name = ?", (params["Name"],)):
            raise RequestError(
                "You have already created a QualificationType with this name. A "
                "QualificationType's name must be unique among all of the QualificationTypes "
                "created by the same user.",
                "AWS.MechanicalTurk.QualificationTypeAlreadyExists",
            )
        if params.get("Test") or params.get("AnswerKey"):
            raise RequestError(
                "Qualification tests are not available in the crowd sandbox.",
                "AWS.MechanicalTurk.UnsupportedOperation",
            )
        qtype = {
            "QualificationTypeId": new_id(),
            "CreationTime": self._now(),
            "Name": params["Name"],
            "Description": params["Description"],
            "Keywords": params.get("Keywords"),
            "QualificationTypeStatus": params["QualificationTypeStatus"],
            "RetryDelayInSeconds": params.get("RetryDelayInSeconds"),
            "IsRequestable": bool(params.get("AutoGranted")),
            "AutoGranted": bool(params.get("AutoGranted", False)),
            "AutoGrantedValue": params.get("AutoGrantedValue", 1)
            if params.get("AutoGranted")
            else None,
        }
        self.store.execute(
            "INSERT INTO qualification_types (id, name, doc) VALUES (?, ?, ?)",
            (qtype["QualificationTypeId"], qtype["Name"], json.dumps(qtype, sort_keys=True)),
        )
        return {"QualificationType": qtype}

    def op_GetQualificationType(self, params: dict[str, Any], request_id: str):
        return {"QualificationType": self._qualification_type(params["QualificationTypeId"])}

    def op_ListQualificationTypes(self, params: dict[str, Any], request_id: str):
        query = (params.get("Query") or "").lower()
        found = [
            q
            for q in self.store.docs("SELECT doc FROM qualification_types ORDER BY seq")
            if (not params.get("MustBeRequestable") or q["IsRequestable"])
            and (not query or query in (q["Name"] + " " + (q.get("Keywords") or "")).lower())
        ]
        page, token = self._page(found, params, f"ListQualificationTypes:{query}")
        return {"QualificationTypes": page, "NextToken": token, "NumResults": len(page)}

    def op_AssociateQualificationWithWorker(self, params: dict[str, Any], request_id: str):
        type_id, worker_id = params["QualificationTypeId"], params["WorkerId"]
        if type_id in SYSTEM_QUALIFICATIONS:
            raise RequestError(
                "System qualifications cannot be assigned by a requester.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        qtype = self._qualification_type(type_id)
        qualification = {
            "QualificationTypeId": type_id,
            "WorkerId": worker_id,
            "GrantTime": self._now(),
            "IntegerValue": params.get("IntegerValue", 1),
            "Status": "Granted",
        }
        self.store.execute(
            "INSERT INTO qualifications (type_id, worker_id, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (type_id, worker_id) DO UPDATE SET doc = excluded.doc",
            (type_id, worker_id, json.dumps(qualification, sort_keys=True)),
        )
        if params.get("SendNotification"):
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": f"You have been granted the qualification {qtype['Name']}",
                    "MessageText": qtype["Description"],
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {}

    def op_DisassociateQualificationFromWorker(self, params: dict[str, Any], request_id: str):
        type_id, worker_id = params["QualificationTypeId"], params["WorkerId"]
        qtype = self._qualification_type(type_id)
        found = self._qualification(type_id, worker_id)
        if found is None or found["Status"] != "Granted":
            raise RequestError(
                f"You requested a Qualification that does not exist: worker {worker_id} does "
                f"not hold {type_id}.",
                "AWS.MechanicalTurk.QualificationDoesNotExist",
            )
        found["Status"] = "Revoked"
        self.store.execute(
            "UPDATE qualifications SET doc = ? WHERE type_id = ? AND worker_id = ?",
            (json.dumps(found, sort_keys=True), type_id, worker_id),
        )
        if params.get("Reason"):
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": f"Your qualification {qtype['Name']} was revoked",
                    "MessageText": params["Reason"],
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {}

    def _qualification(self, type_id: str, worker_id: str) -> dict[str, Any] | None:
        return self.store.doc(
            "SELECT doc FROM qualifications WHERE type_id = ? AND worker_id = ?",
            (type_id, worker_id),
        )

    def op_GetQualificationScore(self, params: dict[str, Any], request_id: str):
        found = self._qualification(params["QualificationTypeId"], params["WorkerId"])
        if found is None:
            raise RequestError(
                f"You requested a Qualification that does not exist: worker "
                f"{params['WorkerId']} does not hold {params['QualificationTypeId']}.",
                "AWS.MechanicalTurk.QualificationDoesNotExist",
            )
        return {"Qualification": found}

    def op_ListWorkersWithQualificationType(self, params: dict[str, Any], request_id: str):
        type_id = params["QualificationTypeId"]
        self._qualification_type(type_id)
        status = params.get("Status", "Granted")
        found = [
            q
            for q in self.store.docs(
                "SELECT doc FROM qualifications WHERE type_id = ? ORDER BY seq", (type_id,)
            )
            if q["Status"] == status
        ]
        page, token = self._page(
            found, params, f"ListWorkersWithQualificationType:{type_id}:{status}"
        )
        return {"Qualifications": page, "NextToken": token, "NumResults": len(page)}

    # --- workers (the worker page and the simulated workers) --------------------------------

    def register_worker(self, worker_id: str, **profile: Any) -> dict[str, Any]:
        """Create or update a worker's profile (what system qualifications are checked against)."""
        if not re.fullmatch(r"A[A-Z0-9]+", worker_id):
            raise ValueError(
                f"a worker id is 'A' then upper-case letters and digits: {worker_id!r}"
            )
        with self.store.transaction():
            worker = self.store.worker(worker_id) or {"WorkerId": worker_id, **DEFAULT_WORKER}
            worker.update(profile)
            self.store.put_worker(worker)
            return worker

    def worker(self, worker_id: str) -> dict[str, Any]:
        return self.store.worker(worker_id) or self.register_worker(worker_id)

    def qualifies(self, worker: dict[str, Any], hit: dict[str, Any], action: str) -> list[str]:
        """Return the unmet requirements that guard ``action`` (Discover, Preview, Accept)."""
        guards = {
            "Discover": ("DiscoverPreviewAndAccept",),
            "Preview": ("DiscoverPreviewAndAccept", "PreviewAndAccept"),
            "Accept": ("DiscoverPreviewAndAccept", "PreviewAndAccept", "Accept"),
        }[action]
        unmet = []
        for requirement in hit.get("QualificationRequirements") or []:
            if requirement.get("ActionsGuarded", "Accept") not in guards:
                continue
            if not self._meets(worker, requirement):
                unmet.append(_describe(requirement))
        return unmet

    def _meets(self, worker: dict[str, Any], requirement: dict[str, Any]) -> bool:
        type_id, comparator = requirement["QualificationTypeId"], requirement["Comparator"]
        system = SYSTEM_QUALIFICATIONS.get(type_id)
        value: Any
        if system == "Masters":
            value = 1 if worker.get("Masters") else None
        elif system:
            value = worker.get(system)
        else:
            held = self._qualification(type_id, worker["WorkerId"])
            value = held["IntegerValue"] if held and held["Status"] == "Granted" else None
        if comparator == "DoesNotExist":
            return value is None
        if value is None:
            return False
        if comparator == "Exists":
            return True
        if system == "Locale":
            wanted = requirement.get("LocaleValues") or []
            matched = any(
                value.get("Country") == w.get("Country")
                and (not w.get("Subdivision") or value.get("Subdivision") == w.get("Subdivision"))
                for w in wanted
            )
            return matched if comparator in ("EqualTo", "In") else not matched
        numbers = requirement.get("IntegerValues") or []
        checks = {
            "LessThan": lambda: value < numbers[0],
            "LessThanOrEqualTo": lambda: value <= numbers[0],
            "GreaterThan": lambda: value > numbers[0],
            "GreaterThanOrEqualTo": lambda: value >= numbers[0],
            "EqualTo": lambda: value == numbers[0],
            "NotEqualTo": lambda: value != numbers[0],
            "In": lambda: value in numbers,
            "NotIn": lambda: value not in numbers,
        }
        return bool(checks[comparator]())

    def assignable_hits(self, worker_id: str | None = None) -> list[dict[str, Any]]:
        """HITs a worker can find now (all assignable HITs when no worker is given)."""
        with self.store.transaction():
            self._refresh()
            worker = self.worker(worker_id) if worker_id else None
            found = []
            for hit in self.store.hits():
                view = self.hit_view(hit)
                if view["HITStatus"] != "Assignable":
                    continue
                if worker is not None:
                    if self.qualifies(worker, hit, "Discover"):
                        continue
                    if any(
                        a["WorkerId"] == worker["WorkerId"]
                        for a in self.store.assignments_for_hit(hit["HITId"])
                    ):
                        continue
                found.append(view)
            return found

    def hit_for_worker(self, hit_id: str) -> dict[str, Any]:
        with self.store.transaction():
            self._refresh()
            return self.hit_view(self._hit(hit_id))

    def accept(self, hit_id: str, worker_id: str) -> dict[str, Any]:
        """A worker accepts a HIT: return the new assignment, or raise ``RequestError``."""
        with self.store.transaction():
            self._refresh()
            hit = self._hit(hit_id)
            worker = self.worker(worker_id)
            for existing in self.store.assignments_for_hit(hit_id):
                if existing["WorkerId"] == worker_id:
                    if existing["AssignmentStatus"] == "Accepted":
                        return existing
                    raise RequestError(f"Worker {worker_id} has already done HIT {hit_id}.")
            view = self.hit_view(hit)
            if view["HITStatus"] != "Assignable":
                raise RequestError(f"HIT {hit_id} is {view['HITStatus']}, not Assignable.")
            unmet = self.qualifies(worker, hit, "Accept")
            if unmet:
                raise RequestError(
                    f"Worker {worker_id} does not meet the HIT's qualification requirements: "
                    + "; ".join(unmet),
                    "AWS.MechanicalTurk.QualificationRequirementNotMet",
                )
            now = self._now()
            assignment = {
                "AssignmentId": new_id(),
                "WorkerId": worker_id,
                "HITId": hit_id,
                "AssignmentStatus": "Accepted",
                "AcceptTime": now,
                "Deadline": now + hit["AssignmentDurationInSeconds"],
            }
            self.store.put_assignment(assignment)
            return assignment

    def submit(
        self,
        assignment_id: str,
        fields: Sequence[tuple[str, str]],
        *,
        worker_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A worker submits the form of an accepted assignment (MTurk's externalSubmit).

        ``worker_ids`` are the workers the request says it comes from: each must be the one
        who accepted the assignment. A refusal (``RequestError``) changes nothing.
        """
        with self.store.transaction():
            self._refresh()
            assignment = self.store.assignment(assignment_id)
            if assignment is None:
                raise RequestError(
                    f"Assignment {assignment_id} does not exist or was abandoned "
                    "(its time ran out).",
                    "AWS.MechanicalTurk.AssignmentDoesNotExist",
                )
            for worker_id in worker_ids:
                if worker_id != assignment["WorkerId"]:
                    raise NotTheWorkersAssignment(
                        f"Assignment {assignment_id} was accepted by another worker, not "
                        f"{worker_id}: a HIT's form must post the assignmentId it was given "
                        "in its URL."
                    )
            if assignment["AssignmentStatus"] != "Accepted":
                raise RequestError(f"Assignment {assignment_id} was already submitted.")
            hit = self._hit(assignment["HITId"])
            now = self._now()
            assignment.update(
                AssignmentStatus="Submitted",
                SubmitTime=now,
                AutoApprovalTime=now + hit["AutoApprovalDelayInSeconds"],
                Answer=answers_xml([(k, v) for k, v in fields if k != "assignmentId"]),
            )
            self.store.put_assignment(assignment)
            return assignment

    def return_assignment(self, assignment_id: str) -> None:
        """A worker returns an accepted assignment; its slot becomes available again."""
        with self.store.transaction():
            assignment = self.store.assignment(assignment_id)
            if assignment is None or assignment["AssignmentStatus"] != "Accepted":
                raise RequestError(f"Assignment {assignment_id} cannot be returned.")
            self.store.delete_assignment(assignment_id)
            self.store.add_ledger("returned", {"AssignmentId": assignment_id})

    def outbox(self) -> dict[str, dict[str, list]]:
        """Per worker: the e-mails sent to them and the bonuses paid to them."""
        with self.store.transaction():
            result: dict[str, dict[str, list]] = {}
            for message in self.store.messages():
                result.setdefault(message["WorkerId"], {"messages": [], "bonuses": []})[
                    "messages"
                ].append(message)
            for bonus in self.store.bonuses():
                result.setdefault(bonus["WorkerId"], {"messages": [], "bonuses": []})[
                    "bonuses"
                ].append(bonus)
            return result


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise RequestError(
            f"Value {value} for {name} is invalid: it must be between {low} and {high}.",
            "AWS.MechanicalTurk.InvalidParameterValue",
        )


def _check_length(name: str, value: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise RequestError(
            f"{name} must be between {low} and {high} characters long (got {len(value)}).",
            "AWS.MechanicalTurk.InvalidParameterValue",
        )


def _describe(requirement: dict[str, Any]) -> str:
    type_id = requirement["QualificationTypeId"]
    name = SYSTEM_QUALIFICATIONS.get(type_id, type_id)
    values = requirement.get("IntegerValues") or [
        "-".join(filter(None, (v.get("Country"), v.get("Subdivision"))))
        for v in requirement.get("LocaleValues") or []
    ]
    shown = ",".join(str(v) for v in values)
    return f"{name} {requirement['Comparator']} {shown}".strip()
