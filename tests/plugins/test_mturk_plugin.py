"""The plugin loads, and the links reach the UI the way Airflow 3.3 resolves them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from airflow import plugins_manager, settings

from mturk_provider import links
from mturk_provider.links import HITPreviewLink, MTurkReportLink

# Airflow 3.3 reads .airflowignore glob patterns with a pathspec class pathspec deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
PLUGINS_FOLDER = Path(__file__).resolve().parents[2] / "plugins"


def test_airflow_puts_the_plugins_folder_on_sys_path():
    assert Path(settings.PLUGINS_FOLDER) == PLUGINS_FOLDER
    assert settings.PLUGINS_FOLDER in sys.path


def test_the_plugin_loads_without_import_errors():
    info = {plugin["name"]: plugin for plugin in plugins_manager.get_plugin_info()}
    assert "mturk_provider" in info
    assert info["mturk_provider"]["operator_extra_links"] == [
        "<mturk_provider.links.HITPreviewLink object>",
        "<mturk_provider.links.MTurkReportLink object>",
    ]
    assert str(info["mturk_provider"]["source"]).endswith("mturk_plugin.py")
    ours = [path for path in plugins_manager.get_import_errors() if str(PLUGINS_FOLDER) in path]
    assert ours == []


def test_the_loader_only_executes_the_registration_module():
    """Per .airflowignore: no second copy of the package's modules under bare file names."""
    plugins_manager.ensure_plugins_loaded()
    assert "mturk_plugin" in sys.modules
    for bare_name in ("mturk", "links", "progress", "__init__"):
        assert bare_name not in sys.modules


def test_plugin_links_are_bound_to_no_operator():
    """Bound links would be evaluated by the API server, which cannot read XCom as workers do."""
    assert all(not link.operators for link in plugins_manager.get_operator_extra_links()
               if isinstance(link, links.MTurkXComLink))  # fmt: skip


def _serialized_round_trip(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_mturk_tasks_carry_their_links_through_dag_serialisation():
    from airflow.sdk import DAG, task

    from mturk_provider.operators.mturk import MTurkPythonOperator, mturk_task
    from mturk_provider.sensors.mturk import MTurkHITsSensor

    with DAG("links_check", schedule=None) as dag:

        @mturk_task(links=[HITPreviewLink])
        def create_hits() -> list[str]:
            return []

        @mturk_task(links=[MTurkReportLink])
        def write_results() -> None:
            pass

        @mturk_task
        def both() -> None:
            pass

        @mturk_task(links=[HITPreviewLink])
        def per_shard(shard: int) -> None:
            pass

        @task
        def plain() -> None:
            pass

        hit_ids = create_hits()
        MTurkHITsSensor(task_id="wait", hit_ids=hit_ids)
        MTurkPythonOperator(task_id="report", python_callable=lambda: None)
        write_results()
        both()
        per_shard.expand(shard=[0, 1])
        plain()

    served = _serialized_round_trip(dag)  # what the API server works from
    assert served.get_task("create_hits").extra_links == ["HIT preview"]
    assert served.get_task("write_results").extra_links == ["Report"]
    assert served.get_task("both").extra_links == ["HIT preview", "Report"]
    assert served.get_task("per_shard").extra_links == ["HIT preview"]  # mapped: from the class
    assert served.get_task("report").extra_links == ["HIT preview", "Report"]
    assert served.get_task("wait").extra_links == ["HIT preview"]
    assert served.get_task("plain").extra_links == []
    keys = {
        name: link.xcom_key
        for name, link in served.get_task("both").operator_extra_link_dict.items()
    }
    assert keys == {"HIT preview": "hit_preview_url", "Report": "report_url"}
    assert {task.custom_operator_name for task in dag.tasks if task.task_id in (
        "create_hits", "write_results", "both")} == {"@mturk_task"}  # fmt: skip


@pytest.mark.parametrize("links", [[], [HITPreviewLink()], [links.MTurkXComLink], ["Report"]])
def test_mturk_task_refuses_links_it_cannot_show(links):
    from mturk_provider.operators.mturk import mturk_task

    with pytest.raises(ValueError, match="HITPreviewLink and MTurkReportLink"):
        mturk_task(links=links)


def test_each_task_of_the_dags_carries_only_the_links_it_publishes():
    """When a task ends, the worker reads each of its links back from XCom: a link the task never
    publishes is an "[error] XCom not found" line in a successful run's log."""
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(PLUGINS_FOLDER.parent / "dags"))
    assert dagbag.import_errors == {}
    found = {
        (dag_id, task.task_id): task.extra_links
        for dag_id, dag in dagbag.dags.items()
        for task in _serialized_round_trip(dag).tasks
        if task.extra_links
    }
    assert found == {
        ("image_similarity_mturk", "create_hits"): ["HIT preview"],
        ("image_similarity_mturk", "wait_for_assignments"): ["HIT preview"],
        ("image_similarity_mturk", "write_results"): ["Report"],
        ("image_similarity_mturk_collect", "write_results"): ["Report"],
    }


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("https://example.test/hit/H1", "https://example.test/hit/H1"), (None, "")],
)
def test_get_link_reads_back_what_the_task_published(monkeypatch, stored, expected):
    """The worker stores get_link's answer under the same key after the task: it must not change."""
    asked = []

    def get_value(*, ti_key, key):
        asked.append(key)
        return stored

    monkeypatch.setattr(links.XCom, "get_value", get_value)
    assert HITPreviewLink().get_link(None, ti_key=object()) == expected
    assert asked == ["hit_preview_url"]
    assert MTurkReportLink().xcom_key == "report_url"
