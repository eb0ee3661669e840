"""End to end: adaptive overlap under `airflow dags test`: HITs start at 3 assignments, unsure
ones get more (CreateAdditionalAssignmentsForHIT) up to 5, the review task defers between rounds,
and everything is paid exactly once; against moto's S3 and the crowd sandbox on 127.0.0.1."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from test_dags_test import airflow_env, assert_no_error_logged, conf_for, dags_test  # noqa: F401

from include.crowd.create import load_manifest
from include.crowd.extend import added_assignments
from include.crowd.ledger import S3Ledger
from include.crowd_sandbox.stack import LocalStack
from include.demo.audit import audit_batch
from include.demo.data import generate_demo_data
from testsupport.sandbox_process import account_cents

pytestmark = pytest.mark.slow
NO_BONUS = "The check question was answered wrongly, so no bonus this time."


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Enough workers for 5 assignments per HIT, some careless or spamming (so some HITs are
    unsure after 3)."""
    with LocalStack(
        tmp_path_factory.mktemp("stack"),
        workers="diligent:3,careless:2,spammer:2",
        seconds_per_assignment=0.2,
        worker_seed=5,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    return generate_demo_data(root / "data", frames_per_scene=4, n_queries=6, n_known_sets=2)


def test_unsure_hits_get_more_assignments_exactly_once_and_the_money_adds_up(
    airflow_env,  # noqa: F811
    stack,
    sample,
    tmp_path,
):
    mturk = stack.mturk_client()
    before = account_cents(mturk)
    conf = {
        **conf_for(sample, tmp_path),
        "batch_id": "adaptive",
        "max_assignments_per_hit": 5,
        "confidence_target": 0.99,
        "exclude_failed_workers": False,
        "wait_timeout_hours": 0.1,
        "budget_usd": "20.00",
    }
    run = dags_test(airflow_env, conf)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert_no_error_logged(run)
    assert "adaptive overlap:" in log and "review round 1 extended" in log

    hits = [h for h in mturk.list_hits(MaxResults=100)["HITs"]
            if h["RequesterAnnotation"] == "adaptive"]  # fmt: skip
    assert len(hits) == 6
    counts = {h["HITId"]: h["MaxAssignments"] for h in hits}
    assert all(3 <= n <= 5 for n in counts.values()), counts
    assert sum(counts.values()) > 3 * len(hits), "no HIT was extended"

    ledger = S3Ledger(stack.s3_client(), stack.bucket, "image-similarity", "adaptive")
    added = added_assignments(ledger)
    assert {hit: 3 + added.get(hit, 0) for hit in counts} == counts  # one ledger entry per call
    assert {e["status"] for e in ledger.entries("extensions").values()} == {"done"}

    batch = tmp_path / "output" / "adaptive"
    results = json.loads((batch / "results" / "results.json").read_text())
    submitted = sum(len(mturk.list_assignments_for_hit(HITId=hit)["Assignments"]) for hit in counts)
    assert results["summary"]["assignments"] == submitted
    plans = load_manifest(ledger)
    audit = audit_batch(mturk, stack.sandbox_state, plans, results, no_bonus_message=NO_BONUS)
    assert audit.ok, audit.problems
    # What the ledger says was spent is what the sandbox charged, to the cent.
    spent = Decimal(results["summary"]["spent"]["total"].lstrip("$")) * 100
    assert spent == before - account_cents(mturk)
