"""How far a batch of HITs has got, read with ListHITs (GetHIT, ListAssignmentsForHIT if needed).

A HIT is *final* when no more work can arrive: all its assignments are submitted, or it has
expired (MTurk says Reviewable / Reviewing / Disposed, or its expiry has passed) with nobody still
working on it. A final HIT is *complete* when every assignment was submitted, *expired* otherwise.
A batch is complete when every HIT is final.

GetHIT's counts cannot tell the two final cases apart: once a HIT expires MTurk reports no
assignment available, exactly as when all were taken. So the submitted assignments of a HIT that
is no longer Assignable are counted with ListAssignmentsForHIT, once per final HIT (the count of
a final HIT cannot change, so it is kept in ``final_counts`` between polls). The service's clock,
not ours, decides expiry, so no final HIT is assumed complete from our clock.

Only reads: sensors and triggers call this, and a trigger may run more than once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, MutableMapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mturk_provider.hooks.mturk import MTurkHook

log = logging.getLogger(__name__)

# Statuses after which MTurk hands out no more assignments of the HIT.
FINAL_HIT_STATUSES = frozenset({"Reviewable", "Reviewing", "Disposed"})
# Assignment statuses that count as submitted work.
SUBMITTED_STATUSES = ("Submitted", "Approved", "Rejected")

# HITs per ListHITs page (MTurk's maximum).
LIST_PAGE_SIZE = 100

FinalCounts = MutableMapping[tuple[str, int, str], int]


@dataclass(frozen=True)
class HITProgress:
    """One HIT, as GetHIT (and, for final HITs, ListAssignmentsForHIT) showed it."""

    hit_id: str
    hit_type_id: str
    hit_status: str
    expected: int
    submitted: int
    pending: int
    available: int
    final: bool

    @property
    def state(self) -> str:
        """``complete`` (all assignments submitted), ``expired`` or ``waiting``."""
        if self.submitted >= self.expected:
            return "complete"
        return "expired" if self.final else "waiting"


@dataclass(frozen=True)
class BatchProgress:
    """Every HIT of a batch; ``complete`` when no HIT can receive more work."""

    hits: tuple[HITProgress, ...]

    @property
    def complete(self) -> bool:
        return all(hit.final for hit in self.hits)

    def count(self, state: str) -> int:
        return sum(hit.state == state for hit in self.hits)

    @property
    def submitted(self) -> int:
        return sum(min(hit.submitted, hit.expected) for hit in self.hits)

    @property
    def expected(self) -> int:
        return sum(hit.expected for hit in self.hits)

    @property
    def pending(self) -> int:
        return sum(hit.pending for hit in self.hits)

    def summary(self) -> str:
        """One line a person reads in the task log."""
        return (
            f"assignments submitted {self.submitted}/{self.expected} across {len(self.hits)} HITs; "
            f"{self.count('complete')} HITs complete, {self.count('expired')} expired, "
            f"{self.count('waiting')} waiting ({self.pending} assignments being worked on)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what trigger events and XCom carry."""
        return {
            "complete": self.complete,
            "summary": self.summary(),
            "hits_total": len(self.hits),
            "hits_complete": self.count("complete"),
            "hits_expired": self.count("expired"),
            "hits_waiting": self.count("waiting"),
            "assignments_submitted": self.submitted,
            "assignments_expected": self.expected,
            "assignments_pending": self.pending,
            "hits": [{**asdict(hit), "state": hit.state} for hit in self.hits],
        }


def hit_progress(
    hit: dict[str, Any], *, now: datetime, submitted: int | None = None
) -> HITProgress:
    """Describe one GetHIT ``HIT``; ``submitted`` is the counted number when the caller has it."""
    expected = hit["MaxAssignments"]
    available = hit.get("NumberOfAssignmentsAvailable", 0)
    pending = hit.get("NumberOfAssignmentsPending", 0)
    expiration = hit.get("Expiration")
    expired = expiration is not None and _aware(expiration) <= now
    final = pending == 0 and (hit["HITStatus"] in FINAL_HIT_STATUSES or available == 0 or expired)
    if submitted is None:
        # Exact while the HIT is live; an expired HIT's counts are recounted by the caller.
        submitted = expected - available - pending
    return HITProgress(
        hit_id=hit["HITId"],
        hit_type_id=hit.get("HITTypeId", ""),
        hit_status=hit["HITStatus"],
        expected=expected,
        submitted=submitted,
        pending=pending,
        available=available,
        final=final,
    )


def read_batch_progress(
    hook: MTurkHook,
    hit_ids: Iterable[str],
    *,
    final_counts: FinalCounts | None = None,
    now: datetime | None = None,
) -> BatchProgress:
    """Read every HIT of the batch, in about one call per 100 HITs.

    The requester's HITs are listed 100 a page (ListHITs) until every HIT of the batch has been
    seen, for at most ceil(N / 100) + 1 pages; a HIT the listing did not show is read with
    GetHIT. So an account that holds little but the batch costs ceil(N / 100) calls a poll, and
    one whose older HITs fill the first pages costs at most ceil(N / 100) + 1 more than one
    GetHIT per HIT (MTurk does not document the listing's order; the sandbox lists oldest first).
    The submitted work of a HIT that became final is counted once with ListAssignmentsForHIT
    and kept in ``final_counts``: a poll also costs one call per HIT that became final since the
    last one.

    :param hook: the MTurk hook to read with.
    :param hit_ids: the HITs of the batch.
    :param final_counts: submitted counts of final HITs from earlier polls; updated in place.
    :param now: the time expiry is judged against (default: now, UTC).
    """
    now = now or datetime.now(UTC)
    final_counts = {} if final_counts is None else final_counts
    wanted = list(hit_ids)
    listed = _listed_hits(hook, set(wanted))
    hits: list[HITProgress] = []
    for hit_id in wanted:
        hit = listed.get(hit_id) or hook.get_hit(hit_id)["HIT"]
        progress = hit_progress(hit, now=now)
        if progress.final and hit["HITStatus"] != "Assignable":
            key = (hit_id, progress.expected, str(hit.get("Expiration")))
            if key not in final_counts:
                final_counts[key] = len(
                    hook.list_assignments_for_hit(hit_id, statuses=list(SUBMITTED_STATUSES))
                )
            progress = hit_progress(hit, now=now, submitted=final_counts[key])
        hits.append(progress)
    return BatchProgress(tuple(hits))


def _listed_hits(hook: MTurkHook, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """List the requester's HITs until all of ``wanted`` are seen, at most ceil(N/100) + 1 pages."""
    found: dict[str, dict[str, Any]] = {}
    if not wanted:
        return found
    # ceil(N / 100) pages hold the batch when the account holds little else; one more page of
    # slack, then whatever was not seen is read with GetHIT.
    page_budget = (math.ceil(len(wanted) / LIST_PAGE_SIZE) + 1) * LIST_PAGE_SIZE
    for seen, hit in enumerate(hook.list_hits(page_size=LIST_PAGE_SIZE), start=1):
        if hit.get("HITId") in wanted:
            found[hit["HITId"]] = hit
            if len(found) == len(wanted):
                break
        if seen >= page_budget:
            break
    return found


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
