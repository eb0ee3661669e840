"""Wait until a batch of HITs is complete: every HIT fully submitted, or expired."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

from mturk_provider.hooks.mturk import MTurkHook
from mturk_provider.links import HITPreviewLink
from mturk_provider.progress import FinalCounts, read_batch_progress
from mturk_provider.triggers.mturk import MTurkHITsTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

TIMEOUT_POLICIES = ("fail", "partial")


class MTurkHITsSensor(AwsBaseSensor[MTurkHook]):
    """
    Wait until every HIT of a batch has all its assignments submitted, or has expired.

    Deferrable by default: it reads the HITs once, returns at once if the batch is already
    complete, and otherwise hands the wait to :class:`MTurkHITsTrigger` in the triggerer (no
    worker slot is held). Each poll logs a line such as ``assignments submitted 14/30 across 10
    HITs; 7 HITs complete, 1 expired, 2 waiting (3 assignments being worked on)``. The first
    read also publishes the first HIT's preview page as the task's "HIT preview" link.

    Returns (XCom) the batch progress, :meth:`BatchProgress.to_dict` plus ``partial``: ``False``
    when the batch completed, ``True`` when the timeout came first under ``timeout_policy
    ="partial"``.

    .. seealso::
        - :external+boto3:py:meth:`MTurk.Client.get_hit`
        - :external+boto3:py:meth:`MTurk.Client.list_assignments_for_hit`

    :param hit_ids: the HITs of the batch (templated; a list, or an XComArg that resolves to one).
    :param environment: ``sandbox`` or ``production`` (templated, e.g. from a Param).
    :param poll_interval: seconds between polls, in the triggerer and in poke mode.
    :param timeout_policy: what happens when the batch is not complete in time (templated):
        ``fail`` fails the task (no retry, like any sensor timeout); ``partial`` logs a warning
        and returns the progress so far, so downstream tasks go on with the submitted work.
    :param batch_timeout: seconds to wait for the batch (templated, so a Param can set it);
        replaces the sensor's ``timeout`` when given.
    :param deferrable: wait in the triggerer (default) or in this task (``mode`` poke/reschedule).
    :param max_consecutive_errors: failed polls in a row (after botocore's retries) the trigger
        tolerates before failing the task.
    :param aws_conn_id: The Airflow connection used for AWS credentials; its extra
        ``service_config.mturk.endpoint_url`` points MTurk at another endpoint (the crowd sandbox).
    :param region_name: AWS region_name; MTurk only exists in us-east-1, the default.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for botocore client.
    """

    aws_hook_class = MTurkHook
    template_fields: Sequence[str] = aws_template_fields(
        "hit_ids", "environment", "timeout_policy", "batch_timeout"
    )
    operator_extra_links = (HITPreviewLink(),)

    def __init__(
        self,
        *,
        hit_ids: list[str] | Any,
        environment: str = "sandbox",
        poll_interval: float = 60,
        timeout_policy: str = "fail",
        batch_timeout: float | str | None = None,
        deferrable: bool = True,
        max_consecutive_errors: int = 5,
        **kwargs,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        if not _is_template(timeout_policy):
            _check_timeout_policy(timeout_policy)
        self.hit_ids = hit_ids
        self.environment = environment
        self.poll_interval = poll_interval
        self.timeout_policy = timeout_policy
        self.batch_timeout = batch_timeout
        self.deferrable = deferrable
        self.max_consecutive_errors = max_consecutive_errors
        self._final_counts: FinalCounts = {}
        self._preview_published = False

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        return {**super()._hook_parameters, "environment": self.environment}

    def execute(self, context: Context) -> Any:
        self._apply_rendered_arguments()
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout:
                if self.timeout_policy != "partial":
                    raise
                return self._partial(self._read_progress(context))
        progress = self._read_progress(context)
        if progress["complete"]:
            return {**progress, "partial": False}
        self.defer(
            trigger=MTurkHITsTrigger(
                hit_ids=self._hit_id_list(),
                deadline=time.time() + self.timeout,
                aws_conn_id=self.aws_conn_id,
                environment=self.environment,
                poll_interval=self.poll_interval,
                max_consecutive_errors=self.max_consecutive_errors,
                region_name=self.region_name,
                verify=self.verify,
                botocore_config=self.botocore_config,
            ),
            method_name="execute_complete",
            # The trigger ends the wait itself at the deadline, so that the timeout policy
            # applies; Airflow's deferral timeout is only a backstop.
            timeout=timedelta(seconds=self.timeout + max(600.0, 2 * self.poll_interval)),
        )

    def poke(self, context: Context) -> PokeReturnValue:
        progress = self._read_progress(context)
        return PokeReturnValue(progress["complete"], {**progress, "partial": False})

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict:
        """Return the progress on success; apply ``timeout_policy`` on timeout; raise on error."""
        self._apply_rendered_arguments()
        status = (event or {}).get("status")
        progress = (event or {}).get("progress")
        if status == "success":
            self.log.info("Batch complete: %s", progress["summary"])
            return {**progress, "partial": False}
        if status == "timeout" and progress is not None:
            if self.timeout_policy == "partial":
                return self._partial(progress)
            raise AirflowSensorTimeout(
                f"HITs not complete after {self.timeout:.0f} s (timeout_policy='fail'): "
                f"{progress['summary']}"
            )
        message = (event or {}).get("message") or f"unexpected trigger event {event!r}"
        raise AirflowException(f"Waiting for the HITs failed: {message}")

    def _partial(self, progress: dict[str, Any]) -> dict[str, Any]:
        self.log.warning(
            "Batch not complete after %.0f s; going on with partial results "
            "(timeout_policy='partial'): %s",
            self.timeout,
            progress["summary"],
        )
        return {**progress, "partial": True}

    def _read_progress(self, context: Context) -> dict[str, Any]:
        batch = read_batch_progress(self.hook, self._hit_id_list(), final_counts=self._final_counts)
        self.log.info("%s", batch.summary())
        if batch.hits and not self._preview_published:
            first = batch.hits[0]
            url = self.hook.preview_url(first.hit_id, first.hit_type_id)
            HITPreviewLink.persist(context["ti"], url)
            self._preview_published = True
        return batch.to_dict()

    def _hit_id_list(self) -> list[str]:
        """``hit_ids`` as rendered: a list, or a string holding one (a rendered Jinja list)."""
        value = self.hit_ids
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = ast.literal_eval(text)
            else:
                value = [part for part in re.split(r"[\s,]+", text) if part]
        return [str(hit_id) for hit_id in value]

    def _apply_rendered_arguments(self) -> None:
        _check_timeout_policy(self.timeout_policy)
        if self.batch_timeout not in (None, ""):
            try:
                self.timeout = float(self.batch_timeout)
            except ValueError:
                raise ValueError(
                    f"batch_timeout must be a number of seconds, got {self.batch_timeout!r}"
                ) from None


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _check_timeout_policy(policy: Any) -> None:
    if policy not in TIMEOUT_POLICIES:
        raise ValueError(f"timeout_policy must be one of {TIMEOUT_POLICIES}, got {policy!r}")
