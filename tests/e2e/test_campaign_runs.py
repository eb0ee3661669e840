"""End to end: two runs of one campaign under `airflow dags test` (no batch id given, as a
scheduled rerun has none), with a query added to the folder between them: the second run
creates exactly one new HIT, reviews the whole campaign and pays nobody twice."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from test_dags_test import NO_BONUS, airflow_env, conf_for, dags_test, stack  # noqa: F401

from include.crowd.create import load_manifest
from include.crowd.ledger import S3Ledger
from include.demo.audit import audit_batch
from include.demo.data import generate_demo_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def growing(tmp_path_factory):
    """The demo's data with its queries split: three now, the fourth added later."""
    root = tmp_path_factory.mktemp("campaign")
    data = generate_demo_data(root / "data", frames_per_scene=4, n_queries=4, n_known_sets=2)
    queries = root / "queries"
    queries.mkdir()
    names = sorted(p.name for p in data.queries_dir.iterdir())
    for name in names[:3]:
        shutil.copy2(data.queries_dir / name, queries / name)
    return data, queries, data.queries_dir / names[3]


def campaign_hits(mturk, batch: str) -> list[dict]:
    hits = mturk.list_hits(MaxResults=100)["HITs"]
    return [h for h in hits if h["RequesterAnnotation"] == batch]


def bonuses(mturk, hits) -> Counter:
    paid = Counter()
    for hit in hits:
        for bonus in mturk.list_bonus_payments(HITId=hit["HITId"])["BonusPayments"]:
            paid[bonus["AssignmentId"]] += 1
    return paid


def test_a_rerun_with_a_new_query_creates_one_hit_and_pays_nobody_twice(
    airflow_env,  # noqa: F811
    stack,  # noqa: F811
    growing,
    tmp_path,
):
    data, queries, added = growing
    conf = {**conf_for(data, tmp_path), "queries_source": str(queries)}
    del conf["batch_id"]  # the campaign's: the DAG's, its sources' and its environment's
    first = dags_test(airflow_env, conf)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    [batch_dir] = [p for p in (tmp_path / "output").iterdir() if p.is_dir()]
    batch = batch_dir.name
    assert batch.startswith("campaign-queries-")
    mturk = stack.mturk_client()
    assert len(campaign_hits(mturk, batch)) == 3
    paid_first = bonuses(mturk, campaign_hits(mturk, batch))
    assert paid_first and set(paid_first.values()) == {1}
    spent_first = json.loads((batch_dir / "results" / "results.json").read_text())["summary"][
        "spent"
    ]["total_cents"]

    shutil.copy2(added, queries / added.name)  # the folder grew
    second = dags_test(airflow_env, conf)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-4000:]
    assert [p.name for p in (tmp_path / "output").iterdir() if p.is_dir()] == [batch]
    hits = campaign_hits(mturk, batch)
    assert len(hits) == 4, "exactly one new HIT"
    assert "3/4 HITs already exist (ledger); creating 1" in log
    paid = bonuses(mturk, hits)
    assert set(paid.values()) == {1}, "nobody paid twice"
    assert {a: paid[a] for a in paid_first} == paid_first

    results = json.loads((batch_dir / "results" / "results.json").read_text())
    assert len(results["queries"]) == 4 and results["summary"]["assignments"] == 12
    assert results["summary"]["spent"]["total_cents"] > spent_first
    assert results["history"]["snapshots"] == 2
    assert results["history"]["since_previous"]["new"] == [added.name]
    plans = load_manifest(S3Ledger(stack.s3_client(), stack.bucket, "image-similarity", batch))
    audit = audit_batch(mturk, stack.sandbox_state, plans, results, no_bonus_message=NO_BONUS)
    assert audit.ok, audit.problems
    assert audit.approved == 12
