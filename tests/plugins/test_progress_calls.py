"""How many MTurk calls one poll of a batch costs (``read_batch_progress`` over ListHITs)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from mturk_provider.progress import LIST_PAGE_SIZE, read_batch_progress

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _hit(hit_id: str, *, status: str = "Assignable", available: int = 3, pending: int = 0) -> dict:
    return {
        "HITId": hit_id,
        "HITTypeId": "T",
        "HITStatus": status,
        "MaxAssignments": 3,
        "NumberOfAssignmentsAvailable": available,
        "NumberOfAssignmentsPending": pending,
        "Expiration": NOW + timedelta(hours=1),
    }


class CountingHook:
    """A requester account holding ``hits`` in listing order; counts every call by name."""

    def __init__(self, hits: list[dict], submitted: int = 3):
        self.hits = {hit["HITId"]: hit for hit in hits}
        self.order = [hit["HITId"] for hit in hits]
        self.submitted = submitted
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def list_hits(self, page_size: int = 100):
        assert page_size <= 100  # MTurk's maximum
        for start in range(0, max(1, len(self.order)), page_size):
            self._count("ListHITs")  # one request per page, made only when the page is needed
            yield from (self.hits[h] for h in self.order[start : start + page_size])

    def get_hit(self, hit_id: str) -> dict:
        self._count("GetHIT")
        return {"HIT": self.hits[hit_id]}

    def list_assignments_for_hit(self, hit_id: str, statuses=None) -> list[dict]:
        self._count("ListAssignmentsForHIT")
        return [{"AssignmentId": f"{hit_id}-{i}"} for i in range(self.submitted)]

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@pytest.mark.parametrize("count", [1, 99, 100, 101, 250, 10_000])
def test_a_poll_costs_one_call_per_100_hits(count):
    hits = [_hit(f"H{i}", available=2, pending=1) for i in range(count)]
    hook = CountingHook(hits)
    progress = read_batch_progress(hook, [h["HITId"] for h in hits], now=NOW)
    assert hook.total <= math.ceil(count / LIST_PAGE_SIZE) + 1
    assert hook.calls.get("GetHIT", 0) == 0
    assert len(progress.hits) == count and progress.pending == count
    assert not progress.complete


def test_final_hits_are_counted_once_then_polls_cost_the_listing_alone():
    hits = [_hit(f"H{i}", status="Reviewable", available=0) for i in range(300)]
    hook = CountingHook(hits, submitted=2)
    final_counts: dict = {}
    first = read_batch_progress(
        hook, [h["HITId"] for h in hits], final_counts=final_counts, now=NOW
    )
    assert hook.calls["ListAssignmentsForHIT"] == 300
    assert first.complete and first.submitted == 600 and first.count("expired") == 300
    hook.calls.clear()
    again = read_batch_progress(
        hook, [h["HITId"] for h in hits], final_counts=final_counts, now=NOW
    )
    assert hook.calls == {"ListHITs": 3}
    assert again.to_dict() == first.to_dict()


def test_listing_stops_once_the_batch_is_seen():
    batch = [_hit(f"B{i}") for i in range(150)]
    others = [_hit(f"O{i}") for i in range(2_000)]
    hook = CountingHook(batch + others)  # the batch's HITs come first
    read_batch_progress(hook, [h["HITId"] for h in batch], now=NOW)
    assert hook.calls == {"ListHITs": 2}


def test_a_crowded_account_costs_at_most_the_listing_slack_more_than_gethit_per_hit():
    """150 batch HITs after 5,000 older ones: 3 pages (ceil(150/100) + 1), then GetHIT each."""
    batch = [_hit(f"B{i}") for i in range(150)]
    hook = CountingHook([_hit(f"O{i}") for i in range(5_000)] + batch)
    progress = read_batch_progress(hook, [h["HITId"] for h in batch], now=NOW)
    assert hook.calls == {"ListHITs": 3, "GetHIT": 150}
    assert [hit.hit_id for hit in progress.hits] == [h["HITId"] for h in batch]


def test_a_hit_the_listing_misses_is_read_with_gethit():
    hook = CountingHook([_hit("A"), _hit("B")])
    del hook.order[1]  # B is not listed (eventual consistency): GetHIT still reads it
    progress = read_batch_progress(hook, ["A", "B"], now=NOW)
    assert hook.calls == {"ListHITs": 1, "GetHIT": 1}
    assert [hit.hit_id for hit in progress.hits] == ["A", "B"]
