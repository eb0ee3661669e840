"""Aggregate reviewed assignments into per-query results with crowd-kit.

Two aggregations run side by side, each on the table crowd-kit takes (``task, worker, label``):

- **Majority vote** (``crowdkit.aggregation.MajorityVote``) over the *counted* votes only (valid
  answers whose gold answer was right); labels are image names or ``records.NONE_OF_THESE``.
  crowd-kit breaks a tie by whichever label its table lists first, so a tie is detected from its
  probabilities instead and reported as a tie: ``winner`` None, ``tie`` the tied options in the
  model's rank order ("none of these" last), ``confidence`` None.
- **Dawid-Skene** (``crowdkit.aggregation.DawidSkene``) over *every valid* answer, gold answers
  included, whatever the gold outcome: a worker's confusion matrix is learnt from all their
  answers, so a worker who clicks without looking weighs little. Labels are option positions
  (the HIT's form values, shuffled per HIT) of both questions; each HIT's gold question is a task
  whose true label (its correct position) is passed as crowd-kit's ``true_labels``, which pins
  that task's posterior to the known answer at every EM step. The posterior of a model question
  is restricted to its own positions, renormalised and mapped back to image names.

``aggregate`` returns one JSON-ready dict (by default no worker ids anywhere: workers are listed
under pseudonyms ``worker 1``, ``worker 2``, ... in sorted-id order; ``show_worker_ids`` lists
their MTurk ids instead)::

    {
      "version": 1,
      "batch_id": "b1" | None,            # None when the plans come from several batches
      "computed_at": "2026-01-01T00:00:00Z",
      "summary": {
        "hits": 12, "hits_created": 12,   # plans; plans with a hit_id
        "assignments": 60, "valid": 57, "invalid": 3, "counted": 50,
        "gold_passed": 50, "gold_failed": 7, "gold_pass_rate": 0.8772 | None,
        "queries_with_votes": 12, "queries_decided": 10, "queries_tied": 2,
        "agreement": {"agree": 8, "decided": 10, "share": 0.8 | None},     # MV vs model rank 1
        "ds_agreement": {"agree": 9, "decided": 12, "share": 0.75 | None},
        "unmatched_reviews": 0,           # reviews of HITs not among the plans (ignored)
        "spent": None | {"rewards_cents": 120, "rewards": "$1.20", "bonuses_cents": ...,
                         "bonuses": ..., "fees_cents": ..., "fees": ..., "total_cents": ...,
                         "total": ..., <other keys of `spent` as given>},
      },
      "queries": [                        # one per plan, sorted by query name then HIT id
        {
          "query": "q01.jpg", "query_sha256": "...", "hit_id": "H1" | None,
          "status": "decided" | "tie" | "no votes",
          "candidates": [                 # the model's matches in rank order
            {"name": "f1.jpg", "rank": 1, "score": 0.93, "votes": 3, "share": 0.6}, ...],
          "none": {"votes": 1, "share": 0.2},
          "counted_votes": 5,
          "winner": "f1.jpg" | "none" | None, "tie": [] | ["f1.jpg", "none"],
          "confidence": 0.6 | None,       # the winner's share of counted votes
          "agrees_with_model": True | False | None,    # winner is the model's rank 1
          "ds": {"winner": "f1.jpg" | "none" | None, "probability": 0.98 | None,
                 "tie": [], "probabilities": {"f1.jpg": 0.98, ..., "none": 0.0},
                 "agrees_with_model": True | False | None},
          "assignments": {"submitted": 5, "valid": 5, "counted": 4, "gold_passed": 4,
                          "gold_failed": 1, "invalid": 0,
                          "problems": [{"problem": "missing field q2", "count": 1}]},
        }, ...
      ],
      "workers": [{"worker": "worker 1", "assignments": 6, "valid": 6, "gold_passed": 5,
                   "gold_failed": 1, "ds_agreement": 0.9167 | None}, ...],
    }

Shares and probabilities are rounded to 4 decimals. The result depends only on the arguments:
reviews are de-duplicated by assignment id (the last one given wins) and sorted, and
``computed_at`` is the one value taken from the clock unless passed.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd
from crowdkit.aggregation import DawidSkene, MajorityVote

from include.crowd.costs import usd
from include.crowd.records import NONE_OF_THESE, HitPlan, Option, Question, Review

log = logging.getLogger(__name__)

RESULTS_VERSION = 1
DS_MAX_ITERATIONS = 100
DIGITS = 4
TIE_TOLERANCE = 1e-9
MONEY_KEYS = ("rewards", "bonuses", "fees", "total")


def aggregate(
    plans: list[HitPlan],
    reviews: list[Review],
    *,
    spent: dict | None = None,
    computed_at: datetime | str | None = None,
    show_worker_ids: bool = False,
) -> dict:
    """Aggregate ``reviews`` per HIT of ``plans`` into the results structure above.

    :param plans: every planned HIT; each yields one query entry, with or without answers.
    :param reviews: the review decisions so far, matched to plans by HIT id.
    :param spent: money spent so far: ``rewards``, ``bonuses``, ``fees`` and optionally
        ``total`` (summed when absent), as integer cents or as dollar strings ("1.20").
    :param computed_at: the time to report (default: now, UTC).
    :param show_worker_ids: list workers by their MTurk ids instead of pseudonyms.
    """
    by_hit = {plan.hit_id: plan for plan in plans if plan.hit_id}
    latest = {review.assignment_id: review for review in reviews}
    answered = sorted(latest.values(), key=lambda r: (r.hit_id, r.assignment_id))
    matched = [r for r in answered if r.hit_id in by_hit]
    unmatched = len(answered) - len(matched)
    if unmatched:
        log.warning("ignored %d reviews of HITs that are not in the manifest", unmatched)

    tallies = {hit_id: _tally(by_hit[hit_id], rs) for hit_id, rs in _group(matched).items()}
    majority = _majority_vote(tallies)
    posteriors, ds_labels, worker_answers = _dawid_skene(by_hit, matched)

    queries = []
    for plan in sorted(plans, key=lambda p: (p.query.name, p.hit_id or "")):
        tally = tallies.get(plan.hit_id) if plan.hit_id else None
        queries.append(
            _query_result(
                plan,
                tally or _Tally(),
                majority.get(plan.hit_id),
                posteriors.get(f"{plan.hit_id}/model"),
            )
        )

    results = {
        "version": RESULTS_VERSION,
        "batch_id": _single({plan.batch_id for plan in plans}),
        "computed_at": _timestamp(computed_at),
        "summary": _summary(plans, queries, matched, unmatched, spent),
        "queries": queries,
        "workers": _workers(matched, ds_labels, worker_answers, show_ids=show_worker_ids),
        "worker_ids_shown": show_worker_ids,
    }
    summary = results["summary"]
    log.info(
        "aggregated %d HITs: %d assignments (%d valid, %d counted), gold pass rate %s, "
        "%d decided, %d tied, crowd agrees with the model's rank 1 on %d/%d",
        summary["hits"],
        summary["assignments"],
        summary["valid"],
        summary["counted"],
        _percent(summary["gold_pass_rate"]),
        summary["queries_decided"],
        summary["queries_tied"],
        summary["agreement"]["agree"],
        summary["agreement"]["decided"],
    )
    return results


@dataclass
class _Tally:
    """What one HIT's reviews add up to."""

    votes: Counter = field(default_factory=Counter)  # counted votes by option name
    submitted: int = 0
    valid: int = 0
    counted: int = 0
    gold_passed: int = 0
    gold_failed: int = 0
    problems: Counter = field(default_factory=Counter)
    ballots: list[tuple[str, str]] = field(default_factory=list)  # (worker, vote), counted


def _group(reviews: Iterable[Review]) -> dict[str, list[Review]]:
    groups: dict[str, list[Review]] = defaultdict(list)
    for review in reviews:
        groups[review.hit_id].append(review)
    return groups


def option_label(option: Option) -> str:
    """An option's name in results: its image's name, or ``NONE_OF_THESE``."""
    return option.image.name if option.image is not None else NONE_OF_THESE


def ranked_options(question: Question) -> list[Option]:
    """The options in report order: by model rank (then position), "none of these" last."""
    return sorted(
        question.options,
        key=lambda o: (o.image is None, o.rank if o.rank is not None else 1 << 30, o.position),
    )


def _tally(plan: HitPlan, reviews: list[Review]) -> _Tally:
    names = {option_label(o) for o in plan.model.options}
    tally = _Tally()
    for review in reviews:
        tally.submitted += 1
        tally.problems.update(review.problems)
        if not review.valid:
            continue
        tally.valid += 1
        if review.gold_correct is True:
            tally.gold_passed += 1
        elif review.gold_correct is False:
            tally.gold_failed += 1
        if not review.counted:
            continue
        if review.vote not in names:
            tally.problems[f"counted vote {review.vote!r} is not an option of this HIT"] += 1
            continue
        tally.counted += 1
        tally.votes[review.vote] += 1
        tally.ballots.append((review.worker_id, review.vote))
    return tally


def _quiet_fit(model, *args, **kwargs):
    """Fit a crowd-kit model without its pandas 3 deprecation warnings (one per EM step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"crowdkit\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"crowdkit\.")
        return model.fit(*args, **kwargs)


def _majority_vote(tallies: dict[str, _Tally]) -> dict[str, tuple[str | None, list[str]]]:
    """HIT id → (winner, tied labels) from crowd-kit's MajorityVote on the counted votes."""
    rows = [
        (hit_id, worker, label)
        for hit_id, tally in sorted(tallies.items())
        for worker, label in tally.ballots
    ]
    if not rows:
        return {}
    mv = _quiet_fit(MajorityVote(), pd.DataFrame(rows, columns=["task", "worker", "label"]))
    outcome = {}
    for hit_id, probas in mv.probas_.iterrows():
        top = probas.max()
        leaders = sorted(str(label) for label, p in probas.items() if top - p <= TIE_TOLERANCE)
        outcome[hit_id] = (str(mv.labels_[hit_id]), []) if len(leaders) == 1 else (None, leaders)
    return outcome


def _dawid_skene(
    by_hit: dict[str, HitPlan], reviews: list[Review]
) -> tuple[dict[str, dict[int, float]], dict[str, str], dict[str, list[tuple[str, str]]]]:
    """Fit DawidSkene on every valid answer of both questions; gold tasks get true labels.

    Return task → {position: posterior}, task → most likely label, and worker → their
    (task, label) answers (for per-worker agreement).
    """
    rows = []
    true_labels = {}
    for review in reviews:
        if not review.valid or review.model_position is None or review.gold_position is None:
            continue
        plan = by_hit[review.hit_id]
        rows.append((f"{review.hit_id}/model", review.worker_id, str(review.model_position)))
        rows.append((f"{review.hit_id}/gold", review.worker_id, str(review.gold_position)))
        if plan.gold.correct_position is not None:
            true_labels[f"{review.hit_id}/gold"] = str(plan.gold.correct_position)
    if not rows:
        return {}, {}, {}
    data = pd.DataFrame(rows, columns=["task", "worker", "label"])
    # crowd-kit can only pin a task to a label some answer used (it adds no new label column).
    seen = set(data["label"])
    gold = pd.Series({t: label for t, label in sorted(true_labels.items()) if label in seen})
    ds = _quiet_fit(
        DawidSkene(n_iter=DS_MAX_ITERATIONS), data, true_labels=gold if len(gold) else None
    )
    posteriors = {
        str(task): {int(label): float(p) for label, p in probas.items()}
        for task, probas in ds.probas_.iterrows()
    }
    most_likely = {
        task: str(max(sorted(p), key=lambda label: p[label])) for task, p in posteriors.items()
    }
    answers: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for task, worker, label in rows:
        answers[worker].append((task, label))
    return posteriors, most_likely, answers


def _query_result(
    plan: HitPlan,
    tally: _Tally,
    majority: tuple[str | None, list[str]] | None,
    posterior: dict[int, float] | None,
) -> dict[str, Any]:
    options = ranked_options(plan.model)
    total = tally.counted
    rank1 = next((option_label(o) for o in options if o.rank == 1 and o.image), None)
    order = {option_label(o): i for i, o in enumerate(options)}

    winner, tie = majority or (None, [])
    tie = sorted(tie, key=lambda label: order.get(label, len(order)))
    status = "no votes" if not total else ("tie" if tie else "decided")

    candidates = [
        {
            "name": o.image.name,
            "rank": o.rank,
            "score": o.score,
            "votes": tally.votes[o.image.name],
            "share": _share(tally.votes[o.image.name], total),
        }
        for o in options
        if o.image is not None
    ]
    return {
        "query": plan.query.name,
        "query_sha256": plan.query.sha256,
        "hit_id": plan.hit_id,
        "status": status,
        "candidates": candidates,
        "none": {
            "votes": tally.votes[NONE_OF_THESE],
            "share": _share(tally.votes[NONE_OF_THESE], total),
        },
        "counted_votes": total,
        "winner": winner,
        "tie": tie,
        "confidence": _share(tally.votes[winner], total) if winner else None,
        "agrees_with_model": (winner == rank1) if winner else None,
        "ds": _ds_result(options, posterior, rank1),
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


def _ds_result(
    options: list[Option], posterior: dict[int, float] | None, rank1: str | None
) -> dict:
    empty = {"winner": None, "probability": None, "tie": [], "probabilities": {}}
    if not posterior:
        return {**empty, "agrees_with_model": None}
    mass = {option_label(o): posterior.get(o.position, 0.0) for o in options}
    norm = sum(mass.values())
    if norm <= 0:
        return {**empty, "agrees_with_model": None}
    probabilities = {label: p / norm for label, p in mass.items()}
    top = max(probabilities.values())
    leaders = [label for label, p in probabilities.items() if top - p <= TIE_TOLERANCE]
    winner = leaders[0] if len(leaders) == 1 else None
    return {
        "winner": winner,
        "probability": round(top, DIGITS) if winner else None,
        "tie": leaders if winner is None else [],
        "probabilities": {label: round(p, DIGITS) for label, p in probabilities.items()},
        "agrees_with_model": (winner == rank1) if winner else None,
    }


def _summary(
    plans: list[HitPlan],
    queries: list[dict],
    reviews: list[Review],
    unmatched: int,
    spent: dict | None,
) -> dict[str, Any]:
    valid = [r for r in reviews if r.valid]
    passed = sum(1 for r in valid if r.gold_correct is True)
    failed = sum(1 for r in valid if r.gold_correct is False)
    decided = [q for q in queries if q["winner"] is not None]
    ds_decided = [q for q in queries if q["ds"]["winner"] is not None]
    return {
        "hits": len(plans),
        "hits_created": sum(1 for plan in plans if plan.hit_id),
        "assignments": len(reviews),
        "valid": len(valid),
        "invalid": len(reviews) - len(valid),
        "counted": sum(q["counted_votes"] for q in queries),
        "gold_passed": passed,
        "gold_failed": failed,
        "gold_pass_rate": _share(passed, passed + failed),
        "queries_with_votes": sum(1 for q in queries if q["counted_votes"]),
        "queries_decided": len(decided),
        "queries_tied": sum(1 for q in queries if q["status"] == "tie"),
        "agreement": _agreement(q["agrees_with_model"] for q in decided),
        "ds_agreement": _agreement(q["ds"]["agrees_with_model"] for q in ds_decided),
        "unmatched_reviews": unmatched,
        "spent": money(spent),
    }


def _agreement(flags: Iterable[bool]) -> dict[str, Any]:
    flags = list(flags)
    agree = sum(1 for flag in flags if flag)
    return {"agree": agree, "decided": len(flags), "share": _share(agree, len(flags))}


def _workers(
    reviews: list[Review],
    ds_labels: dict[str, str],
    answers: dict[str, list[tuple[str, str]]],
    *,
    show_ids: bool = False,
) -> list[dict[str, Any]]:
    """Per-worker counts under pseudonyms (or their ids, ``show_ids``); ``ds_agreement`` is the
    share of their valid answers (both questions) that match Dawid-Skene's most likely label
    (the known one for gold)."""
    by_worker = defaultdict(list)
    for review in reviews:
        by_worker[review.worker_id].append(review)
    rows = []
    for number, worker_id in enumerate(sorted(by_worker), start=1):
        mine = by_worker[worker_id]
        given = answers.get(worker_id, [])
        agree = sum(1 for task, label in given if ds_labels.get(task) == label)
        rows.append(
            {
                "worker": worker_id if show_ids else f"worker {number}",
                "assignments": len(mine),
                "valid": sum(1 for r in mine if r.valid),
                "gold_passed": sum(1 for r in mine if r.valid and r.gold_correct is True),
                "gold_failed": sum(1 for r in mine if r.valid and r.gold_correct is False),
                "ds_agreement": _share(agree, len(given)),
            }
        )
    return rows


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


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _single(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


def _timestamp(value: datetime | str | None) -> str:
    if isinstance(value, str):
        return value
    moment = (value or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
