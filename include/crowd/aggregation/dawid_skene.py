"""Dawid-Skene over every valid answer, gold answers included, with crowd-kit's ``DawidSkene``.

A worker's confusion matrix is learnt from all their answers, whatever the gold outcome, so a
worker who clicks without looking weighs little. It fits on ``table.answers``: labels are option
positions (the HIT's form values, shuffled per HIT) of both questions; each HIT's gold question
is a task whose true label (its correct position) is passed as crowd-kit's ``true_labels``, which
pins that task's posterior to the known answer at every EM step. The posterior of a model
question is restricted to its own positions, renormalised and mapped back to option names.
"""

from __future__ import annotations

import pandas as pd
from crowdkit.aggregation import DawidSkene

from include.crowd.aggregation.table import (
    Outcome,
    Result,
    Table,
    option_label,
    quiet_fit,
)

TITLE = "Dawid-Skene"
READS = "valid answers"
ABOUT = (
    "A model of each worker's reliability, fitted on every valid answer (gold questions "
    "included, with their known answers); its confidence is the probability of its pick. With "
    "few answers per worker it is overconfident: read that probability as a ranking rather "
    "than a calibrated chance."
)
MAX_ITERATIONS = 100


def fit(table: Table) -> Result:
    """Fit ``DawidSkene`` on ``table.answers`` with the gold tasks' true labels."""
    data = table.answers
    if data.empty:
        return Result.empty()
    # crowd-kit can only pin a task to a label some answer used (it adds no new label column).
    seen = set(data["label"])
    gold = pd.Series({t: label for t, label in table.true_labels.items() if label in seen})
    ds = quiet_fit(DawidSkene(n_iter=MAX_ITERATIONS), data, true_labels=gold if len(gold) else None)
    posteriors = {
        str(task): {int(label): float(p) for label, p in probas.items()}
        for task, probas in ds.probas_.iterrows()
    }
    outcomes = {}
    for task, posterior in posteriors.items():
        hit_id, question = task.rsplit("/", 1)
        if question == "model":
            options = table.options(hit_id)
            mass = {option_label(o): posterior.get(o.position, 0.0) for o in options}
            outcomes[hit_id] = Outcome.decide(options, mass)
    # Each task's most likely label over all positions (the known one for gold), ties to the
    # lowest position: the workers' agreement is measured against it.
    labels = {
        task: str(max(sorted(p), key=lambda label: p[label])) for task, p in posteriors.items()
    }
    return Result(outcomes, data, labels)
