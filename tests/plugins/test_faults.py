"""A batch under MTurk faults: throttling, 5xx (half of them after the call has committed) and slow
answers at 10 % and 30 % of calls, during creation, waiting and review.

The product's own clients are used: ``MTurkHook`` (adaptive retries, 10 attempts) for every
call, ``read_batch_progress`` for the wait (what the sensor and its trigger run), and a failed
step is retried as Airflow retries a task (up to 2 retries). Afterwards the sandbox must hold
every HIT once, every assignment approved, one bonus per gold passer and none to anyone else,
at most one e-mail per failing worker (an e-mail whose call failed ambiguously is reported, not
repeated), and the ledger's money must equal what the sandbox charged. Adaptive overlap's calls
(``CreateAdditionalAssignmentsForHIT``, ``UpdateExpirationForHIT``) meet throttling, 5xx and
answers lost after the call took effect (also after MTurk forgot the request token): each HIT
is still extended exactly once. The counts are written to
``.artifacts/reliability/faults.json`` for RELIABILITY.md.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta

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
from testsupport.sandbox_process import account_cents

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

    before = account_cents(mturk)
    outcome = as_task(
        lambda: review_batch(mturk_platform(mturk), load_manifest(ledger), ledger, REVIEW),
        attempts["review"],
    )
    charged = before - account_cents(mturk)

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
    assert charged == spent(ledger, REVIEW, FEES)["total_cents"]
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


# --- adaptive overlap: CreateAdditionalAssignmentsForHIT and UpdateExpirationForHIT ---------

ROUND_QUERIES = 3
EXPIRED_HITS = (0, 2)  # their extension moves the expiry first (UpdateExpirationForHIT)
EXTENSION_CALLS = ("CreateAdditionalAssignmentsForHIT", "UpdateExpirationForHIT")
NO_FAULTS = {"throttle_rate": 0.0, "error_rate": 0.0, "slow_rate": 0.0}


def faults_only_on(crowd, client, operations: tuple[str, ...], **settings):
    """Have the sandbox inject ``settings``' faults into ``client``'s ``operations`` only: they
    are switched on when one of those calls starts and off when another starts
    (``before-call`` comes once per call, so botocore's retries of a call all meet them; each
    call starts the faults' seeded sequence again). Returns what switches them off for good."""
    state = {"on": None}

    def switch(model, **_kwargs) -> None:
        on = model.name in operations
        if on != state["on"]:
            crowd.admin("faults", settings if on else NO_FAULTS)
            state["on"] = on

    client.meta.events.register("before-call.mturk", switch)

    def off() -> None:
        client.meta.events.unregister("before-call.mturk", switch)
        crowd.admin("faults", NO_FAULTS)

    return off


def _unsure_round(crowd, s3, batch: str):
    """A batch of ``ROUND_QUERIES`` HITs, each answered three ways (every one unsure: one more
    assignment each), ``EXPIRED_HITS`` expired, reviewed once without faults."""
    from mturk_provider.hooks.mturk import MTurkHook

    mturk = MTurkHook().conn
    platform = mturk_platform(mturk)
    ledger = S3Ledger(s3, "faults", "image-similarity", batch)
    created = create_hits(platform, plans_for(batch, ROUND_QUERIES), ledger, SETTINGS, render)
    for plan in created:
        for worker, model in (("ASPLIT1", "1"), ("ASPLIT2", "2"), ("ASPLIT3", "3")):
            crowd.work(plan.hit_id, worker, {plan.gold.field: "2", plan.model.field: model})
    for n in EXPIRED_HITS:
        platform.expire(created[n].hit_id)
    before = account_cents(mturk)
    reviews = review_batch(platform, load_manifest(ledger), ledger, REVIEW).reviews
    return mturk, ledger, created, reviews, before


def _extend(s3, mturk, batch: str, reviews, open_until):
    """The extension part of a review round, as the DAG's ``_review_round`` runs it."""
    from include.crowd import stage
    from testsupport.crowd_plans import crowd_settings

    settings = crowd_settings(batch, s3_bucket="faults", max_assignments_per_hit=5)
    caps = stage.PaymentCaps(max_bonus="5.00", budget=settings.payment.budget)
    return stage.extend(
        s3, mturk_platform(mturk), settings, reviews, caps=caps, open_until=open_until
    )


def _extension_calls(crowd, hit_ids) -> Counter:
    """CreateAdditionalAssignmentsForHIT calls that took effect, per HIT (by their tokens)."""
    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT json_extract(doc, '$.HITId') FROM tokens "
            "WHERE operation = 'CreateAdditionalAssignmentsForHIT'"
        ).fetchall()
    return Counter(hit for (hit,) in rows if hit in hit_ids)


def _assert_extended_exactly_once(crowd, mturk, ledger, created, open_until=None) -> None:
    from include.crowd.extend import added_assignments

    hit_ids = [p.hit_id for p in created]
    added = added_assignments(ledger)
    assert added == {h: 1 for h in hit_ids}
    assert _extension_calls(crowd, hit_ids) == {h: 1 for h in hit_ids}
    assert {e["status"] for e in ledger.entries("extensions").values()} == {"done"}
    for hit_id in hit_ids:
        hit = mturk.get_hit(HITId=hit_id)["HIT"]
        assert hit["MaxAssignments"] == SETTINGS.assignments + added[hit_id]
        if open_until is not None:  # the expired HITs were kept open until the deadline
            assert hit["HITStatus"] == "Assignable", hit
            assert hit["Expiration"] >= open_until - timedelta(seconds=1), hit


def _assert_the_money_agrees(crowd, mturk, ledger, created, before: int) -> None:
    """One worker takes each new assignment (and nobody a second); the last review pays; the
    ledger's money is what the sandbox charged."""
    for plan in created:
        crowd.work(plan.hit_id, "ALATE1", {plan.gold.field: "2", plan.model.field: "1"})
        assert crowd.accept_status(plan.hit_id, "ALATE2") != 303
    review_batch(mturk_platform(mturk), load_manifest(ledger), ledger, REVIEW)
    charged = before - account_cents(mturk)
    assert len(ledger.entries("approvals")) == (SETTINGS.assignments + 1) * ROUND_QUERIES
    assert charged == spent(ledger, REVIEW, FEES)["total_cents"]


def _answers(crowd, operation: str, since: int = 0) -> Counter:
    """What the sandbox answered ``operation``: ``{"200 ok": n, "400 ThrottlingException": n,
    ...}`` from its request log (from its ``since``-th line)."""
    found = Counter()
    for line in crowd.log[since:]:
        _, _, rest = line.partition(f"server: {operation} ")
        if rest:
            found[" ".join(rest.split()[:2])] += 1
    return found


ADD, MOVE = EXTENSION_CALLS
REFUSED_AGAIN = "400 RequestError"  # a repeated token: MTurk adds nothing (DuplicateRequest)


@pytest.mark.parametrize(
    ("case", "operations", "faults", "expected"),
    [
        (
            "throttled",
            EXTENSION_CALLS,
            {"throttle_rate": 0.6, "seed": 3},
            {ADD: ["400 ThrottlingException"], MOVE: ["400 ThrottlingException"]},
        ),
        # Seed 14: 5xx before and after the change on both calls, and an addition retried
        # after it took effect.
        (
            "5xx",
            EXTENSION_CALLS,
            {"error_rate": 0.6, "seed": 14},
            {ADD: ["5", REFUSED_AGAIN], MOVE: ["5"]},
        ),
        # Each call's first attempt takes effect and its answer is lost (seed 7); botocore's
        # later attempts carry the same token, and MTurk refuses to add the assignments again.
        ("answer-lost", (ADD,), {"error_rate": 1.0, "seed": 7}, {ADD: ["5", REFUSED_AGAIN]}),
    ],
)
def test_extensions_under_faults_happen_exactly_once(
    crowd_factory, s3, record, case, operations, faults, expected
):
    crowd = crowd_factory()
    batch = f"extend-{case}"
    mturk, ledger, created, reviews, before = _unsure_round(crowd, s3, batch)
    open_until = (datetime.now(UTC) + timedelta(minutes=40)).replace(microsecond=0)
    off = faults_only_on(crowd, mturk, operations, **faults)
    since = len(crowd.log)
    attempts: list[int] = []
    outcome = as_task(lambda: _extend(s3, mturk, batch, reviews, open_until), attempts)
    injected = crowd.admin("faults")["injected"]
    off()
    assert sorted(outcome.extended) == sorted(p.hit_id for p in created)
    _assert_extended_exactly_once(crowd, mturk, ledger, created, open_until)
    for operation, answers in expected.items():  # the faults met the calls meant
        answered = _answers(crowd, operation, since)
        for answer in answers:
            assert any(a.startswith(answer) for a in answered), (operation, answer, answered)
    _assert_the_money_agrees(crowd, mturk, ledger, created, before)
    record[f"extensions: {case}"] = {
        "hits": ROUND_QUERIES,
        "faults_injected": injected,
        "answers": {op: dict(_answers(crowd, op, since)) for op in EXTENSION_CALLS},
        "task_attempts": sum(attempts),
        "duplicate_extensions": sum(
            c - 1 for c in _extension_calls(crowd, [p.hit_id for p in created]).values()
        ),
    }


def test_extensions_throttled_to_the_end_are_finished_once_by_the_retry(crowd_factory, s3):
    crowd = crowd_factory()
    batch = "extend-throttled-out"
    mturk, ledger, created, reviews, before = _unsure_round(crowd, s3, batch)
    open_until = (datetime.now(UTC) + timedelta(minutes=40)).replace(microsecond=0)
    from include.crowd.platform import Throttled

    off = faults_only_on(crowd, mturk, (ADD,), throttle_rate=1.0)

    with pytest.raises(Throttled, match="Throttling"):
        _extend(s3, mturk, batch, reviews, open_until)
    # The first HIT's entry stays claimed (its expiry was moved); nothing was added.
    first = created[0].hit_id
    assert ledger.get("extensions", f"{first}.1")["status"] == "requesting"
    assert _extension_calls(crowd, [p.hit_id for p in created]) == {}
    off()  # MTurk answers again: the task's retry
    outcome = _extend(s3, mturk, batch, reviews, open_until)
    assert sorted(outcome.extended) == sorted(p.hit_id for p in created)
    _assert_extended_exactly_once(crowd, mturk, ledger, created, open_until)
    _assert_the_money_agrees(crowd, mturk, ledger, created, before)


def test_an_answer_lost_after_mturk_forgot_the_token_adds_nothing_again(crowd_factory, s3):
    """The call took effect, its answer was lost and the client had no retry left; the round
    is retried after MTurk's 24 hours of token memory: the HIT's MaxAssignments says it is
    done."""
    crowd = crowd_factory()
    batch = "extend-token-forgotten"
    mturk, ledger, created, reviews, _ = _unsure_round(crowd, s3, batch)
    open_until = (datetime.now(UTC) + timedelta(minutes=40)).replace(microsecond=0)
    from include.crowd.platform import PlatformError

    once = crowd.client()  # one attempt per call: the lost answer fails the round
    off = faults_only_on(crowd, once, (ADD,), error_rate=1.0, seed=4)

    with pytest.raises(PlatformError):
        _extend(s3, once, batch, reviews, open_until)
    first = created[0].hit_id
    assert ledger.get("extensions", f"{first}.1")["status"] == "requesting"
    assert sum(_answers(crowd, ADD).values()) == 1  # seed 4: a 5xx after the change
    assert _extension_calls(crowd, [first]) == {first: 1}  # it took effect
    crowd.admin("clock", {"advance": 25 * 3600})  # the token is forgotten
    off()
    _extend(s3, mturk, batch, reviews, open_until)
    # One call per HIT took effect; the first HIT's was not repeated (the HIT's count said it
    # was done), though its token would have been accepted again.
    _assert_extended_exactly_once(crowd, mturk, ledger, created)
