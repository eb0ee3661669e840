"""Operator extra links: "HIT preview" and "Report" buttons on a task instance.

A task publishes a link by pushing its URL to XCom under the link's key, at any time while it
runs::

    HITPreviewLink.persist(context["ti"], hook.preview_url(hit_id, hit_type_id))
    MTurkReportLink.persist(context["ti"], "https://.../report.html")

(or ``ti.xcom_push(key="hit_preview_url", value=url)``). The buttons appear on tasks whose
operator class lists the links in ``operator_extra_links``: :class:`MTurkHITsSensor`,
:class:`MTurkPythonOperator` and ``@mturk_task(links=[...])``. A plain ``@task`` cannot carry
them, because Airflow 3 reads extra links from the operator class (see
``mturk_provider.operators.mturk``). A task should carry only the links it publishes: the worker
reads every link of a task back when it ends, and reading a key never pushed logs
``[error] XCom not found``.

How Airflow 3.3 resolves them: the DAG processor stores each link as ``{name: xcom_key}``; the
API server answers a link by reading that XCom key of the task instance. The key here is the key
the task pushes, so a button works as soon as the URL is pushed (while a sensor is still
deferred, too). After the task ends, the worker calls :meth:`get_link`, which reads the same
key back, and stores its answer under it again: the value does not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import RuntimeTaskInstanceProtocol, TaskInstanceKey


class MTurkXComLink(BaseOperatorLink):
    """A link whose URL a task pushes to XCom under ``key``."""

    name: ClassVar[str]
    key: ClassVar[str]

    @property
    def xcom_key(self) -> str:
        return self.key

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the URL the task instance pushed, or ``""`` (a disabled button) if none."""
        url = XCom.get_value(ti_key=ti_key, key=self.key)
        return url if isinstance(url, str) else ""

    @classmethod
    def persist(cls, ti: RuntimeTaskInstanceProtocol, url: str) -> None:
        """Publish the link's URL for this task instance."""
        ti.xcom_push(key=cls.key, value=url)


class HITPreviewLink(MTurkXComLink):
    """Where a worker previews a HIT of the batch (MTurk's worker site, or the crowd sandbox)."""

    name = "HIT preview"
    key = "hit_preview_url"


class MTurkReportLink(MTurkXComLink):
    """The batch's HTML report."""

    name = "Report"
    key = "report_url"
