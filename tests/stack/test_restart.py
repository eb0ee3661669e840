"""The triggerer dies (SIGKILL) while the sensor is deferred: a new triggerer picks the trigger
up and the run finishes, without the sensor task being retried or any HIT created twice."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from conftest import DAG_ID

from testsupport.stackkit import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SENSOR = "wait_for_assignments"
BATCH = "stack-restart"


def test_a_run_survives_the_triggerer_killed_while_its_sensor_waits(
    airflow_stack, dag_ready, local_stack, sample, tmp_path
):
    stack = airflow_stack
    conf = {
        "dataset_source": str(sample.dataset_dir),
        "queries_source": str(sample.queries_dir),
        "known_answers_source": str(sample.known_answers_dir),
        "output_dir": str(tmp_path / "output"),
        "embedding_cache": str(tmp_path / "cache"),
        "batch_id": BATCH,
        "s3_bucket": local_stack.bucket,
        "assignments_per_hit": 3,
        "hit_lifetime_hours": 1,
        "wait_timeout_hours": 0.25,
        "worker_locales": None,
    }
    run = stack.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]
    sensor_path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances/{SENSOR}"

    def held() -> dict | None:
        sensor = stack.api("GET", sensor_path)
        trigger = sensor.get("trigger")
        if sensor["state"] != "deferred" or not trigger:
            return None
        holder = stack.trigger_holder(trigger["id"])
        return holder if holder and holder["job_type"] == "TriggererJob" else None

    def submitted() -> int:
        hits = local_stack.mturk_client().list_hits(MaxResults=100)["HITs"]
        return sum(
            h["NumberOfAssignmentsCompleted"] for h in hits if h["RequesterAnnotation"] == BATCH
        )

    before = wait_for(held, 600, "the sensor deferred in the triggerer", 0.5, stack.check_alive)
    done_at_kill = submitted()
    killed_at = time.monotonic()
    stack.restart("triggerer")
    # The batch was not complete when its triggerer died, so the trigger could not have fired
    # there: whatever completes the sensor below ran in the new triggerer.
    assert done_at_kill < 12, done_at_kill

    finished = stack.wait_for_run(DAG_ID, run_id, timeout=600)
    states = stack.task_states(DAG_ID, run_id)
    assert finished["state"] == "success", states
    assert set(states.values()) == {"success"}, states
    sensor = stack.api("GET", sensor_path)
    assert sensor["try_number"] == 1, sensor  # resumed from its trigger, not retried
    log = json.dumps(stack.api("GET", f"{sensor_path}/logs/1", params={"full_content": "true"}))
    assert "Batch complete: assignments submitted 12/12" in log, log[-3000:]
    hits = [
        h
        for h in local_stack.mturk_client().list_hits(MaxResults=100)["HITs"]
        if h["RequesterAnnotation"] == BATCH
    ]
    assert len(hits) == 4 and all(h["NumberOfAssignmentsCompleted"] == 3 for h in hits)
    print(
        f"\ntriggerer job {before['id']} killed with {done_at_kill}/12 assignments submitted; "
        f"run {run_id} finished {time.monotonic() - killed_at:.0f} s later"
    )
