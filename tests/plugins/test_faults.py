"""A batch under MTurk faults: throttling, 5xx (half of them after the call has committed) and slow
answers at 10 % and 30 % of calls, during creation, waiting and review.

The product's own clients are used: ``MTurkHook`` (adaptive retries, 10 attempts) for every
call, ``read_batch_progress`` for the wait (what the sensor and its trigger run), and a failed
step is retried as Airflow retries a task (up to 2 retries). Afterwards the sandbox must hold
every HIT once, every assignment approved, one bonus per gold passer and none to anyone else,
at most one e-mail per failing worker (an e-mail whose call failed ambiguously is reported, not
repeated), and the ledger's money must equal what the sandbox charged. The counts are written
to ``.artifacts/reliability/faults.json`` for RELIABILITY.md.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest

from include.crowd.create import create_hits, load_manifest
from include.crowd.ledger import S3Ledger
from include.crowd.mturk import FEES
from include.crowd.mturk.question import TOKEN_MARK
from include.crowd.review import review_batch, spent
from testsupport.crowd_plans import (
    REVIEW,
    SETTINGS,
    answer_two_pass_one_fail,
    plans_for,
    reliability_record,
    render,
)
from testsupport.motokit import moto_s3, s3_client
from testsupport.platforms import mturk_platform

pytestmark = pytest.mark.slow

QUERIES = 12
TASK_ATTEMPTS = 3  # the DAG's retries=2


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as url:
        client = s3_client(url)
        client.create_bucket(Bucket="faults")
        yield client


@pytest.fixture(scope="module")
def record():
    with reliability_record("faults") as results:
        yield results


def as_task(step, attempts: list[int]):
    """Run ``step`` as an Airflow task with retries=2; note how many attempts it took."""
    for attempt in range(1, TASK_ATTEMPTS + 1):
        try:
            result = step()
        except Exception:
            if attempt == TASK_ATTEMPTS:
                raise
            continue
        attempts.append(attempt)
        return result
    raise AssertionError("unreachable")


@pytest.mark.parametrize("rate", [0.10, 0.30], ids=["10pct", "30pct"])
def test_a_batch_under_faults_creates_pays_and_mails_exactly_once(crowd_factory, s3, record, rate):
    from mturk_provider.hooks.mturk import MTurkHook
    from mturk_provider.progress import read_batch_progress

    share = f"{rate / 3:.4f}"
    crowd = crowd_factory(
        "--throttle-rate", share, "--error-rate", share, "--slow-rate", share,
        "--slow-seconds", "0.2", "--fault-seed", str(int(rate * 100)),
    )  # fmt: skip
    hook = MTurkHook()
    mturk = hook.conn
    batch = f"faults-{int(rate * 100)}"
    ledger = S3Ledger(s3, "faults", "image-similarity", batch)
    attempts: dict[str, list[int]] = {"create": [], "wait": [], "review": []}

    # Creation, four at a time as the DAG does.
    plans = plans_for(batch, QUERIES)
    created = as_task(
        lambda: create_hits(mturk_platform(mturk), plans, ledger, SETTINGS, render, concurrency=4),
        attempts["create"],
    )
    hit_ids = [p.hit_id for p in created]
    # Three workers per HIT: two pass the gold question, one (a different one per HIT) fails.
    answer_two_pass_one_fail(crowd, created)

    # The wait: what the sensor's trigger reads on each poll.
    progress = as_task(lambda: read_batch_progress(hook, hit_ids), attempts["wait"])
    assert progress.complete and progress.submitted == 3 * QUERIES

    before = float(mturk.get_account_balance()["AvailableBalance"])
    outcome = as_task(
        lambda: review_batch(mturk_platform(mturk), load_manifest(ledger), ledger, REVIEW),
        attempts["review"],
    )
    charged = round(before - float(mturk.get_account_balance()["AvailableBalance"]), 2)

    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        hits = db.execute("SELECT id, doc FROM hits").fetchall()
        statuses = db.execute(
            "SELECT json_extract(doc, '$.AssignmentStatus') FROM assignments"
        ).fetchall()
        bonuses = Counter(db.execute("SELECT hit_id, worker_id FROM bonuses").fetchall())
        mails = Counter(w for (w,) in db.execute("SELECT worker_id FROM messages").fetchall())
    tokens = Counter(
        json.loads(doc)["Question"].split(TOKEN_MARK, 1)[1].split(" ", 1)[0] for _, doc in hits
    )
    assert set(tokens) == {p.token for p in plans} and set(tokens.values()) == {1}
    assert sorted(hit_ids) == sorted(h for h, _ in hits)
    assert [s for (s,) in statuses] == ["Approved"] * 3 * QUERIES
    passers = {(h, w) for h in hit_ids for w in ("APASS1", "APASS2")}
    assert set(bonuses) == passers and set(bonuses.values()) == {1}
    failing = {f"AFAIL{n}" for n in range(QUERIES)}
    assert set(mails) <= failing and set(mails.values()) <= {1}
    unsent = failing - set(mails)
    emails = ledger.entries("emails")
    # A worker not mailed is one whose e-mail call failed ambiguously; the ledger says so.
    assert all(emails[w]["status"] == "sending" for w in unsent), {w: emails[w] for w in unsent}
    assert len(ledger.entries("reviews")) == 3 * QUERIES  # no answer lost
    assert charged == spent(ledger, REVIEW, FEES)["total_cents"] / 100
    assert outcome.spent == spent(ledger, REVIEW, FEES)

    injected = crowd.admin("faults")
    counts = injected["injected"]
    assert sum(counts.get(k, 0) for k in ("throttle", "error-before", "error-after")) > 0
    record[f"{int(rate * 100)}%"] = {
        "hits": QUERIES,
        "assignments": 3 * QUERIES,
        "faults_injected": counts,
        "task_attempts": {step: sum(a) for step, a in attempts.items()},
        "runs_completed": 1,
        "duplicate_hits": sum(c - 1 for c in tokens.values()),
        "duplicate_bonuses": sum(c - 1 for c in bonuses.values()),
        "duplicate_emails": sum(c - 1 for c in mails.values()),
        "emails_not_sent_after_an_ambiguous_failure": len(unsent),
        "answers_lost": 3 * QUERIES - len(ledger.entries("reviews")),
    }


# --- NotifyWorkers has no request token: never repeated after an ambiguous failure ----------


def _notify_setup(crowd_factory, s3, batch: str):
    from include.crowd.review import ReviewOutcome
    from mturk_provider.hooks.mturk import MTurkHook

    crowd = crowd_factory()
    hook = MTurkHook()
    ledger = S3Ledger(s3, "faults", "image-similarity", batch)
    (plan,) = create_hits(mturk_platform(hook.conn), plans_for(batch, 1), ledger, SETTINGS, render)
    crowd.work(plan.hit_id, "AFAILED", {plan.gold.field: "4", plan.model.field: "1"})
    assignment = hook.conn.list_assignments_for_hit(HITId=plan.hit_id)["Assignments"][0]
    hook.conn.approve_assignment(AssignmentId=assignment["AssignmentId"])
    return crowd, hook.conn, ledger, ReviewOutcome()


def _injected(crowd) -> int:
    counts = crowd.admin("faults")["injected"]
    return sum(counts.get(k, 0) for k in ("throttle", "error-before", "error-after"))


def _mails(crowd, worker: str) -> int:
    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT COUNT(*) FROM messages WHERE worker_id = ?", (worker,)
        ).fetchone()[0]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_5xx_on_notify_is_not_retried_and_never_mails_twice(crowd_factory, s3, caplog, seed):
    from include.crowd.review import _send_emails

    crowd, mturk, ledger, outcome = _notify_setup(crowd_factory, s3, f"notify-5xx-{seed}")
    crowd.admin("faults", {"error_rate": 1.0, "seed": seed})
    before = _injected(crowd)
    _send_emails(mturk_platform(mturk), ledger, {}, ["AFAILED"], REVIEW, outcome)
    assert _injected(crowd) - before == 1  # one request reached MTurk: no blind retry
    assert ledger.get("emails", "AFAILED") == {"status": "sending"}
    assert "not sent again" in caplog.text and "may not have been sent" in caplog.text
    sent_once = _mails(crowd, "AFAILED")
    assert sent_once <= 1
    # The task's retry, with MTurk healthy again, does not mail a second time.
    crowd.admin("faults", {"error_rate": 0.0})
    _send_emails(
        mturk_platform(mturk),
        ledger,
        {"AFAILED": {"status": "sending"}},
        ["AFAILED"],
        REVIEW,
        outcome,
    )
    assert _mails(crowd, "AFAILED") == sent_once


def test_notify_throttled_to_the_end_is_sent_by_the_retry(crowd_factory, s3):
    from include.crowd.platform import Throttled
    from include.crowd.review import _send_emails

    crowd, mturk, ledger, outcome = _notify_setup(crowd_factory, s3, "notify-throttled")
    crowd.admin("faults", {"throttle_rate": 1.0})
    with pytest.raises(Throttled, match="Throttling"):
        _send_emails(mturk_platform(mturk), ledger, {}, ["AFAILED"], REVIEW, outcome)
    assert ledger.get("emails", "AFAILED") is None  # the claim was released
    assert _mails(crowd, "AFAILED") == 0
    crowd.admin("faults", {"throttle_rate": 0.0})
    _send_emails(mturk_platform(mturk), ledger, {}, ["AFAILED"], REVIEW, outcome)
    assert _mails(crowd, "AFAILED") == 1
    assert ledger.get("emails", "AFAILED") == {"status": "sent"}
