"""Fixtures of the full-stack tests: Postgres, Redis, moto S3, the crowd sandbox and Airflow's
services as real processes, started once per session and stopped at its end (also on failure).

Run them with ``make test-stack`` (they carry the ``stack`` marker, which ``make test`` leaves
out). Each service's log is kept in ``.artifacts/stack/logs/`` after the session; a failing
test's report ends with their tails.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from include.crowd_sandbox.stack import LocalStack
from include.demo.data import generate_demo_data
from testsupport.stackkit import (
    PROJECT_ROOT,
    AirflowStack,
    ServiceUnavailable,
    claim_redis_db,
    create_database,
    drop_database,
    ensure_postgres,
    ensure_redis,
    release_redis_db,
)

DAG_ID = "image_similarity_mturk"
ARTIFACTS = PROJECT_ROOT / ".artifacts" / "stack"
# Few, fast simulated workers: a batch completes in about ten seconds, long enough to watch the
# sensor wait in the triggerer.
WORKERS = "diligent:3,careless:1"
SECONDS_PER_ASSIGNMENT = 3.0


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots and service logs are kept (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def machine_services() -> None:
    """Postgres and Redis on 127.0.0.1, started (or installed) when they are not running."""
    try:
        ensure_postgres()
        ensure_redis()
    except ServiceUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """A small generated dataset: 4 queries (so 4 HITs) and 2 known-answer sets."""
    root = tmp_path_factory.mktemp("stack-sample")
    return generate_demo_data(root / "data", frames_per_scene=4, n_queries=4, n_known_sets=2)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """moto's S3 server and the crowd sandbox with simulated workers, on 127.0.0.1."""
    with LocalStack(
        tmp_path_factory.mktemp("stack-local"),
        workers=WORKERS,
        seconds_per_assignment=SECONDS_PER_ASSIGNMENT,
        worker_seed=3,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def airflow_stack(machine_services, local_stack, model_dir, tmp_path_factory, artifacts):
    """api-server, scheduler, dag-processor, triggerer and a Celery worker on a fresh database."""
    database = f"airflow_stack_{os.getpid()}"
    create_database(database)
    redis_db = claim_redis_db()
    stack = AirflowStack(
        tmp_path_factory.mktemp("stack-airflow-home"),
        database=database,
        redis_db=redis_db,
        worker_concurrency=2,
        extra_env={
            **local_stack.airflow_env(),  # aws_default: S3 at moto, MTurk at the sandbox
            "IMAGE_SIMILARITY_MODEL_DIR": str(model_dir),
            "IMAGE_SIMILARITY_POLL_SECONDS": "3",
            # The deployment's bucket: the trigger form's default for s3_bucket.
            "IMAGE_SIMILARITY_S3_BUCKET": local_stack.bucket,
        },
    )
    # A SIGTERM (a timeout, a cancelled CI job) ends the session like Ctrl-C, so that the
    # finalizer below still stops every service.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        yield stack
    finally:
        forced = stack.stop()
        signal.signal(signal.SIGTERM, previous)
        logs = artifacts / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        for service in stack.processes:
            if stack.log_path(service).exists():
                shutil.copy(stack.log_path(service), logs / f"{service}.log")
        if (stack.home / "logs").exists():
            shutil.copytree(stack.home / "logs", logs / "tasks", dirs_exist_ok=True)
        drop_database(database)
        release_redis_db(redis_db)
        assert stack.all_stopped(), "an Airflow service outlived the session"
        if forced:
            print(f"needed SIGKILL to stop: {', '.join(forced)}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def dag_ready(airflow_stack) -> dict:
    """The DAG as the API serves it once the dag-processor has parsed it, unpaused."""
    dag = airflow_stack.wait_for_dag(DAG_ID)
    errors = airflow_stack.api("GET", "/importErrors")["import_errors"]
    assert errors == [], errors
    airflow_stack.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    return dag


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing full-stack test's report ends with the tails of the services' logs."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stack_call_report = report  # for fixtures that keep evidence of a failure
    stack = item.funcargs.get("airflow_stack") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(stack, AirflowStack):
        report.sections.append(("Airflow services (log tails)", stack.log_tails()))
