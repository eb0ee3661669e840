"""End to end: `airflow dags test` creates HITs, defers on them, and the links reach the API side.

Simulated workers of the crowd sandbox do the HITs while the sensor is deferred. Afterwards the
extra links are resolved the way the API server resolves them: from the serialized DAG in the
database and the task instance's XCom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plugins.mturk_testing import connection_json
from testsupport.sandbox_process import html_question, start_sandbox

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]

DAG_FILE = """
from __future__ import annotations

from airflow.sdk import dag, get_current_context

from mturk_provider.links import HITPreviewLink, MTurkReportLink
from mturk_provider.operators.mturk import mturk_task
from mturk_provider.sensors.mturk import MTurkHITsSensor


@dag(schedule=None, catchup=False, tags=["test"])
def mturk_links():
    @mturk_task
    def create_hits() -> list[str]:
        from mturk_provider.hooks.mturk import MTurkHook

        hook = MTurkHook()
        hits = [
            hook.create_hit(
                Title=f"Pick {n}", Description="d", Reward="0.05", MaxAssignments=1,
                LifetimeInSeconds=3600, AssignmentDurationInSeconds=600, Question=QUESTION,
            )["HIT"]
            for n in range(2)
        ]
        ti = get_current_context()["ti"]
        HITPreviewLink.persist(ti, hook.preview_url(hits[0]["HITId"], hits[0]["HITTypeId"]))
        MTurkReportLink.persist(ti, "https://reports.example/batch.html")
        return [hit["HITId"] for hit in hits]

    MTurkHITsSensor(task_id="wait_for_hits", hit_ids=create_hits(), poll_interval=1, timeout=120)


mturk_links()
"""

RESOLVE_LINKS = """
import json
from airflow.models import DagRun, TaskInstance
from airflow.models.serialized_dag import SerializedDagModel
from airflow.utils.session import create_session

with create_session() as session:
    dag = SerializedDagModel.get_dag("mturk_links", session=session)
    run = session.query(DagRun).filter(DagRun.dag_id == "mturk_links").one()
    found = {}
    for task_id in ("create_hits", "wait_for_hits"):
        ti = session.query(TaskInstance).filter_by(
            dag_id="mturk_links", run_id=run.run_id, task_id=task_id
        ).one()
        task = dag.get_task(task_id)
        found[task_id] = {
            "state": str(ti.state),
            "links": {name: task.get_extra_links(ti, name) for name in task.extra_links},
        }
    print("RESULT " + json.dumps(found))
"""


def test_a_dag_run_defers_on_the_hits_and_serves_the_links(tmp_path):
    # Workers slower than create_hits -> first poke, even on a loaded machine: the first read
    # must see work still to come (at 0.2 s both HITs were sometimes done already).
    crowd = start_sandbox(
        tmp_path / "sandbox.sqlite", "--workers", "diligent:2", "--seconds-per-assignment", "4"
    )
    try:
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "mturk_links.py").write_text(DAG_FILE + f"\nQUESTION = {html_question()!r}\n")
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(tmp_path / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_AWS_DEFAULT": connection_json(crowd.url),
        }
        env.pop("PYTHONPATH", None)  # only Airflow's own sys.path set-up finds mturk_provider

        def airflow(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "airflow", *args],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
            )  # fmt: skip

        migrate = airflow("db", "migrate")
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        run = airflow("dags", "test", "mturk_links")
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-5000:]
        assert "Pausing task as DEFERRED" in log  # nobody had worked yet at the first read
        assert "assignments submitted 2/2 across 2 HITs" in log

        resolved = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(RESOLVE_LINKS)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert resolved.returncode == 0, resolved.stderr[-3000:]
        line = next(x for x in resolved.stdout.splitlines() if x.startswith("RESULT "))
        found = json.loads(line.removeprefix("RESULT "))
    finally:
        crowd.stop()

    assert found["create_hits"]["state"] == "success"
    assert found["wait_for_hits"]["state"] == "success"
    create_links = found["create_hits"]["links"]
    assert create_links["Report"] == "https://reports.example/batch.html"
    assert create_links["HIT preview"].startswith(f"{crowd.url}/hit/")
    assert found["wait_for_hits"]["links"]["HIT preview"] == create_links["HIT preview"]
