"""Stopping the sandbox: prompt, quiet, and with the state whole, busy crowd or idle."""

from __future__ import annotations

import http.client
import signal
import time

import pytest

from include.crowd_sandbox.server import CrowdSandbox
from testsupport.sandbox_process import html_question

CROWD = ("--workers", "diligent:6,careless:3,spammer:1", "--seconds-per-assignment", "0.3")


def _submitted(mturk, hit_ids: list[str]) -> int:
    return sum(
        len(mturk.list_assignments_for_hit(HITId=hit_id, MaxResults=100)["Assignments"])
        for hit_id in hit_ids
    )


def _settled_log(running, seconds: float = 5.0) -> str:
    """The sandbox's log once the process has exited and its stderr has been read to the end."""
    deadline = time.monotonic() + seconds
    seen = -1
    while time.monotonic() < deadline and seen != len(running.log):
        seen = len(running.log)
        time.sleep(0.2)
    return "".join(running.log)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("busy", [True, False], ids=["crowd-at-work", "crowd-idle"])
def test_the_sandbox_stops_within_2_s_and_its_workers_stop_without_a_traceback(
    sandbox_factory, sig, busy
):
    running = sandbox_factory(*CROWD, "--worker-seed", "7")
    mturk = running.client()
    hit_ids = []
    if busy:
        for n in range(10):
            hit_ids.append(
                mturk.create_hit(
                    Title=f"Pick {n}", Description="d", Reward="0.05", MaxAssignments=9,
                    LifetimeInSeconds=3600, AssignmentDurationInSeconds=600,
                    Question=html_question(),
                )["HIT"]["HITId"]
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while _submitted(mturk, hit_ids) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _submitted(mturk, hit_ids) >= 10, "".join(running.log)
    else:
        time.sleep(2.5)  # every worker has looked for work at least once, and waits
    mturk.close()

    started = time.monotonic()
    returncode = running.stop(sig)
    took = time.monotonic() - started
    log = _settled_log(running)
    assert returncode == 0, log
    assert took < 2.0, f"stopping took {took:.1f} s:\n{log[-3000:]}"
    assert "Traceback" not in log, log
    assert "WARNING" not in log and "ERROR" not in log, log  # no worker timed out or retried

    # The state is whole: every assignment a worker said it submitted is there after a restart.
    reported = log.count("submitted HIT")
    again = sandbox_factory(state=running.state)
    assert _submitted(again.client(), hit_ids) == reported
    assert reported >= 10 if busy else reported == 0


def test_a_request_after_the_stop_began_is_refused_not_failed(tmp_path, caplog):
    """A kept-alive connection that asks again while the state closes gets a 503, not a 500."""
    service = CrowdSandbox(tmp_path / "sandbox.sqlite", port=0).start()
    connection = http.client.HTTPConnection(*service.httpd.server_address[:2], timeout=5)
    try:
        connection.request("GET", "/admin/health")
        assert connection.getresponse().read() == b"ok"
        assert service.requests.close(timeout=1)  # what stop does before closing the state
        connection.request("GET", "/admin/health")
        refused = connection.getresponse()
        assert (refused.status, refused.read()) == (503, b"the crowd sandbox is stopping")
        assert refused.getheader("Connection") == "close"
    finally:
        connection.close()
        service.stop()
    assert not [r for r in caplog.records if r.exc_info], caplog.text
