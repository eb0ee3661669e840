"""What the crowd logic needs of a crowd platform, in the crowd logic's own words.

Creating, reviewing, paying and cleaning up (``create``, ``review``, ``stage``, ``cleanup``)
talk to a platform only through ``CrowdPlatform``: tasks (a HIT on Mechanical Turk), their
submissions (assignments), bonuses, e-mails to workers, and exclusions (a qualification that
keeps a worker away from later tasks). Records and errors are the ones below, never a
platform's own; each platform's adapter translates (``include/crowd/mturk/`` for Mechanical
Turk). The shape follows ``include/image_similarity/cache.py``'s ``ChunkStore``.

Exactly-once is the crowd logic's job (the S3 ledger); a platform offers what makes it
possible: a request token on everything that costs money (``create_task``, ``pay_bonus``), and
a way to find again what a lost answer created (``find_task``, ``bonuses_paid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol


class PlatformError(RuntimeError):
    """The platform refused or failed a request: ``reason`` is what it said, ``code`` its own
    name for the error and ``operation`` the request (both for the log)."""

    def __init__(self, reason: str, *, code: str = "", operation: str = "") -> None:
        where = f"{operation}: " if operation else ""
        super().__init__(f"{where}{reason}" + (f" ({code})" if code else ""))
        self.reason = reason
        self.code = code
        self.operation = operation


class DuplicateRequest(PlatformError):
    """A request with this token was made before (the platform did nothing this time)."""


class Throttled(PlatformError):
    """The platform refused the request for its rate (nothing was done; retrying is safe)."""


class InsufficientFunds(PlatformError):
    """The account's available funds do not cover what the request would commit (nothing was
    done; the same request may succeed once funds are free again)."""


class OutcomeUnknown(PlatformError):
    """A request without a request token failed in a way that leaves unknown whether it ran
    (so it must not be repeated blindly)."""


SubmissionStatus = Literal["submitted", "approved", "rejected"]


@dataclass(frozen=True)
class WorkerRequirements:
    """Who may work on a task.

    :param min_approval_rate: lowest share (0-100) of a worker's work approved elsewhere.
    :param min_approved_hits: lowest number of tasks a worker had approved.
    :param locales: allowed locales, ``"US"`` or ``"US-NY"`` style; empty: anywhere.
    :param masters: only the platform's best-rated workers (on MTurk: Masters, charged more).
    :param excluded: an exclusion (``CrowdPlatform.exclusion``) whose holders may not even see
        the task.
    :param capped: another exclusion, the batch's "reached the most tasks of this batch"
        (granted by the review to workers at the cap), whose holders may not see it either.
    """

    min_approval_rate: int | None = None
    min_approved_hits: int | None = None
    locales: tuple[str, ...] = ()
    masters: bool = False
    excluded: str | None = None
    capped: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a task offers and for how long (the same for every task of a batch)."""

    title: str
    description: str
    keywords: str
    reward: str  # USD, e.g. "0.05"
    assignments: int
    lifetime_s: int
    assignment_duration_s: int
    auto_approval_delay_s: int
    requirements: WorkerRequirements = field(default_factory=WorkerRequirements)


@dataclass(frozen=True)
class Task:
    """A task as the platform has it. ``reward``, ``max_assignments`` and ``masters`` are what
    it was created with (what the platform charges); ``open``: it may still take work;
    ``disposed``: it is gone from the platform."""

    id: str
    type_id: str
    batch_id: str | None
    created_at: str | None  # ISO 8601
    reward: str
    max_assignments: int
    masters: bool
    open: bool
    disposed: bool = False
    expires_at: str | None = None  # ISO 8601; None: the platform did not say


@dataclass(frozen=True)
class Submission:
    """One worker's submitted work on a task, its answers read as ``{field: value}``;
    ``problems`` says what could not be read (the review then counts nothing of it)."""

    id: str
    task_id: str
    worker_id: str
    status: SubmissionStatus
    answers: dict[str, str]
    problems: tuple[str, ...] = ()
    submitted_at: str | None = None  # ISO 8601
    accepted_at: str | None = None  # ISO 8601


class FeeSchedule(Protocol):
    """What the platform charges on top of what workers get, in cents."""

    def reward_fee(self, reward_cents: int, assignments: int, masters: bool = False) -> int:
        """The fee on one approved assignment of a task with ``assignments`` assignments."""

    def bonus_fee(self, bonus_cents: int) -> int:
        """The fee on one bonus."""

    def warning(self, assignments: int) -> str | None:
        """Why a task of ``assignments`` assignments costs more than usual, if it does."""


class CrowdPlatform(Protocol):
    """A crowd platform, as the crowd logic uses it."""

    name: str
    fees: FeeSchedule
    notify_limit: int  # the most workers one ``notify`` takes

    def balance_cents(self) -> int:
        """The account's available balance."""

    def check_spec(self, spec: TaskSpec) -> None:
        """Refuse (``ValueError``) a spec this platform cannot create, before any call."""

    def create_task(self, spec: TaskSpec, page: str, *, batch_id: str, token: str) -> Task:
        """Create a task showing ``page`` (the HTML a worker sees), labelled with ``batch_id``.

        :raises DuplicateRequest: a task with ``token`` was created before (``find_task``).
        """

    def find_task(self, batch_id: str, token: str) -> Task | None:
        """The task of ``batch_id`` created with ``token``, if there is one."""

    def batch_tasks(self, batch_id: str) -> list[Task]:
        """Every task of the batch that the platform still has."""

    def task(self, task_id: str) -> Task:
        """One task, as it is now."""

    def submissions(self, task_id: str) -> list[Submission]:
        """Every submitted (also approved or rejected) submission of a task."""

    def approve(self, submission_id: str) -> bool:
        """Approve a submission (the worker is paid the reward); False when it was approved
        already (by an earlier call whose answer was lost, or automatically)."""

    def bonuses_paid(self, submission_id: str) -> list[int]:
        """The bonuses (cents) paid for a submission so far."""

    def pay_bonus(
        self, *, worker_id: str, submission_id: str, amount_cents: int, reason: str, token: str
    ) -> bool:
        """Pay a bonus, ``reason`` shown to the worker; False when ``token`` paid it already."""

    def notify(self, subject: str, text: str, worker_ids: Sequence[str]) -> dict[str, str]:
        """E-mail at most ``notify_limit`` workers; returns ``{worker: why}`` for each worker
        the platform could not mail.

        :raises Throttled: nothing was sent; a later call may send it.
        :raises OutcomeUnknown: some e-mails may have gone out; do not send them again.
        """

    def exclusion(self, name: str, description: str) -> str:
        """The id of the requester's exclusion called ``name`` (made on first use)."""

    def grant_exclusion(self, exclusion_id: str, worker_id: str) -> None:
        """Keep a worker away from tasks that name ``exclusion_id`` in their requirements."""

    def revoke_exclusion(self, exclusion_id: str, worker_id: str) -> None:
        """Let an excluded worker work again."""

    def expire(self, task_id: str) -> None:
        """Close a task to new work now (work under way may still be submitted)."""

    def add_assignments(self, task_id: str, count: int, *, token: str) -> bool:
        """Let ``count`` more workers do a task; False when ``token`` added them already.

        :raises PlatformError: the platform refuses (e.g. MTurk: a task created with fewer
            than 10 assignments cannot reach 10).
        """

    def extend_until(self, task_id: str, until: datetime) -> None:
        """Keep a task open to new work until ``until`` (also a task that expired)."""

    def delete(self, task_id: str) -> None:
        """Remove a closed, fully reviewed task.

        :raises PlatformError: the platform keeps it (work under way or unreviewed).
        """
