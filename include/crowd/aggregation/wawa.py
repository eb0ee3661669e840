"""Worker Agreement with Aggregate over the counted votes, with crowd-kit's ``Wawa``.

Wawa weighs each counted vote by its worker's skill: the share of their votes that agree with
the plain majority. crowd-kit's ``Wawa`` measures that skill against ``MajorityVote``'s labels,
which break a tie by label order, so a tied query would hand its arbitrary pick the higher
weight and then be decided by it. Here the skill is measured on the queries the majority
decides only (``Wawa`` fitted on those); the weighted vote then runs on every counted vote, as
``Wawa``'s own prediction does (with ``MajorityVote`` given the skills: crowd-kit 1.4.2's
``Wawa.predict_proba`` fails under scikit-learn 1.6+, whose ``check_is_fitted`` wants
``__sklearn_tags__``), a worker whose every vote fell on a tie weighing the mean skill. A tied
query whose voters all have skill 0 keeps the plain majority's shares (still a tie).
"""

from __future__ import annotations

import pandas as pd
from crowdkit.aggregation import MajorityVote, Wawa

from include.crowd.aggregation.table import Result, Table, quiet_fit

TITLE = "Wawa"
READS = "counted votes"
ABOUT = (
    "The counted votes again, each weighted by how often its worker agrees with the majority "
    "on the queries the majority decides (Worker Agreement with Aggregate). Its confidence is "
    "the winner's share of the weighted votes."
)


def fit(table: Table) -> Result:
    """Fit ``Wawa``'s skills on the decided tasks of ``table.votes``; vote with them on all."""
    votes = table.votes
    if votes.empty:
        return Result.empty()
    plain = quiet_fit(MajorityVote(), votes).probas_
    decided = votes[votes["task"].isin(list(Result.from_votes(table, plain).labels))]
    skills = quiet_fit(Wawa(), decided).skills_ if len(decided) else pd.Series(dtype=float)
    default = float(skills.mean()) if len(skills) else 1.0
    # crowd-kit cannot normalise a task whose voters all weigh 0: such a task keeps its plain
    # shares (a tie: a task the majority decides has a voter who agrees with it).
    weighs = votes["worker"].map(skills).fillna(default) > 0
    weighed = votes[votes["task"].isin(set(votes.loc[weighs, "task"]))]
    weighted = MajorityVote(on_missing_skill="value", default_skill=default)
    probas = quiet_fit(weighted, weighed, skills=skills).probas_
    unweighed = plain[~plain.index.isin(probas.index)]
    return Result.from_votes(table, pd.concat([probas, unweighed]).fillna(0.0))
