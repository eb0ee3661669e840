"""Creating HITs exactly once and reviewing them exactly once, against moto's S3 server and the
crowd sandbox, both on 127.0.0.1."""

from __future__ import annotations

import sqlite3
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from include.crowd import costs
from include.crowd.create import create_hits, created_plans, load_manifest
from include.crowd.ledger import S3Ledger
from include.crowd.mturk import FEES
from include.crowd.mturk.answers import parse_answers, submission
from include.crowd.platform import PlatformError, TaskSpec
from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef, Option, Question
from include.crowd.review import ReviewSettings, decide, review_batch
from testsupport import sandbox_process as sandbox_fixtures
from testsupport.crowd_plans import REVIEW, SETTINGS, render
from testsupport.platforms import mturk_platform
from testsupport.sandbox_process import create_hit


def image(name: str) -> ImageRef:
    return ImageRef(name, name.encode().hex().ljust(64, "0")[:64], f"images/{name}")


def plan(query: str, *, gold_correct: int = 2) -> HitPlan:
    matches = [image(f"{query}-match{i}.jpg") for i in (1, 2, 3)]
    model = Question(
        field=f"f{abs(hash(query)) % 10_000}a",
        kind="model",
        target=image(query),
        options=(
            *(Option(i + 1, m, rank=i + 1, score=0.9 - i / 10) for i, m in enumerate(matches)),
            Option(4, None),
        ),
    )
    gold = Question(
        field=f"f{abs(hash(query)) % 10_000}b",
        kind="gold",
        target=image("known1.jpg"),
        options=tuple(Option(i, image(f"known1_{i}.jpg")) for i in (1, 2, 3)) + (Option(4, None),),
        gold_set="known1",
        correct_position=gold_correct,
    )
    return HitPlan("batch-1", image(query), f"tok-{query}", (gold, model))


class CountingClient:
    """Wraps a boto3 client: counts calls per operation, can fail after some calls."""

    def __init__(self, client, fail_after: dict[str, int] | None = None) -> None:
        self._client = client
        self.calls: dict[str, int] = {}
        self.fail_after = fail_after or {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("get_paginator"):
            return attribute

        def call(*args, **kwargs):
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
                if name in self.fail_after and self.calls[name] > self.fail_after[name]:
                    raise ConnectionError(f"simulated crash before {name} #{self.calls[name]}")
            return attribute(*args, **kwargs)

        return call


# --- creation -------------------------------------------------------------------------------


def test_each_hit_is_created_once_and_a_rerun_creates_nothing(crowd, ledger):
    mturk = CountingClient(crowd.client())
    plans = [plan(f"q{i}.jpg") for i in range(5)]
    created = create_hits(mturk_platform(mturk), plans, ledger, SETTINGS, render, concurrency=3)
    assert all(p.hit_id for p in created)
    assert mturk.calls["create_hit"] == 5
    hit = crowd.client().get_hit(HITId=created[0].hit_id)["HIT"]
    assert hit["RequesterAnnotation"] == "batch-1"
    assert [p.query.name for p in load_manifest(ledger)] == [f"q{i}.jpg" for i in range(5)]

    again = create_hits(mturk_platform(mturk), plans, ledger, SETTINGS, render)
    assert [p.hit_id for p in again] == [p.hit_id for p in created]
    assert mturk.calls["create_hit"] == 5  # the ledger answered
    more = create_hits(mturk_platform(mturk), [*plans, plan("new.jpg")], ledger, SETTINGS, render)
    assert mturk.calls["create_hit"] == 6 and len({p.hit_id for p in more}) == 6


def test_a_create_retried_after_half_the_hits_ends_with_each_hit_once(crowd, ledger):
    plans = [plan(f"q{i}.jpg") for i in range(6)]
    crashing = CountingClient(crowd.client(), fail_after={"create_hit": 3})
    with pytest.raises(ConnectionError):
        create_hits(mturk_platform(crashing), plans, ledger, SETTINGS, render, concurrency=1)
    assert len(created_plans(ledger)) == 3
    create_hits(mturk_platform(crowd.client()), plans, ledger, SETTINGS, render)
    hits = crowd.client().list_hits(MaxResults=100)["HITs"]
    assert len(hits) == 6
    assert {p.hit_id for p in load_manifest(ledger)} == {h["HITId"] for h in hits}


def test_a_batch_that_runs_out_of_funds_halfway_is_finished_by_a_rerun(tmp_path, ledger):
    """MTurk holds each HIT's cost from its creation, so funds can run out in the middle of a
    batch (another batch's HITs took them after the budget check): the HITs made so far are
    kept, the error says which query failed and why, and once funds are free again a rerun
    makes the rest, none twice."""
    crowd = sandbox_fixtures.start_sandbox(tmp_path / "state.sqlite", "--balance", "1.00")
    try:
        mturk = crowd.client()
        other = create_hit(
            mturk, Reward="0.50", MaxAssignments=1, LifetimeInSeconds=60, RequesterAnnotation="b2"
        )
        plans = [plan(f"q{i}.jpg") for i in range(4)]  # 3 x (0.05 + 0.01) each: 0.18
        with pytest.raises(PlatformError, match="insufficient funds") as refused:
            create_hits(mturk_platform(mturk), plans, ledger, SETTINGS, render, concurrency=1)
        note = " ".join(getattr(refused.value, "__notes__", []))
        assert "'q2.jpg' was not created" in note and "a rerun creates the rest" in note
        assert len(created_plans(ledger)) == 2  # 0.40 available after the other HIT's 0.60

        crowd.admin("clock", {"advance": 61})  # the other HIT expires untaken: its hold is free
        created = create_hits(mturk_platform(mturk), plans, ledger, SETTINGS, render)
        hits = [h for h in mturk.list_hits(MaxResults=100)["HITs"] if h["HITId"] != other["HITId"]]
        assert sorted(p.hit_id for p in created) == sorted(h["HITId"] for h in hits)
        assert len(hits) == 4
        funds = mturk.get_account_balance()
        assert (funds["AvailableBalance"], funds["OnHoldBalance"]) == ("0.28", "0.72")
    finally:
        crowd.stop()


def test_a_lost_ledger_write_is_recovered_through_the_request_token(crowd, ledger, monkeypatch):
    plans = [plan(f"q{i}.jpg") for i in range(3)]
    real_put = ledger.put
    state = {"n": 0}

    def flaky_put(kind, key, doc):
        if kind == "hits":
            state["n"] += 1
            if state["n"] == 2:  # the HIT exists at MTurk, the ledger never hears of it
                raise ConnectionError("simulated crash after CreateHIT")
        real_put(kind, key, doc)

    monkeypatch.setattr(ledger, "put", flaky_put)
    with pytest.raises(ConnectionError):
        create_hits(mturk_platform(crowd.client()), plans, ledger, SETTINGS, render, concurrency=1)
    monkeypatch.setattr(ledger, "put", real_put)
    created = create_hits(mturk_platform(crowd.client()), plans, ledger, SETTINGS, render)
    hits = crowd.client().list_hits(MaxResults=100)["HITs"]
    assert len(hits) == 3
    assert sorted(p.hit_id for p in created) == sorted(h["HITId"] for h in hits)


def test_the_budget_guard_stops_before_any_money_is_committed():
    cost = costs.estimate(100, 3, reward_cents=5, bonus_cents=10, fees=FEES)
    assert cost.rewards == 1500 and cost.max_bonuses == 3000
    assert cost.fees == 300 * (1 + 2)  # 20 % of 5 c rounds to 1 c; 20 % of 10 c = 2 c
    costs.check_budget(cost, balance_cents=10_000, budget_cents=6_000)
    with pytest.raises(costs.BudgetError, match="over the budget cap of \\$50.00"):
        costs.check_budget(cost, balance_cents=10_000, budget_cents=5_000)
    with pytest.raises(costs.BudgetError, match="account balance is \\$10.00"):
        costs.check_budget(cost, balance_cents=1_000, budget_cents=None)
    assert costs.estimate(1, 10, 100, 0, fees=FEES).fees == 10 * 40  # 40 % tier


# --- review ---------------------------------------------------------------------------------


def answers_for(p: HitPlan, *, gold: int, model: int) -> dict[str, str]:
    return {p.gold.field: str(gold), p.model.field: str(model)}


def test_review_pays_gold_passers_mails_the_others_and_counts_only_valid_votes(crowd, ledger):
    mturk = crowd.client()
    p = plan("q.jpg", gold_correct=2)
    settings = TaskSpec(**{**SETTINGS.__dict__, "assignments": 4})
    (p,) = create_hits(mturk_platform(mturk), [p], ledger, settings, render)
    crowd.work(p.hit_id, "AGOOD", answers_for(p, gold=2, model=1))
    crowd.work(p.hit_id, "AWRONG", answers_for(p, gold=3, model=2))
    crowd.work(p.hit_id, "ATAMPER", {p.gold.field: "2", p.model.field: "<script>"})
    crowd.work(p.hit_id, "AMISSING", {p.gold.field: "2"})

    outcome = review_batch(mturk_platform(mturk), [p], ledger, REVIEW)
    by_worker = {r.worker_id: r for r in outcome.reviews}
    assert by_worker["AGOOD"].counted and by_worker["AGOOD"].vote == "q.jpg-match1.jpg"
    assert by_worker["AWRONG"].valid and not by_worker["AWRONG"].counted
    assert not by_worker["ATAMPER"].valid and "unknown value" in by_worker["ATAMPER"].problems[0]
    assert not by_worker["AMISSING"].valid
    assert (outcome.approved, outcome.bonuses_paid, outcome.emails_sent) == (4, 1, 1)
    statuses = {
        a["WorkerId"]: a["AssignmentStatus"]
        for a in mturk.list_assignments_for_hit(HITId=p.hit_id)["Assignments"]
    }
    assert set(statuses.values()) == {"Approved"}
    (bonus,) = mturk.list_bonus_payments(HITId=p.hit_id)["BonusPayments"]
    assert (bonus["WorkerId"], bonus["Reason"]) == ("AGOOD", REVIEW.bonus_message)
    assert outcome.spent == {
        "rewards_cents": 20,
        "bonuses_cents": 10,
        "fees_cents": 4 + 2,
        "total_cents": 36,
        "approved": 4,
        "bonuses_paid": 1,
    }
    balance = mturk.get_account_balance()["AvailableBalance"]
    assert balance == "9999.64"  # the sandbox charged exactly what the ledger says

    again = review_batch(mturk_platform(mturk), [p], ledger, REVIEW)
    assert (again.approved, again.bonuses_paid, again.emails_sent) == (0, 0, 0)
    assert mturk.get_account_balance()["AvailableBalance"] == balance
    assert len(mturk.list_bonus_payments(HITId=p.hit_id)["BonusPayments"]) == 1
    _, _, outbox = crowd.page("/outbox")
    assert outbox.count(REVIEW.no_bonus_message) == 1
    assert ledger.get_bytes("reviews.jsonl").count(b"\n") == 4


def test_a_bonus_paid_before_a_crash_is_not_paid_again(crowd, ledger, monkeypatch):
    mturk = crowd.client()
    (p,) = create_hits(mturk_platform(mturk), [plan("q.jpg")], ledger, SETTINGS, render)
    crowd.work(p.hit_id, "AGOOD", answers_for(p, gold=2, model=1))
    real_put = ledger.put

    def crash_on_bonus_record(kind, key, doc):
        if kind == "bonuses":
            raise ConnectionError("simulated crash after SendBonus")
        real_put(kind, key, doc)

    monkeypatch.setattr(ledger, "put", crash_on_bonus_record)
    with pytest.raises(ConnectionError):
        review_batch(mturk_platform(mturk), [p], ledger, REVIEW)
    monkeypatch.setattr(ledger, "put", real_put)
    outcome = review_batch(mturk_platform(mturk), [p], ledger, REVIEW)
    assert outcome.bonuses_paid == 0
    assert len(mturk.list_bonus_payments(HITId=p.hit_id)["BonusPayments"]) == 1


def test_a_bonus_above_the_per_bonus_cap_is_never_paid(crowd, ledger):
    mturk = crowd.client()
    (p,) = create_hits(mturk_platform(mturk), [plan("q.jpg")], ledger, SETTINGS, render)
    crowd.work(p.hit_id, "AGOOD", answers_for(p, gold=2, model=1))
    too_much = ReviewSettings(**{**REVIEW.__dict__, "bonus": "6.00", "max_bonus": "5.00"})
    with pytest.raises(costs.BudgetError, match=r"\$6.00 is above the per-bonus cap of \$5.00"):
        review_batch(mturk_platform(mturk), [p], ledger, too_much)
    assert mturk.list_bonus_payments(HITId=p.hit_id)["BonusPayments"] == []
    costs.check_bonus(500, 500)  # the cap itself is allowed


def test_of_concurrent_claims_of_an_entry_exactly_one_wins(ledger):
    barrier = threading.Barrier(8)

    def claim(n: int) -> bool:
        barrier.wait()
        return ledger.claim("emails", "AWORKER", {"status": "sending", "by": n})

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(claim, range(8)))
    assert won.count(True) == 1
    assert ledger.get("emails", "AWORKER")["by"] == won.index(True)
    ledger.delete("emails", "AWORKER")
    assert ledger.claim("emails", "AWORKER", {"status": "sending"})  # free again


def test_two_reviews_at_once_pay_and_mail_nobody_twice(crowd, ledger):
    """The main DAG's review and a collect run reviewing the same batch at the same moment."""
    mturk = crowd.client()
    created = create_hits(
        mturk_platform(mturk), [plan(f"q{i}.jpg") for i in range(3)], ledger, SETTINGS, render
    )
    for n, p in enumerate(created):
        crowd.work(p.hit_id, "AGOOD", answers_for(p, gold=2, model=1))
        crowd.work(p.hit_id, f"AWRONG{n}", answers_for(p, gold=3, model=1))
    barrier = threading.Barrier(2)

    def review(_n: int):
        other = S3Ledger(ledger.s3, ledger.bucket, "image-similarity", "batch-1")
        barrier.wait()
        return review_batch(mturk_platform(crowd.client()), created, other, REVIEW)

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(review, range(2)))
    assert sum(o.emails_sent for o in outcomes) == 3
    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        mails = Counter(w for (w,) in db.execute("SELECT worker_id FROM messages"))
        bonuses = Counter(db.execute("SELECT hit_id, worker_id FROM bonuses").fetchall())
    assert mails == Counter({f"AWRONG{n}": 1 for n in range(3)})
    assert bonuses == Counter({(p.hit_id, "AGOOD"): 1 for p in created})


def test_notify_goes_out_in_batches_of_at_most_100(crowd, ledger):
    mturk = crowd.client()
    settings = TaskSpec(**{**SETTINGS.__dict__, "assignments": 105})
    (p,) = create_hits(mturk_platform(mturk), [plan("q.jpg")], ledger, settings, render)
    workers = [f"AWORKER{i:03d}" for i in range(105)]
    for worker in workers:
        crowd.work(p.hit_id, worker, answers_for(p, gold=1, model=1))
    counting = CountingClient(mturk)
    outcome = review_batch(mturk_platform(counting), [p], ledger, REVIEW)
    assert counting.calls["notify_workers"] == 2
    assert outcome.emails_sent == 105 and outcome.bonuses_paid == 0
    again = review_batch(mturk_platform(counting), [p], ledger, REVIEW)
    assert again.emails_sent == 0 and counting.calls["notify_workers"] == 2


# --- reading answers ------------------------------------------------------------------------


def submitted(assignment: dict):
    """An assignment as ListAssignmentsForHIT returns it, read by the MTurk adapter."""
    return submission({"AssignmentStatus": "Submitted", **assignment})


def answer_xml(fields: dict[str, str]) -> str:
    ns = (
        "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
        "QuestionFormAnswers.xsd"
    )
    root = ET.Element("QuestionFormAnswers", xmlns=ns)
    for name, value in fields.items():
        answer = ET.SubElement(root, "Answer")
        ET.SubElement(answer, "QuestionIdentifier").text = name
        ET.SubElement(answer, "FreeText").text = value
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("<not xml", "not valid XML"),
        ("", "no answer"),
        ("x" * 70_000, "larger than"),
    ],
)
def test_unreadable_answers_are_recorded_not_counted(answer, problem):
    p = plan("q.jpg")
    p.hit_id = "HIT1"
    review = decide(
        p, submitted({"AssignmentId": "A1", "HITId": "HIT1", "WorkerId": "AW", "Answer": answer})
    )
    assert not review.valid and not review.counted and review.vote is None
    assert problem in review.problems[0]


def test_extra_fields_are_noted_and_none_of_these_is_a_vote():
    p = plan("q.jpg")
    fields = {**answers_for(p, gold=2, model=4), "injected": "1"}
    review = decide(
        p,
        submitted(
            {"AssignmentId": "A1", "HITId": "H", "WorkerId": "AW", "Answer": answer_xml(fields)}
        ),
    )
    assert review.valid and review.counted and review.vote == NONE_OF_THESE
    assert "extra fields ignored: injected" in review.problems
    parsed, problems = parse_answers(answer_xml({"a": "1"}).replace("</Answer>", "</Answer>" * 1))
    assert parsed == {"a": "1"} and not problems


# --- cleanup --------------------------------------------------------------------------------


def test_cleanup_touches_only_its_own_batch_and_settles_first(crowd, ledger, s3_endpoint):
    from include.crowd.cleanup import cleanup_batch

    mturk = crowd.client()
    mine = create_hits(
        mturk_platform(mturk), [plan("a.jpg"), plan("b.jpg")], ledger, SETTINGS, render
    )
    other_ledger = S3Ledger(ledger.s3, ledger.bucket, "image-similarity", "batch-2")
    other = plan("c.jpg")
    other.batch_id = "batch-2"
    (theirs,) = create_hits(mturk_platform(mturk), [other], other_ledger, SETTINGS, render)
    crowd.work(mine[0].hit_id, "AGOOD", answers_for(mine[0], gold=2, model=1))
    busy = crowd.accept(mine[1].hit_id, "ABUSY")  # still working: MTurk keeps that HIT

    outcome = cleanup_batch(
        mturk_platform(mturk),
        "batch-1",
        settle=lambda: review_batch(mturk_platform(mturk), mine, ledger, REVIEW),
    )
    assert sorted(outcome.expired) == sorted(p.hit_id for p in mine)
    assert outcome.deleted == [mine[0].hit_id]
    assert list(outcome.kept) == [mine[1].hit_id]
    assert mturk.get_hit(HITId=mine[0].hit_id)["HIT"]["HITStatus"] == "Disposed"
    assert len(mturk.list_bonus_payments(HITId=mine[0].hit_id)["BonusPayments"]) == 1
    assert mturk.get_hit(HITId=theirs.hit_id)["HIT"]["HITStatus"] == "Assignable"

    crowd.submit(busy, answers_for(mine[1], gold=2, model=2))
    again = cleanup_batch(
        mturk_platform(mturk),
        "batch-1",
        settle=lambda: review_batch(mturk_platform(mturk), mine, ledger, REVIEW),
    )
    assert again.deleted == [mine[1].hit_id] and not again.kept
    assert mturk.get_hit(HITId=theirs.hit_id)["HIT"]["HITStatus"] == "Assignable"
