"""The crowd sandbox's worker site: what a person (or a simulated worker) sees instead of MTurk.

Pages and endpoints (``W`` is a worker id, ``^A[A-Z0-9]+$``; ``H`` a HIT id; ``A`` an
assignment id):

``GET /`` and ``GET /?workerId=W``
    Pick a worker id (the known workers, or type one); with one, the HITs assignable for ``W``
    (title, reward, assignments available, expiry), each linking to ``/hit/H?workerId=W``, and
    ``W``'s assignments in progress. When the requester blocked ``W`` (CreateWorkerBlock), the
    HITs are still listed, as MTurk lets a blocked worker view them, each row marked
    ``data-blocked`` under a notice ``#blocked`` with MTurk's words for a block.
``GET /hit/H?workerId=W``
    The preview: the HIT's title, description and reward, the question in
    ``<iframe id="question">`` (``assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE``) and the Accept form
    ``<form id="accept" method="post" action="/hit/H/accept">``. A qualification requirement
    that guards Preview and is unmet hides the question; one that guards Accept hides the button,
    and so does a block (the notice ``#blocked`` takes its place).
``POST /hit/H/accept`` (``workerId``)
    Accepts (``Sandbox.accept``) and answers ``303`` to the work page
    ``/hit/H?workerId=W&assignmentId=A``: the same page with the real ``assignmentId`` in the
    question's URL and a Return form (``POST /hit/H/return``). A refusal is a 4xx page that says
    why (403 for a worker the requester blocked; an assignment accepted before the block stays
    the worker's to do and submit).
``GET /hit/H/question?assignmentId=..&hitId=..&workerId=..&turkSubmitTo=..``
    The question itself, called with the query parameters MTurk passes. An HTMLQuestion's
    HTMLContent is served as it is, with one rewrite: every absolute MTurk externalSubmit URL
    (``https://www.mturk.com/mturk/externalSubmit`` and
    ``https://workersandbox.mturk.com/mturk/externalSubmit``, in a form's ``action`` or in a
    script) becomes ``{base_url}/mturk/externalSubmit``, so submitting lands here and no request
    leaves the machine. HITs that post to ``{turkSubmitTo}/mturk/externalSubmit`` need no
    rewrite: ``turkSubmitTo`` is the sandbox's own URL. A second rewrite serves Crowd HTML
    Elements offline: MTurk's loader ``https://assets.crowd.aws/crowd-html-elements.js`` (any
    version suffix or query string) becomes ``{base_url}/static/crowd-html-elements.js``, the
    sandbox's own implementation of the common elements, whose ``<crowd-form>`` submits one
    ``taskAnswers`` field of JSON as MTurk stores it (``crowd_elements``). Nothing else is
    changed or injected. An ExternalQuestion
    is a ``302`` to its ExternalURL with the same parameters appended. A QuestionForm is rendered
    as MTurk renders it, a web form of its questions (``question_form.render``) posting to
    ``/mturk/externalSubmit`` with the ``assignmentId`` (and ``workerId``); in a preview its
    Submit button is disabled.
``GET /static/crowd-html-elements.js``
    That script (``static/crowd-html-elements.js``).
``POST /mturk/externalSubmit``
    MTurk's submit endpoint: the form becomes the assignment's ``QuestionFormAnswers`` XML, one
    ``Answer`` per field (``Sandbox.submit``; the ``assignmentId`` field itself is dropped), or
    for a QuestionForm HIT one ``Answer`` per answered question with ``FreeText`` or
    ``SelectionIdentifier``/``OtherSelectionText`` (a form that breaks the QuestionForm's
    ``IsRequired``, selection counts or constraints is a 400 page naming the rule), and
    a 200 "submitted" page links back to ``/?workerId=W``. Loaded in the HIT's frame, that page
    takes the whole window to ``/?workerId=W&submitted=A`` (as MTurk leaves the HIT once it is
    submitted). A preview's ``ASSIGNMENT_ID_NOT_AVAILABLE``, or an unknown assignment, is a 400
    page that says why. Nothing is stored when the assignment is not the submitting worker's
    (a ``workerId`` field or parameter, or the question page's ``workerId``: 403), no longer
    accepted (400), or when the answers come to more than ``question_xml.MAX_ANSWER_BYTES`` of XML
    (413).
``POST /hit/H/return`` (``assignmentId``, ``workerId``)
    Returns the assignment and answers ``303`` to ``/?workerId=W``.
``GET /outbox`` (optionally ``?workerId=W``)
    Per worker, the e-mails sent with NotifyWorkers (and qualification notices) and the bonuses
    paid with SendBonus, with their reasons.
``GET|POST /qualification/Q?workerId=W``
    Take qualification type ``Q``'s test, or request a type without one
    (``qualification_pages``); a HIT page whose unmet requirement is such a type links there.

Every page is a Jinja2 template from ``templates/`` with autoescaping on: titles, descriptions,
answers, e-mails and reasons are requester- or worker-controlled text. No page loads anything
from another host.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from include.crowd_sandbox import crowd_elements, money, question_form
from include.crowd_sandbox.core import new_id
from include.crowd_sandbox.messages import Request, Response
from include.crowd_sandbox.operations.worker_actions import NotTheWorkersAssignment, WorkerBlocked
from include.crowd_sandbox.operations.worker_blocks import BLOCKED_MESSAGE
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_pages import PATH as QUALIFICATION_PATH
from include.crowd_sandbox.qualification_pages import QualificationPages
from include.crowd_sandbox.question_xml import AnswerTooLarge, external_url, html_content, xml_root
from include.crowd_sandbox.requester import Sandbox

PREVIEW_ASSIGNMENT_ID = "ASSIGNMENT_ID_NOT_AVAILABLE"
TEMPLATES = Path(__file__).resolve().parent / "templates"
WORKER_ID = re.compile(r"^A[A-Z0-9]+$")
MTURK_SUBMIT_URL = re.compile(
    r"https?://(?:www|workersandbox)\.mturk\.com/mturk/externalSubmit", re.IGNORECASE
)
DEFAULT_FRAME_HEIGHT = 600

_HIT_PATH = re.compile(r"^/hit/([A-Za-z0-9]+)(?:/(question|accept|return))?/?$")
_NOT_FOUND_CODES = (
    "AWS.MechanicalTurk.HITDoesNotExist",
    "AWS.MechanicalTurk.AssignmentDoesNotExist",
)


class HTTPProblem(Exception):
    """A request the site refuses: rendered as an HTML page with this status and reason."""

    def __init__(self, status: int, title: str, message: str, **links: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.links = status, title, message, links


class WorkerSite:
    """Renders the worker pages over a ``Sandbox``; ``base_url`` is the sandbox's own URL."""

    def __init__(self, sandbox: Sandbox, base_url: str) -> None:
        self.sandbox = sandbox
        self.base_url = base_url.rstrip("/")
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["dollars"] = _dollars
        self.env.filters["duration"] = _duration
        self.env.globals["relative"] = self._relative
        self.qualifications = QualificationPages(self, HTTPProblem)

    # --- dispatch -------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        try:
            return self._route(method, request)
        except HTTPProblem as problem:
            return self._problem(problem, embedded=_in_frame(request))

    def _route(self, method: str, request: Request) -> Response:
        path = request.path
        if path in ("/", "/index.html"):
            self._allow(method, "GET")
            return self.index(request)
        if path in ("/outbox", "/outbox/"):
            self._allow(method, "GET")
            return self.outbox(request)
        if path == crowd_elements.SCRIPT_PATH:
            self._allow(method, "GET")
            return Response(200, crowd_elements.script(), "text/javascript; charset=utf-8")
        if path == "/mturk/externalSubmit":
            self._allow(method, "GET", "POST")
            return self.external_submit(request, method)
        test = QUALIFICATION_PATH.match(path)
        if test:  # take a qualification test, or request a qualification
            return self.qualifications.handle(request, method, test.group(1))
        found = _HIT_PATH.match(path)
        if found:
            hit_id, action = found.group(1), found.group(2)
            if action is None:
                self._allow(method, "GET")
                return self.hit_page(request, hit_id)
            if action == "question":
                self._allow(method, "GET")
                return self.question(request, hit_id)
            self._allow(method, "POST")
            if action == "accept":
                return self.accept(request, hit_id)
            return self.return_assignment(request, hit_id)
        raise HTTPProblem(404, "Page not found", f"There is no page at {path}.")

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HTTPProblem(
                405, "Method not allowed", f"Use {' or '.join(allowed)} here, not {method}."
            )

    # --- pages ----------------------------------------------------------------------------

    def index(self, request: Request) -> Response:
        worker_id = self._worker_id(request, required=False)
        worker = self.sandbox.worker(worker_id) if worker_id else None
        blocked = bool(worker_id) and self.sandbox.blocked(worker_id)
        hits = []
        for hit in self.sandbox.assignable_hits(worker_id):
            unmet = self._unmet(worker, hit, "Accept") if worker else []
            hits.append(
                {
                    "hit": hit,
                    "unmet": unmet,
                    "blocked": blocked,
                    "url": self._hit_url(hit["HITId"], worker_id),
                }
            )
        in_progress, done = [], []
        if worker_id:
            for assignment in reversed(self.sandbox.store.assignments_for_worker(worker_id)):
                hit = self.sandbox.store.hit(assignment["HITId"]) or {}
                entry = {
                    "assignment": assignment,
                    "title": hit.get("Title", assignment["HITId"]),
                    "reward": hit.get("Reward"),
                    "url": self._hit_url(
                        assignment["HITId"], worker_id, assignment["AssignmentId"]
                    ),
                }
                if assignment["AssignmentStatus"] == "Accepted":
                    in_progress.append(entry)
                else:
                    done.append(entry)
        submitted = request.arg("submitted")
        just_submitted = next(
            (e for e in done if e["assignment"]["AssignmentId"] == submitted), None
        )
        workers = [w["WorkerId"] for w in self.sandbox.store.workers()]
        return self._render(
            200,
            "index.html",
            page="hits",
            worker_id=worker_id,
            workers=workers,
            suggested_worker=new_id("A", 14),
            hits=hits,
            blocked=blocked,
            blocked_message=BLOCKED_MESSAGE,
            in_progress=in_progress,
            done=done[:20],
            just_submitted=just_submitted,
        )

    def hit_page(self, request: Request, hit_id: str) -> Response:
        hit = self._hit(hit_id)
        worker_id = self._worker_id(request, required=False)
        assignment_id = request.arg("assignmentId") or PREVIEW_ASSIGNMENT_ID
        assignment = None
        if assignment_id != PREVIEW_ASSIGNMENT_ID:
            assignment = self._own_assignment(assignment_id, hit_id, worker_id)
            worker_id = assignment["WorkerId"]
            if assignment["AssignmentStatus"] != "Accepted":
                raise HTTPProblem(
                    409,
                    "Already submitted",
                    f"Assignment {assignment_id} was submitted; it is "
                    f"{assignment['AssignmentStatus']}.",
                    back=self._list_url(worker_id),
                )
        worker = self.sandbox.worker(worker_id) if worker_id else None
        preview_unmet = self._unmet(worker or _ANONYMOUS, hit, "Preview")
        accept_unmet = self._unmet(worker or _ANONYMOUS, hit, "Accept")
        in_progress = None
        if assignment is None and worker_id:
            in_progress = self._accepted_assignment(hit_id, worker_id)
        blocked = assignment is None and bool(worker_id) and self.sandbox.blocked(worker_id)
        params = [("assignmentId", assignment_id), ("hitId", hit_id)]
        if worker_id:
            params.append(("workerId", worker_id))
        params.append(("turkSubmitTo", self.base_url))
        return self._render(
            200,
            "hit.html",
            hit=hit,
            worker_id=worker_id,
            assignment=assignment,
            preview=assignment is None,
            preview_unmet=preview_unmet,
            accept_unmet=accept_unmet,
            blocked=blocked,
            blocked_message=BLOCKED_MESSAGE,
            in_progress=in_progress,
            in_progress_url=in_progress
            and self._hit_url(hit_id, worker_id, in_progress["AssignmentId"]),
            question_url=f"/hit/{hit_id}/question?{urlencode(params)}",
            frame_height=_frame_height(hit["Question"]),
            kind=_question_kind(hit["Question"]),
            list_url=self._list_url(worker_id),
            qualification_offers=self.qualifications.offers(
                worker_id, hit, preview_unmet or accept_unmet
            ),
        )

    def question(self, request: Request, hit_id: str) -> Response:
        hit = self._hit(hit_id)
        worker_id = self._worker_id(request, required=False)
        worker = self.sandbox.worker(worker_id) if worker_id else _ANONYMOUS
        unmet = self._unmet(worker, hit, "Preview")
        if unmet:
            raise HTTPProblem(
                403,
                "Not qualified to preview",
                "This HIT can only be previewed by workers who meet: " + "; ".join(unmet) + ".",
            )
        content = html_content(hit["Question"])
        if content is not None:
            content = crowd_elements.rewrite_script_urls(content, self.base_url)
            return Response(200, self.rewrite_submit_urls(content).encode("utf-8"))
        target = external_url(hit["Question"])
        if target:
            params = [
                (name, request.arg(name) or "")
                for name in ("assignmentId", "hitId", "workerId", "turkSubmitTo")
                if request.arg(name) is not None
            ]
            separator = "&" if urlsplit(target).query else "?"
            location = target + (separator + urlencode(params) if params else "")
            return Response(302, b"", "text/plain", {"Location": location})
        # A QuestionForm: MTurk renders it as its own web form (question_form.render).
        assignment_id = request.arg("assignmentId") or PREVIEW_ASSIGNMENT_ID
        hidden = {"assignmentId": assignment_id}
        if worker_id:
            hidden["workerId"] = worker_id
        try:
            form = question_form.parse(hit["Question"])
        except RequestError as error:  # a HIT stored before CreateHIT checked QuestionForms
            raise HTTPProblem(500, "Question not shown", error.message) from None
        page = question_form.render(
            form,
            action="/mturk/externalSubmit",
            hidden=hidden,
            preview=assignment_id == PREVIEW_ASSIGNMENT_ID,
            title=hit["Title"],
        )
        return Response(200, page.encode("utf-8"))

    def rewrite_submit_urls(self, html: str) -> str:
        """Point MTurk's absolute externalSubmit URLs at this sandbox (nothing else changes)."""
        return MTURK_SUBMIT_URL.sub(self.base_url + "/mturk/externalSubmit", html)

    def accept(self, request: Request, hit_id: str) -> Response:
        worker_id = self._worker_id(request, required=True)
        existing = self._accepted_assignment(hit_id, worker_id)
        if existing is None:
            try:
                existing = self.sandbox.accept(hit_id, worker_id)
            except RequestError as error:
                hit = self.sandbox.store.hit(hit_id)
                if hit is not None:
                    error.message = self._name_qualifications(error.message, hit)
                raise self._refusal(error, "Could not accept this HIT", worker_id) from None
        return _redirect(self._hit_url(hit_id, worker_id, existing["AssignmentId"]))

    def return_assignment(self, request: Request, hit_id: str) -> Response:
        worker_id = self._worker_id(request, required=False)
        assignment_id = request.arg("assignmentId") or ""
        assignment = self._own_assignment(assignment_id, hit_id, worker_id)
        try:
            self.sandbox.return_assignment(assignment_id)
        except RequestError as error:
            raise self._refusal(error, "Could not return this HIT", worker_id) from None
        return _redirect(self._list_url(assignment["WorkerId"]))

    def external_submit(self, request: Request, method: str) -> Response:
        fields = request.form if method == "POST" else request.query
        assignment_id = next((v for k, v in fields if k == "assignmentId"), "")
        if not assignment_id:
            raise HTTPProblem(
                400,
                "Not submitted",
                "The form has no assignmentId field. A HIT's form must post the assignmentId "
                "it was given in its URL.",
            )
        if assignment_id == PREVIEW_ASSIGNMENT_ID:
            raise HTTPProblem(
                400,
                "Not submitted",
                "This is a preview (assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE): accept the HIT "
                "before submitting it.",
            )
        try:
            assignment = self.sandbox.submit(
                assignment_id, fields, worker_ids=self._submitting_workers(request)
            )
        except AnswerTooLarge as error:
            raise HTTPProblem(413, "Answers too large", error.message) from None
        except NotTheWorkersAssignment as error:
            raise HTTPProblem(403, "Not your assignment", error.message) from None
        except RequestError as error:
            raise HTTPProblem(400, "Not submitted", error.message) from None
        hit = self.sandbox.store.hit(assignment["HITId"]) or {}
        return self._render(
            200,
            "submitted.html",
            embedded=_in_frame(request),
            worker_id=assignment["WorkerId"],
            assignment=assignment,
            title=hit.get("Title", assignment["HITId"]),
            reward=hit.get("Reward"),
            answers=question_form.answer_pairs(assignment["Answer"])
            if _question_kind(hit.get("Question", "<x/>")) == "QuestionForm"
            else [(k, v) for k, v in fields if k != "assignmentId"],
            list_url=self._list_url(assignment["WorkerId"]),
            done_url="/?"
            + urlencode({"workerId": assignment["WorkerId"], "submitted": assignment_id}),
        )

    def _submitting_workers(self, request: Request) -> list[str]:
        """The workers a submit says it comes from: its ``workerId`` field or parameter, and
        the worker of the question page it was posted from (a browser's Referer, when that page
        is this site's ``/hit/H/question``; a form there rarely carries a workerId itself)."""
        workers = []
        named = self._worker_id(request, required=False)
        if named:
            workers.append(named)
        referer = urlsplit(request.headers.get("referer", ""))
        if (
            f"{referer.scheme}://{referer.netloc}" == self.base_url
            and _HIT_PATH.match(referer.path)
            and referer.path.rstrip("/").endswith("/question")
        ):
            framed = dict(parse_qsl(referer.query)).get("workerId", "").strip().upper()
            if WORKER_ID.match(framed):
                workers.append(framed)
        return workers

    def outbox(self, request: Request) -> Response:
        worker_id = self._worker_id(request, required=False)
        boxes = self.sandbox.outbox()
        if worker_id:
            boxes = {worker_id: boxes.get(worker_id, {"messages": [], "bonuses": []})}
        entries = []
        for wid in sorted(boxes):
            box = boxes[wid]
            total = sum(money.parse_amount(b["BonusAmount"]) for b in box["bonuses"])
            entries.append(
                {
                    "worker_id": wid,
                    "messages": sorted(box["messages"], key=lambda m: -m["SentTime"]),
                    "bonuses": sorted(box["bonuses"], key=lambda b: -b["GrantTime"]),
                    "total": money.format_amount(total),
                }
            )
        return self._render(200, "outbox.html", page="outbox", worker_id=worker_id, entries=entries)

    # --- helpers --------------------------------------------------------------------------

    def _render(self, status: int, template: str, /, **context: Any) -> Response:
        context.setdefault("worker_id", None)
        context.setdefault("page", "")
        context.setdefault("embedded", False)
        body = self.env.get_template(template).render(**context)
        return Response(status, body.encode("utf-8"))

    def _problem(self, problem: HTTPProblem, *, embedded: bool = False) -> Response:
        return self._render(
            problem.status,
            "message.html",
            embedded=embedded,
            status=problem.status,
            title=problem.title,
            message=problem.message,
            links=problem.links,
        )

    def _refusal(self, error: RequestError, title: str, worker_id: str | None) -> HTTPProblem:
        """A refused worker action: 404 (no such thing), 403 (not qualified, or blocked) or 409
        (state)."""
        if error.turk_error_code in _NOT_FOUND_CODES:
            status = 404
        elif (
            isinstance(error, WorkerBlocked)
            or error.turk_error_code == "AWS.MechanicalTurk.QualificationRequirementNotMet"
        ):
            status = 403
        else:
            status = 409
        return HTTPProblem(status, title, error.message, back=self._list_url(worker_id))

    def _worker_id(self, request: Request, *, required: bool) -> str | None:
        raw = (request.arg("workerId") or "").strip().upper()
        if not raw:
            if required:
                raise HTTPProblem(400, "Pick a worker", "Choose a worker id first.", back="/")
            return None
        if not WORKER_ID.match(raw):
            raise HTTPProblem(
                400,
                "Not a worker id",
                f"{raw!r} is not a worker id: a worker id is the letter A followed by capital "
                "letters and digits, like A1B2C3D4E5F6G7.",
                back="/",
            )
        return raw

    def _unmet(self, worker: dict[str, Any], hit: dict[str, Any], action: str) -> list[str]:
        """The requirements guarding ``action`` that ``worker`` misses, qualifications named."""
        return [
            self._name_qualifications(reason, hit)
            for reason in self.sandbox.qualifies(worker, hit, action)
        ]

    def _name_qualifications(self, text: str, hit: dict[str, Any]) -> str:
        """Put the requester's qualification type names in place of their ids."""
        for requirement in hit.get("QualificationRequirements") or []:
            type_id = requirement["QualificationTypeId"]
            if type_id in text:
                qtype = self.sandbox.store.doc(
                    "SELECT doc FROM qualification_types WHERE id = ?", (type_id,)
                )
                if qtype is not None:
                    text = text.replace(type_id, f"“{qtype['Name']}”")
        return text

    def _hit(self, hit_id: str) -> dict[str, Any]:
        try:
            return self.sandbox.hit_for_worker(hit_id)
        except RequestError as error:
            raise HTTPProblem(404, "No such HIT", error.message, back="/") from None

    def _own_assignment(
        self, assignment_id: str, hit_id: str, worker_id: str | None
    ) -> dict[str, Any]:
        assignment = self.sandbox.store.assignment(assignment_id) if assignment_id else None
        if (
            assignment is None
            or assignment["HITId"] != hit_id
            or (worker_id and assignment["WorkerId"] != worker_id)
        ):
            raise HTTPProblem(
                404,
                "No such assignment",
                f"Assignment {assignment_id or '(none)'} of HIT {hit_id} does not exist for "
                f"{worker_id or 'this worker'}: it may have been returned, or its time ran out.",
                back=self._list_url(worker_id),
                hit=self._hit_url(hit_id, worker_id),
            )
        return assignment

    def _accepted_assignment(self, hit_id: str, worker_id: str) -> dict[str, Any] | None:
        for assignment in self.sandbox.store.assignments_for_hit(hit_id):
            if (
                assignment["WorkerId"] == worker_id
                and assignment["AssignmentStatus"] == "Accepted"
                and assignment["Deadline"] > self.sandbox.now()
            ):
                return assignment
        return None

    @staticmethod
    def _hit_url(hit_id: str, worker_id: str | None, assignment_id: str | None = None) -> str:
        params = [("workerId", worker_id)] if worker_id else []
        if assignment_id:
            params.append(("assignmentId", assignment_id))
        return f"/hit/{hit_id}" + (f"?{urlencode(params)}" if params else "")

    @staticmethod
    def _list_url(worker_id: str | None) -> str:
        return f"/?{urlencode({'workerId': worker_id})}" if worker_id else "/"

    def _relative(self, timestamp: float) -> str:
        """``in 2 h 5 min`` or ``3 min ago``, against the sandbox's clock."""
        delta = timestamp - self.sandbox.now()
        text = _duration(abs(delta))
        return f"in {text}" if delta >= 0 else f"{text} ago"


# Whom qualifications are checked against when no worker is chosen: holds nothing.
_ANONYMOUS: dict[str, Any] = {"WorkerId": ""}


def _in_frame(request: Request) -> bool:
    """Whether the browser loads this page inside the HIT's frame (Fetch Metadata says so)."""
    return request.headers.get("sec-fetch-dest") == "iframe"


def _redirect(location: str) -> Response:
    return Response(303, b"", "text/plain", {"Location": location})


def _question_kind(question: str) -> str:
    root = xml_root(question.strip())
    return root.tag.rsplit("}", 1)[-1]


def _frame_height(question: str) -> int:
    """The question's FrameHeight in pixels; 0 (MTurk: fit the content) is sized by the page.
    A QuestionForm has none: 0, its page is as tall as its questions."""
    root = xml_root(question.strip())
    if root.tag.rsplit("}", 1)[-1] == "QuestionForm":
        return 0
    for child in root:
        if child.tag.rsplit("}", 1)[-1] == "FrameHeight":
            try:
                return max(0, int((child.text or "").strip()))
            except ValueError:
                return DEFAULT_FRAME_HEIGHT
    return DEFAULT_FRAME_HEIGHT


def _dollars(amount: str | None) -> str:
    return f"${amount}" if amount else "–"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
