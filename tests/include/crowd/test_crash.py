"""Crashes mid-payment: the create and review steps are killed with SIGKILL at seeded random
points (every AWS call offers two: before its request leaves, after its answer arrives), then
retried in a fresh process, as Airflow retries a task whose worker died.

After each kill and retry the crowd sandbox (the service's own record) must show every HIT
once, every bonus to each gold passer once and to nobody else, every failing worker mailed at
most once, every assignment approved, and the S3 ledger must agree with it, down to the money.
The counts are written to ``.artifacts/reliability/crash.json`` for RELIABILITY.md.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from include.crowd.create import create_hits, load_manifest
from include.crowd.ledger import S3Ledger
from include.crowd.mturk import FEES
from include.crowd.mturk.question import TOKEN_MARK
from include.crowd.review import spent
from testsupport import sandbox_process as sandbox_fixtures
from testsupport.crowd_plans import REVIEW, SETTINGS, plans_for, reliability_record, render
from testsupport.motokit import moto_s3, s3_client
from testsupport.platforms import mturk_platform

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("crash_child.py")
KILLS_PER_STEP = 25
QUERIES = 3
CREATE_QUERIES = 6  # 6 HITs: 28 kill points in a creation run
BUCKET = "crash-tests"
# Per HIT: worker 1 and 3 answer the gold question right (bonus), worker 2 wrongly (e-mail).
GOLD_ANSWERS = {1: "2", 2: "3", 3: "2"}
TOKEN = re.compile(re.escape(TOKEN_MARK) + r"(\S+) ")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    with moto_s3() as url:
        crowd = sandbox_fixtures.start_sandbox(tmp_path_factory.mktemp("crash") / "sandbox.sqlite")
        s3 = s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        yield {"s3_url": url, "s3": s3, "crowd": crowd}
        crowd.stop()


@pytest.fixture(scope="module")
def record():
    with reliability_record("crash") as results:
        yield results


def run_step(
    services, step: str, batch_id: str, kill_at: int = 0, queries: int = QUERIES
) -> subprocess.CompletedProcess:
    config = {
        "s3": services["s3_url"],
        "sandbox": services["crowd"].url,
        "bucket": BUCKET,
        "batch_id": batch_id,
        "queries": queries,
        "kill_at": kill_at,
    }
    return subprocess.run(
        [sys.executable, str(CHILD), step, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ledger_for(services, batch_id: str) -> S3Ledger:
    return S3Ledger(services["s3"], BUCKET, "image-similarity", batch_id)


def sandbox_rows(services, query: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{services['crowd'].state}?mode=ro", uri=True) as db:
        return db.execute(query, args).fetchall()


def hits_of(services, batch_id: str) -> list[dict]:
    mturk = services["crowd"].client()
    hits, token = [], None
    while True:
        page = mturk.list_hits(MaxResults=100, **({"NextToken": token} if token else {}))
        hits += [h for h in page["HITs"] if h["RequesterAnnotation"] == batch_id]
        token = page.get("NextToken")
        if not token:
            return hits


def kill_points(seed_base: int, events: int) -> list[int]:
    """``KILLS_PER_STEP`` distinct seeded points in 1..events (all of them if fewer)."""
    rng = random.Random(seed_base)
    points = list(range(1, events + 1))
    return sorted(rng.sample(points, min(KILLS_PER_STEP, len(points))))


def test_create_killed_anywhere_then_retried_makes_each_hit_exactly_once(services, record):
    clean = summary(run_step(services, "create", "crash-create-clean", queries=CREATE_QUERIES))
    events = clean["events"]
    assert events >= 2 * (2 * CREATE_QUERIES + 1)  # per HIT CreateHIT + a ledger write; manifest
    points = kill_points(1, events)
    assert len(points) == KILLS_PER_STEP
    duplicates = missing = 0
    for n, kill_at in enumerate(points):
        batch = f"crash-create-{n:02d}"
        killed = run_step(services, "create", batch, kill_at, CREATE_QUERIES)
        assert killed.returncode == -9, (kill_at, killed.stderr[-2000:])
        retried = summary(run_step(services, "create", batch, queries=CREATE_QUERIES))
        hits = hits_of(services, batch)
        tokens = Counter(
            TOKEN.search(services["crowd"].client().get_hit(HITId=h["HITId"])["HIT"]["Question"])
            .group(1)
            for h in hits
        )  # fmt: skip
        expected = {p.token for p in plans_for(batch, CREATE_QUERIES)}
        duplicates += sum(c - 1 for c in tokens.values())
        missing += len(expected - set(tokens))
        assert set(tokens) == expected and set(tokens.values()) == {1}, (kill_at, tokens)
        # The ledger and the manifest name exactly the sandbox's HITs.
        ledger = ledger_for(services, batch)
        in_ledger = {doc["token"]: doc["hit_id"] for doc in ledger.entries("hits").values()}
        assert in_ledger == {
            TOKEN.search(
                services["crowd"].client().get_hit(HITId=h["HITId"])["HIT"]["Question"]
            ).group(1): h["HITId"]
            for h in hits
        }
        assert sorted(p.hit_id for p in load_manifest(ledger)) == sorted(h["HITId"] for h in hits)
        assert sorted(retried["hits"]) == sorted(h["HITId"] for h in hits)
    record["create"] = {
        "kills": len(points),
        "events_per_run": events,
        "kill_points": points,
        "retries_completed": len(points),
        "duplicate_hits": duplicates,
        "missing_hits": missing,
    }


def _answered_batch(services, batch: str) -> list:
    """Create the batch's HITs in this process and have three workers answer each."""
    ledger = ledger_for(services, batch)
    crowd = services["crowd"]
    created = create_hits(
        mturk_platform(crowd.client()),
        plans_for(batch, QUERIES),
        ledger,
        SETTINGS,
        render,
        concurrency=1,
    )
    for plan in created:
        for worker, gold in GOLD_ANSWERS.items():
            answers = {plan.gold.field: gold, plan.model.field: "1"}
            crowd.work(plan.hit_id, f"A{batch.upper().replace('-', '')}W{worker}", answers)
    return created


def _balance(services) -> float:
    return float(services["crowd"].client().get_account_balance()["AvailableBalance"])


def test_review_killed_anywhere_then_retried_pays_and_mails_at_most_once(services, record):
    _answered_batch(services, "crash-review-clean")
    clean = summary(run_step(services, "review", "crash-review-clean"))
    assert (clean["approved"], clean["bonuses"], clean["emails"]) == (3 * QUERIES, 2 * QUERIES, 1)
    events = clean["events"]
    points = kill_points(2, events)
    assert len(points) == KILLS_PER_STEP
    totals = Counter()
    for n, kill_at in enumerate(points):
        batch = f"crash-review-{n:02d}"
        created = _answered_batch(services, batch)
        before = _balance(services)
        killed = run_step(services, "review", batch, kill_at)
        assert killed.returncode == -9, (kill_at, killed.stderr[-2000:])
        retried = run_step(services, "review", batch)
        summary(retried)
        hit_ids = [p.hit_id for p in created]
        marks = ",".join("?" * len(hit_ids))
        # Every assignment approved, once.
        statuses = sandbox_rows(
            services, f"SELECT json_extract(doc, '$.AssignmentStatus') FROM assignments "
            f"WHERE hit_id IN ({marks})", *hit_ids,
        )  # fmt: skip
        assert [s for (s,) in statuses] == ["Approved"] * 3 * QUERIES, (kill_at, statuses)
        # Bonuses: exactly one per gold passer per HIT, none to anyone else.
        paid = Counter(
            sandbox_rows(
                services, f"SELECT hit_id, worker_id FROM bonuses WHERE hit_id IN ({marks})",
                *hit_ids,
            )
        )  # fmt: skip
        passers = {
            (p.hit_id, f"A{batch.upper().replace('-', '')}W{w}")
            for p in created
            for w, gold in GOLD_ANSWERS.items()
            if gold == "2"
        }
        assert set(paid) == passers and set(paid.values()) == {1}, (kill_at, paid)
        # E-mails: the failing worker at most once; a crash between marking the e-mail as
        # being sent and the call can lose it, and the retry says so in its log.
        failing = f"A{batch.upper().replace('-', '')}W2"
        mailed = sandbox_rows(
            services, "SELECT COUNT(*) FROM messages WHERE worker_id = ?", failing
        )
        mails = mailed[0][0]
        assert mails <= 1, (kill_at, mails)
        if mails == 0:
            # The retry's log (Airflow's logging, once imported, writes it to stdout).
            output = retried.stdout + retried.stderr
            assert "may not have been sent" in output, (kill_at, output[-2000:])
            totals["emails_unsure"] += 1
        # The ledger agrees with the sandbox, down to the money.
        ledger = ledger_for(services, batch)
        assert {k.split(".")[0] for k in ledger.entries("bonuses")} <= set(hit_ids)
        assert len(ledger.entries("bonuses")) == len(passers)
        assert len(ledger.entries("approvals")) == 3 * QUERIES
        totals["answers_lost"] += 3 * QUERIES - len(ledger.entries("reviews"))
        assert len(ledger.entries("reviews")) == 3 * QUERIES, kill_at
        charged = round(before - _balance(services), 2)
        assert charged == spent(ledger, REVIEW, FEES)["total_cents"] / 100, kill_at
        totals["duplicate_bonuses"] += sum(c - 1 for c in paid.values())
        totals["duplicate_emails"] += max(0, mails - 1)
    record["review"] = {
        "kills": len(points),
        "events_per_run": events,
        "kill_points": points,
        "retries_completed": len(points),
        "duplicate_bonuses": totals["duplicate_bonuses"],
        "duplicate_emails": totals["duplicate_emails"],
        "emails_lost_to_a_crash_and_reported": totals["emails_unsure"],
        "answers_lost": totals["answers_lost"],
    }
