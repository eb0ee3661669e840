"""Python tasks that carry the "HIT preview" and "Report" links.

Airflow 3 takes a task's extra links from its operator class (``operator_extra_links``), and a
plain ``@task`` is a ``PythonOperator`` with none. These two are the same tasks with the links:

.. code-block:: python

    from mturk_provider.links import HITPreviewLink
    from mturk_provider.operators.mturk import mturk_task


    @mturk_task
    def create_hits(batch_id: str) -> list[str]:
        context = get_current_context()
        ...
        HITPreviewLink.persist(context["ti"], hook.preview_url(hit_id, hit_type_id))
        return hit_ids

``mturk_task`` accepts what ``@task`` accepts (``retries``, ``multiple_outputs``, ``.partial()
.expand()``...). A task that publishes no URL shows the buttons disabled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.bases.decorator import task_decorator_factory

from mturk_provider.links import HITPreviewLink, MTurkReportLink

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import TaskDecorator

MTURK_LINKS = (HITPreviewLink(), MTurkReportLink())


class MTurkPythonOperator(PythonOperator):
    """A :class:`PythonOperator` whose task instances show the "HIT preview" and "Report" links."""

    operator_extra_links = MTURK_LINKS


class _MTurkDecoratedOperator(_PythonDecoratedOperator):
    """What ``@mturk_task`` builds: ``@task``'s operator with the MTurk links."""

    operator_extra_links = MTURK_LINKS
    custom_operator_name = "@mturk_task"


def mturk_task(
    python_callable: Callable | None = None, multiple_outputs: bool | None = None, **kwargs
) -> TaskDecorator:
    """
    Turn a function into a task, as ``@task`` does, with the "HIT preview" and "Report" links.

    :param python_callable: the function (when used as ``@mturk_task`` without parentheses).
    :param multiple_outputs: unroll a returned dict into one XCom per key.
    :param kwargs: operator arguments (``task_id``, ``retries``...).
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_MTurkDecoratedOperator,
        **kwargs,
    )
