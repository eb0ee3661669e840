"""Register the MTurk adapters with Airflow's plugin manager.

Airflow loads this file (and, per ``.airflowignore``, only this file of the package) from the
plugins folder. The links are listed so that ``airflow plugins`` and the API's plugin listing show
them. They are deliberately not bound to operators here (``BaseOperatorLink.operators`` stays
empty): the operators that show them declare them in ``operator_extra_links``, which is what
Airflow 3 serialises and the UI reads. A link bound through a plugin would instead be evaluated
by the API server, where a task's XCom cannot be read the way a worker reads it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mturk_provider.links import HITPreviewLink, MTurkReportLink


class MTurkProviderPlugin(AirflowPlugin):
    """MTurk hook, sensor, trigger, operators and their "HIT preview" / "Report" links."""

    name = "mturk_provider"
    operator_extra_links = [HITPreviewLink(), MTurkReportLink()]
