"""Helpers shared by the MTurk adapter tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json

from testsupport.sandbox_process import html_question

WORKERS = [f"AWORKER{n:04d}" for n in range(200)]


def connection_json(endpoint_url: str | None = None, **extra) -> str:
    """``AIRFLOW_CONN_AWS_DEFAULT``: throw-away keys, a region MTurk is not in, an endpoint."""
    extra = {"region_name": "eu-west-1", **extra}
    if endpoint_url:
        extra["service_config"] = {"mturk": {"endpoint_url": endpoint_url}}
    return json.dumps({"conn_type": "aws", "login": "x", "password": "y", "extra": extra})


def create_hit(hook, *, assignments: int = 1, lifetime: int = 3600, title: str = "Pick") -> str:
    """Create a small real HTMLQuestion HIT; return its id."""
    response = hook.create_hit(
        Title=title,
        Description="Pick the matching image",
        Reward="0.05",
        MaxAssignments=assignments,
        LifetimeInSeconds=lifetime,
        AssignmentDurationInSeconds=600,
        Question=html_question(title),
    )
    return response["HIT"]["HITId"]


class FakeTaskInstance:
    """Records what a task pushes to XCom."""

    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value
