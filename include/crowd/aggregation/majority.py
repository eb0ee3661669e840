"""Majority vote over the counted votes, with crowd-kit's ``MajorityVote``.

The counted votes are the valid answers whose gold (known-answer) question was right. crowd-kit
breaks a tie by whichever label its table lists first, so the verdict is read from its
probabilities (the vote shares) instead: a tie is reported as a tie, with no winner.
"""

from __future__ import annotations

from crowdkit.aggregation import MajorityVote

from include.crowd.aggregation.table import Result, Table, quiet_fit

TITLE = "Majority vote"
READS = "counted votes"
ABOUT = (
    "The majority of counted votes: valid answers whose gold (known-answer) question was "
    "right. Its confidence is the winner's share of those votes; a tie is shown as a tie."
)


def fit(table: Table) -> Result:
    """Fit ``MajorityVote`` on ``table.votes``."""
    if table.votes.empty:
        return Result.empty()
    return Result.from_votes(table, quiet_fit(MajorityVote(), table.votes).probas_)
