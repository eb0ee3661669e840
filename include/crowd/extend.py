"""Adaptive overlap's one side effect: more assignments for the HITs whose winner is unsure.

After a review round, each HIT whose winner's posterior (``quality``) is below the confidence
target, whose assignments are all submitted and which is under the most assignments per HIT
gets ``step`` more, exactly once per (batch, HIT, extension number) however often the round
runs, is retried or crashes:

1. the ledger entry ``extensions/<HIT>.<n>`` (``n`` = 1, 2, ...: the HIT's n-th extension) is
   claimed with a conditional write *before* the call, naming the assignment count it leads to;
2. ``CreateAdditionalAssignmentsForHIT`` is called with a request token made from batch, HIT
   and ``n`` (MTurk adds nothing for a token it has seen in the last 24 hours);
3. the entry is marked done.

An entry left claimed (a crash between 1 and 3) is finished by the next round: if the HIT
already has the count the entry names, the call went through; else it is made again with the
same token. The HIT's own ``MaxAssignments`` is the truth either way, so no extension happens
twice, even after MTurk has forgotten the token. A HIT that expired (or would before new work
can be done) is kept open first (``UpdateExpirationForHIT``) until the batch's deadline, also
when finishing a claimed entry (the crash may have come before the expiry was moved); and the
round that finishes one counts the HIT as extended, so the review rounds wait for it.

What an extension commits (its rewards and fees) is checked against the budget before the
claim; the batch's budget was checked at creation against the most assignments per HIT, so
this only stops when the budget Param was lowered (logged, not an error).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from include.crowd.costs import usd
from include.crowd.ledger import S3Ledger
from include.crowd.platform import CrowdPlatform, InsufficientFunds, Task
from include.crowd.quality import Overlap, Posterior, more_assignments
from include.crowd.records import HitPlan

log = logging.getLogger(__name__)

KIND = "extensions"


def extension_token(batch_id: str, hit_id: str, number: int) -> str:
    digest = hashlib.sha256(f"{batch_id}|{hit_id}|extension|{number}".encode()).hexdigest()
    return f"more-{digest[:40]}"


class DamagedEntry(ValueError):
    """An extension entry of the ledger that this code did not write: nothing is extended
    while it is there (guessing its count could pay for assignments twice)."""


def extensions_of(ledger: S3Ledger) -> dict[str, list[dict]]:
    """Each HIT's extension entries, in order (``n`` = 1, 2, ...).

    :raises DamagedEntry: an entry with another name or shape, or a gap in a HIT's numbers.
    """
    found: dict[str, list[tuple[int, dict]]] = {}
    for key, doc in ledger.entries(KIND).items():
        hit_id, _, number = key.rpartition(".")
        if not (hit_id and number.isdigit() and _well_formed(doc)):
            raise DamagedEntry(
                f"the ledger entry {ledger.key(ledger.entry_name(KIND, key))!r} is not one "
                f"this code writes ({str(doc)[:200]}); no HIT is extended until it is fixed "
                "or removed"
            )
        found.setdefault(hit_id, []).append((int(number), doc))
    ordered = {hit: sorted(entries, key=lambda e: e[0]) for hit, entries in found.items()}
    for hit, entries in ordered.items():
        if [n for n, _ in entries] != list(range(1, len(entries) + 1)):
            raise DamagedEntry(
                f"the extensions of HIT {hit} under {ledger.key('ledger/' + KIND)!r} are "
                f"numbered {[n for n, _ in entries]}, not 1, 2, ...; no HIT is extended"
            )
    return {hit: [doc for _, doc in entries] for hit, entries in ordered.items()}


def _well_formed(doc) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("status") in ("requesting", "done")
        and all(
            isinstance(doc.get(name), int) and not isinstance(doc.get(name), bool)
            for name in ("count", "target")
        )
        and 1 <= doc["count"] <= 100
        and doc["count"] <= doc["target"] <= 1000
    )


def added_assignments(
    ledger: S3Ledger, entries: dict[str, list[dict]] | None = None
) -> dict[str, int]:
    """Assignments added to each HIT so far (claimed ones included: they may have gone out);
    ``entries``: ``extensions_of(ledger)`` when already read."""
    if entries is None:
        entries = extensions_of(ledger)
    return {hit: sum(doc["count"] for doc in docs) for hit, docs in entries.items()}


@dataclass
class RoundOutcome:
    """What one extension round did."""

    extended: list[str] = field(default_factory=list)  # HIT ids given more assignments now
    confident: int = 0
    at_maximum: int = 0
    waiting: int = 0  # HITs with assignments still being worked on
    # HITs extended by an earlier round (or try) whose added assignments are not all submitted:
    # a retried round must wait for them too, not end as though nothing had been extended.
    awaiting: list[str] = field(default_factory=list)
    added: int = 0  # assignments added now
    refused: dict[str, str] = field(default_factory=dict)  # HIT id -> why not

    def summary(self) -> str:
        return (
            f"{len(self.extended)} HITs extended (+{self.added} assignments), "
            f"{self.confident} confident, {self.at_maximum} at the most assignments, "
            f"{self.waiting} still being worked on"
            + (f" ({len(self.awaiting)} extended before)" if self.awaiting else "")
            + (f", {len(self.refused)} not extended" if self.refused else "")
        )


def extend_unsure(
    platform: CrowdPlatform,
    plans: Sequence[HitPlan],
    ledger: S3Ledger,
    posteriors: dict[str, Posterior],
    submitted: dict[str, int],
    overlap: Overlap,
    *,
    open_until: datetime,
    approval_cents: dict[str, int] | None = None,
    budget_left_cents: int | None = None,
    now: datetime | None = None,
    entries: dict[str, list[dict]] | None = None,
) -> RoundOutcome:
    """Give the unsure HITs of ``plans`` more assignments (see the module docstring).

    :param posteriors: each HIT's posterior after this round's review.
    :param submitted: each HIT's submitted assignments (approved included).
    :param open_until: the batch's deadline: an extended HIT stays open to work until then.
    :param approval_cents: what one more approved assignment of each HIT costs (reward + fee).
    :param budget_left_cents: what the batch may still commit (None: no cap).
    :param entries: ``extensions_of(ledger)`` when the caller read it already.
    """
    now = now or datetime.now(UTC)
    outcome = RoundOutcome()
    if not overlap.adaptive:
        return outcome
    if entries is None:
        entries = extensions_of(ledger)
    left = budget_left_cents
    short: InsufficientFunds | None = None  # once funds ran out, this round calls no more
    for plan in plans:
        if not plan.hit_id or plan.hit_id not in posteriors:
            continue
        hit_id = plan.hit_id
        done = entries.get(hit_id, [])
        task: Task | None = None
        if short is None:
            try:
                task, finished = _finish_claimed(platform, ledger, plan, done, open_until, now)
            except InsufficientFunds as error:
                short = _refuse_for_funds(outcome, hit_id, error)
                continue
            if finished:  # a crashed round's extension: this round waits for its assignments
                outcome.extended.append(hit_id)
                outcome.added += finished
        elif any(entry.get("status") != "done" for entry in done):
            outcome.refused[hit_id] = _short_of_funds(short)  # its claim waits for funds too
            continue
        have = (plan.max_assignments or overlap.start) + sum(int(e["count"]) for e in done)
        count = more_assignments(posteriors[hit_id], have, submitted.get(hit_id, 0), overlap)
        if not count:
            if posteriors[hit_id].confidence >= overlap.confidence:
                outcome.confident += 1
            elif have >= overlap.maximum:
                outcome.at_maximum += 1
            else:
                outcome.waiting += 1
                if done and hit_id not in outcome.extended:
                    outcome.awaiting.append(hit_id)
            continue
        cost = count * (approval_cents or {}).get(hit_id, 0)
        if left is not None and cost > left:
            outcome.refused[hit_id] = (
                f"{count} more assignments ({usd(cost)}) would exceed the budget left ({usd(left)})"
            )
            log.warning("HIT %s not extended: %s", hit_id, outcome.refused[hit_id])
            continue
        if short is not None:  # no call this round: funds ran out at an earlier HIT
            outcome.refused[hit_id] = _short_of_funds(short)
            continue
        number = len(done) + 1
        entry = {"status": "requesting", "count": count, "target": have + count}
        if not ledger.claim(KIND, f"{hit_id}.{number}", entry):
            continue  # another round claimed it at the same moment: it makes the call
        # Refused for want of funds, nothing was added (the HIT may already be kept open):
        # the claim stays and a later round or rerun finishes it.
        try:
            _keep_open(platform, task or platform.task(hit_id), open_until, now)
            _add(platform, ledger, plan, number, entry)
        except InsufficientFunds as error:
            short = _refuse_for_funds(outcome, hit_id, error)
            continue
        if left is not None:
            left -= cost
        if hit_id not in outcome.extended:
            outcome.extended.append(hit_id)
        outcome.added += count
    log.info("adaptive overlap: %s", outcome.summary())
    return outcome


def _short_of_funds(error: InsufficientFunds) -> str:
    return (
        f"the account's available funds do not cover it ({error.reason}); a later review "
        "round or rerun makes it once funds are free"
    )


def _refuse_for_funds(outcome: RoundOutcome, hit_id: str, error: InsufficientFunds):
    """Note a HIT the platform would not extend for want of funds; the round goes on without
    extending. Its claimed ledger entry stays ``requesting``: a later round (when other HITs
    were extended) or a rerun of the batch finishes it with the same request token, so never
    twice; the budget counts it as committed meanwhile. The rounds do not wait for funds: a
    refused HIT has all its assignments in, so waiting for it would end at once."""
    outcome.refused[hit_id] = _short_of_funds(error)
    log.warning("HIT %s not extended: %s", hit_id, outcome.refused[hit_id])
    return error


def _finish_claimed(
    platform: CrowdPlatform,
    ledger: S3Ledger,
    plan: HitPlan,
    entries: list[dict],
    open_until: datetime,
    now: datetime,
) -> tuple[Task | None, int]:
    """Finish the HIT's extensions a crash left claimed, keeping the HIT open first (the crash
    may have come before its expiry was moved); return the HIT as it is now (None when there
    was nothing to finish: no platform call made) and the assignments those entries add."""
    pending = [(n, e) for n, e in enumerate(entries, 1) if e.get("status") != "done"]
    if not pending:
        return None, 0
    task = platform.task(plan.hit_id)
    _keep_open(platform, task, open_until, now)
    for number, entry in pending:
        if task.max_assignments < int(entry["target"]):
            _add(platform, ledger, plan, number, entry)
            task = platform.task(plan.hit_id)
        else:
            ledger.put(KIND, f"{plan.hit_id}.{number}", {**entry, "status": "done"})
    return task, sum(int(entry["count"]) for _, entry in pending)


def _add(platform: CrowdPlatform, ledger: S3Ledger, plan: HitPlan, number: int, entry: dict):
    token = extension_token(plan.batch_id, plan.hit_id, number)
    added = platform.add_assignments(plan.hit_id, int(entry["count"]), token=token)
    ledger.put(KIND, f"{plan.hit_id}.{number}", {**entry, "status": "done"})
    log.info(
        "HIT %s: %s %d assignments (extension %d, now %d)",
        plan.hit_id,
        "added" if added else "already had",
        entry["count"],
        number,
        entry["target"],
    )


def _keep_open(platform: CrowdPlatform, task: Task, until: datetime, now: datetime) -> None:
    """Move the HIT's expiry to ``until`` when it is sooner (or past): new assignments of an
    expired HIT can never be taken."""
    try:
        expires = datetime.fromisoformat(task.expires_at) if task.expires_at else None
    except ValueError:
        expires = None
    if expires is not None and expires >= until:
        return
    if until <= now + timedelta(seconds=1):
        return  # the deadline has passed: the round loop ends anyway
    platform.extend_until(task.id, until)
