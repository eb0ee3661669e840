"""Python tasks that carry the "HIT preview" and "Report" links.

Airflow 3 takes a task's extra links from its operator class (``operator_extra_links``), and a
plain ``@task`` is a ``PythonOperator`` with none. ``@mturk_task`` is ``@task`` with the links a
task publishes:

.. code-block:: python

    from mturk_provider.links import HITPreviewLink
    from mturk_provider.operators.mturk import mturk_task


    @mturk_task(links=[HITPreviewLink])
    def create_hits(batch_id: str) -> list[str]:
        context = get_current_context()
        ...
        HITPreviewLink.persist(context["ti"], hook.preview_url(hit_id, hit_type_id))
        return hit_ids

``mturk_task`` accepts what ``@task`` accepts (``retries``, ``multiple_outputs``, ``.partial()
.expand()``...). Name only the links the task publishes (without ``links``, it carries both):
when a task ends, the worker reads each of its links back from XCom, and a link whose URL was
never pushed is an ``[error] XCom not found`` line in the task's log and a disabled button.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.bases.decorator import task_decorator_factory

from mturk_provider.links import HITPreviewLink, MTurkReportLink, MTurkXComLink

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


class _HITPreviewDecoratedOperator(_MTurkDecoratedOperator):
    """``@mturk_task(links=[HITPreviewLink])``."""

    operator_extra_links = (HITPreviewLink(),)


class _ReportDecoratedOperator(_MTurkDecoratedOperator):
    """``@mturk_task(links=[MTurkReportLink])``."""

    operator_extra_links = (MTurkReportLink(),)


# A class per set of links: a mapped task (``.partial().expand()``) reads them from the class.
_OPERATOR_FOR_LINKS: dict[frozenset[type[MTurkXComLink]], type[_MTurkDecoratedOperator]] = {
    frozenset({HITPreviewLink, MTurkReportLink}): _MTurkDecoratedOperator,
    frozenset({HITPreviewLink}): _HITPreviewDecoratedOperator,
    frozenset({MTurkReportLink}): _ReportDecoratedOperator,
}


def mturk_task(
    python_callable: Callable | None = None,
    multiple_outputs: bool | None = None,
    *,
    links: Iterable[type[MTurkXComLink]] = (HITPreviewLink, MTurkReportLink),
    **kwargs,
) -> TaskDecorator:
    """
    Turn a function into a task, as ``@task`` does, with the "HIT preview" and "Report" links.

    :param python_callable: the function (when used as ``@mturk_task`` without parentheses).
    :param multiple_outputs: unroll a returned dict into one XCom per key.
    :param links: the link classes whose URL the task publishes (``HITPreviewLink``,
        ``MTurkReportLink``); both by default.
    :param kwargs: operator arguments (``task_id``, ``retries``...).
    """
    wanted = list(links)
    operator_class = None
    if all(isinstance(link, type) for link in wanted):  # link instances are not hashable
        operator_class = _OPERATOR_FOR_LINKS.get(frozenset(wanted))
    if operator_class is None:
        raise ValueError(
            "links must name one or both of the classes HITPreviewLink and MTurkReportLink, "
            f"got {wanted!r}"
        )
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=operator_class,
        **kwargs,
    )
