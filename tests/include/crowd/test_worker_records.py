"""Worker quality over time: each worker's gold record across the batches of an S3 prefix
(``worker_records``), the exclusion rule that reads it, and the per-batch HIT cap, against
moto's S3 server and the crowd sandbox (127.0.0.1).

The store keeps one object per gold answer, so concurrent batches lose nothing and a retried
review counts nothing twice; what it reads back is hostile input: damaged records are named in
the log and ignored."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from include.crowd import quality, stage
from include.crowd.mturk.fees import FEES
from include.crowd.quality import Skill
from include.crowd.records import Review
from include.crowd.worker_records import (
    ExclusionPolicy,
    GoldAnswer,
    WorkerRecords,
    gold_answers,
    records_of,
)
from testsupport.crowd_batch import build_sources, write_batch
from testsupport.crowd_plans import crowd_settings, plans_for
from testsupport.motokit import s3_client
from testsupport.platforms import mturk_platform


@pytest.fixture
def store(ledger):
    return WorkerRecords(ledger.s3, ledger.bucket, "image-similarity")


def answer(worker: str, batch: str, assignment: str, right: bool) -> GoldAnswer:
    return GoldAnswer(worker, batch, assignment, right, hit_id="HIT1")


def entry(worker: str, *, valid=True, gold=True, hit="H1") -> dict:
    return {"worker_id": worker, "hit_id": hit, "valid": valid, "gold_correct": gold}


# --- the store --------------------------------------------------------------------------------


def test_a_worker_record_spans_the_batches_of_a_prefix_and_history_leaves_out_this_batch(store):
    store.add(
        [
            answer("AW1", "batch-a", "A1", True),
            answer("AW1", "batch-a", "A2", False),
            answer("AW1", "batch-b", "B1", True),
            answer("AW2", "batch-b", "B2", False),
        ]
    )
    key = store.key(answer("AW1", "batch-a", "A1", True))
    assert key == "image-similarity/workers/AW1/batch-a/A1.right"
    assert store.history(["AW1", "AW2", "AW3"], excluding_batch="batch-b") == {
        "AW1": Skill(right=1, wrong=1)
    }
    assert store.history(["AW1"], excluding_batch="batch-c") == {"AW1": Skill(right=2, wrong=1)}
    other_prefix = WorkerRecords(store.s3, store.bucket, "another-prefix")
    assert other_prefix.history(["AW1"], excluding_batch="x") == {}


def test_each_gold_answer_is_counted_once_whatever_is_retried(store):
    answers = [answer("AW1", "batch-a", f"A{n}", n % 2 == 0) for n in range(5)]
    assert store.add(answers) == 5
    assert store.add(answers) == 0  # a retried review: listed first, nothing written
    again = WorkerRecords(store.s3, store.bucket, "image-similarity")
    assert again.add(answers, known={}) == 0  # a stale view: the conditional writes refuse
    assert again.history(["AW1"], excluding_batch="") == {"AW1": Skill(right=3, wrong=2)}


def test_concurrent_batches_lose_no_update(store):
    """Two batches (and a batch's second review) record the same worker at the same time."""
    start = threading.Barrier(3)

    def review(batch: str, first: int) -> int:
        records = WorkerRecords(store.s3, store.bucket, "image-similarity")
        mine = [answer("AW1", batch, f"{batch}X{n}", True) for n in range(first, first + 20)]
        known = records.answers(["AW1"])  # each reads before any writes
        start.wait(timeout=30)
        return records.add(mine, known)

    with ThreadPoolExecutor(3) as pool:
        written = list(
            pool.map(review, ["batch-a", "batch-b", "batch-a"], [0, 0, 10])  # a overlaps itself
        )
    assert sum(written) == 50  # 20 + 20 + the 10 of batch-a's second review it did not share
    assert store.history(["AW1"], excluding_batch="") == {"AW1": Skill(right=50, wrong=0)}


def put(store: WorkerRecords, key: str, body: bytes = b"{}") -> None:
    store.s3.put_object(Bucket=store.bucket, Key=f"{store.root}/{key}", Body=body)


def test_damaged_records_are_named_in_the_log_and_never_counted(store, caplog):
    store.add([answer("AW1", "batch-a", "GOOD1", True), answer("AW1", "batch-b", "GOOD2", False)])
    for key in (
        "AW1/batch-a/deeper/X1.right",  # not <batch>/<assignment>.<outcome>
        "AW1/.hidden/X2.right",  # not a batch id
        "AW1/batch-a/X3.maybe",  # not an outcome
        "AW1/batch-a/X4",  # no outcome at all
        "AW1/batch-a/X%5.right",  # not an assignment id
        "AW1/batch-a/TWICE.right",  # one assignment, two outcomes: neither is trusted
        "AW1/batch-a/TWICE.wrong",
        "AW1/batch-a/MOVED.right",  # one assignment in two batches
        "AW1/batch-b/MOVED.right",
        "AW1/b\u00e4tch\u2028/X6.right",  # named escaped: no forged log line
    ):
        put(store, key)
    put(store, "AW1/batch-a/BIG.wrong", b"x" * 5000)  # not a record of ours
    with caplog.at_level(logging.WARNING, logger="include.crowd.worker_records"):
        record = store.history(["AW1", "../AW1", "AW1/batch-a", ""], excluding_batch="")
    assert record == {"AW1": Skill(right=1, wrong=1)}
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "include.crowd.worker_records"
    )
    assert "damaged gold records" in logged and "ignored" in logged
    for named in ("deeper", "X3.maybe", "TWICE", "MOVED", "5000 bytes"):
        assert named in logged
    assert "\u2028" not in logged and "\\u2028" in logged


def test_one_worker_s_listing_is_bounded(store, monkeypatch, caplog):
    from include.crowd import worker_records

    store.add([answer("AW1", "batch-a", f"A{n}", True) for n in range(7)])
    monkeypatch.setattr(worker_records, "MAX_ANSWERS_PER_WORKER", 4)
    with caplog.at_level(logging.WARNING, logger="include.crowd.worker_records"):
        assert store.history(["AW1"], excluding_batch="") == {"AW1": Skill(right=4)}
    assert "more than 4 gold answers" in caplog.text


def test_only_valid_gold_answers_with_plain_ids_are_recorded(caplog):
    entries = {
        "A1": entry("AW1", gold=True),
        "A2": entry("AW1", gold=False),
        "A3": entry("AW1", valid=False, gold=None),  # malformed or too fast: says nothing
        "A4": {**entry("AW1"), "valid": "yes"},  # not written by the review
        "A5": entry("A/../W", gold=False),  # not a key
        "A 6": entry("AW2", gold=False),
        "A7": ["not", "an", "entry"],
    }
    with caplog.at_level(logging.WARNING, logger="include.crowd.worker_records"):
        found = gold_answers("batch-a", entries)
    assert [(a.assignment_id, a.worker_id, a.right) for a in found] == [
        ("A1", "AW1", True),
        ("A2", "AW1", False),
    ]
    assert "'A/../W'" in caplog.text and "'A 6'" in caplog.text
    assert records_of(entries) == {"AW1": Skill(right=1, wrong=1)}


# --- the exclusion rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("right", "wrong", "excluded"),
    [
        (0, 2, False),  # 2 answers: under m = 3, however wrong
        (0, 3, True),  # m answers reached
        (1, 2, True),  # 1/3 < 0.6
        (3, 2, False),  # 3/5 = 0.6: not below the threshold
        (2, 3, True),  # 0.4
        (6, 4, False),  # 0.6
        (5, 4, True),  # 0.556
        (100, 0, False),
    ],
)
def test_the_rule_judges_a_record_only_after_m_answers_and_below_the_threshold(
    right, wrong, excluded
):
    policy = ExclusionPolicy(min_answers=3, below_accuracy=0.6)
    assert policy.excludes(Skill(right=right, wrong=wrong)) is excluded


def test_the_rule_s_extremes():
    one_miss = ExclusionPolicy(min_answers=1, below_accuracy=1.0)
    assert one_miss.excludes(Skill(right=10, wrong=1)) and not one_miss.excludes(Skill(right=10))
    nobody = ExclusionPolicy(min_answers=1, below_accuracy=0.0)
    assert not nobody.excludes(Skill(wrong=50))
    assert not ExclusionPolicy(1, 1.0).excludes(Skill())


class Granting:
    """An MTurk client that records the qualifications granted."""

    def __init__(self) -> None:
        self.granted: list[tuple[str, str]] = []

    def associate_qualification_with_worker(self, QualificationTypeId, WorkerId, **_):  # noqa: N803
        self.granted.append((QualificationTypeId, WorkerId))


def test_exclusion_reads_the_whole_record_and_excludes_each_worker_once(ledger):
    for n, (worker, valid, gold) in enumerate(
        [
            ("AGOOD", True, False),  # one miss here, but 5 right in other batches
            ("ABAD", True, False),  # one miss here and 2 before: 1/4
            ("ABAD", True, True),
            ("AFAST", False, None),  # too fast (invalid) three times: never judged on them
            ("AFAST", False, None),
            ("AFAST", False, None),
            ("ANEW", True, False),  # 2 answers, both wrong: under m
            ("ANEW", True, False),
        ]
    ):
        ledger.put("reviews", f"A{n}", entry(worker, valid=valid, gold=gold, hit=f"H{n}"))
    history = {
        "AGOOD": Skill(right=5),
        "ABAD": Skill(wrong=2),
        "AFAST": Skill(right=1, wrong=1),
        "AOTHER": Skill(wrong=9),  # not in this batch: another batch's review judges them
    }
    client = Granting()
    policy = ExclusionPolicy(min_answers=3, below_accuracy=0.6)
    for _ in range(2):
        stage.exclude_failed_workers(
            mturk_platform(client), ledger, "QUAL", policy=policy, history=history
        )
    assert client.granted == [("QUAL", "ABAD")]
    assert ledger.entries("exclusions") == {
        "ABAD": {"qualification": "QUAL", "right": 1, "answers": 4}
    }


def test_the_posterior_weighs_a_worker_by_their_record_in_other_batches():
    plan = replace(plans_for("batch-1", 1)[0], hit_id="H1")

    def vote(worker: str, option: int) -> Review:
        return Review(
            assignment_id=f"{worker}-a",
            hit_id="H1",
            worker_id=worker,
            query=plan.query.name,
            valid=True,
            gold_correct=True,
            gold_position=2,
            model_position=option,
            vote=plan.model.options[option - 1].image.name,
            counted=True,
        )

    reviews = [vote("AOLD", 1), vote("ANEW", 2)]
    alone = quality.posteriors([plan], reviews)["H1"]
    assert alone.winner is None  # two workers alike, one vote each: a tie
    trusted = quality.posteriors([plan], reviews, {"AOLD": Skill(right=30)})["H1"]
    assert trusted.winner == plan.model.options[0].image.name


# --- through the stage, against the crowd sandbox -------------------------------------------


class Batch:
    """One batch of a prefix in the sandbox: publish, create, answer, review."""

    def __init__(self, root: Path, s3, crowd, batch_id: str, **params) -> None:
        self.dir, self.s3, self.crowd = root / batch_id, s3, crowd
        self.platform = mturk_platform(crowd.client())
        self.settings = crowd_settings(batch_id, **params)
        self.exclusion = stage.failed_gold_exclusion(
            self.platform, self.settings.review.exclude_failed_workers
        )
        write_batch(self.dir, build_sources(root / f"{batch_id}-sources", queries=3), 3)
        stage.publish(self.dir, s3, self.settings)
        self.plans = stage.create(
            self.dir, s3, self.platform, self.settings, exclusion_id=self.exclusion
        )

    def answer(self, plan, worker: str, *, right: bool) -> str:
        gold = plan.gold.correct_position
        wrong = next(o.position for o in plan.gold.options if o.position != gold)
        return self.crowd.work(
            plan.hit_id,
            worker,
            {plan.gold.field: str(gold if right else wrong), plan.model.field: "1"},
        )

    def review(self):
        return stage.review(
            self.s3,
            self.platform,
            self.settings,
            caps=stage.PaymentCaps("5.00", None),
            exclusion_id=self.exclusion,
        )


@pytest.fixture
def bucket(s3_endpoint, tmp_path):
    s3 = s3_client(s3_endpoint, signature_version="s3v4")
    name = f"records-{tmp_path.name[-20:].lower().replace('_', '-')}".strip("-")
    s3.create_bucket(Bucket=name)
    return s3, name


def test_a_worker_is_excluded_by_their_record_across_batches_not_after_one_miss(
    tmp_path, bucket, crowd
):
    s3, name = bucket
    params = dict(s3_bucket=name, exclude_failed_workers=True, budget_usd=None)
    first = Batch(tmp_path, s3, crowd, "batch-a", **params)
    for plan in first.plans[:2]:
        first.answer(plan, "ASLOPPY", right=False)
    first.answer(first.plans[0], "ACAREFUL", right=False)
    first.answer(first.plans[1], "ACAREFUL", right=True)
    first.answer(first.plans[2], "ACAREFUL", right=True)
    first.review()
    first.review()  # a rerun of the review: nothing counted twice
    store = stage.worker_records(s3, first.settings)
    assert store.history(["ASLOPPY", "ACAREFUL"], excluding_batch="") == {
        "ASLOPPY": Skill(wrong=2),
        "ACAREFUL": Skill(right=2, wrong=1),
    }
    assert not stage.ledger_for(s3, first.settings).entries("exclusions")  # 2 answers < m = 3

    second = Batch(tmp_path, s3, crowd, "batch-b", **params)
    second.answer(second.plans[0], "ASLOPPY", right=False)  # the third miss, in another batch
    second.answer(second.plans[0], "ACAREFUL", right=False)  # a second miss, and a right one:
    second.answer(second.plans[1], "ACAREFUL", right=True)  # 3 of 5 = 0.6, not below
    second.review()
    assert set(stage.ledger_for(s3, second.settings).entries("exclusions")) == {"ASLOPPY"}
    assert crowd.accept_status(second.plans[2].hit_id, "ASLOPPY") != 303
    assert crowd.accept_status(second.plans[2].hit_id, "ACAREFUL") == 303
    written = stage.results(second.dir, s3, second.settings, FEES)
    rows = json.loads(Path(written["json"]).read_text())["workers"]
    assert sorted((w["gold_across_batches"]["right"], w["gold_across_batches"]["answers"])
                  for w in rows) == [(0, 3), (3, 5)]  # fmt: skip
    assert "gold right, all batches" in Path(written["html"]).read_text()


def test_a_worker_at_the_hit_cap_cannot_take_another_hit_of_the_batch(tmp_path, bucket, crowd):
    s3, name = bucket
    batch = Batch(tmp_path, s3, crowd, "batch-cap", s3_bucket=name, max_hits_per_worker=2)
    first, second, third = batch.plans
    batch.answer(first, "AEAGER", right=True)
    batch.answer(second, "AEAGER", right=True)
    batch.answer(first, "ACALM", right=True)
    batch.review()
    assert set(stage.ledger_for(s3, batch.settings).entries("capped")) == {"AEAGER"}
    assert crowd.accept_status(third.hit_id, "AEAGER") != 303  # neither preview nor accept
    assert crowd.page(f"/hit/{third.hit_id}/question?workerId=AEAGER")[0] == 403
    assert (
        "reached the HIT cap of batch batch-cap"
        in crowd.page(f"/hit/{third.hit_id}?workerId=AEAGER")[2]
    )
    assert crowd.page(f"/hit/{third.hit_id}/question?workerId=ACALM")[0] == 200
    assert crowd.accept_status(third.hit_id, "ACALM") == 303  # under the cap
    batch.review()  # exactly once: granted before, not again
    assert set(stage.ledger_for(s3, batch.settings).entries("capped")) == {"AEAGER"}
    other = Batch(tmp_path, s3, crowd, "batch-other", s3_bucket=name, max_hits_per_worker=2)
    assert crowd.accept_status(other.plans[0].hit_id, "AEAGER") == 303  # this batch only


def test_s3_failing_on_the_records_is_logged_and_never_stops_a_review(ledger, caplog):
    """A listing or a write refused by S3 (after the client's own retries) is one clear error
    the crowd logic catches (``RecordsUnavailable``, not boto's), and the stage goes on."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    from include.crowd.worker_records import RecordsUnavailable

    class Failing:
        def __init__(self, error):
            self.error = error

        def list_objects_v2(self, **_):
            raise self.error

        def put_object(self, **_):
            raise self.error

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListObjectsV2")
    for error in (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), denied):
        store = WorkerRecords(Failing(error), "bucket", "image-similarity")
        with pytest.raises(RecordsUnavailable, match="could not be listed"):
            store.answers(["AWORKER1"])
        with pytest.raises(RecordsUnavailable, match="could not be kept"):
            store.add([answer("AWORKER1", "batch-1", "A1", True)], known={})
        settings = crowd_settings("batch-1")
        review = Review("A1", "H1", "AWORKER1", "q.jpg", True, True, 1, 1, "x.jpg", True)
        with caplog.at_level(logging.WARNING):
            assert stage.gold_history(Failing(error), settings, [review]) == {}
        assert "could not be read" in caplog.text
