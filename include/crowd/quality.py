"""Crowd quality: each worker's skill from their gold answers, the posterior of each query's
winner, and which HITs need more assignments (adaptive overlap).

**The model** (a one-coin Bayesian model anchored on gold answers; documented here because the
adaptive overlap and the report rest on it):

- A worker's *skill* ``s`` is the chance that they pick the right option of a question. Their
  gold answers are draws with a known truth, so ``s`` has the posterior
  ``Beta(PRIOR_RIGHT + right, PRIOR_WRONG + wrong)``; we use its mean. The prior (mean 2/3,
  worth three answers) says a new worker is probably, not certainly, careful; a worker's skill
  is never taken below chance (``1/K`` for ``K`` options): a wrong gold answer cannot make a
  vote count *against* the option it names.
- A worker with skill ``s`` who looked at a model question whose right option is ``t`` votes
  ``t`` with probability ``s`` and each of the other ``K - 1`` options with ``(1 - s)/(K - 1)``.
- Votes are independent given the truth, and every option (``None of these`` included) is a
  priori equally likely. The posterior of option ``o`` is then proportional to
  ``prod_w (s_w if v_w == o else (1 - s_w)/(K - 1))`` over the HIT's valid answers.

Every valid answer takes part (a worker who failed the gold question weighs less rather than
nothing); an invalid one (malformed, too fast) does not. The winner's posterior is the
*confidence* of the HIT: adaptive overlap asks for more assignments while it is below the
target, and the report shows it with the number of assignments used.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from include.crowd.records import NONE_OF_THESE, HitPlan, Review

PRIOR_RIGHT = 2.0
PRIOR_WRONG = 1.0


@dataclass(frozen=True)
class Skill:
    """A worker's gold record and the skill it implies."""

    right: int = 0
    wrong: int = 0

    @property
    def answers(self) -> int:
        return self.right + self.wrong

    @property
    def estimate(self) -> float:
        """The posterior mean of the worker's chance to pick the right option."""
        return (PRIOR_RIGHT + self.right) / (PRIOR_RIGHT + PRIOR_WRONG + self.answers)


def skills(reviews: Iterable[Review], history: Mapping[str, Skill] | None = None) -> dict:
    """Each worker's gold record over ``reviews`` (valid answers only; each assignment once),
    added to their earlier record in ``history`` (other batches)."""
    right: dict[str, int] = defaultdict(int)
    wrong: dict[str, int] = defaultdict(int)
    seen = set()
    for review in reviews:
        if review.assignment_id in seen or not review.valid or review.gold_correct is None:
            continue
        seen.add(review.assignment_id)
        (right if review.gold_correct else wrong)[review.worker_id] += 1
    earlier = dict(history or {})
    workers = set(right) | set(wrong) | set(earlier)
    return {
        worker: Skill(
            right=right[worker] + earlier.get(worker, Skill()).right,
            wrong=wrong[worker] + earlier.get(worker, Skill()).wrong,
        )
        for worker in sorted(workers)
    }


@dataclass(frozen=True)
class Posterior:
    """The model question's options with their posterior probabilities, of one HIT."""

    hit_id: str
    probabilities: dict[str, float]  # option name (or NONE_OF_THESE) -> probability
    answers: int  # valid answers that took part

    @property
    def winner(self) -> str | None:
        """The most probable option; None without answers or on an exact tie."""
        if not self.answers:
            return None
        ranked = sorted(self.probabilities.values(), reverse=True)
        if len(ranked) > 1 and math.isclose(ranked[0], ranked[1], rel_tol=0, abs_tol=1e-12):
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def confidence(self) -> float:
        """The winner's probability (0 without a winner)."""
        winner = self.winner
        return self.probabilities[winner] if winner else 0.0


def option_names(plan: HitPlan) -> list[str]:
    return [o.image.name if o.image else NONE_OF_THESE for o in plan.model.options]


def posterior(plan: HitPlan, reviews: Sequence[Review], worker_skills: Mapping) -> Posterior:
    """The posterior over ``plan``'s model options given its valid ``reviews`` (see the module
    docstring), computed in log space."""
    names = option_names(plan)
    k = len(names)
    floor = 1.0 / k
    logs = dict.fromkeys(names, 0.0)
    used = 0
    for review in reviews:
        if review.hit_id != plan.hit_id or not review.valid or review.vote not in logs:
            continue
        used += 1
        skill = worker_skills.get(review.worker_id, Skill()).estimate
        skill = min(max(skill, floor), 1 - 1e-6)
        other = (1 - skill) / (k - 1)
        for name in names:
            logs[name] += math.log(skill if name == review.vote else other)
    top = max(logs.values())
    weights = {name: math.exp(value - top) for name, value in logs.items()}
    total = sum(weights.values())
    return Posterior(plan.hit_id, {name: weight / total for name, weight in weights.items()}, used)


def posteriors(
    plans: Sequence[HitPlan], reviews: Sequence[Review], history: Mapping[str, Skill] | None = None
) -> dict[str, Posterior]:
    """The posterior of every created HIT of ``plans``."""
    latest = {review.assignment_id: review for review in reviews}.values()
    worker_skills = skills(latest, history)
    by_hit: dict[str, list[Review]] = defaultdict(list)
    for review in latest:
        by_hit[review.hit_id].append(review)
    return {
        plan.hit_id: posterior(plan, by_hit.get(plan.hit_id, []), worker_skills)
        for plan in plans
        if plan.hit_id
    }


# --- adaptive overlap -------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """Adaptive overlap: start each HIT at ``start`` assignments; while its winner's posterior
    is below ``confidence``, add ``step`` at a time up to ``maximum``. ``maximum == start``:
    fixed overlap."""

    start: int
    maximum: int
    confidence: float
    step: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.maximum:
            raise ValueError(
                f"the most assignments per HIT ({self.maximum}) must be at least the "
                f"assignments a HIT starts with ({self.start})"
            )
        if self.start < 10 <= self.maximum:
            raise ValueError(
                "MTurk cannot extend a HIT created with fewer than 10 assignments to 10 or "
                f"more: the most assignments per HIT must stay under 10 (not {self.maximum}) "
                f"or a HIT must start with 10 or more (not {self.start})"
            )
        if not (0.5 <= self.confidence < 1):
            raise ValueError(f"the confidence target must be 0.5 to below 1, not {self.confidence}")
        if self.step < 1:
            raise ValueError(f"assignments added per round must be at least 1, not {self.step}")

    @property
    def adaptive(self) -> bool:
        return self.maximum > self.start


def more_assignments(
    posterior_of: Posterior, max_assignments: int, submitted: int, overlap: Overlap
) -> int:
    """How many assignments to add to a HIT now: none when it is confident, at its maximum, or
    still has assignments not submitted (they may settle it); else ``step`` (within the max)."""
    if posterior_of.confidence >= overlap.confidence:
        return 0
    if submitted < max_assignments or max_assignments >= overlap.maximum:
        return 0
    return min(overlap.step, overlap.maximum - max_assignments)
