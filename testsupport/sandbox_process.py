"""Run the crowd sandbox as users do (``python -m include.crowd_sandbox``) and talk to it.

Shared by every test that needs a crowd: ``from testsupport.sandbox_process import start_sandbox``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPRedirectHandler, Request, build_opener, urlopen

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningSandbox:
    url: str
    state: Path
    process: subprocess.Popen
    log: list[str]

    def client(self, **config):
        """A plain boto3 MTurk client pointed at the sandbox, with throw-away credentials."""
        return boto3.client(
            "mturk",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="sandbox-test",
            aws_secret_access_key="sandbox-test-secret",
            config=Config(**({"retries": {"total_max_attempts": 1, "mode": "standard"}} | config)),
        )

    def admin(self, path: str, payload: dict | None = None) -> dict:
        """GET (or POST JSON to) an admin endpoint, e.g. ``admin("clock", {"advance": 60})``."""
        data = None if payload is None else json.dumps(payload).encode()
        request = Request(f"{self.url}/admin/{path}", data=data, method="POST" if data else "GET")
        request.add_header("Content-Type", "application/json")
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())

    def accept(self, hit_id: str, worker_id: str) -> str:
        """Accept a HIT as a worker through the worker site; return the assignment id."""
        status, headers, body = http(f"{self.url}/hit/{hit_id}/accept", {"workerId": worker_id})
        if status != 303:
            raise AssertionError(f"accept answered {status}: {body[:500]}")
        found = re.search(r"assignmentId=([A-Z0-9]+)", headers.get("Location", ""))
        assert found, headers
        return found.group(1)

    def accept_status(self, hit_id: str, worker_id: str) -> int:
        """The HTTP status of an accept attempt (303 when accepted)."""
        return http(f"{self.url}/hit/{hit_id}/accept", {"workerId": worker_id})[0]

    def page(self, path: str) -> tuple[int, dict[str, str], str]:
        """GET a worker-site page."""
        return http(self.url + path)

    def submit(self, assignment_id: str, answers: dict[str, str]) -> int:
        """Post a form to the sandbox's externalSubmit, as a HIT page does."""
        status, _, _ = http(
            f"{self.url}/mturk/externalSubmit", {"assignmentId": assignment_id, **answers}
        )
        return status

    def work(self, hit_id: str, worker_id: str, answers: dict[str, str] | None = None) -> str:
        """Accept and submit a HIT as a worker; return the assignment id."""
        assignment_id = self.accept(hit_id, worker_id)
        status = self.submit(assignment_id, answers or {"choice": "1"})
        assert status == 200, status
        return assignment_id

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


class _NoRedirect(HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = build_opener(_NoRedirect)


def http(url: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET, or POST a form; redirects are not followed. Return status, headers and body."""
    data = urlencode(form).encode() if form is not None else None
    request = Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except HTTPError as error:
        return error.code, dict(error.headers), error.read().decode("utf-8", "replace")


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head><body>
<form name="mturk_form" method="post" id="mturk_form"
      action="https://www.mturk.com/mturk/externalSubmit">
<input type="hidden" name="assignmentId" id="assignmentId" value="">
<p>Which option matches?</p>
<label><input type="radio" name="choice" value="1" required> one</label>
<label><input type="radio" name="choice" value="2"> two</label>
<p><label>Comment <input type="text" name="comment"></label></p>
<input type="submit" id="submitButton" value="Submit">
</form>
<script>
document.getElementById("assignmentId").value =
  new URLSearchParams(location.search).get("assignmentId");
</script>
</body></html>"""
HTML_QUESTION = (
    '<HTMLQuestion xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/'
    '2011-11-11/HTMLQuestion.xsd">\n'
    f"<HTMLContent><![CDATA[{HTML_PAGE}]]></HTMLContent>\n"
    "<FrameHeight>600</FrameHeight>\n"
    "</HTMLQuestion>"
)


DAY = 24 * 3600


def create_hit(mturk, **overrides):
    """CreateHIT through ``mturk`` (boto3) with a small real HIT's parameters; return the HIT."""
    params = {
        "MaxAssignments": 2,
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "AutoApprovalDelayInSeconds": DAY,
        "Reward": "0.50",
        "Title": "Find the most similar image",
        "Description": "Pick the image that matches",
        "Keywords": "image, similarity",
        "Question": html_question(),
        "RequesterAnnotation": "batch-1",
    }
    params.update(overrides)
    return mturk.create_hit(**params)["HIT"]


def account_cents(mturk) -> int:
    """The account's balance in cents: GetAccountBalance's AvailableBalance plus OnHoldBalance.

    The crowd sandbox holds each HIT's cost from its creation, as MTurk holds funds for
    assignment liability, and pays approvals from the hold; what the account was charged is
    how far this figure fell (AvailableBalance alone falls when HITs are created)."""
    found = mturk.get_account_balance()
    return sum(round(Decimal(found[key]) * 100) for key in ("AvailableBalance", "OnHoldBalance"))


def error_of(call, *args, **kwargs) -> dict:
    """The ``Error`` of the ClientError that ``call(*args, **kwargs)`` must raise."""
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    return raised.value.response["Error"]


def raw(sandbox, operation: str, payload: dict) -> tuple[int, dict]:
    """Send ``sandbox`` (anything with the API's ``url``) a request body boto3 would refuse to
    send, to see the sandbox's own checks: the HTTP status and the JSON answer."""
    request = Request(
        sandbox.url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={
            "X-Amz-Target": f"MTurkRequesterServiceV20170117.{operation}",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    try:
        with urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:  # 4xx and 5xx
        return error.code, json.loads(error.read())


def html_page(title: str = "Pick one") -> str:
    """The page of ``html_question``: what the crowd logic renders (the platform wraps it)."""
    return HTML_PAGE.replace("{title}", title)


def html_question(title: str = "Pick one") -> str:
    """A small, real HTMLQuestion: two radio options and a comment field."""
    return HTML_QUESTION.replace("{title}", title)


def start_sandbox(state: Path, *args: str) -> RunningSandbox:
    """Start ``python -m include.crowd_sandbox --port 0`` and wait for its URL line."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "include.crowd_sandbox",
            "--port",
            "0",
            "--state",
            str(state),
            *args,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = process.stdout.readline().strip()
    log: list[str] = []
    if not url.startswith("http://127.0.0.1:"):
        process.kill()
        _, err = process.communicate(timeout=10)
        raise RuntimeError(f"crowd sandbox did not start: {url!r}\n{err}")

    def drain() -> None:
        for line in process.stderr:
            log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return RunningSandbox(url, state, process, log)
