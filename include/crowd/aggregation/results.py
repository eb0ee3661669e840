"""Assemble the methods' verdicts into one JSON-ready results structure.

By default no worker ids appear anywhere: workers are listed under pseudonyms ``worker 1``,
``worker 2``, ... in sorted-id order; ``show_worker_ids`` lists their MTurk ids instead. With
``majority`` as the primary method and ``dawid_skene`` and ``wawa`` beside it::

    {
      "version": 2,
      "batch_id": "b1" | None,            # None when the plans come from several batches
      "computed_at": "2026-01-01T00:00:00Z",
      "primary": "majority",              # whose verdict the top-level fields carry
      "methods": {"majority": {"title": "Majority vote", "reads": "counted votes",
                               "about": "..."}, "dawid_skene": {...}, "wawa": {...}},
      "summary": {
        "hits": 12, "hits_created": 12,   # plans; plans with a hit_id
        "assignments": 60, "valid": 57, "invalid": 3, "counted": 50,
        "gold_passed": 50, "gold_failed": 7, "gold_pass_rate": 0.8772 | None,
        "queries_with_votes": 12,
        "queries_decided": 10, "queries_tied": 2,                          # the primary's
        "agreement": {"agree": 8, "decided": 10, "share": 0.8 | None},     # winner = rank 1
        "methods": {"majority": {"decided": 10, "tied": 2, "agreement": {...}}, ...},
        "unmatched_reviews": 0,           # reviews of HITs not among the plans (ignored)
        "spent": None | {"rewards_cents": 120, "rewards": "$1.20", "bonuses_cents": ...,
                         "bonuses": ..., "fees_cents": ..., "fees": ..., "total_cents": ...,
                         "total": ..., <other keys of `spent` as given>},
      },
      "queries": [                        # one per plan, sorted by query name then HIT id
        {
          "query": "q01.jpg", "query_sha256": "...", "hit_id": "H1" | None,
          "candidates": [                 # the model's matches in rank order
            {"name": "f1.jpg", "rank": 1, "score": 0.93, "votes": 3, "share": 0.6}, ...],
          "none": {"votes": 1, "share": 0.2},
          "counted_votes": 5,             # votes and shares: counted votes, whatever the method
          "status": "decided" | "tie" | "no votes",    # these four: the primary's verdict
          "winner": "f1.jpg" | "none" | None, "tie": [] | ["f1.jpg", "none"],
          "confidence": 0.6 | None,       # the winner's probability (majority: share of votes)
          "agrees_with_model": True | False | None,    # winner is the model's rank 1
          "methods": {"majority": {"status": ..., "winner": ..., "tie": ..., "confidence": ...,
                                   "probabilities": {"f1.jpg": 0.6, ..., "none": 0.2},
                                   "agrees_with_model": ...}, "dawid_skene": {...}, ...},
          "assignments": {"submitted": 5, "valid": 5, "counted": 4, "gold_passed": 4,
                          "gold_failed": 1, "invalid": 0,
                          "problems": [{"problem": "missing field q2", "count": 1}]},
        }, ...
      ],
      "workers": [{"worker": "worker 1", "assignments": 6, "valid": 6, "gold_passed": 5,
                   "gold_failed": 1, "agreement": {"majority": 1.0, "dawid_skene": 0.9167,
                                                   "wawa": 1.0}}, ...],
      "worker_ids_shown": False,
    }

A method's ``probabilities`` list every option of the query in report order (empty when it had
no answers to read); a worker's ``agreement`` with a method is the share of their answers it read
that match its pick (None when it decided none of them). Shares and probabilities are rounded to
4 decimals. The result depends only on the arguments: ``computed_at`` is the one value taken
from the clock unless passed.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from include.crowd.aggregation.table import (
    Outcome,
    Result,
    Table,
    Tally,
    option_label,
    ranked_options,
)
from include.crowd.costs import usd
from include.crowd.quality import Skill
from include.crowd.records import NONE_OF_THESE, HitPlan, Review

RESULTS_VERSION = 2
DIGITS = 4
MONEY_KEYS = ("rewards", "bonuses", "fees", "total")


def assemble(
    plans: list[HitPlan],
    table: Table,
    fitted: Mapping[str, Result],
    about: Mapping[str, dict[str, str]],
    *,
    primary: str,
    spent: dict | None,
    computed_at: datetime | str | None,
    show_worker_ids: bool,
) -> dict:
    """The results structure above from each method's ``fit`` (``fitted``, in report order),
    described by ``about`` (name -> title, reads, about), ``primary``'s verdict on top."""
    queries = [
        _query_result(plan, table, fitted, primary)
        for plan in sorted(plans, key=lambda p: (p.query.name, p.hit_id or ""))
    ]
    return {
        "version": RESULTS_VERSION,
        "batch_id": _single({plan.batch_id for plan in plans}),
        "computed_at": _timestamp(computed_at),
        "primary": primary,
        "methods": {name: dict(about[name]) for name in fitted},
        "summary": _summary(plans, table, queries, list(fitted), primary, spent),
        "queries": queries,
        "workers": _workers(table, fitted, show_ids=show_worker_ids),
        "worker_ids_shown": show_worker_ids,
    }


def _query_result(
    plan: HitPlan, table: Table, fitted: Mapping[str, Result], primary: str
) -> dict[str, Any]:
    options = ranked_options(plan.model)
    rank1 = next((option_label(o) for o in options if o.rank == 1 and o.image), None)
    tally = (table.tallies.get(plan.hit_id) if plan.hit_id else None) or Tally()
    total = tally.counted
    verdicts = {
        name: _verdict(result.outcomes.get(plan.hit_id) or Outcome(), rank1)
        for name, result in fitted.items()
    }
    top = verdicts[primary]
    return {
        "query": plan.query.name,
        "query_sha256": plan.query.sha256,
        "hit_id": plan.hit_id,
        "status": top["status"],
        "candidates": [
            {
                "name": o.image.name,
                "rank": o.rank,
                "score": o.score,
                "votes": tally.votes[o.image.name],
                "share": _share(tally.votes[o.image.name], total),
            }
            for o in options
            if o.image is not None
        ],
        "none": {
            "votes": tally.votes[NONE_OF_THESE],
            "share": _share(tally.votes[NONE_OF_THESE], total),
        },
        "counted_votes": total,
        **{key: top[key] for key in ("winner", "tie", "confidence", "agrees_with_model")},
        "methods": verdicts,
        "assignments": {
            "submitted": tally.submitted,
            "valid": tally.valid,
            "counted": tally.counted,
            "gold_passed": tally.gold_passed,
            "gold_failed": tally.gold_failed,
            "invalid": tally.submitted - tally.valid,
            "problems": [
                {"problem": problem, "count": count}
                for problem, count in sorted(tally.problems.items())
            ],
        },
    }


def _verdict(outcome: Outcome, rank1: str | None) -> dict[str, Any]:
    winner = outcome.winner
    return {
        "status": outcome.status,
        "winner": winner,
        "tie": list(outcome.tie),
        "confidence": _round(outcome.confidence),
        "probabilities": {label: _round(p) for label, p in outcome.probabilities.items()},
        "agrees_with_model": (winner == rank1) if winner else None,
    }


def _summary(
    plans: list[HitPlan],
    table: Table,
    queries: list[dict],
    names: list[str],
    primary: str,
    spent: dict | None,
) -> dict[str, Any]:
    reviews = table.reviews
    valid = [r for r in reviews if r.valid]
    passed = sum(1 for r in valid if r.gold_correct is True)
    failed = sum(1 for r in valid if r.gold_correct is False)
    methods = {}
    for name in names:
        verdicts = [q["methods"][name] for q in queries]
        decided = [v for v in verdicts if v["winner"] is not None]
        methods[name] = {
            "decided": len(decided),
            "tied": sum(1 for v in verdicts if v["status"] == "tie"),
            "agreement": _agreement(v["agrees_with_model"] for v in decided),
        }
    return {
        "hits": len(plans),
        "hits_created": sum(1 for plan in plans if plan.hit_id),
        "assignments": len(reviews),
        "valid": len(valid),
        "invalid": len(reviews) - len(valid),
        "too_fast": sum(1 for r in reviews if r.too_fast),
        "counted": sum(q["counted_votes"] for q in queries),
        "gold_passed": passed,
        "gold_failed": failed,
        "gold_pass_rate": _share(passed, passed + failed),
        "queries_with_votes": sum(1 for q in queries if q["counted_votes"]),
        "queries_decided": methods[primary]["decided"],
        "queries_tied": methods[primary]["tied"],
        "agreement": methods[primary]["agreement"],
        "methods": methods,
        "unmatched_reviews": table.unmatched,
        "spent": money(spent),
    }


def _median_seconds(reviews: Iterable) -> float | None:
    """The median of the reviews' work times (accept to submit), None when none is known."""
    seconds = [r.work_seconds for r in reviews if r.work_seconds is not None]
    return round(statistics.median(seconds), 1) if seconds else None


def _agreement(flags: Iterable[bool]) -> dict[str, Any]:
    flags = list(flags)
    agree = sum(1 for flag in flags if flag)
    return {"agree": agree, "decided": len(flags), "share": _share(agree, len(flags))}


def _workers(
    table: Table, fitted: Mapping[str, Result], *, show_ids: bool = False
) -> list[dict[str, Any]]:
    """Per-worker counts under pseudonyms (or their ids, ``show_ids``), and their agreement
    with each method: the share of their answers it read that match its pick for the task."""
    by_worker = defaultdict(list)
    for review in table.reviews:
        by_worker[review.worker_id].append(review)
    given: dict[str, Counter] = {name: Counter() for name in fitted}
    agree: dict[str, Counter] = {name: Counter() for name in fitted}
    for name, result in fitted.items():
        for task, worker, label in result.answers[["task", "worker", "label"]].itertuples(
            index=False
        ):
            if task in result.labels:
                given[name][worker] += 1
                agree[name][worker] += label == result.labels[task]
    rows = []
    for number, worker_id in enumerate(sorted(by_worker), start=1):
        mine = by_worker[worker_id]
        rows.append(
            {
                "worker": worker_id if show_ids else f"worker {number}",
                "assignments": len(mine),
                "valid": sum(1 for r in mine if r.valid),
                "gold_passed": sum(1 for r in mine if r.valid and r.gold_correct is True),
                "gold_failed": sum(1 for r in mine if r.valid and r.gold_correct is False),
                "too_fast": sum(1 for r in mine if r.too_fast),
                "median_seconds": _median_seconds(mine),
                "gold_across_batches": _gold_across_batches(mine, table.history.get(worker_id)),
                "agreement": {
                    name: _share(agree[name][worker_id], given[name][worker_id]) for name in fitted
                },
            }
        )
    return rows


def _gold_across_batches(mine: list[Review], earlier: Skill | None) -> dict[str, Any]:
    """A worker's valid gold answers here plus their record in the prefix's other batches."""
    right = sum(1 for r in mine if r.valid and r.gold_correct is True) + (
        earlier.right if earlier else 0
    )
    answers = sum(1 for r in mine if r.valid and r.gold_correct is not None) + (
        earlier.answers if earlier else 0
    )
    return {"right": right, "answers": answers, "share": _share(right, answers)}


def money(spent: dict | None) -> dict[str, Any] | None:
    """Money spent as ``<key>_cents`` integers and ``<key>`` "$d.cc" strings for rewards,
    bonuses, fees and total (summed when not given); other keys are passed through as given."""
    if spent is None:
        return None
    amounts = {key: _cents(spent.get(key, 0), key) for key in MONEY_KEYS[:3]}
    amounts["total"] = (
        _cents(spent["total"], "total") if "total" in spent else sum(amounts.values())
    )
    out: dict[str, Any] = {k: v for k, v in sorted(spent.items()) if k not in MONEY_KEYS}
    for key in MONEY_KEYS:
        out[f"{key}_cents"] = amounts[key]
        out[key] = usd(amounts[key])
    return out


def _cents(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise TypeError(
            f"spent[{key!r}] = {value!r}: give integer cents or a dollar string such as '1.20'"
        )
    if isinstance(value, int):
        return value
    return int((Decimal(value) * 100).to_integral_value(ROUND_HALF_UP))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, DIGITS) if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def _single(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def _timestamp(value: datetime | str | None) -> str:
    if isinstance(value, str):
        return value
    moment = (value or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
