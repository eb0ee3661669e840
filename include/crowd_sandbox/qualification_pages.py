"""The worker site's qualification pages: take a qualification type's test, or request a type
that has none (``WorkerSite`` routes ``/qualification/<QualificationTypeId>`` here).

``GET /qualification/Q?workerId=W`` (optionally ``&hitId=H``, to link back to the HIT)
    The type's name and description, and what ``W`` may do. A type with a ``Test``: the test
    is opened (its ``TestDurationInSeconds`` start now; opening it again while it runs shows the
    same test) and shown as a web form (``question_form.render_fragment``) posting back here
    with ``workerId`` and ``qualificationRequestId``. A type without one: a "Request
    qualification" form (``form#request-qualification``). When ``W`` may not request the
    type now (inactive, a request under review, no retries or a retry delay, see
    ``operations/qualifications.py``), the page (409) says why.
``POST /qualification/Q`` (``workerId``; ``qualificationRequestId`` and the answers for a test)
    Submits the test or the request and shows the outcome, ``#outcome`` with ``data-status``:
    ``Granted`` (graded with the AnswerKey, or AutoGranted; with the value), ``Submitted``
    (waiting for the requester: AcceptQualificationRequest / RejectQualificationRequest). A
    form that breaks the test's rules (a required question unanswered ...) is a 400 page naming
    the rule; the test stays open. Answers after the test's time are refused (409), and the
    attempt counts as a request.

The HIT page offers these pages (``offers``) for each unmet requirement on a requester's
qualification type that a worker can obtain: "Take the qualification test" or "Request
qualification" (``a.qualification-offer`` with ``data-qualification-type``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from include.crowd_sandbox import question_form
from include.crowd_sandbox.messages import Request, Response
from include.crowd_sandbox.operations.qualifications import QualificationRefused
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_requirements import SYSTEM_QUALIFICATIONS

PATH = re.compile(r"^/qualification/([A-Za-z0-9]+)/?$")
_HIT_ID = re.compile(r"^[A-Za-z0-9]+$")


class QualificationPages:
    """The pages of ``/qualification/<QualificationTypeId>`` over a ``WorkerSite``."""

    def __init__(self, site: Any, problem: type[Exception]) -> None:
        """``site``: the ``WorkerSite``; ``problem``: its ``HTTPProblem`` (a refused request,
        shown as an error page)."""
        self.site = site
        self.sandbox = site.sandbox
        self.problem = problem

    def handle(self, request: Request, method: str, type_id: str) -> Response:
        HTTPProblem = self.problem  # noqa: N806
        if method not in ("GET", "POST"):
            raise HTTPProblem(405, "Method not allowed", f"Use GET or POST here, not {method}.")
        worker_id = self.site._worker_id(request, required=True)
        assert worker_id is not None
        hit_id = request.arg("hitId") or ""
        hit_id = hit_id if _HIT_ID.match(hit_id) else ""
        links = {"back": self.site._list_url(worker_id)}
        if hit_id:
            links["hit"] = self.site._hit_url(hit_id, worker_id)
        try:
            status = self.sandbox.qualification_status(type_id, worker_id)
        except RequestError as error:
            raise HTTPProblem(404, "No such qualification", error.message, **links) from None
        qtype = status["type"]
        hidden = {"workerId": worker_id}
        if hit_id:
            hidden["hitId"] = hit_id
        action = f"/qualification/{type_id}"
        try:
            if method == "POST":
                request_id = request.arg("qualificationRequestId")
                if qtype.get("Test"):
                    if not request_id:
                        raise QualificationRefused(
                            "Open the test first: the form has no qualificationRequestId."
                        )
                    outcome = self.sandbox.submit_qualification_test(
                        request_id, worker_id, list(request.form), type_id=type_id
                    )
                else:
                    outcome = self.sandbox.request_qualification(type_id, worker_id)
                return self._page(200, qtype, worker_id, links, outcome=outcome)
            if qtype.get("Test"):
                if status["refusal"] and not status["open"]:
                    raise QualificationRefused(status["refusal"])
                attempt = self.sandbox.start_qualification_test(type_id, worker_id)
                form = question_form.parse(attempt["Test"])
                test = question_form.render_fragment(
                    form,
                    action=action,
                    hidden={**hidden, "qualificationRequestId": attempt["QualificationRequestId"]},
                )
                return self._page(200, qtype, worker_id, links, test=test, attempt=attempt)
            return self._page(
                409 if status["refusal"] else 200,
                qtype,
                worker_id,
                links,
                refusal=status["refusal"],
                held=status["held"],
                request_form={"action": action, "hidden": list(hidden.items())},
            )
        except QualificationRefused as refused:
            return self._page(
                409, qtype, worker_id, links, refusal=refused.message, held=status["held"]
            )
        except RequestError as error:  # the answers break the test's rules: nothing changed
            raise HTTPProblem(400, "Not submitted", error.message, **links) from None

    def _page(
        self, status: int, qtype: dict[str, Any], worker_id: str, links: dict[str, str], **context
    ) -> Response:
        context.setdefault("outcome", None)
        context.setdefault("test", None)
        context.setdefault("attempt", None)
        context.setdefault("refusal", None)
        context.setdefault("held", None)
        context.setdefault("request_form", None)
        return self.site._render(
            status, "qualification.html", qtype=qtype, worker_id=worker_id, links=links, **context
        )

    def offers(self, worker_id: str | None, hit: dict[str, Any], unmet: list[str]) -> list[dict]:
        """For a HIT whose requirements ``worker_id`` misses (``unmet`` is not empty): the
        requester's qualification types it requires that the worker could obtain here."""
        if not worker_id or not unmet:
            return []
        found = []
        for requirement in hit.get("QualificationRequirements") or []:
            type_id = requirement["QualificationTypeId"]
            if type_id in SYSTEM_QUALIFICATIONS or requirement["Comparator"] == "DoesNotExist":
                continue
            qtype = self.sandbox.store.doc(
                "SELECT doc FROM qualification_types WHERE id = ?", (type_id,)
            )
            if qtype is None or qtype["QualificationTypeStatus"] != "Active":
                continue
            if any(type_id == offer["type_id"] for offer in found):
                continue
            if not self.sandbox.qualifies(
                self.sandbox.worker(worker_id),
                {"QualificationRequirements": [{**requirement, "ActionsGuarded": "Accept"}]},
                "Accept",
            ):
                continue  # this requirement is met: another one is not
            query = urlencode({"workerId": worker_id, "hitId": hit["HITId"]})
            found.append(
                {
                    "type_id": type_id,
                    "name": qtype["Name"],
                    "test": bool(qtype.get("Test")),
                    "url": f"/qualification/{type_id}?{query}",
                }
            )
        return found
