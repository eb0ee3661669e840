"""MTurkHITsSensor: poke once then defer, the timeout policies, and the non-deferrable loop."""

from __future__ import annotations

import time

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, TaskDeferred

from mturk_provider.sensors.mturk import MTurkHITsSensor
from mturk_provider.triggers.mturk import MTurkHITsTrigger
from plugins.mturk_testing import WORKERS, create_hit

PROGRESS = {
    "complete": False,
    "summary": "assignments submitted 14/30 across 10 HITs; 7 HITs complete, 1 expired, "
    "2 waiting (3 assignments being worked on)",
    "assignments_submitted": 14,
    "assignments_expected": 30,
}


def sensor(**kwargs) -> MTurkHITsSensor:
    return MTurkHITsSensor(task_id="wait_for_hits", **kwargs)


def test_execute_defers_to_the_trigger_when_work_is_missing(hook, crowd, context):
    hit_ids = [create_hit(hook), create_hit(hook, assignments=2)]
    crowd.work(hit_ids[0], WORKERS[0])
    task = sensor(hit_ids=hit_ids, poll_interval=5, timeout=3600, environment="production")

    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)

    trigger = deferred.value.trigger
    assert isinstance(trigger, MTurkHITsTrigger)
    assert trigger.hit_ids == hit_ids and trigger.poll_interval == 5
    assert trigger.environment == "production"
    assert trigger.deadline == pytest.approx(time.time() + 3600, abs=30)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout.total_seconds() > 3600  # a backstop behind the trigger's own
    # The first read published where workers see the first HIT.
    assert context["ti"].xcom["hit_preview_url"] == f"{crowd.url}/hit/{hit_ids[0]}"


def test_execute_returns_at_once_when_the_batch_is_already_complete(hook, crowd, context):
    hit_ids = [create_hit(hook), create_hit(hook)]
    for hit_id in hit_ids:
        crowd.work(hit_id, WORKERS[0])
    result = sensor(hit_ids=hit_ids).execute(context)
    assert result["complete"] is True and result["partial"] is False
    assert result["hits_complete"] == 2


def test_hit_ids_may_arrive_as_a_rendered_string(hook, crowd, context):
    hit_ids = [create_hit(hook), create_hit(hook)]
    for hit_id in hit_ids:
        crowd.work(hit_id, WORKERS[0])
    result = sensor(hit_ids=str(hit_ids)).execute(context)
    assert [hit["hit_id"] for hit in result["hits"]] == hit_ids


def test_execute_complete_returns_the_progress_on_success():
    event = {"status": "success", "progress": {**PROGRESS, "complete": True}}
    assert sensor(hit_ids=["H1"]).execute_complete({}, event)["partial"] is False


def test_timeout_fails_the_task_with_the_counts_under_policy_fail():
    task = sensor(hit_ids=["H1"], timeout=600, timeout_policy="fail")
    with pytest.raises(AirflowSensorTimeout, match=r"after 600 s .*submitted 14/30 across 10 HITs"):
        task.execute_complete({}, {"status": "timeout", "progress": PROGRESS})


def test_timeout_goes_on_with_partial_results_under_policy_partial(capsys):
    task = sensor(hit_ids=["H1"], timeout_policy="partial")
    result = task.execute_complete({}, {"status": "timeout", "progress": PROGRESS})
    assert result == {**PROGRESS, "partial": True}
    assert "going on with partial results" in capsys.readouterr().out  # Airflow logs to stdout


def test_a_timeout_without_any_progress_read_fails_whatever_the_policy():
    task = sensor(hit_ids=["H1"], timeout_policy="partial")
    with pytest.raises(AirflowException, match="no answer"):
        task.execute_complete({}, {"status": "timeout", "progress": None, "message": "no answer"})


def test_a_trigger_error_fails_the_task():
    with pytest.raises(AirflowException, match="Hit H1 does not exist"):
        sensor(hit_ids=["H1"]).execute_complete(
            {}, {"status": "error", "message": "Hit H1 does not exist", "progress": None}
        )


def test_the_timeout_and_its_policy_can_come_from_params():
    task = sensor(
        hit_ids=["H1"], batch_timeout="{{ params.wait }}", timeout_policy="{{ params.policy }}"
    )
    # What rendering leaves: strings.
    task.batch_timeout, task.timeout_policy = "1800", "partial"
    result = task.execute_complete({}, {"status": "timeout", "progress": PROGRESS})
    assert result["partial"] is True and task.timeout == 1800

    task.timeout_policy = "ignore"
    with pytest.raises(ValueError, match="timeout_policy"):
        task.execute_complete({}, {"status": "timeout", "progress": PROGRESS})


def test_a_literal_bad_policy_is_refused_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="timeout_policy must be one of"):
        sensor(hit_ids=["H1"], timeout_policy="continue")


@pytest.mark.parametrize("policy", ["fail", "partial"])
def test_the_non_deferrable_loop_applies_the_policy(hook, crowd, context, policy):
    hit_ids = [create_hit(hook, assignments=2)]
    crowd.work(hit_ids[0], WORKERS[0])
    task = sensor(
        hit_ids=hit_ids, deferrable=False, poll_interval=0.1, timeout=0.5, timeout_policy=policy
    )
    if policy == "fail":
        with pytest.raises(AirflowSensorTimeout):
            task.execute(context)
    else:
        result = task.execute(context)
        assert result["partial"] is True and result["assignments_submitted"] == 1


def test_the_non_deferrable_loop_returns_once_the_work_is_in(hook, crowd, context):
    hit_id = create_hit(hook)
    crowd.work(hit_id, WORKERS[0])
    task = sensor(hit_ids=[hit_id], deferrable=False, poll_interval=0.1, timeout=5)
    result = task.execute(context)
    assert result["complete"] is True and result["partial"] is False
