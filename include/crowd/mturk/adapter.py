"""``platform.CrowdPlatform`` on Amazon Mechanical Turk, through a hook.

Every call goes through ``hook`` (``mturk_provider.hooks.mturk.MTurkHook``: one method per
MTurk operation), and every MTurk error becomes a ``platform`` error here:

- a repeated ``UniqueRequestToken`` (CreateHIT, SendBonus) -> ``DuplicateRequest`` / "already";
- throttling that outlived botocore's retries -> ``Throttled``;
- NotifyWorkers has no request token, so it must not be repeated blindly: after a 5xx answer or a
  connection lost mid-call the e-mails may have gone out, so botocore is told not to retry it
  (``refuse_blind_retry``) and the call raises ``OutcomeUnknown``; throttling, which MTurk
  answers without doing anything, is still retried;
- anything else -> ``PlatformError`` with MTurk's code and message.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

from include.crowd import costs
from include.crowd.mturk import answers, question, requirements
from include.crowd.mturk.fees import FEES
from include.crowd.platform import (
    DuplicateRequest,
    InsufficientFunds,
    OutcomeUnknown,
    PlatformError,
    Submission,
    Task,
    TaskSpec,
    Throttled,
)

log = logging.getLogger(__name__)

NOTIFY_LIMIT = 100  # NotifyWorkers takes at most 100 worker ids per call
THROTTLING_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException"}
NO_BLIND_RETRY_ID = "image-similarity-notify-no-blind-retry"
EXPIRED = datetime(2015, 1, 1, tzinfo=UTC)  # any past instant expires a HIT at once
_OPEN = ("Assignable", "Unassignable")
_SUBMITTED = ["Submitted", "Approved", "Rejected"]


class MTurkCalls(Protocol):
    """The hook methods this adapter calls (``MTurkHook`` has them all)."""

    environment: str

    def get_conn(self) -> Any: ...
    def get_account_balance(self) -> dict: ...
    def create_hit(self, **params: Any) -> dict: ...
    def get_hit(self, hit_id: str) -> dict: ...
    def list_hits(self, page_size: int = 100) -> Iterator[dict]: ...
    def list_assignments_for_hit(
        self, hit_id: str, statuses: list[str] | None = None, page_size: int = 100
    ) -> list[dict]: ...
    def get_assignment(self, assignment_id: str) -> dict: ...
    def approve_assignment(self, assignment_id: str) -> dict: ...
    def list_bonus_payments(self, assignment_id: str) -> list[dict]: ...
    def send_bonus(self, **params: Any) -> dict: ...
    def notify_workers(self, subject: str, message_text: str, worker_ids: list[str]) -> dict: ...
    def get_or_create_qualification_type(self, name: str, description: str) -> dict: ...
    def associate_qualification_with_worker(self, **params: Any) -> dict: ...
    def disassociate_qualification_from_worker(self, **params: Any) -> dict: ...
    def update_expiration_for_hit(self, hit_id: str, expire_at: datetime) -> dict: ...
    def create_additional_assignments_for_hit(
        self, hit_id: str, number: int, unique_request_token: str
    ) -> dict: ...
    def delete_hit(self, hit_id: str) -> dict: ...


def refuse_blind_retry(response=None, caught_exception=None, **_kwargs):
    """botocore ``needs-retry`` handler for NotifyWorkers (called before the retry handler).

    Retrying is safe only when MTurk certainly did nothing: the connection was never made, or
    it answered with throttling (HTTP 400). After a 5xx or a connection lost mid-call the
    e-mails may have been sent; raising stops botocore from sending them again.
    """
    if caught_exception is not None:
        if isinstance(caught_exception, (EndpointConnectionError, ConnectTimeoutError)):
            return None
        raise OutcomeUnknown(f"NotifyWorkers: the connection failed mid-call ({caught_exception})")
    if response is not None and response[0].status_code >= 500:
        raise OutcomeUnknown(f"NotifyWorkers: MTurk answered HTTP {response[0].status_code}")
    return None


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", str(error))


def _is_insufficient_funds(error: ClientError) -> bool:
    """MTurk's refusal for want of funds: its TurkErrorCode, or its message ("This Requester
    has insufficient funds in their account to complete this transaction")."""
    turk_code = error.response.get("TurkErrorCode") or error.response.get("Error", {}).get(
        "TurkErrorCode"
    )
    return turk_code == "AWS.MechanicalTurk.InsufficientFunds" or (
        "insufficient funds" in _message(error).lower()
    )


def _is_duplicate(error: ClientError) -> bool:
    text = f"{_code(error)} {_message(error)}"
    return "UniqueRequestToken" in text or "HitAlreadyExists" in text


@contextmanager
def _translated(operation: str) -> Generator[None, None, None]:
    """MTurk's errors as ``platform`` errors (other exceptions pass as they are)."""
    try:
        yield
    except ClientError as error:
        code, message = _code(error), _message(error)
        kind = (
            Throttled
            if code in THROTTLING_CODES
            else InsufficientFunds
            if _is_insufficient_funds(error)
            else PlatformError
        )
        raise kind(message, code=code, operation=operation) from error


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return None


class MTurkPlatform:
    """Mechanical Turk as a ``CrowdPlatform``; ``hook`` makes every call.

    :param frame_height: the HIT frame's height in pixels; 0 lets MTurk fit it to the page.
    """

    name = "mturk"
    fees = FEES
    notify_limit = NOTIFY_LIMIT

    def __init__(self, hook: MTurkCalls, *, frame_height: int = 0) -> None:
        self.hook = hook
        self.environment = hook.environment
        self.frame_height = frame_height

    # --- account and tasks ------------------------------------------------------------------

    def balance_cents(self) -> int:
        with _translated("GetAccountBalance"):
            response = self.hook.get_account_balance()
        return costs.balance_cents(response["AvailableBalance"])

    def check_spec(self, spec: TaskSpec) -> None:
        """Refuse (``ValueError``) worker requirements MTurk cannot express, before any call."""
        requirements.for_workers(spec.requirements, self.environment)

    def create_task(self, spec: TaskSpec, page: str, *, batch_id: str, token: str) -> Task:
        xml = question.mark_token(
            question.html_question(page, frame_height=self.frame_height), token
        )
        try:
            hit = self.hook.create_hit(
                Title=spec.title,
                Description=spec.description,
                Keywords=spec.keywords,
                Reward=spec.reward,
                MaxAssignments=spec.assignments,
                LifetimeInSeconds=spec.lifetime_s,
                AssignmentDurationInSeconds=spec.assignment_duration_s,
                AutoApprovalDelayInSeconds=spec.auto_approval_delay_s,
                Question=xml,
                RequesterAnnotation=batch_id,
                UniqueRequestToken=token,
                QualificationRequirements=requirements.for_workers(
                    spec.requirements, self.environment
                ),
            )["HIT"]
        except ClientError as error:
            if _is_duplicate(error):
                raise DuplicateRequest(
                    _message(error), code=_code(error), operation="CreateHIT"
                ) from error
            with _translated("CreateHIT"):
                raise
        return self._task(hit, spec)

    def find_task(self, batch_id: str, token: str) -> Task | None:
        """The HIT of ``batch_id`` whose HTML carries ``token`` (ListHITs, all pages)."""
        with _translated("ListHITs"):
            for hit in self.hook.list_hits():
                if hit.get("RequesterAnnotation") == batch_id and question.carries_token(
                    hit.get("Question", ""), token
                ):
                    return self._task(hit)
        return None

    def batch_tasks(self, batch_id: str) -> list[Task]:
        """Every HIT of this batch (ListHITs, all pages, filtered by RequesterAnnotation)."""
        with _translated("ListHITs"):
            return [
                self._task(hit)
                for hit in self.hook.list_hits()
                if hit.get("RequesterAnnotation") == batch_id
            ]

    def task(self, task_id: str) -> Task:
        with _translated("GetHIT"):
            return self._task(self.hook.get_hit(task_id)["HIT"])

    def expire(self, task_id: str) -> None:
        with _translated("UpdateExpirationForHIT"):
            self.hook.update_expiration_for_hit(task_id, EXPIRED)

    def delete(self, task_id: str) -> None:
        with _translated("DeleteHIT"):
            self.hook.delete_hit(task_id)

    def add_assignments(self, task_id: str, count: int, *, token: str) -> bool:
        try:
            self.hook.create_additional_assignments_for_hit(
                hit_id=task_id, number=count, unique_request_token=token
            )
        except ClientError as error:
            if _is_duplicate(error):
                return False
            with _translated("CreateAdditionalAssignmentsForHIT"):
                raise
        return True

    def extend_until(self, task_id: str, until: datetime) -> None:
        with _translated("UpdateExpirationForHIT"):
            self.hook.update_expiration_for_hit(task_id, until)

    @staticmethod
    def _task(hit: dict, spec: TaskSpec | None = None) -> Task:
        required = hit.get("QualificationRequirements")
        masters = (
            requirements.requires_masters(required)
            if required is not None or spec is None
            else spec.requirements.masters
        )
        return Task(
            id=hit["HITId"],
            type_id=hit["HITTypeId"],
            batch_id=hit.get("RequesterAnnotation"),
            created_at=_iso(hit.get("CreationTime")),
            reward=hit.get("Reward", spec.reward if spec else None),
            max_assignments=int(hit.get("MaxAssignments", spec.assignments if spec else 0)),
            masters=masters,
            open=hit.get("HITStatus") in _OPEN,
            disposed=hit.get("HITStatus") == "Disposed",
            expires_at=_iso(hit.get("Expiration")),
        )

    # --- submissions and payments -----------------------------------------------------------

    def submissions(self, task_id: str) -> list[Submission]:
        with _translated("ListAssignmentsForHIT"):
            found = self.hook.list_assignments_for_hit(task_id, statuses=list(_SUBMITTED))
        return [answers.submission(assignment) for assignment in found]

    def approve(self, submission_id: str) -> bool:
        try:
            self.hook.approve_assignment(submission_id)
            return True
        except ClientError as error:
            # Approved meanwhile (auto-approval, or our own call whose answer was lost).
            with _translated("GetAssignment"):
                current = self.hook.get_assignment(submission_id)["Assignment"]
            if current["AssignmentStatus"] != "Approved":
                with _translated("ApproveAssignment"):
                    raise
            log.info("assignment %s was already approved (%s)", submission_id, error)
            return False

    def bonuses_paid(self, submission_id: str) -> list[int]:
        with _translated("ListBonusPayments"):
            paid = self.hook.list_bonus_payments(submission_id)
        return [costs.cents(payment["BonusAmount"]) for payment in paid]

    def pay_bonus(
        self, *, worker_id: str, submission_id: str, amount_cents: int, reason: str, token: str
    ) -> bool:
        try:
            self.hook.send_bonus(
                worker_id=worker_id,
                assignment_id=submission_id,
                bonus_amount=costs.currency_amount(amount_cents),
                reason=reason,
                unique_request_token=token,
            )
            return True
        except ClientError as error:
            if "UniqueRequestToken" not in str(error) and "already" not in str(error):
                with _translated("SendBonus"):
                    raise
            return False

    # --- workers ----------------------------------------------------------------------------

    def notify(self, subject: str, text: str, worker_ids: Sequence[str]) -> dict[str, str]:
        events = getattr(getattr(self.hook.get_conn(), "meta", None), "events", None)
        if events is not None:
            events.register_first(
                "needs-retry.mturk.NotifyWorkers", refuse_blind_retry, unique_id=NO_BLIND_RETRY_ID
            )
        with _translated("NotifyWorkers"):
            response = self.hook.notify_workers(
                subject=subject, message_text=text, worker_ids=list(worker_ids)
            )
        return {
            failure["WorkerId"]: " ".join(
                str(failure.get(key, ""))
                for key in ("NotifyWorkersFailureCode", "NotifyWorkersFailureMessage")
            ).strip()
            for failure in response.get("NotifyWorkersFailureStatuses", [])
        }

    def exclusion(self, name: str, description: str) -> str:
        with _translated("ListQualificationTypes/CreateQualificationType"):
            found = self.hook.get_or_create_qualification_type(name, description)
        return found["QualificationTypeId"]

    def grant_exclusion(self, exclusion_id: str, worker_id: str) -> None:
        with _translated("AssociateQualificationWithWorker"):
            self.hook.associate_qualification_with_worker(
                qualification_type_id=exclusion_id,
                worker_id=worker_id,
                integer_value=1,
                send_notification=False,
            )

    def revoke_exclusion(self, exclusion_id: str, worker_id: str) -> None:
        with _translated("DisassociateQualificationFromWorker"):
            self.hook.disassociate_qualification_from_worker(
                qualification_type_id=exclusion_id, worker_id=worker_id
            )
