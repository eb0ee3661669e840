"""Crashes mid-payment: the create and review steps are killed with SIGKILL at seeded random
points (every AWS call offers two: before its request leaves, after its answer arrives), then
retried in a fresh process, as Airflow retries a task whose worker died.

After each kill and retry the crowd sandbox (the service's own record) must show every HIT
once, every bonus to each gold passer once and to nobody else, every failing worker mailed at
most once, every assignment approved, and the S3 ledger must agree with it, down to the money.
An adaptive-overlap review round is killed at every event of its extensions (claims, expiry
moves, ``CreateAdditionalAssignmentsForHIT``, entries marked done, between HITs): after the rerun
each HIT has exactly the assignments the ledger added, kept open until the deadline.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.crowd.create import create_hits, load_manifest
from include.crowd.extend import added_assignments
from include.crowd.ledger import S3Ledger
from include.crowd.mturk import FEES
from include.crowd.mturk.question import TOKEN_MARK
from include.crowd.review import review_batch, spent
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


def _balance(services) -> int:
    return sandbox_fixtures.account_cents(services["crowd"].client())


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
        charged = before - _balance(services)
        assert charged == spent(ledger, REVIEW, FEES)["total_cents"], kill_at
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


# --- adaptive overlap: a review round killed anywhere in its extensions -------------------------

ROUND_QUERIES = 2  # one expired, one not; the second HIT puts kill points between HITs
ROUND_START = 3  # assignments a HIT starts with; the round may take each to 5
EXPIRED_HITS = (0,)  # expired before the round: their extension first moves the expiry
# Per HIT: every worker answers the gold question right and picks another match: unsure.
SPLIT_ANSWERS = {1: "1", 2: "2", 3: "3"}


def _unsure_batch(services, batch: str) -> list:
    """The batch's HITs, each answered three ways (so each gets one more assignment), the
    ``EXPIRED_HITS`` of them expired."""
    crowd = services["crowd"]
    platform = mturk_platform(crowd.client())
    created = create_hits(
        platform, plans_for(batch, ROUND_QUERIES), ledger_for(services, batch), SETTINGS, render
    )
    for plan in created:
        for worker, model in SPLIT_ANSWERS.items():
            answers = {plan.gold.field: GOLD_ANSWERS[1], plan.model.field: model}
            crowd.work(plan.hit_id, _worker(batch, worker), answers)
    for n in EXPIRED_HITS:
        platform.expire(created[n].hit_id)
    return created


def _worker(batch: str, n: int) -> str:
    return f"A{batch.upper().replace('-', '')}W{n}"


def run_round(services, batch: str, open_until: str, kill_at: int = 0):
    config = {
        "s3": services["s3_url"],
        "sandbox": services["crowd"].url,
        "bucket": BUCKET,
        "batch_id": batch,
        "queries": ROUND_QUERIES,
        "kill_at": kill_at,
        "open_until": open_until,
    }
    return subprocess.run(
        [sys.executable, str(CHILD), "round", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _extension_calls(services, hit_ids: list[str]) -> Counter:
    """CreateAdditionalAssignmentsForHIT calls that took effect, per HIT (the sandbox keeps
    each one's request token)."""
    rows = sandbox_rows(
        services,
        "SELECT json_extract(doc, '$.HITId') FROM tokens "
        "WHERE operation = 'CreateAdditionalAssignmentsForHIT'",
    )
    return Counter(hit for (hit,) in rows if hit in hit_ids)


def test_a_round_killed_anywhere_in_its_extensions_extends_each_hit_exactly_once(services, record):
    # The batch's deadline: before the unexpired HIT's own expiry (1 h), so only the
    # expired ones are moved.
    open_until = (datetime.now(UTC) + timedelta(minutes=40)).replace(microsecond=0)
    deadline = open_until.isoformat()
    clean_hits = [p.hit_id for p in _unsure_batch(services, "crash-round-clean")]
    clean = summary(run_round(services, "crash-round-clean", deadline))
    assert sorted(clean["extended"]) == sorted(clean_hits) and clean["added"] == ROUND_QUERIES
    events, first = clean["events"], clean["extension_from"]
    # Every event of the extension part: ledger reads, claims, GetHIT, the expiry moves,
    # CreateAdditionalAssignmentsForHIT, the entries marked done, and the gaps between HITs.
    points = list(range(first + 1, events + 1))
    assert len(points) >= ROUND_QUERIES * 8 + 2 * len(EXPIRED_HITS), (first, events)
    totals = Counter()
    for n, kill_at in enumerate(points):
        batch = f"crash-round-{n:02d}"
        created = _unsure_batch(services, batch)
        hit_ids = [p.hit_id for p in created]
        ledger = ledger_for(services, batch)
        before = _balance(services)
        killed = run_round(services, batch, deadline, kill_at)
        assert killed.returncode == -9, (kill_at, killed.stderr[-2000:])
        # Not claimed yet, or claimed and not marked done.
        unfinished = {
            hit
            for hit in hit_ids
            if (ledger.get("extensions", f"{hit}.1") or {}).get("status") != "done"
        }
        retried = summary(run_round(services, batch, deadline))
        # The rerun waits for every HIT whose extension the killed round did not finish, and
        # for those it finished whose new assignment nobody has submitted yet.
        assert unfinished <= set(retried["extended"]), (kill_at, unfinished, retried)
        assert sorted(retried["extended"] + retried["awaiting"]) == sorted(hit_ids), kill_at
        # Each HIT got exactly the intended assignments: one call took effect, MaxAssignments
        # is the start plus what the ledger added, and every entry is done.
        added = added_assignments(ledger)
        assert added == {hit: 1 for hit in hit_ids}, (kill_at, added)
        calls = _extension_calls(services, hit_ids)
        assert calls == {hit: 1 for hit in hit_ids}, (kill_at, calls)
        mturk = services["crowd"].client()
        got = {h: mturk.get_hit(HITId=h)["HIT"] for h in hit_ids}
        assert {h: hit["MaxAssignments"] for h, hit in got.items()} == {
            h: ROUND_START + added[h] for h in hit_ids
        }, kill_at
        assert {e["status"] for e in ledger.entries("extensions").values()} == {"done"}, kill_at
        # The expired HITs were kept open until the deadline: the new assignment can be taken.
        for hit in got.values():
            assert hit["HITStatus"] == "Assignable", (kill_at, hit["HITId"], hit["HITStatus"])
            assert hit["Expiration"] >= open_until - timedelta(seconds=1), (kill_at, hit)
        # Workers come for the new assignments: one more each, nobody beyond it.
        crowd = services["crowd"]
        for plan in created:
            answers = {plan.gold.field: GOLD_ANSWERS[1], plan.model.field: "1"}
            crowd.work(plan.hit_id, _worker(batch, 4), answers)
            assert crowd.accept_status(plan.hit_id, _worker(batch, 5)) != 303, kill_at
        # The last review (the deadline's): the ledger's money is what the sandbox charged.
        review_batch(mturk_platform(mturk), load_manifest(ledger), ledger, REVIEW)
        charged = before - _balance(services)
        assert charged == spent(ledger, REVIEW, FEES)["total_cents"], kill_at
        assert len(ledger.entries("approvals")) == (ROUND_START + 1) * ROUND_QUERIES, kill_at
        totals["duplicate_extensions"] += sum(c - 1 for c in calls.values())
        totals["unfinished_at_the_kill"] += len(unfinished)
        totals["money_mismatches"] += charged != spent(ledger, REVIEW, FEES)["total_cents"]
    record["round"] = {
        "kills": len(points),
        "events_per_run": events,
        "extension_events": events - first,
        "kill_points": points,
        "retries_completed": len(points),
        "duplicate_extensions": totals["duplicate_extensions"],
        "extensions_finished_by_the_rerun": totals["unfinished_at_the_kill"],
        "money_mismatches": totals["money_mismatches"],
    }
