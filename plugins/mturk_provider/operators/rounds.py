"""Review rounds that wait for more assignments without holding a worker slot.

Adaptive overlap reviews what came in, asks for more assignments on the HITs whose winner is
unsure, waits for them, and reviews again. :class:`MTurkReviewRoundsOperator` runs one round in
the worker (``review_round``, a callable of the DAG: review, then extend), and when that round
extended HITs it *defers* to :class:`~mturk_provider.triggers.mturk.MTurkHITsTrigger` on just
those HITs: the wait happens in the triggerer, and the task comes back to a worker only to
review the next round. It ends when a round extends nothing (every HIT confident or at its
most assignments), at the deadline (a last review, without extending), or after
``max_rounds``.

Why a deferring operator rather than a fixed number of sensor/review tasks in the DAG: the
number of rounds depends on the answers (a batch of confident HITs needs one, a hard one
several), and an unrolled chain would either cap it low or leave many skipped tasks in every
run's grid; a deferral costs no slot while waiting, and each resume re-reads everything it needs
from the ledger, so a retry or a crash in any round resumes exactly where the ledger says.

``review_round(context, batch_dir, final, deadline)`` returns the HIT ids it extended
(``final``: review only, extend nothing; ``deadline``: a Unix time, until which an extended
HIT must stay open). The operator returns ``batch_dir`` (XCom) for the tasks after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from mturk_provider.triggers.mturk import MTurkHITsTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class MTurkReviewRoundsOperator(BaseOperator):
    """
    Review, extend the unsure HITs, wait for them in the triggerer, and review again.

    :param review_round: ``(context, batch_dir, final, deadline) -> HIT ids extended``.
    :param batch_dir: the batch folder (templated: an XComArg resolves to it).
    :param wait_seconds: how long all rounds together may wait, from the start of the try
        that runs round 1 (templated, so a Param can set it); a retried task starts round 1
        again with a new deadline, and waits again for HITs an earlier try extended.
    :param poll_interval: seconds between the trigger's polls.
    :param max_rounds: the most review rounds (a backstop: the HITs' maximum ends it first).
    :param aws_conn_id: the AWS connection of MTurk (its extra may point at the sandbox).
    :param environment: ``sandbox`` or ``production`` (templated).
    """

    template_fields: Sequence[str] = ("batch_dir", "wait_seconds", "environment", "aws_conn_id")

    def __init__(
        self,
        *,
        review_round: Callable[[Context, str, bool, float], list[str]],
        batch_dir: str | Any,
        wait_seconds: float | str,
        poll_interval: float = 60,
        max_rounds: int = 20,
        aws_conn_id: str | None = "aws_default",
        environment: str = "sandbox",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.review_round = review_round
        self.batch_dir = batch_dir
        self.wait_seconds = wait_seconds
        self.poll_interval = poll_interval
        self.max_rounds = max_rounds
        self.aws_conn_id = aws_conn_id
        self.environment = environment

    def execute(self, context: Context) -> str:
        try:
            deadline = time.time() + float(self.wait_seconds)
        except ValueError:
            raise ValueError(
                f"wait_seconds must be a number of seconds, got {self.wait_seconds!r}"
            ) from None
        return self._round(context, 1, deadline)

    def resume_round(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        number: int = 2,
        deadline: float = 0.0,
    ) -> str:
        """Called in a worker when the trigger fired: review (and maybe extend) again."""
        status = (event or {}).get("status")
        progress = (event or {}).get("progress") or {}
        if status == "error":
            raise AirflowException(
                f"waiting for the extended HITs failed: {(event or {}).get('message')}"
            )
        if status == "timeout":
            self.log.warning(
                "the extended HITs were not complete by the deadline (%s); a last review",
                progress.get("summary", "no progress read"),
            )
            self.review_round(context, self.batch_dir, True, deadline)
            return self.batch_dir
        self.log.info("round %d: %s", number, progress.get("summary", "the HITs are complete"))
        return self._round(context, number, deadline)

    def _round(self, context: Context, number: int, deadline: float) -> str:
        last = number >= self.max_rounds or time.time() >= deadline
        extended = self.review_round(context, self.batch_dir, last, deadline)
        if not extended:
            self.log.info("review round %d extended no HIT: done", number)
            return self.batch_dir
        self.log.info(
            "review round %d extended %d HITs; waiting for their new assignments in the "
            "triggerer (no worker slot is held)",
            number,
            len(extended),
        )
        self.defer(
            trigger=MTurkHITsTrigger(
                hit_ids=list(extended),
                deadline=deadline,
                aws_conn_id=self.aws_conn_id,
                environment=self.environment,
                poll_interval=self.poll_interval,
            ),
            method_name="resume_round",
            kwargs={"number": number + 1, "deadline": deadline},
            timeout=timedelta(seconds=max(deadline - time.time(), 0) + 600),
        )
        return self.batch_dir  # not reached: defer raises
