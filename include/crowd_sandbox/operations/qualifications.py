"""Qualification types and the qualifications workers hold: CreateQualificationType,
UpdateQualificationType, GetQualificationType, ListQualificationTypes,
AssociateQualificationWithWorker, DisassociateQualificationFromWorker, GetQualificationScore,
ListWorkersWithQualificationType; and qualification tests and requests:
ListQualificationRequests, AcceptQualificationRequest, RejectQualificationRequest, with what a
worker does on the worker site (take a type's test, or request a type without one). (What a
requirement asks of a worker is in ``qualification_requirements``; how a Test and its AnswerKey
are checked and graded is in ``qualification_tests``.)

MTurk's rules (API reference 2017-01-17; each is cited in ``test_qualification_tests.py``):

- a ``Test`` (a QuestionForm, at most 65535 bytes) needs ``TestDurationInSeconds`` and cannot
  come with ``AutoGranted`` true; an ``AnswerKey`` grades it at once ("Qualification requests
  for types with answer keys are granted automatically ... using a value calculated from the
  answer key"); without a key the answers wait as a QualificationRequest for the requester
  (ListQualificationRequests "to poll for pending requests"; AcceptQualificationRequest with
  ``IntegerValue``, default 1; RejectQualificationRequest with a ``Reason`` "shown to the Worker").
- a type without a Test: "the Worker may request the Qualification without answering any
  questions"; with ``AutoGranted`` it is granted at once with ``AutoGrantedValue`` (default 1).
- the test time, ``TestDurationInSeconds``, runs "starting from the time the Worker requests
  the Qualification" (opens the test): answers that come later are refused.
- ``RetryDelayInSeconds``: "If not specified, retries are disabled and Workers can request a
  Qualification of this type only once, even if the Worker has not been granted the
  Qualification"; with it a worker waits that long after a request to request again (a worker
  who holds the qualification may retake the test "to get a better score").
- UpdateQualificationType: "If you are updating the test for a type, you must specify the Test
  and TestDurationInSeconds parameters. The AnswerKey parameter is optional; omitting it
  specifies that the updated test does not have an answer key"; "If the type already has a
  test, you cannot update it to be AutoGranted"; changing the duration or key alone needs the
  Test again. A request keeps the Test it was taken with ("identical to the QuestionForm
  associated with the Qualification type at the time the Worker requests the Qualification").
- an Inactive type takes no requests (UpdateQualificationType's Inactive status prevents
  "Workers from taking the Qualification test").

Request statuses, in the ``qualification_requests`` table: ``Started`` (the test is open),
``Submitted`` (waiting for the requester: the only ones ListQualificationRequests lists),
``Granted`` (graded or auto-granted), ``Approved``, ``Rejected``, ``Expired`` (its time ran out).
"""

from __future__ import annotations

import json
from typing import Any

from include.crowd_sandbox import qualification_tests, question_form
from include.crowd_sandbox.core import SandboxCore, check_length, new_id
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_requirements import (
    SYSTEM_QUALIFICATIONS,
    held_qualification,
    system_qualification_type,
)

PENDING = "Submitted"
ENDED = ("Submitted", "Granted", "Approved", "Rejected", "Expired")
INVALID = "AWS.MechanicalTurk.InvalidParameterValue"
REQUEST_MISSING = "AWS.MechanicalTurk.QualificationRequestDoesNotExist"


class QualificationRefused(RequestError):
    """A worker may not request (or take the test of) a qualification type now."""


class QualificationOperations(SandboxCore):
    """Make qualification types, grant and revoke them, look them up."""

    def _qualification_type(self, type_id: str) -> dict[str, Any]:
        qtype = self.store.doc("SELECT doc FROM qualification_types WHERE id = ?", (type_id,))
        if qtype is None:
            raise RequestError(
                f"QualificationType {type_id} does not exist.",
                "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
            )
        return qtype

    def op_CreateQualificationType(self, params: dict[str, Any], request_id: str):
        check_length("Name", params["Name"], 1, 1000)
        check_length("Description", params["Description"], 1, 2000)
        if self.store.doc("SELECT doc FROM qualification_types WHERE name = ?", (params["Name"],)):
            raise RequestError(
                "You have already created a QualificationType with this name. A "
                "QualificationType's name must be unique among all of the QualificationTypes "
                "created by the same user.",
                "AWS.MechanicalTurk.QualificationTypeAlreadyExists",
            )
        if params.get("RetryDelayInSeconds") is not None and params["RetryDelayInSeconds"] < 0:
            raise RequestError(
                f"RetryDelayInSeconds must be a non-negative integer, not "
                f"{params['RetryDelayInSeconds']}.",
                INVALID,
            )
        test = self._checked_test(params, has_test=False)
        qtype = {
            "QualificationTypeId": new_id(),
            "CreationTime": self._now(),
            "Name": params["Name"],
            "Description": params["Description"],
            "Keywords": params.get("Keywords"),
            "QualificationTypeStatus": params["QualificationTypeStatus"],
            "RetryDelayInSeconds": params.get("RetryDelayInSeconds"),
            # Every type a requester makes can be requested by workers (with its test, at
            # once when AutoGranted, or for review): only system types cannot.
            "IsRequestable": True,
            "AutoGranted": bool(params.get("AutoGranted", False)),
            "AutoGrantedValue": params.get("AutoGrantedValue", 1)
            if params.get("AutoGranted")
            else None,
            **test,
        }
        self.store.execute(
            "INSERT INTO qualification_types (id, name, doc) VALUES (?, ?, ?)",
            (qtype["QualificationTypeId"], qtype["Name"], json.dumps(qtype, sort_keys=True)),
        )
        return {"QualificationType": qtype}

    def _checked_test(self, params: dict[str, Any], *, has_test: bool) -> dict[str, Any]:
        """The Test, AnswerKey and TestDurationInSeconds of a create or update, checked."""
        test = params.get("Test")
        if test is None:
            if params.get("AnswerKey") is not None or (
                has_test and params.get("TestDurationInSeconds") is not None
            ):
                raise RequestError(
                    "An AnswerKey or TestDurationInSeconds is given with the Test it belongs "
                    "to: specify the Test (to keep the questions, the original Test) too.",
                    INVALID,
                )
            if params.get("AutoGranted") and has_test:
                raise RequestError(
                    "This QualificationType has a test: it cannot be made AutoGranted.", INVALID
                )
            return {}
        if params.get("AutoGranted"):
            raise RequestError(
                "A QualificationType with a Test cannot be AutoGranted: give Test or "
                "AutoGranted, not both.",
                INVALID,
            )
        duration = params.get("TestDurationInSeconds")
        if duration is None:
            raise RequestError(
                "TestDurationInSeconds must be specified when a Test is specified.", INVALID
            )
        if duration < 1:
            raise RequestError(
                f"TestDurationInSeconds must be a positive number of seconds, not {duration}.",
                INVALID,
            )
        form = qualification_tests.check_test(test)
        key = params.get("AnswerKey")
        if key is not None:
            qualification_tests.parse_answer_key(key, form)
        return {"Test": test, "TestDurationInSeconds": duration, "AnswerKey": key}

    def op_UpdateQualificationType(self, params: dict[str, Any], request_id: str):
        type_id = params["QualificationTypeId"]
        qtype = self._qualification_type(type_id)
        if params.get("Description") is not None:
            check_length("Description", params["Description"], 1, 2000)
        retry = params.get("RetryDelayInSeconds")
        if retry is not None and retry < 0:
            raise RequestError(
                f"RetryDelayInSeconds must be a non-negative integer, not {retry}.", INVALID
            )
        test = self._checked_test(params, has_test=bool(qtype.get("Test")))
        for name in ("Description", "QualificationTypeStatus", "RetryDelayInSeconds"):
            if params.get(name) is not None:
                qtype[name] = params[name]
        if test:
            qtype.update(test)
            qtype["AutoGranted"], qtype["AutoGrantedValue"] = False, None
        elif params.get("AutoGranted") is not None:
            qtype["AutoGranted"] = params["AutoGranted"]
            qtype["AutoGrantedValue"] = (
                params.get("AutoGrantedValue", qtype.get("AutoGrantedValue") or 1)
                if params["AutoGranted"]
                else None
            )
        elif params.get("AutoGrantedValue") is not None and qtype.get("AutoGranted"):
            qtype["AutoGrantedValue"] = params["AutoGrantedValue"]
        self.store.execute(
            "UPDATE qualification_types SET doc = ? WHERE id = ?",
            (json.dumps(qtype, sort_keys=True), type_id),
        )
        return {"QualificationType": qtype}

    def op_GetQualificationType(self, params: dict[str, Any], request_id: str):
        # The reference: it "retrieves information about a Qualification type using its ID"
        # (a system type's too; other requesters' types do not exist offline).
        type_id = params["QualificationTypeId"]
        system = system_qualification_type(type_id)
        return {"QualificationType": system or self._qualification_type(type_id)}

    def op_ListQualificationTypes(self, params: dict[str, Any], request_id: str):
        # The reference: MustBeRequestable "If false, all Qualification types, including those
        # managed by the system, are considered"; MustBeOwnedByCaller "If false, the operation
        # returns all Qualification types"; Query is "A text query against all of the
        # searchable attributes of Qualification types".
        query = (params.get("Query") or "").lower()
        owned = params.get("MustBeOwnedByCaller")
        system = [] if owned else [system_qualification_type(i) for i in SYSTEM_QUALIFICATIONS]
        own = self.store.docs("SELECT doc FROM qualification_types ORDER BY seq")
        found = [
            q
            for q in [*system, *own]
            if (not params.get("MustBeRequestable") or q["IsRequestable"])
            and (not query or query in _searchable(q))
        ]
        page, token = self._page(found, params, f"ListQualificationTypes:{query}:{bool(owned)}")
        return {"QualificationTypes": page, "NextToken": token, "NumResults": len(page)}

    def op_AssociateQualificationWithWorker(self, params: dict[str, Any], request_id: str):
        type_id, worker_id = params["QualificationTypeId"], params["WorkerId"]
        if type_id in SYSTEM_QUALIFICATIONS:
            raise RequestError(
                "System qualifications cannot be assigned by a requester.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        qtype = self._qualification_type(type_id)
        self._grant(type_id, worker_id, params.get("IntegerValue", 1))
        # SendNotification: "Note: this is true by default" (the API reference).
        if params.get("SendNotification", True):
            self._tell(
                worker_id,
                f"You have been granted the qualification {qtype['Name']}",
                qtype["Description"],
                request_id,
            )
        return {}

    def _grant(self, type_id: str, worker_id: str, value: int) -> None:
        qualification = {
            "QualificationTypeId": type_id,
            "WorkerId": worker_id,
            "GrantTime": self._now(),
            "IntegerValue": value,
            "Status": "Granted",
        }
        self.store.execute(
            "INSERT INTO qualifications (type_id, worker_id, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (type_id, worker_id) DO UPDATE SET doc = excluded.doc",
            (type_id, worker_id, json.dumps(qualification, sort_keys=True)),
        )

    def _tell(self, worker_id: str, subject: str, text: str, request_id: str) -> None:
        """An e-mail to a worker (shown in the worker site's outbox)."""
        self.store.add_message(
            {
                "WorkerId": worker_id,
                "Subject": subject,
                "MessageText": text,
                "SentTime": self._now(),
                "RequestId": request_id,
            }
        )

    def op_DisassociateQualificationFromWorker(self, params: dict[str, Any], request_id: str):
        type_id, worker_id = params["QualificationTypeId"], params["WorkerId"]
        qtype = self._qualification_type(type_id)
        found = held_qualification(self.store, type_id, worker_id)
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

    def op_GetQualificationScore(self, params: dict[str, Any], request_id: str):
        found = held_qualification(self.store, params["QualificationTypeId"], params["WorkerId"])
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

    # --- qualification requests (the requester's side) -----------------------------------

    def _find_request(self, request_id: str) -> dict[str, Any] | None:
        return self.store.doc("SELECT doc FROM qualification_requests WHERE id = ?", (request_id,))

    def _request(self, request_id: str) -> dict[str, Any]:
        found = self._find_request(request_id)
        if found is None:
            raise RequestError(
                f"QualificationRequest {request_id} does not exist.", REQUEST_MISSING
            )
        return found

    def _put_request(self, request: dict[str, Any]) -> None:
        self.store.execute(
            "INSERT INTO qualification_requests (id, type_id, worker_id, status, doc) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
            "doc = excluded.doc",
            (
                request["QualificationRequestId"],
                request["QualificationTypeId"],
                request["WorkerId"],
                request["Status"],
                json.dumps(request, sort_keys=True),
            ),
        )

    def _pending(self, request_id: str) -> dict[str, Any]:
        request = self._request(request_id)
        if request["Status"] != PENDING:
            raise RequestError(
                f"QualificationRequest {request_id} is not pending: it is {request['Status']}.",
                REQUEST_MISSING,
            )
        return request

    def op_ListQualificationRequests(self, params: dict[str, Any], request_id: str):
        type_id = params.get("QualificationTypeId")
        if type_id:
            self._qualification_type(type_id)
            found = self.store.docs(
                "SELECT doc FROM qualification_requests WHERE status = ? AND type_id = ? "
                "ORDER BY seq",
                (PENDING, type_id),
            )
        else:
            found = self.store.docs(
                "SELECT doc FROM qualification_requests WHERE status = ? ORDER BY seq",
                (PENDING,),
            )
        page, token = self._page(found, params, f"ListQualificationRequests:{type_id or ''}")
        return {
            "QualificationRequests": [_request_view(r) for r in page],
            "NextToken": token,
            "NumResults": len(page),
        }

    def op_AcceptQualificationRequest(self, params: dict[str, Any], request_id: str):
        request = self._pending(params["QualificationRequestId"])
        value = params.get("IntegerValue", 1)
        qtype = self._qualification_type(request["QualificationTypeId"])
        self._grant(request["QualificationTypeId"], request["WorkerId"], value)
        request.update(Status="Approved", IntegerValue=value, DecisionTime=self._now())
        self._put_request(request)
        self._tell(
            request["WorkerId"],
            f"You have been granted the qualification {qtype['Name']}",
            f"Your request for {qtype['Name']} was accepted (value {value}).",
            request_id,
        )
        return {}

    def op_RejectQualificationRequest(self, params: dict[str, Any], request_id: str):
        request = self._pending(params["QualificationRequestId"])
        qtype = self._qualification_type(request["QualificationTypeId"])
        request.update(Status="Rejected", Reason=params.get("Reason"), DecisionTime=self._now())
        self._put_request(request)
        self._tell(
            request["WorkerId"],
            f"Your request for the qualification {qtype['Name']} was rejected",
            params.get("Reason") or "The requester gave no reason.",
            request_id,
        )
        return {}

    # --- what a worker does (the worker site) ---------------------------------------------

    def qualification_status(self, type_id: str, worker_id: str) -> dict[str, Any]:
        """What a worker may do about a type now: ``type``, ``held`` (the qualification, if
        any), ``open`` (a test in progress), ``pending`` (a request under review), ``last`` (the
        latest request), ``refusal`` (why the worker may not request it now, or None)."""
        with self._operation():
            self._refresh()
            qtype = self._qualification_type(type_id)
            open_test = self._open_test(type_id, worker_id)
            requests = self._worker_requests(type_id, worker_id)
            return {
                "type": qtype,
                "held": held_qualification(self.store, type_id, worker_id),
                "open": open_test,
                "pending": next((r for r in requests if r["Status"] == PENDING), None),
                "last": requests[-1] if requests else None,
                "refusal": None if open_test else self._refusal(qtype, worker_id, requests),
            }

    def start_qualification_test(self, type_id: str, worker_id: str) -> dict[str, Any]:
        """Open a type's test for a worker (its time starts now), or return the open one."""
        with self._operation():
            self._refresh()
            qtype = self._qualification_type(type_id)
            if not qtype.get("Test"):
                raise QualificationRefused(f"{qtype['Name']} has no qualification test.")
            found = self._open_test(type_id, worker_id)
            if found is not None:
                return found
            refusal = self._refusal(qtype, worker_id)
            if refusal:
                raise QualificationRefused(refusal)
            now = self._now()
            attempt = {
                "QualificationRequestId": new_id(),
                "QualificationTypeId": type_id,
                "WorkerId": worker_id,
                "Status": "Started",
                "StartTime": now,
                "Deadline": now + qtype["TestDurationInSeconds"],
                "Test": qtype["Test"],
                "AnswerKey": qtype.get("AnswerKey"),
            }
            self._put_request(attempt)
            return attempt

    def submit_qualification_test(
        self,
        request_id: str,
        worker_id: str,
        fields: list[tuple[str, str]],
        *,
        type_id: str | None = None,
    ) -> dict[str, Any]:
        """A worker's answers to an open test: graded at once with an AnswerKey (Granted, with
        ``IntegerValue``), else a request for review (Submitted). Raise ``RequestError`` for
        answers the form refuses (nothing changes) and ``QualificationRefused`` when the test
        is not this worker's open test (of ``type_id``, when given) or its time ran out."""
        with self._operation():
            self._refresh()
            attempt = self._find_request(request_id)
            if (
                attempt is None
                or attempt["WorkerId"] != worker_id
                or (type_id is not None and attempt["QualificationTypeId"] != type_id)
            ):
                raise QualificationRefused(
                    f"{worker_id} has no qualification test {request_id} of this type to submit."
                )
            now = self._now()
            if attempt["Status"] == "Expired" or self._expired(attempt):
                raise QualificationRefused(
                    "The time for this qualification test ran out: answers are taken for "
                    "TestDurationInSeconds after the test is opened. Nothing was submitted."
                )
            if attempt["Status"] != "Started":
                raise QualificationRefused(
                    f"This qualification test was already submitted ({attempt['Status']})."
                )
            qtype = self._qualification_type(attempt["QualificationTypeId"])
            if qtype["QualificationTypeStatus"] != "Active":
                raise QualificationRefused(
                    "This qualification type was made Inactive while the test was open: it "
                    "takes no requests. Nothing was submitted."
                )
            form = question_form.parse(attempt["Test"])
            answer = question_form.answers(form, fields)
            attempt.update(Answer=answer, SubmitTime=now)
            key = attempt.pop("AnswerKey", None)
            if key:
                value = qualification_tests.grade(
                    qualification_tests.parse_answer_key(key, form), answer
                )
                attempt.update(Status="Granted", IntegerValue=value)
                self._grant(attempt["QualificationTypeId"], worker_id, value)
            else:
                attempt["Status"] = PENDING
            self._put_request(attempt)
            return attempt

    def request_qualification(self, type_id: str, worker_id: str) -> dict[str, Any]:
        """A worker requests a type that has no test: granted at once (AutoGranted) or a
        request for the requester to review (Submitted)."""
        with self._operation():
            self._refresh()
            qtype = self._qualification_type(type_id)
            if qtype.get("Test"):
                raise QualificationRefused(
                    f"{qtype['Name']} has a qualification test: take the test to request it."
                )
            refusal = self._refusal(qtype, worker_id)
            if refusal:
                raise QualificationRefused(refusal)
            now = self._now()
            request = {
                "QualificationRequestId": new_id(),
                "QualificationTypeId": type_id,
                "WorkerId": worker_id,
                "StartTime": now,
                "SubmitTime": now,
                "Status": PENDING,
            }
            if qtype.get("AutoGranted"):
                value = qtype.get("AutoGrantedValue")
                value = 1 if value is None else value
                request.update(Status="Granted", IntegerValue=value)
                self._grant(type_id, worker_id, value)
            self._put_request(request)
            return request

    def _worker_requests(self, type_id: str, worker_id: str) -> list[dict[str, Any]]:
        return self.store.docs(
            "SELECT doc FROM qualification_requests WHERE type_id = ? AND worker_id = ? "
            "ORDER BY seq",
            (type_id, worker_id),
        )

    def _open_test(self, type_id: str, worker_id: str) -> dict[str, Any] | None:
        """The worker's test of this type still in its time; one past it becomes Expired."""
        found = None
        for attempt in self.store.docs(
            "SELECT doc FROM qualification_requests WHERE type_id = ? AND worker_id = ? "
            "AND status = 'Started'",
            (type_id, worker_id),
        ):
            if not self._expired(attempt):
                found = attempt
        return found

    def _expired(self, attempt: dict[str, Any]) -> bool:
        """Whether a started test is past its TestDurationInSeconds; if so it is stored as
        Expired (it then counts as a request for the retry rules)."""
        if attempt["Status"] != "Started" or self._now() <= attempt["Deadline"]:
            return False
        attempt["Status"] = "Expired"
        self._put_request(attempt)
        return True

    def _refusal(
        self,
        qtype: dict[str, Any],
        worker_id: str,
        requests: list[dict[str, Any]] | None = None,
    ) -> str | None:
        """Why the worker may not request this type now (None: they may). ``requests`` are
        the worker's requests of this type, when the caller has read them already."""
        if qtype["QualificationTypeStatus"] != "Active":
            return f"{qtype['Name']} is inactive: it takes no requests now."
        if requests is None:
            requests = self._worker_requests(qtype["QualificationTypeId"], worker_id)
        ended = [r for r in requests if r["Status"] in ENDED]
        if any(r["Status"] == PENDING for r in ended):
            return f"Your request for {qtype['Name']} is waiting for the requester's review."
        if not ended:
            return None
        delay = qtype.get("RetryDelayInSeconds")
        if delay is None:
            return (
                f"{qtype['Name']} can be requested only once (the requester allows no "
                "retries), and you have requested it."
            )
        again = max(r["StartTime"] for r in ended) + delay
        if self._now() < again:
            return (
                f"You may request {qtype['Name']} again in {int(again - self._now()) + 1} s "
                f"(the requester's retry delay is {delay} s)."
            )
        return None


def _searchable(qtype: dict[str, Any]) -> str:
    """The text ListQualificationTypes' Query searches: name, description and keywords."""
    parts = (qtype["Name"], qtype.get("Description") or "", qtype.get("Keywords") or "")
    return " ".join(parts).lower()


def _request_view(request: dict[str, Any]) -> dict[str, Any]:
    """A request as ListQualificationRequests shows it (Test and Answer for a test only)."""
    view = {
        "QualificationRequestId": request["QualificationRequestId"],
        "QualificationTypeId": request["QualificationTypeId"],
        "WorkerId": request["WorkerId"],
        "SubmitTime": request.get("SubmitTime"),
    }
    if request.get("Test"):
        view.update(Test=request["Test"], Answer=request.get("Answer"))
    return view
