"""The DAG on the real stack: triggered through the REST API with a conf, as the UI's trigger form
does, it runs on the Celery worker against moto's S3 and the crowd sandbox, and its sensor waits
in the triggerer while no Celery slot is used."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from conftest import DAG_ID

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SENSOR = "wait_for_assignments"
TRIGGER_CLASS = "mturk_provider.triggers.mturk.MTurkHITsTrigger"
BATCH = "stack-rest"


@dataclass
class Sample:
    """One look at the stack while the sensor is deferred."""

    at: float
    celery_active: int  # tasks the Celery worker is executing
    running_slots: int  # default_pool slots held by running tasks
    deferred_slots: int
    busy_tasks: list[str]  # other task instances queued or running
    holder: dict | None  # the job running the sensor's trigger

    @property
    def idle(self) -> bool:
        return self.celery_active == 0 and self.running_slots == 0 and not self.busy_tasks

    @property
    def held_by_triggerer(self) -> bool:
        return bool(self.holder) and self.holder["job_type"] == "TriggererJob"


def look_while_deferred(stack, base: str, states: dict[str, str | None]) -> Sample | None:
    """Look at the trigger, the Celery worker and the pool; None unless still deferred after."""
    sensor = stack.api("GET", f"{base}/taskInstances/{SENSOR}")
    trigger = sensor.get("trigger")
    if sensor["state"] != "deferred" or not trigger:
        return None  # just fired: the next look decides
    assert trigger["classpath"] == TRIGGER_CLASS, sensor
    active = stack.celery_active()[stack.worker_name]
    pool = stack.api("GET", "/pools/default_pool")
    holder = stack.trigger_holder(trigger["id"])
    if stack.api("GET", f"{base}/taskInstances/{SENSOR}")["state"] != "deferred":
        return None  # the wait ended while looking: the resumed task may be on Celery already
    busy = [t for t, s in states.items() if s in ("queued", "running") and t != SENSOR]
    return Sample(
        at=0.0,
        celery_active=len(active),
        running_slots=pool["running_slots"],
        deferred_slots=pool["deferred_slots"],
        busy_tasks=busy,
        holder=holder,
    )


def watch_the_wait(stack, run_id: str, timeout: float = 600) -> list[Sample]:
    """Sample the stack while the sensor is deferred, until the run moves past it."""
    samples: list[Sample] = []
    base = f"/dags/{DAG_ID}/dagRuns/{quote(run_id)}"
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        stack.check_alive()
        states = stack.task_states(DAG_ID, run_id)
        state = states.get(SENSOR)
        if state == "deferred":
            sample = look_while_deferred(stack, base, states)
            if sample is not None:
                sample.at = time.monotonic() - started
                samples.append(sample)
        elif samples or state in ("success", "failed", "upstream_failed", "skipped"):
            return samples
        run = stack.api("GET", base)
        if run["state"] in ("success", "failed"):
            return samples
        time.sleep(0.5)
    raise TimeoutError(f"the sensor of {run_id} did not get past its wait in {timeout:.0f} s")


def test_a_run_triggered_through_the_rest_api_waits_in_the_triggerer_and_succeeds(
    airflow_stack, dag_ready, local_stack, sample, tmp_path
):
    stack = airflow_stack
    assert dag_ready["dag_id"] == DAG_ID
    conf = {
        "dataset_source": str(sample.dataset_dir),
        "queries_source": str(sample.queries_dir),
        "known_answers_source": str(sample.known_answers_dir),
        "output_dir": str(tmp_path / "output"),
        # Fan out: 36 images in shards of at most 8, embedded by mapped tasks on Celery,
        # sharing an embedding cache in S3 (moto).
        "fan_out_above_images": 10,
        "shard_size": 8,
        # and the top-k search over dataset shards of at most 10, merged.
        "match_fan_out_above_images": 10,
        "match_shard_size": 10,
        # and the re-ranking over query shards of 2.
        "rerank_fan_out_above_queries": 1,
        "rerank_shard_size": 2,
        "embedding_cache": f"s3://{local_stack.bucket}/embedding-cache",
        "batch_id": BATCH,
        "s3_bucket": local_stack.bucket,
        "assignments_per_hit": 3,
        "hit_lifetime_hours": 1,
        "wait_timeout_hours": 0.25,
        "worker_locales": None,  # what the trigger form sends for an emptied field
    }
    started = time.monotonic()
    run = stack.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": conf},
    )
    run_id = run["dag_run_id"]
    assert run["conf"] == conf

    # The wait: the triggerer holds the sensor's trigger and the Celery worker runs nothing.
    samples = watch_the_wait(stack, run_id)
    report = json.dumps([s.__dict__ for s in samples], indent=1, default=str)
    assert samples, "the sensor was never seen deferred"
    # Right after deferring, the task's process may still be exiting and the triggerer may not
    # have picked the trigger up yet; from the first look where both are done, every look until
    # the batch completes shows the trigger held by the triggerer and no Celery slot in use.
    settled = [i for i, s in enumerate(samples) if s.idle and s.held_by_triggerer]
    assert len(settled) >= 2, f"never seen held by the triggerer with Celery idle: {report}"
    assert all(s.idle and s.held_by_triggerer for s in samples[settled[0] :]), report
    assert all(s.deferred_slots == 1 for s in samples), report
    waited = samples[-1].at - samples[settled[0]].at

    finished = stack.wait_for_run(DAG_ID, run_id, timeout=600)
    states = stack.task_states(DAG_ID, run_id)
    assert finished["state"] == "success", states
    assert set(states.values()) == {"success"}, states
    elapsed = time.monotonic() - started
    print(
        f"\nrun {run_id}: {elapsed:.0f} s; sensor seen deferred {len(samples)} times, "
        f"{len(settled)} held by the triggerer with no Celery task and no running pool slot, "
        f"over {waited:.1f} s; before that {settled[0]} looks in "
        f"{samples[settled[0]].at - samples[0].at:.1f} s (Celery busy in "
        f"{sum(not s.idle for s in samples[: settled[0]])}, trigger not yet picked up in "
        f"{sum(not s.held_by_triggerer for s in samples[: settled[0]])}); "
        f"trigger held by {samples[-1].holder}"
    )

    # Every task ran on the Celery worker (its queue), params came from the REST conf.
    base = f"/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances"
    tis = stack.api("GET", base)["task_instances"]
    assert {ti["queue"] for ti in tis} == {"default"}
    worker_log = stack.log_path("celery-worker").read_text(errors="replace")
    assert worker_log.count("execute_workload") >= len(tis), "tasks did not go through Celery"

    # The embedding fanned out over mapped shards, each named in the UI, and their vectors
    # went to the shared S3 cache.
    shards = [ti for ti in tis if ti["task_id"] == "embed_images"]
    assert len(shards) == 5, [ti["map_index"] for ti in shards]
    assert sorted(ti["map_index"] for ti in shards) == list(range(5))
    assert {ti["rendered_map_index"] for ti in shards} == {f"shard {i} of 5" for i in range(1, 6)}
    s3 = local_stack.s3_client()
    cached = s3.list_objects_v2(Bucket=local_stack.bucket, Prefix="embedding-cache/")
    assert cached.get("KeyCount", 0) >= 1, cached

    # XCom went through Postgres: the HIT ids and the sensor's final progress.
    def xcom(task_id: str):
        return stack.api("GET", f"{base}/{task_id}/xcomEntries/return_value")["value"]

    hit_ids = xcom("create_hits")
    progress = xcom(SENSOR)
    assert len(hit_ids) == len(sample.ground_truth) == 4
    assert progress["complete"] is True and progress["partial"] is False

    # The trigger's own log lines reached the task's log.
    log = stack.api("GET", f"{base}/{SENSOR}/logs/1", params={"full_content": "true"})
    text = json.dumps(log)
    assert "Waiting for 4 HITs" in text and "assignments submitted 12/12" in text

    # Results on disk and in the sandbox.
    results = json.loads((tmp_path / "output" / BATCH / "results" / "results.json").read_text())
    assert results["batch_id"] == BATCH
    assert results["summary"]["hits"] == 4 and results["summary"]["assignments"] == 12
    mturk = local_stack.mturk_client()
    hits = [h for h in mturk.list_hits(MaxResults=100)["HITs"] if h["RequesterAnnotation"] == BATCH]
    assert sorted(h["HITId"] for h in hits) == sorted(hit_ids)
    assert all(h["NumberOfAssignmentsCompleted"] == 3 for h in hits), hits

    # The extra links, as the API server answers them for the UI.
    preview = stack.api("GET", f"{base}/create_hits/links")["extra_links"]["HIT preview"]
    assert preview.startswith(f"{local_stack.sandbox_url}/hit/")
    assert preview.rsplit("/", 1)[1] in hit_ids
    report_url = stack.api("GET", f"{base}/write_results/links")["extra_links"]["Report"]
    assert report_url.startswith(f"{local_stack.s3_url}/{local_stack.bucket}/")
    assert f"/batches/{BATCH}/results/report.html" in report_url
