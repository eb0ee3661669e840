"""The batch's answers in crowd-kit's shape, and the records a method's ``fit`` returns.

crowd-kit takes one table, ``task, worker, label``. A :class:`Table` is built once per
aggregation and holds the two every method chooses from:

- ``votes``: the *counted* votes (valid answers whose gold answer was right, for an option of
  their HIT); ``task`` is the HIT id, ``label`` the option's name (an image name or
  ``NONE_OF_THESE``);
- ``answers``: *every valid* answer to both questions, gold outcome aside; ``task`` is
  ``<HIT id>/model`` or ``<HIT id>/gold``, ``label`` the option's position on the page (shuffled
  per HIT, so a worker who always clicks the first option shows as one), with ``true_labels``
  the gold tasks' correct positions.

A method reads its verdict per query back as an :class:`Outcome` (one shape for every method)
inside a :class:`Result`.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from include.crowd.quality import Skill
from include.crowd.records import NONE_OF_THESE, HitPlan, Option, Question, Review

log = logging.getLogger(__name__)

COLUMNS = ["task", "worker", "label"]
TIE_TOLERANCE = 1e-9


def option_label(option: Option) -> str:
    """An option's name in results: its image's name, or ``NONE_OF_THESE``."""
    return option.image.name if option.image is not None else NONE_OF_THESE


def ranked_options(question: Question) -> list[Option]:
    """The options in report order: by model rank (then position), "none of these" last."""
    return sorted(
        question.options,
        key=lambda o: (o.image is None, o.rank if o.rank is not None else 1 << 30, o.position),
    )


@dataclass
class Tally:
    """What one HIT's reviews add up to."""

    votes: Counter = field(default_factory=Counter)  # counted votes by option name
    submitted: int = 0
    valid: int = 0
    counted: int = 0
    gold_passed: int = 0
    gold_failed: int = 0
    problems: Counter = field(default_factory=Counter)
    ballots: list[tuple[str, str]] = field(default_factory=list)  # (worker, vote), counted


@dataclass(frozen=True)
class Table:
    """One batch's answers, as every method may read them (see the module docstring)."""

    plans: dict[str, HitPlan]  # the created HITs, by HIT id
    reviews: list[Review]  # of those HITs, one per assignment (the last given), sorted
    unmatched: int  # reviews of HITs not among the plans (ignored)
    tallies: dict[str, Tally]  # by HIT id, for HITs with reviews
    votes: pd.DataFrame
    answers: pd.DataFrame
    true_labels: dict[str, str]  # gold task -> its correct position
    # each worker's gold record in the S3 prefix's other batches (``quality.Skill``)
    history: Mapping[str, Skill] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        plans: list[HitPlan],
        reviews: list[Review],
        history: Mapping[str, Skill] | None = None,
    ) -> Table:
        by_hit = {plan.hit_id: plan for plan in plans if plan.hit_id}
        latest = {review.assignment_id: review for review in reviews}
        answered = sorted(latest.values(), key=lambda r: (r.hit_id, r.assignment_id))
        matched = [r for r in answered if r.hit_id in by_hit]
        unmatched = len(answered) - len(matched)
        if unmatched:
            log.warning("ignored %d reviews of HITs that are not in the manifest", unmatched)

        grouped: dict[str, list[Review]] = defaultdict(list)
        for review in matched:
            grouped[review.hit_id].append(review)
        tallies = {hit_id: _tally(by_hit[hit_id], rs) for hit_id, rs in grouped.items()}
        votes = [
            (hit_id, worker, label)
            for hit_id, tally in sorted(tallies.items())
            for worker, label in tally.ballots
        ]
        answers = []
        true_labels = {}
        for review in matched:
            if not review.valid or review.model_position is None or review.gold_position is None:
                continue
            plan = by_hit[review.hit_id]
            answers.append((f"{review.hit_id}/model", review.worker_id, str(review.model_position)))
            answers.append((f"{review.hit_id}/gold", review.worker_id, str(review.gold_position)))
            if plan.gold.correct_position is not None:
                true_labels[f"{review.hit_id}/gold"] = str(plan.gold.correct_position)
        return cls(
            plans=by_hit,
            reviews=matched,
            unmatched=unmatched,
            tallies=tallies,
            votes=pd.DataFrame(votes, columns=COLUMNS),
            answers=pd.DataFrame(answers, columns=COLUMNS),
            true_labels=dict(sorted(true_labels.items())),
            history=dict(history or {}),
        )

    def options(self, hit_id: str) -> list[Option]:
        """The model question's options of HIT ``hit_id`` in report order."""
        return ranked_options(self.plans[hit_id].model)


def _tally(plan: HitPlan, reviews: list[Review]) -> Tally:
    names = {option_label(o) for o in plan.model.options}
    tally = Tally()
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


@dataclass(frozen=True)
class Outcome:
    """One method's verdict on one query: each option's probability in report order (for
    majority vote, its share of the votes), and the option picked or the options tied."""

    probabilities: dict[str, float] = field(default_factory=dict)  # empty: nothing to go on
    winner: str | None = None
    tie: tuple[str, ...] = ()

    @classmethod
    def decide(cls, options: list[Option], mass: Mapping[str, float]) -> Outcome:
        """Normalise ``mass`` (option label -> weight) over ``options`` and pick the most likely
        option; options within ``TIE_TOLERANCE`` of it make a tie (in ``options``' order)."""
        weights = {option_label(o): float(mass.get(option_label(o), 0.0)) for o in options}
        total = sum(weights.values())
        if not total > 0:  # no weight at all (or NaN): nothing to decide on
            return cls()
        probabilities = {label: weight / total for label, weight in weights.items()}
        top = max(probabilities.values())
        leaders = tuple(label for label, p in probabilities.items() if top - p <= TIE_TOLERANCE)
        if len(leaders) == 1:
            return cls(probabilities, winner=leaders[0])
        return cls(probabilities, tie=leaders)

    @property
    def status(self) -> str:
        return "decided" if self.winner else ("tie" if self.tie else "no votes")

    @property
    def confidence(self) -> float | None:
        """The winner's probability, None without a winner."""
        return self.probabilities[self.winner] if self.winner else None


@dataclass(frozen=True)
class Result:
    """What a method's ``fit`` returns."""

    outcomes: dict[str, Outcome]  # HIT id -> verdict; a HIT it had no answers for is absent
    answers: pd.DataFrame  # the table it fitted on (task, worker, label)
    labels: dict[str, str]  # task -> its pick; a task it cannot decide is absent

    @classmethod
    def empty(cls) -> Result:
        return cls({}, pd.DataFrame([], columns=COLUMNS), {})

    @classmethod
    def from_votes(cls, table: Table, probas: pd.DataFrame) -> Result:
        """Read a model fitted on ``table.votes`` back: ``probas`` is crowd-kit's ``probas_``
        (task = HIT id, one column per option name)."""
        outcomes = {
            str(hit_id): Outcome.decide(table.options(str(hit_id)), row.to_dict())
            for hit_id, row in probas.iterrows()
        }
        labels = {hit_id: o.winner for hit_id, o in outcomes.items() if o.winner is not None}
        return cls(outcomes, table.votes, labels)


def quiet_fit(model, *args, **kwargs):
    """Fit a crowd-kit model without its pandas 3 deprecation warnings (one per EM step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"crowdkit\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"crowdkit\.")
        return model.fit(*args, **kwargs)
