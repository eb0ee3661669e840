"""MTurkHITsTrigger: serialisation, progress on real HIT states in the crowd sandbox, events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from airflow.triggers.base import TriggerEvent

from mturk_provider.triggers.mturk import MTurkHITsTrigger
from plugins.mturk_testing import WORKERS, create_hit

CLASSPATH = "mturk_provider.triggers.mturk.MTurkHITsTrigger"


def first_event(trigger: MTurkHITsTrigger, timeout: float = 30) -> TriggerEvent:
    async def collect() -> TriggerEvent:
        async for event in trigger.run():
            return event
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def test_serialize_round_trip():
    trigger = MTurkHITsTrigger(
        hit_ids=["H1", "H2"],
        deadline=1_900_000_000.5,
        aws_conn_id="crowd",
        environment="production",
        poll_interval=30,
        max_consecutive_errors=3,
        botocore_config={"connect_timeout": 5},
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs["hit_ids"] == ["H1", "H2"] and kwargs["deadline"] == 1_900_000_000.5
    rebuilt = MTurkHITsTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_the_classpath_imports_the_way_the_triggerer_imports_it(tmp_path):
    """Only Airflow's own sys.path set-up (the plugins folder) is there: no PYTHONPATH, no cwd."""
    from airflow import settings

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONSAFEPATH")
    }
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = settings.PLUGINS_FOLDER
    script = (
        "import airflow\n"
        "from airflow._shared.module_loading import import_string\n"
        f"print(import_string({CLASSPATH!r}).__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "mturk_provider.triggers.mturk"


def test_poke_reports_submitted_pending_and_expired_hits(hook, crowd):
    complete = create_hit(hook, assignments=2)
    in_progress = create_hit(hook, assignments=2)
    unanswered = create_hit(hook, assignments=1, lifetime=60)
    half_done = create_hit(hook, assignments=2, lifetime=60)
    for worker in WORKERS[:2]:
        crowd.work(complete, worker)
    crowd.work(in_progress, WORKERS[0])
    accepted = crowd.accept(in_progress, WORKERS[1])
    crowd.work(half_done, WORKERS[0])
    crowd.admin("clock", {"advance": 120})  # the two 60-second HITs expire

    trigger = MTurkHITsTrigger(
        hit_ids=[complete, in_progress, unanswered, half_done], deadline=time.time() + 60
    )
    progress = asyncio.run(trigger.poke())
    states = {hit["hit_id"]: (hit["state"], hit["submitted"]) for hit in progress["hits"]}
    assert states == {
        complete: ("complete", 2),
        in_progress: ("waiting", 1),
        unanswered: ("expired", 0),
        half_done: ("expired", 1),
    }
    assert progress["complete"] is False
    assert (progress["assignments_submitted"], progress["assignments_expected"]) == (4, 7)
    assert progress["assignments_pending"] == 1
    assert progress["summary"] == (
        "assignments submitted 4/7 across 4 HITs; 1 HITs complete, 2 expired, 1 waiting "
        "(1 assignments being worked on)"
    )

    assert crowd.submit(accepted, {"choice": "2"}) == 200
    progress = asyncio.run(trigger.poke())
    assert progress["complete"] is True
    assert (progress["hits_complete"], progress["hits_expired"]) == (2, 2)


def test_run_yields_success_when_every_hit_is_done(hook, crowd):
    hit_ids = [create_hit(hook), create_hit(hook)]
    for hit_id in hit_ids:
        crowd.work(hit_id, WORKERS[0])
    event = first_event(MTurkHITsTrigger(hit_ids=hit_ids, deadline=time.time() + 30))
    assert event.payload["status"] == "success"
    assert event.payload["progress"]["assignments_submitted"] == 2


def test_run_waits_for_work_that_arrives_while_it_polls(hook, crowd):
    hit_id = create_hit(hook)
    trigger = MTurkHITsTrigger(hit_ids=[hit_id], deadline=time.time() + 30, poll_interval=0.2)

    async def work_later_and_wait() -> TriggerEvent:
        events = trigger.run()
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.8)
        assert not waiting.done()
        await asyncio.to_thread(crowd.work, hit_id, WORKERS[0])
        return await asyncio.wait_for(waiting, 10)

    event = asyncio.run(work_later_and_wait())
    assert event.payload["status"] == "success"


def test_run_yields_timeout_with_the_progress_at_the_deadline(hook, crowd):
    hit_ids = [create_hit(hook, assignments=2), create_hit(hook)]
    crowd.work(hit_ids[0], WORKERS[0])
    started = time.monotonic()
    event = first_event(
        MTurkHITsTrigger(hit_ids=hit_ids, deadline=time.time() + 1, poll_interval=0.2)
    )
    assert 0.9 <= time.monotonic() - started < 10
    assert event.payload["status"] == "timeout"
    assert event.payload["progress"]["assignments_submitted"] == 1
    assert event.payload["progress"]["hits_waiting"] == 2


def test_run_fails_at_once_on_an_unknown_hit(hook):
    event = first_event(MTurkHITsTrigger(hit_ids=["NOSUCHHIT"], deadline=time.time() + 30))
    assert event.payload["status"] == "error"
    assert "1 time(s)" in event.payload["message"]
    assert "Hit NOSUCHHIT does not exist" in event.payload["message"]


def test_run_gives_up_after_repeated_connection_errors(crowd):
    crowd.stop()
    trigger = MTurkHITsTrigger(
        hit_ids=["H1"],
        deadline=time.time() + 30,
        poll_interval=0.1,
        max_consecutive_errors=3,
        botocore_config={"retries": {"total_max_attempts": 1}, "connect_timeout": 1},
    )
    event = first_event(trigger)
    assert event.payload["status"] == "error"
    assert "3 time(s) in a row" in event.payload["message"]


def test_a_restarted_trigger_keeps_the_original_deadline(hook, crowd):
    hit_id = create_hit(hook)
    deadline = time.time() + 1
    classpath, kwargs = MTurkHITsTrigger(
        hit_ids=[hit_id], deadline=deadline, poll_interval=0.2
    ).serialize()
    time.sleep(1.1)  # the triggerer restarts after the deadline
    event = first_event(MTurkHITsTrigger(**kwargs), timeout=5)
    assert event.payload["status"] == "timeout"
