"""The sandbox's core, which every group of operations shares: the state file (``Store``),
the clock, the account balance, ``UniqueRequestToken`` bookkeeping, the HIT and assignment
lookups, what time does to assignments (abandonment, auto-approval), paging, the parameter
checks MTurk answers ``InvalidParameterValue`` to, and the HIT events the operations report
(``_event``) for the notifications.

Every operation runs in ``_operation``: one transaction of the state file, in which the events it
recorded become notification messages, sent once it has committed (the hooks
``_queue_notifications`` and ``_send_notifications``, which ``NotificationOperations`` fills in).

The operations are in ``include.crowd_sandbox.operations``, one module per group of MTurk's API
reference; ``requester.Sandbox`` composes them over this core.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import string
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from include.crowd_sandbox import money
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_requirements import requires_masters
from include.crowd_sandbox.store import AssignmentCounts, HITState, Hold, Store

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 24 * 3600
DEFAULT_PAGE_SIZE = 10
DEFAULT_BALANCE = "10000.00"
# The meta row of the time up to which expired HITs gave back their free slots' holds.
HOLD_MARK_KEY = "hold_mark"
# Ten years: past MTurk's longest timer (a HIT's year of lifetime), short of datetime's end.
MAX_CLOCK_ADVANCE_S = 10 * 365 * 24 * 3600

_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_id(prefix: str = "", length: int = 30) -> str:
    """An MTurk-looking id: upper-case letters and digits (worker ids start with ``A``)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - len(prefix)))


@dataclass(frozen=True)
class HITEvent:
    """Something that happened to a HIT, as MTurk's notifications name it (``EventType``)."""

    event_type: str
    hit_id: str
    at: float
    assignment_id: str | None = None


class SandboxCore:
    """The shared state of the sandbox's operations, over a ``Store``."""

    def __init__(
        self,
        store: Store,
        *,
        initial_balance: str = DEFAULT_BALANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        # The events of the operation in progress: only touched inside its transaction, which
        # holds the store's lock, so one list serves every thread.
        self._events: list[HITEvent] = []
        self._operation_depth = 0
        with store.transaction():
            if store.meta("balance_cents") is None:
                store.set_meta("balance_cents", str(money.parse_amount(initial_balance)))
            self._offset = float(store.meta("clock_offset") or 0.0)
            self._hold_all()

    # --- plumbing -----------------------------------------------------------------------------

    def call(self, operation: str, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        """Run one API operation atomically; raise ``MTurkError`` subclasses on failure."""
        handler = getattr(self, "op_" + operation, None)
        if handler is None:
            raise RequestError(
                f"The crowd sandbox does not implement {operation}.",
                "AWS.MechanicalTurk.UnsupportedOperation",
            )
        with self._operation():
            self._refresh()
            return handler(params, request_id) or {}

    @contextmanager
    def _operation(self) -> Generator[None]:
        """Run an operation in one transaction; send its notifications once it committed.

        An operation inside another joins it. If it fails, its events go with its changes."""
        with self.store.transaction():
            if self._operation_depth:
                yield
                return
            self._operation_depth = 1
            try:
                yield
                self._queue_notifications()
            except BaseException:
                self._events.clear()
                raise
            finally:
                self._operation_depth = 0
        self._send_notifications()

    def _event(
        self,
        event_type: str,
        hit_id: str,
        assignment_id: str | None = None,
        at: float | None = None,
    ) -> None:
        """Record that ``event_type`` happened to a HIT (at ``at``, by default now)."""
        self._events.append(
            HITEvent(event_type, hit_id, self._now() if at is None else at, assignment_id)
        )

    def _queue_notifications(self) -> None:
        """Turn the events recorded so far into notification messages, in the transaction
        (``NotificationOperations``); without it they are dropped."""
        self._events.clear()

    def _send_notifications(self) -> None:
        """Send the messages waiting to be sent, after the commit (``NotificationOperations``)."""

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
        with self._operation():
            self._offset += seconds
            self.store.set_meta("clock_offset", repr(self._offset))
            self._refresh()
            return self._now()

    def _balance(self) -> int:
        return int(self.store.meta("balance_cents") or 0)

    def _available(self) -> int:
        """The balance less the funds held for assignment liability: what new work may use."""
        return self._balance() - self.store.held()

    def _require_funds(self, cents: int, available: int | None = None) -> None:
        available = self._available() if available is None else available
        if cents > available:
            raise RequestError(
                "This Requester has insufficient funds in their account to complete this "
                f"transaction (needs ${money.format_amount(cents)}, available "
                f"${money.format_amount(available)}).",
                "AWS.MechanicalTurk.InsufficientFunds",
            )

    def _charge(self, cents: int, kind: str, detail: dict[str, Any], *, held: bool = False):
        """Take ``cents`` from the balance. ``held``: paid from a HIT's hold (the approval of
        work its liability covers), so the balance, not the available funds, must cover it."""
        self._require_funds(cents, self._balance() if held else None)
        self.store.set_meta("balance_cents", str(self._balance() - cents))
        self.store.add_ledger(kind, {**detail, "Charged": cents, "Time": self._now()})

    # --- funds held for assignment liability --------------------------------------------------
    #
    # MTurk holds a HIT's cost when the HIT is created: "Your assignment liability will increase
    # as you create new HITs and will decrease as you approve or reject assignments. If you have
    # no outstanding assignments, you will have zero assignment liability" (MTurk's requester
    # FAQ). The sandbox holds, for each HIT, reward and fee for every assignment that may still
    # be paid: those being worked on or submitted, and the free slots while the HIT can be
    # accepted (not expired, not deleted). So GetAccountBalance's AvailableBalance falls when
    # HITs are created or extended, an approval moves money from the hold to the payment, and
    # a rejection, an expiry or a slot left free on an expired HIT gives it back.

    @staticmethod
    def _hold_for(hold: Hold, now: float) -> int:
        """What a HIT holds now: reward and fee for each assignment it may still pay."""
        if hold.disposed:
            return 0
        counts = hold.counts
        slots = counts.assigned - counts.completed  # accepted or submitted, not yet reviewed
        if now < hold.expiration:
            slots += max(0, hold.max_assignments - counts.assigned)
        return slots * hold.slot_cost

    def _rehold(self, hit_id: str, *, check: bool = False, now: float | None = None) -> None:
        """Set a HIT's hold to what its state asks for ``now`` (default: the clock; from
        columns, no document is read). ``check``: refuse (as MTurk does, ``InsufficientFunds``)
        a hold that grows by more than the available funds; the operation's transaction then
        undoes everything."""
        available = self._available() if check else 0
        now = self._now() if now is None else now
        grown = self.store.set_hold(hit_id, self._hold_for(self.store.hold(hit_id), now))
        if check and grown > 0:
            self._require_funds(grown, available)

    def _hold_all(self) -> None:
        """Work out every HIT's hold from its state, when the state file is opened: a file
        written before holds were kept, or changed since by a sandbox that did not keep them,
        holds what its HITs ask for. Only HITs without a recorded slot cost are read."""
        for hit_id in self.store.reset_holds():
            self.store.put_slot_cost(hit_id, self._approval_cost(self._hit(hit_id)))
        now = self._now()  # one time for every HIT and the mark: none expires between them
        for hit_id in self.store.hit_ids():
            self._rehold(hit_id, now=now)
        self.store.set_meta(HOLD_MARK_KEY, repr(now))
        available = self._available()
        if available < 0:  # a file from a sandbox that let HITs commit more than the balance
            log.warning(
                "%s: the HITs hold $%s, more than the balance: AvailableBalance is $%s, and "
                "new HITs are refused until work is reviewed or expires",
                self.store.path,
                money.format_amount(self.store.held()),
                money.format_amount(available),
            )

    def _release_expired(self, now: float) -> None:
        """Give back the free slots' holds of the HITs that expired since the last look."""
        expired = self.store.hits_expired(float(self.store.meta(HOLD_MARK_KEY) or now), now)
        if not expired:
            return  # the mark stays: no write for a call in which nothing expired
        self.store.set_meta(HOLD_MARK_KEY, repr(now))
        for hit_id, _, _ in expired:
            self._rehold(hit_id)

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
        """Apply what time did: abandoned assignments free their slot, auto-approvals happen.

        Only the assignments that are due are read (``Store.due_assignments``), so a call costs
        what time changed, not the size of the state. Their events (and the HITs that expired)
        are queued before the operation's own."""
        now = self._now()
        for assignment in self.store.due_assignments(now):
            status = assignment["AssignmentStatus"]
            if status == "Accepted" and now >= assignment["Deadline"]:
                self.store.delete_assignment(assignment["AssignmentId"])
                self._rehold(assignment["HITId"])  # a slot of an expired HIT frees
                self.store.add_ledger("abandoned", {"AssignmentId": assignment["AssignmentId"]})
                self._event(
                    "AssignmentAbandoned",
                    assignment["HITId"],
                    assignment["AssignmentId"],
                    at=assignment["Deadline"],
                )
            elif status == "Submitted" and now >= assignment["AutoApprovalTime"]:
                hit = self.store.hit(assignment["HITId"])
                cost = self._approval_cost(hit)
                assignment.update(AssignmentStatus="Approved", ApprovalTime=now)
                self.store.put_assignment(assignment)
                self._rehold(hit["HITId"])  # paid from the HIT's hold
                balance = self._balance()
                self.store.set_meta("balance_cents", str(balance - cost))
                self.store.add_ledger(
                    "auto-approval",
                    {"AssignmentId": assignment["AssignmentId"], "Charged": cost, "Time": now},
                )
                self._event("AssignmentApproved", assignment["HITId"], assignment["AssignmentId"])
        self._release_expired(now)
        self._queue_notifications()

    def _approval_cost(self, hit: dict[str, Any]) -> int:
        reward = money.parse_amount(hit["Reward"])
        return reward + money.reward_fee(reward, hit["MaxAssignments"], requires_masters(hit))

    def hit_view(
        self,
        hit: dict[str, Any],
        counts: AssignmentCounts | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """The HIT as GetHIT shows it now: status and assignment counts derived from state.

        A listing passes the ``counts`` (and one ``now``) it read for all its HITs at once."""
        now = self._now() if now is None else now
        if counts is None:
            counts = self.store.assignment_counts(hit["HITId"])
        remaining = max(0, hit["MaxAssignments"] - counts.assigned)
        expired = now >= hit["Expiration"]
        status = hit_status(
            disposed=bool(hit.get("Disposed")),
            expired=expired,
            remaining=remaining,
            pending=counts.pending,
            reviewing=bool(hit.get("Reviewing")),
        )
        view = {k: v for k, v in hit.items() if k not in ("Disposed", "Reviewing")}
        view.update(
            HITStatus=status,
            NumberOfAssignmentsPending=counts.pending,
            NumberOfAssignmentsAvailable=0 if expired or hit.get("Disposed") else remaining,
            NumberOfAssignmentsCompleted=counts.completed,
        )
        return view

    def hit_state_status(self, state: HITState, now: float) -> str:
        """A HIT's status from its columns (``Store.hit_states``), as ``hit_view`` derives it."""
        return hit_status(
            disposed=state.disposed,
            expired=now >= state.expiration,
            remaining=max(0, state.max_assignments - state.counts.assigned),
            pending=state.counts.pending,
            reviewing=state.reviewing,
        )

    def _page(self, items: list, params: dict[str, Any], scope: str) -> tuple[list, str | None]:
        start, size = self._page_window(params, scope)
        page = items[start : start + size]
        return page, self._next_token(start, size, scope, start + size < len(items))

    @staticmethod
    def _page_window(params: dict[str, Any], scope: str) -> tuple[int, int]:
        """The offset and size of the page a listing call asks for (``NextToken``,
        ``MaxResults``); a token of another listing is ``InvalidPaginationToken``."""
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
        return start, size

    @staticmethod
    def _next_token(start: int, size: int, scope: str, more: bool) -> str | None:
        if not more:
            return None
        token = json.dumps({"o": start + size, "s": scope}).encode()
        return base64.urlsafe_b64encode(token).decode()


def hit_status(
    *, disposed: bool, expired: bool, remaining: int, pending: int, reviewing: bool
) -> str:
    """MTurk's HITStatus: Assignable while a slot is free and the HIT has not expired, then
    Unassignable while assignments are being worked on, then Reviewable (or Reviewing)."""
    if disposed:
        return "Disposed"
    if not expired and remaining > 0:
        return "Assignable"
    if pending > 0:
        return "Unassignable"
    return "Reviewing" if reviewing else "Reviewable"


def check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise RequestError(
            f"Value {value} for {name} is invalid: it must be between {low} and {high}.",
            "AWS.MechanicalTurk.InvalidParameterValue",
        )


def check_length(name: str, value: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise RequestError(
            f"{name} must be between {low} and {high} characters long (got {len(value)}).",
            "AWS.MechanicalTurk.InvalidParameterValue",
        )
