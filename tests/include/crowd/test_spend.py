"""The money a batch reports is what MTurk charged, to the cent, in every fee configuration; a
batch's money settings cannot change once it exists; caps come from the paying run's Params."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace

import pytest
from test_hostile_review import answers, plan

from include.crowd import costs, stage
from include.crowd.create import create_hits
from include.crowd.mturk import FEES
from include.crowd.platform import WorkerRequirements
from include.crowd.review import ReviewSettings, review_batch, spent
from testsupport import sandbox_process as sandbox_fixtures
from testsupport.crowd_plans import REVIEW, SETTINGS, crowd_settings, render
from testsupport.platforms import mturk_platform


@pytest.fixture(scope="module")
def masters_state(tmp_path_factory):
    """A sandbox state in which ADILIGENT01..03 are registered, with the Masters qualification
    (the simulated diligent profile has it), and no simulated worker runs any more."""
    state = tmp_path_factory.mktemp("masters") / "sandbox.sqlite"
    running = sandbox_fixtures.start_sandbox(state, "--workers", "diligent:3")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                if db.execute("SELECT COUNT(*) FROM workers").fetchone()[0] >= 3:
                    break
            time.sleep(0.1)
    finally:
        running.stop()
    return state


# reward, assignments, Masters, bonus: the 20 % base fee, the 40 % tier at 10 or more
# assignments, +5 % for Masters, and the $0.01 minimum on rewards and bonuses.
CONFIGURATIONS = [
    ("0.05", 3, False, "0.10"),
    ("0.05", 10, False, "0.10"),
    ("0.20", 3, True, "0.10"),
    ("0.07", 12, True, "0.03"),
    ("0.01", 3, False, "0.01"),
]


@pytest.mark.parametrize(("reward", "assignments", "masters", "bonus"), CONFIGURATIONS)
def test_spent_equals_what_the_sandbox_charged(
    masters_state, tmp_path, ledger, reward, assignments, masters, bonus
):
    state = tmp_path / "sandbox.sqlite"
    with sqlite3.connect(masters_state) as source, sqlite3.connect(state) as copy:
        source.backup(copy)  # the whole database, write-ahead log included
    crowd = sandbox_fixtures.start_sandbox(state)
    try:
        mturk = crowd.client()
        hit_settings = replace(
            SETTINGS,
            reward=reward,
            assignments=assignments,
            requirements=WorkerRequirements(masters=masters),
        )
        created = create_hits(
            mturk_platform(mturk), [plan("q0.jpg"), plan("q1.jpg")], ledger, hit_settings, render
        )
        assert {(p.reward, p.max_assignments, p.masters) for p in created} == {
            (reward, assignments, masters)
        }
        before = sandbox_fixtures.account_cents(mturk)
        for p in created:
            crowd.work(p.hit_id, "ADILIGENT01", answers(p, "2", "1"))  # a bonus
            crowd.work(p.hit_id, "ADILIGENT02", answers(p, "3", "1"))  # an e-mail
        # The Params changed since the HITs were created: the figures still follow each HIT.
        later = ReviewSettings(**{**REVIEW.__dict__, "bonus": bonus, "reward": "0.50"})
        outcome = review_batch(mturk_platform(mturk), created, ledger, later)

        charged = before - sandbox_fixtures.account_cents(mturk)
        assert outcome.spent["total_cents"] == charged
        assert spent(ledger, later, FEES)["total_cents"] == charged  # from the ledger's HITs alone
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            charges = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM ledger")]
        rewards = sum(c["Charged"] for c in charges if c.get("Charged") and "WorkerId" in c)
        assert rewards == charged
        reward_c, bonus_c = costs.cents(reward), costs.cents(bonus)
        assert outcome.spent["rewards_cents"] == 4 * reward_c
        assert outcome.spent["bonuses_cents"] == 2 * bonus_c
        assert outcome.spent["fees_cents"] == 4 * FEES.reward_fee(
            reward_c, assignments, masters
        ) + 2 * FEES.bonus_fee(bonus_c)
    finally:
        crowd.stop()


# --- money settings are fixed when a batch is created ----------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"reward_usd": "0.06"},
        {"bonus_usd": "1.00"},
        {"max_bonus_usd": "9.00"},
        {"budget_usd": "500.00"},
        {"budget_usd": None},
        {"assignments_per_hit": 5},
        {"require_masters": True},
        {"mturk_environment": "production"},
    ],
)
def test_a_rerun_with_other_money_settings_is_refused_before_any_call(ledger, change):
    first = crowd_settings(s3_bucket=ledger.bucket)
    stage.pin_settings(ledger.s3, first)
    not_money = crowd_settings(s3_bucket=ledger.bucket, hit_title="another title")
    stage.check_money_settings(ledger.s3, not_money)
    changed = crowd_settings(s3_bucket=ledger.bucket, **change)
    with pytest.raises(stage.SettingsChanged, match="new batch id"):
        stage.check_money_settings(ledger.s3, changed)
    with pytest.raises(stage.SettingsChanged):
        stage.pin_settings(ledger.s3, changed)

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"MTurk was called ({name}) for a batch with changed settings")

    with pytest.raises(stage.SettingsChanged):
        stage.review(
            ledger.s3,
            NoCalls(),
            changed,
            caps=stage.PaymentCaps("100.00", "1000.00"),
        )
    stored = json.loads(ledger.get_bytes("settings.json"))
    assert stored["payment"]["bonus"] == "0.10"  # written once


def test_the_same_settings_written_twice_keep_the_first_file(ledger):
    first = crowd_settings(s3_bucket=ledger.bucket)
    stage.pin_settings(ledger.s3, first)
    stage.pin_settings(ledger.s3, crowd_settings(s3_bucket=ledger.bucket, hit_description="new"))
    assert json.loads(ledger.get_bytes("settings.json"))["posting"]["description"] == "d"


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"bonus": "100.00", "max_bonus": "100.00"}, "above this run's per-bonus cap"),
        ({"budget": "99999.00"}, "above this run's budget cap"),
        ({"budget": None}, "no cap"),
    ],
)
def test_a_crafted_settings_file_cannot_raise_what_collect_pays(ledger, stored, message):
    """The collect and cleanup DAGs read the batch's settings back from S3; their caps come
    from their own Params (``PaymentCaps``), so a crafted file is refused before any payment."""
    crafted = crowd_settings().to_stored()
    crafted["payment"] = {**crafted["payment"], **stored}
    ledger.put_json("settings.json", crafted)
    settings = stage.batch_settings(ledger.s3, ledger.bucket, "image-similarity", "batch-1")
    caps = stage.PaymentCaps(costs.DEFAULT_MAX_BONUS, costs.DEFAULT_BUDGET)
    with pytest.raises(costs.BudgetError, match=message):
        caps.check(settings)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda doc: doc.update(colour="blue"), "unknown field colour"),
        (lambda doc: doc["posting"].update(extra=1), "unknown field posting.extra"),
        (lambda doc: doc["review"].pop("bonus_message"), "missing field review.bonus_message"),
        (lambda doc: doc.pop("storage"), "missing field storage"),
        (lambda doc: doc["posting"].update(assignments="3"), "posting.assignments has the wrong"),
        (lambda doc: doc["workers"].update(masters=1), "workers.masters has the wrong type"),
        (lambda doc: doc.update(format=1), "format is 1"),
    ],
)
def test_stored_settings_are_read_back_strictly(ledger, damage, message):
    """A field the settings do not have, or lack, or of another type, is an error naming it
    (never silently dropped or defaulted)."""
    doc = crowd_settings().to_stored()
    damage(doc)
    ledger.put_json("settings.json", doc)
    with pytest.raises(ValueError, match=message):
        stage.batch_settings(ledger.s3, ledger.bucket, "image-similarity", "batch-1")


def test_stored_settings_read_back_are_the_settings_written(ledger):
    written = crowd_settings(
        s3_bucket=ledger.bucket, worker_locales="US, CA", min_approval_rate=95, budget_usd=None
    )
    stage.pin_settings(ledger.s3, written)
    assert stage.batch_settings(ledger.s3, ledger.bucket, "image-similarity", "batch-1") == written


@pytest.mark.parametrize("amount", ["1e3", "NaN", "Infinity", "-1.00", "0.001", " 1", 5, None])
def test_amounts_that_are_not_plain_dollars_are_refused(amount):
    with pytest.raises(ValueError, match="not a US dollar amount"):
        costs.cents(amount)
    assert costs.balance_cents("-1.50") == -150


def test_a_batch_with_hits_but_no_or_a_stripped_settings_file_is_refused(ledger):
    first = crowd_settings(s3_bucket=ledger.bucket)
    stage.pin_settings(ledger.s3, first)
    stored = json.loads(ledger.get_bytes("settings.json"))
    ledger.put("hits", "tok-1", {"hit_id": "H1"})
    changed = crowd_settings(s3_bucket=ledger.bucket, bonus_usd="1.00")
    stored["payment"] = {k: v for k, v in stored["payment"].items() if k != "bonus"}
    ledger.put_json("settings.json", stored)
    with pytest.raises(stage.SettingsChanged, match="lacks bonus"):
        stage.check_money_settings(ledger.s3, changed)
    ledger.s3.delete_object(Bucket=ledger.bucket, Key=ledger.key("settings.json"))
    with pytest.raises(stage.SettingsChanged, match="has HITs but no settings.json"):
        stage.check_money_settings(ledger.s3, changed)
    with pytest.raises(stage.SettingsChanged):
        stage.pin_settings(ledger.s3, changed)  # the file is written first, then checked


def test_an_exclusion_refused_for_one_worker_does_not_stop_the_others(ledger):
    from botocore.exceptions import ClientError

    from include.crowd.worker_records import ExclusionPolicy

    for n, worker in enumerate(("ACLOSED", "AWRONG1", "AWRONG2", "ARIGHT")):
        ledger.put(
            "reviews",
            f"A{n}",
            {"worker_id": worker, "valid": True, "gold_correct": worker == "ARIGHT"},
        )

    class Mturk:
        granted: list[str] = []

        def associate_qualification_with_worker(self, WorkerId, **_):  # noqa: N803
            if WorkerId == "ACLOSED":
                raise ClientError({"Error": {"Code": "RequestError"}}, "AssociateQualification")
            self.granted.append(WorkerId)

    one_miss = ExclusionPolicy(min_answers=1, below_accuracy=1.0)  # the rule before records
    stage.exclude_failed_workers(mturk_platform(Mturk()), ledger, "QUAL", policy=one_miss)
    stage.exclude_failed_workers(mturk_platform(Mturk()), ledger, "QUAL", policy=one_miss)
    assert Mturk.granted == ["AWRONG1", "AWRONG2"]  # once each; the refused one is retried
    assert set(ledger.entries("exclusions")) == {"AWRONG1", "AWRONG2"}


@pytest.mark.parametrize(
    ("reward", "assignments", "masters", "bonus", "expected"),
    [
        # 2 HITs x 7: rewards 70, reward fees 7 x 2 x 1 = 14 (20 %, at least $0.01); half the
        # approved assignments got a bonus: 7 bonuses of 10 + 7 x 2 fees = 84. 168 in all.
        ("0.05", 7, False, "0.10", 168),
        # At 10 or more the reward fee is 40 %: 2 x 10 x (5 + 2) = 140; 10 bonuses: 100 + 20.
        ("0.05", 10, False, "0.10", 260),
        # Masters +5 %: 25 % of 20 = 5 per assignment: 2 x 3 x 25 = 150; 3 bonuses: 30 + 6.
        ("0.20", 3, True, "0.10", 186),
    ],
)
def test_the_cost_at_fixed_overlap_prices_every_hit_at_the_maximum(
    reward, assignments, masters, bonus, expected
):
    from include.crowd.review import at_fixed_overlap

    settings = replace(REVIEW, reward=reward, bonus=bonus, masters=masters)
    plans = [replace(plan(f"q{i}.jpg"), hit_id=f"HIT{i}", reward=reward, masters=masters)
             for i in range(2)] + [plan("never-created.jpg")]  # fmt: skip
    money = {"approved": 8, "bonuses_paid": 4}
    fixed = at_fixed_overlap(plans, money, assignments, settings, FEES)
    assert fixed == {
        "assignments_per_hit": assignments,
        "assignments": 2 * assignments,
        "total_cents": expected,
    }
    # Nothing approved yet: no bonus is assumed.
    none = at_fixed_overlap(plans, {"approved": 0, "bonuses_paid": 0}, 3, settings, FEES)
    assert none["assignments"] == 6 and none["total_cents"] < expected
