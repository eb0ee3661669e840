"""Nothing a worker submits stops, games or overspends a review (crowd sandbox + moto S3)."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter

import pytest
from botocore.exceptions import ClientError
from test_create_review import plan, submitted

from include.crowd import costs
from include.crowd.create import create_hits
from include.crowd.mturk import FEES
from include.crowd.platform import PlatformError
from include.crowd.records import HitPlan
from include.crowd.review import ReviewSettings, decide, review_batch, spent
from testsupport.crowd_plans import REVIEW, SETTINGS, render
from testsupport.platforms import mturk_platform
from testsupport.sandbox_process import account_cents

# What a hostile or broken worker page can post for an option position.
FORGED_VALUES = [
    "²", "①", "٣", "１", "1" * 5000, "9" * 40, "0", "01", " 1", "1 ", "-1", "+1", "1.0", "1e0",
    "0x1", "5", "99", "", "\u202e1", "1\n2", "true", "null",
]  # fmt: skip


def answers(p: HitPlan, gold: str, model: str) -> dict[str, str]:
    return {p.gold.field: gold, p.model.field: model}


def test_every_forged_position_is_invalid_and_never_raises():
    p = plan("q.jpg")
    p.hit_id = "H1"
    for value in FORGED_VALUES:
        for forged in (answers(p, value, "1"), answers(p, "2", value)):
            xml = "".join(
                f"<Answer><QuestionIdentifier>{k}</QuestionIdentifier>"
                f"<FreeText>{v.replace('&', '&amp;').replace('<', '&lt;')}</FreeText></Answer>"
                for k, v in forged.items()
            )
            review = decide(
                p,
                submitted(
                    {
                        "AssignmentId": "A",
                        "HITId": "H1",
                        "WorkerId": "AW",
                        "Answer": f"<QuestionFormAnswers>{xml}</QuestionFormAnswers>",
                    }
                ),
            )
            # " 1" and "1 " are stripped by the XML reader as whitespace, like MTurk's own form
            if value.strip() in ("1", "2", "3", "4"):
                assert review.valid, value
                continue
            assert not review.valid and not review.counted and review.vote is None, value
    for broken in ("<a><b></a>", "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>",
                   "\x00", "<QuestionFormAnswers><Answer>" * 2000):  # fmt: skip
        assignment = {"AssignmentId": "A", "HITId": "H1", "WorkerId": "AW", "Answer": broken}
        review = decide(p, submitted(assignment))
        assert not review.valid


def test_a_batch_with_forged_answers_on_its_first_hit_is_reviewed_to_the_end(crowd, ledger, caplog):
    mturk = crowd.client()
    settings = SETTINGS.__class__(**{**SETTINGS.__dict__, "assignments": 9})
    created = create_hits(
        mturk_platform(mturk), [plan(f"q{i}.jpg") for i in range(3)], ledger, settings, render
    )
    first = created[0]
    forged = [
        answers(first, "²", "1"),
        answers(first, "2", "①"),
        answers(first, "2", "1" * 5000),
        answers(first, "9", "1"),
        answers(first, "2", "0"),
        {**answers(first, "2", "1"), "unknown\nINFO forged log line": "1", "x" * 300: "y"},
        {first.gold.field: "2"},
    ]
    for n, form in enumerate(forged):
        crowd.work(first.hit_id, f"AFORGED{n}", form)
    for p in created:
        crowd.work(p.hit_id, "APASS", answers(p, "2", "1"))
        crowd.work(p.hit_id, f"AFAIL{p.query.name[1]}", answers(p, "3", "1"))

    caplog.set_level(logging.INFO)
    outcome = review_batch(mturk_platform(mturk), created, ledger, REVIEW)

    assert not outcome.failed_hits
    statuses = Counter(
        a["AssignmentStatus"]
        for p in created
        for a in mturk.list_assignments_for_hit(HITId=p.hit_id, MaxResults=100)["Assignments"]
    )
    assert statuses == Counter({"Approved": len(forged) + 2 * len(created)})
    by_worker = {(r.hit_id, r.worker_id): r for r in outcome.reviews}
    for n in range(len(forged)):
        review = by_worker[(first.hit_id, f"AFORGED{n}")]
        assert review.counted is (n == 5), n  # only the one with extra fields is a real vote
    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        bonuses = Counter(db.execute("SELECT hit_id, worker_id FROM bonuses").fetchall())
        mails = Counter(w for (w,) in db.execute("SELECT worker_id FROM messages"))
    assert bonuses == Counter(
        {**{(p.hit_id, "APASS"): 1 for p in created}, (first.hit_id, "AFORGED5"): 1}
    )
    assert mails == Counter({f"AFAIL{i}": 1 for i in range(3)})
    assert ledger.get_bytes("reviews.jsonl").count(b"\n") == len(forged) + 6
    # a submitted field name cannot forge a log line
    assert not any(
        line.startswith("INFO forged")
        for r in caplog.records
        for line in r.getMessage().split("\n")
    )
    assert all("\n" not in r.getMessage() for r in caplog.records if r.name.startswith("include"))


class FailingFor:
    """An MTurk client whose ApproveAssignment fails for one HIT's assignments."""

    def __init__(self, client, hit_id: str) -> None:
        self._client, self.hit_id, self.failing = client, hit_id, True
        self._of_hit: set[str] = set()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def approve_assignment(self, AssignmentId):  # noqa: N803 - boto3's name
        if self.failing:
            assignment = self._client.get_assignment(AssignmentId=AssignmentId)["Assignment"]
            if assignment["HITId"] == self.hit_id:
                raise ClientError(
                    {"Error": {"Code": "ServiceUnavailable", "Message": "simulated outage"}},
                    "ApproveAssignment",
                )
        return self._client.approve_assignment(AssignmentId=AssignmentId)


def test_an_error_on_one_hit_fails_loudly_after_the_others_and_the_retry_resumes(crowd, ledger):
    mturk = crowd.client()
    created = create_hits(
        mturk_platform(mturk), [plan(f"q{i}.jpg") for i in range(3)], ledger, SETTINGS, render
    )
    for p in created:
        crowd.work(p.hit_id, "APASS", answers(p, "2", "1"))
    broken = FailingFor(mturk, created[1].hit_id)

    with pytest.raises(PlatformError) as raised:  # MTurk's ClientError, as the seam says it
        review_batch(mturk_platform(broken), created, ledger, REVIEW)
    note = " ".join(getattr(raised.value, "__notes__", []))
    assert created[1].hit_id in note and "1 of 3 HITs" in note
    paid = {p.hit_id for p in created if mturk.list_bonus_payments(HITId=p.hit_id)["BonusPayments"]}
    assert paid == {created[0].hit_id, created[2].hit_id}

    broken.failing = False
    outcome = review_batch(mturk_platform(broken), created, ledger, REVIEW)
    assert (outcome.approved, outcome.bonuses_paid, outcome.failed_hits) == (1, 1, {})
    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM bonuses").fetchone() == (3,)


def test_no_bonus_pushes_the_batch_past_its_budget(crowd, ledger):
    mturk = crowd.client()
    created = create_hits(
        mturk_platform(mturk), [plan(f"q{i}.jpg") for i in range(2)], ledger, SETTINGS, render
    )
    for p in created:
        for worker in ("APASS1", "APASS2"):
            crowd.work(p.hit_id, worker, answers(p, "2", "1"))
    # Committed: 2 HITs x 3 assignments x (5 c + 1 c fee) = 36 c; each bonus 10 c + 2 c fee.
    tight = ReviewSettings(**{**REVIEW.__dict__, "budget": "0.60"})  # room for two bonuses
    before = account_cents(mturk)
    with pytest.raises(costs.BudgetError, match="over its budget of \\$0.60"):
        review_batch(mturk_platform(mturk), created, ledger, tight)
    with sqlite3.connect(f"file:{crowd.state}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM bonuses").fetchone() == (2,)
    money = spent(ledger, tight, FEES, created)
    assert money["total_cents"] == 4 * 6 + 2 * 12
    charged = before - account_cents(mturk)
    assert charged == money["total_cents"]  # the ledger's figure is what MTurk charged


def test_a_refused_call_for_one_assignment_leaves_the_hits_others_paid(crowd, ledger):
    mturk = crowd.client()
    (p,) = create_hits(mturk_platform(mturk), [plan("q.jpg")], ledger, SETTINGS, render)
    for worker in ("ACLOSED", "APASS", "AFAIL"):
        crowd.work(p.hit_id, worker, answers(p, "2" if worker != "AFAIL" else "3", "1"))

    class RefusesOneBonus:
        def __getattr__(self, name):
            return getattr(mturk, name)

        def send_bonus(self, **kwargs):
            if kwargs["WorkerId"] == "ACLOSED":  # e.g. a closed worker account
                raise ClientError({"Error": {"Code": "RequestError"}}, "SendBonus")
            return mturk.send_bonus(**kwargs)

    with pytest.raises(PlatformError):  # MTurk's ClientError, as the seam says it
        review_batch(mturk_platform(RefusesOneBonus()), [p], ledger, REVIEW)
    statuses = {
        a["WorkerId"]: a["AssignmentStatus"]
        for a in mturk.list_assignments_for_hit(HITId=p.hit_id)["Assignments"]
    }
    assert statuses == {"ACLOSED": "Approved", "APASS": "Approved", "AFAIL": "Approved"}
    paid = [b["WorkerId"] for b in mturk.list_bonus_payments(HITId=p.hit_id)["BonusPayments"]]
    assert paid == ["APASS"]
    _, _, outbox = crowd.page("/outbox")
    assert outbox.count(REVIEW.no_bonus_message) == 1  # AFAIL was still mailed
    assert ledger.get_bytes("reviews.jsonl").count(b"\n") == 3
