"""Wait in the triggerer until a batch of HITs is complete (every HIT submitted or expired)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import cached_property
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import BotoCoreError, ClientError

from mturk_provider.hooks.mturk import MTurkHook
from mturk_provider.progress import FinalCounts, read_batch_progress

# MTurk's error for a bad request (unknown HIT, invalid id): waiting does not fix it.
_PERMANENT_ERROR_CODES = frozenset({"RequestError"})


class MTurkHITsTrigger(BaseTrigger):
    """
    Poll MTurk until every HIT of a batch is complete or expired, or until a deadline.

    It only reads (GetHIT, and ListAssignmentsForHIT for HITs that can no longer change), so
    running it more than once is harmless. Events carry ``status`` (``success``, ``timeout`` or
    ``error``), the batch ``progress`` (see :class:`mturk_provider.progress.BatchProgress`;
    ``None`` if it could never be read) and, for errors, a ``message``.

    .. seealso::
        - :external+boto3:py:meth:`MTurk.Client.get_hit`
        - :external+boto3:py:meth:`MTurk.Client.list_assignments_for_hit`

    :param hit_ids: the HITs of the batch.
    :param deadline: when to give up, as a Unix timestamp (absolute, so that a trigger restarted
        by the triggerer keeps the original deadline).
    :param aws_conn_id: AWS connection (its extra may point MTurk at another endpoint).
    :param environment: ``sandbox`` or ``production``.
    :param poll_interval: seconds between polls.
    :param max_consecutive_errors: polls in a row that may fail (after botocore's own retries)
        before the trigger reports an error.
    :param region_name: passed to the hook (MTurk only exists in us-east-1).
    :param verify: whether to verify SSL certificates.
    :param botocore_config: botocore client configuration.
    """

    def __init__(
        self,
        *,
        hit_ids: list[str],
        deadline: float,
        aws_conn_id: str | None = "aws_default",
        environment: str = "sandbox",
        poll_interval: float = 60,
        max_consecutive_errors: int = 5,
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.hit_ids = list(hit_ids)
        self.deadline = deadline
        self.aws_conn_id = aws_conn_id
        self.environment = environment
        self.poll_interval = poll_interval
        self.max_consecutive_errors = max_consecutive_errors
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config
        # Submitted counts of HITs that can no longer change, kept between polls.
        self._final_counts: FinalCounts = {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            self.__class__.__module__ + "." + self.__class__.__qualname__,
            {
                "hit_ids": self.hit_ids,
                "deadline": self.deadline,
                "aws_conn_id": self.aws_conn_id,
                "environment": self.environment,
                "poll_interval": self.poll_interval,
                "max_consecutive_errors": self.max_consecutive_errors,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
            },
        )

    @cached_property
    def hook(self) -> MTurkHook:
        return MTurkHook(
            aws_conn_id=self.aws_conn_id,
            environment=self.environment,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        )

    async def poke(self) -> dict[str, Any]:
        """Read the batch once; return its progress (``progress["complete"]`` says if done)."""
        # boto3 blocks: run it in a thread so the triggerer's event loop keeps serving others.
        progress = await asyncio.to_thread(
            read_batch_progress, self.hook, self.hit_ids, final_counts=self._final_counts
        )
        return progress.to_dict()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self.log.info(
            "Waiting for %d HITs, polling every %s s, until %s",
            len(self.hit_ids),
            self.poll_interval,
            time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.deadline)),
        )
        progress: dict[str, Any] | None = None
        failures = 0
        while True:
            try:
                progress = await self.poke()
            except (BotoCoreError, ClientError) as error:
                failures += 1
                code = getattr(error, "response", {}).get("Error", {}).get("Code")
                self.log.warning("Reading the HITs failed (%d in a row): %s", failures, error)
                if code in _PERMANENT_ERROR_CODES or failures >= self.max_consecutive_errors:
                    yield TriggerEvent(
                        {
                            "status": "error",
                            "message": f"reading the HITs failed {failures} time(s) in a row; "
                            f"last error: {error}",
                            "progress": progress,
                        }
                    )
                    return
            else:
                failures = 0
                self.log.info("%s", progress["summary"])
                if progress["complete"]:
                    yield TriggerEvent({"status": "success", "progress": progress})
                    return
            remaining = self.deadline - time.time()
            if remaining <= 0:
                yield TriggerEvent(
                    {
                        "status": "timeout",
                        "message": "the batch was not complete by its deadline",
                        "progress": progress,
                    }
                )
                return
            await asyncio.sleep(min(self.poll_interval, remaining))
