"""The gold-anchored posterior (``include.crowd.quality``): every valid vote weighted by its
worker's skill, estimated from their gold answers alone.

Unlike Dawid-Skene, a worker's weight does not come from agreeing with the others: it comes from
the questions whose answer is known, so a crowd that agrees by clicking the same place gains
nothing, and a worker who fails gold still counts, for less (never against the option they
picked). Its confidence is the winner's posterior probability: the number adaptive overlap
compares with its target.
"""

from __future__ import annotations

from include.crowd import quality
from include.crowd.aggregation.table import Outcome, Result, Table

TITLE = "Gold-anchored posterior"
READS = "valid answers"
ABOUT = (
    "Every valid answer, weighted by its worker's accuracy on the gold (known-answer) "
    "questions: the posterior mean of a Beta prior (2 right, 1 wrong) updated by their gold "
    "answers, never below chance. Its confidence is the winner's posterior probability, the "
    "number adaptive overlap compares with its confidence target."
)


def fit(table: Table) -> Result:
    """The posterior of each HIT's model question from ``table.reviews``, each worker's
    skill from their gold answers here and in the prefix's other batches (``table.history``)."""
    plans = list(table.plans.values())
    posteriors = quality.posteriors(plans, table.reviews, table.history)
    outcomes = {
        hit_id: Outcome.decide(table.options(hit_id), post.probabilities)
        for hit_id, post in posteriors.items()
        if post.answers
    }
    labels = {hit_id: o.winner for hit_id, o in outcomes.items() if o.winner is not None}
    answers = table.answers[table.answers["task"].str.endswith("/model")].copy()
    if len(answers):
        # the fitted table's labels are option positions; agreement is read against names
        positions = {
            (hit_id, str(o.position)): (o.image.name if o.image else quality.NONE_OF_THESE)
            for hit_id, plan in table.plans.items()
            for o in plan.model.options
        }
        answers["task"] = answers["task"].str.rsplit("/", n=1).str[0]
        answers["label"] = [
            positions.get((task, label))
            for task, label in zip(answers["task"], answers["label"], strict=True)
        ]
    return Result(outcomes, answers, labels)
