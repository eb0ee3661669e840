"""Adaptive overlap: the gold-anchored posterior (``quality``) and more assignments for unsure
HITs exactly once (``extend``), against moto's S3 server and the crowd sandbox."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import pytest
from test_create_review import answers_for, plan

from include.crowd.create import create_hits
from include.crowd.extend import added_assignments, extend_unsure, extension_token
from include.crowd.quality import Overlap, Skill, more_assignments, posteriors, skills
from include.crowd.records import NONE_OF_THESE, Review
from include.crowd.review import review_batch
from testsupport import sandbox_process as sandbox_fixtures
from testsupport.crowd_plans import REVIEW, SETTINGS, render
from testsupport.platforms import mturk_platform
from testsupport.sandbox_process import create_hit

OVERLAP = Overlap(start=3, maximum=5, confidence=0.95)


def review(p, worker: str, vote: str, *, gold: bool = True, valid: bool = True, n: int = 0):
    return Review(
        assignment_id=f"A{worker}{n}{p.hit_id}",
        hit_id=p.hit_id,
        worker_id=worker,
        query=p.query.name,
        valid=valid,
        gold_correct=gold if valid else None,
        gold_position=2,
        model_position=next(
            (
                o.position
                for o in p.model.options
                if (o.image.name if o.image else NONE_OF_THESE) == vote
            ),
            1,
        ),  # fmt: skip
        vote=vote if valid else None,
        counted=valid and gold,
    )


def created(query: str, hit_id: str):
    return dataclasses.replace(plan(query), hit_id=hit_id, max_assignments=3)


# --- the model ----------------------------------------------------------------------------------


def test_skill_is_the_beta_posterior_mean_of_the_gold_record():
    assert Skill().estimate == pytest.approx(2 / 3)
    assert Skill(right=7, wrong=0).estimate == pytest.approx(0.9)
    assert Skill(right=0, wrong=3).estimate == pytest.approx(2 / 6)
    p = created("a.jpg", "H1")
    found = skills([review(p, "W1", "x"), review(p, "W1", "x"), review(p, "W2", "x", gold=False)])
    assert found["W1"] == Skill(right=1) and found["W2"] == Skill(wrong=1)  # one assignment once
    assert skills([review(p, "W1", "x")], {"W1": Skill(right=4, wrong=1)})["W1"] == Skill(5, 1)


def test_agreeing_skilled_workers_make_a_confident_winner_and_a_split_does_not():
    p = created("a.jpg", "H1")
    match1 = "a.jpg-match1.jpg"
    agree = [review(p, w, match1) for w in ("W1", "W2", "W3")]
    history = {w: Skill(right=8) for w in ("W1", "W2", "W3")}
    post = posteriors([p], agree, history)["H1"]
    assert post.winner == match1 and post.confidence > 0.99 and post.answers == 3
    split = [review(p, "W1", match1), review(p, "W2", "a.jpg-match2.jpg"),
             review(p, "W3", NONE_OF_THESE)]  # fmt: skip
    assert posteriors([p], split, history)["H1"].winner is None  # an exact three-way tie
    assert posteriors([p], [], history)["H1"].confidence == 0.0


def test_a_worker_who_fails_gold_weighs_less_and_invalid_answers_not_at_all():
    p = created("a.jpg", "H1")
    good, bad = "a.jpg-match1.jpg", "a.jpg-match3.jpg"
    reviews = [review(p, "WGOOD", good), review(p, "WBAD", bad, gold=False),
               review(p, "WBAD2", bad, valid=False)]  # fmt: skip
    history = {"WGOOD": Skill(right=5), "WBAD": Skill(right=0, wrong=5)}
    post = posteriors([p], reviews, history)["H1"]
    assert post.winner == good and post.answers == 2
    # A worker at or below chance carries no information: one good vote decides alone.
    alone = posteriors([p], [review(p, "WGOOD", good)], history)["H1"]
    assert post.probabilities[good] == pytest.approx(alone.probabilities[good])


@pytest.mark.parametrize(
    ("start", "maximum", "confidence", "message"),
    [
        (3, 2, 0.9, "at least"),
        (5, 10, 0.9, "fewer than 10"),
        (3, 5, 1.0, "confidence"),
        (3, 5, 0.2, "confidence"),
    ],
)
def test_overlap_settings_that_cannot_work_are_refused(start, maximum, confidence, message):
    with pytest.raises(ValueError, match=message):
        Overlap(start=start, maximum=maximum, confidence=confidence)
    assert Overlap(start=10, maximum=20, confidence=0.9).adaptive


def test_more_assignments_only_when_unsure_all_submitted_and_under_the_maximum():
    p = created("a.jpg", "H1")
    unsure = posteriors([p], [review(p, "W1", "a.jpg-match1.jpg")])["H1"]
    assert more_assignments(unsure, 3, 3, OVERLAP) == 1
    assert more_assignments(unsure, 3, 2, OVERLAP) == 0  # one is still being worked on
    assert more_assignments(unsure, 5, 5, OVERLAP) == 0  # at the maximum
    sure = dataclasses.replace(unsure, probabilities={"a.jpg-match1.jpg": 0.99, "x": 0.01})
    assert more_assignments(sure, 3, 3, OVERLAP) == 0
    assert more_assignments(unsure, 3, 3, dataclasses.replace(OVERLAP, step=5)) == 2


# --- extending, against the sandbox -------------------------------------------------------------


def split_hit(crowd, ledger, platform):
    """One HIT of 3 assignments answered three different ways (gold right): unsure."""
    (p,) = create_hits(platform, [plan("a.jpg")], ledger, SETTINGS, render)
    for worker, model in (("AONE", 1), ("ATWO", 2), ("ATHREE", 3)):
        crowd.work(p.hit_id, worker, answers_for(p, gold=2, model=model))
    return p


def round_of(platform, ledger, plans, *, overlap=OVERLAP, until=None, **options):
    outcome = review_batch(platform, plans, ledger, REVIEW)
    post = posteriors(plans, outcome.reviews)
    submitted = {p.hit_id: sum(1 for r in outcome.reviews if r.hit_id == p.hit_id) for p in plans}
    until = until or datetime.now(UTC) + timedelta(hours=1)
    return extend_unsure(platform, plans, ledger, post, submitted, overlap, open_until=until,
                         **options)  # fmt: skip


def test_an_unsure_hit_gets_one_more_assignment_exactly_once_until_its_maximum(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    p = split_hit(crowd, ledger, platform)

    first = round_of(platform, ledger, [p])
    assert first.extended == [p.hit_id] and first.added == 1
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 4
    # The same round again (a retry): the new assignment is not submitted yet, nothing added.
    again = round_of(platform, ledger, [p])
    assert again.extended == [] and again.waiting == 1
    assert again.awaiting == [p.hit_id]  # a retried task waits for it rather than ending
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 4

    crowd.work(p.hit_id, "AFOUR", answers_for(p, gold=2, model=4))  # still unsure
    assert round_of(platform, ledger, [p]).extended == [p.hit_id]
    crowd.work(p.hit_id, "AFIVE", answers_for(p, gold=2, model=4))
    last = round_of(platform, ledger, [p])
    assert last.extended == [] and last.at_maximum + last.confident == 1
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 5
    assert added_assignments(ledger) == {p.hit_id: 2}
    assert {e["status"] for e in ledger.entries("extensions").values()} == {"done"}


def test_a_crash_between_claim_and_call_is_finished_once_by_the_next_round(
    crowd, ledger, monkeypatch
):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    p = split_hit(crowd, ledger, platform)
    real = platform.add_assignments

    def crash(*args, **kwargs):
        raise ConnectionError("simulated crash before CreateAdditionalAssignmentsForHIT")

    monkeypatch.setattr(platform, "add_assignments", crash)
    with pytest.raises(ConnectionError):
        round_of(platform, ledger, [p])
    assert ledger.get("extensions", f"{p.hit_id}.1")["status"] == "requesting"
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 3

    monkeypatch.setattr(platform, "add_assignments", real)
    round_of(platform, ledger, [p])
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 4
    assert ledger.get("extensions", f"{p.hit_id}.1")["status"] == "done"
    assert ledger.get("extensions", f"{p.hit_id}.2") is None


def test_a_crash_after_the_call_adds_nothing_more(crowd, ledger, monkeypatch):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    p = split_hit(crowd, ledger, platform)
    real_put = ledger.put

    def crash_on_done(kind, key, doc):
        if kind == "extensions" and doc.get("status") == "done":
            raise ConnectionError("simulated crash after the call")
        real_put(kind, key, doc)

    monkeypatch.setattr(ledger, "put", crash_on_done)
    with pytest.raises(ConnectionError):
        round_of(platform, ledger, [p])
    monkeypatch.setattr(ledger, "put", real_put)
    round_of(platform, ledger, [p])
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 4
    # Even with MTurk's token memory gone, the HIT's own count says it was done.
    assert (
        platform.add_assignments(p.hit_id, 1, token=extension_token("batch-1", p.hit_id, 1))
        is False
    )


def test_an_expired_hit_is_kept_open_until_the_deadline(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    p = split_hit(crowd, ledger, platform)
    platform.expire(p.hit_id)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    assert round_of(platform, ledger, [p], until=until).extended == [p.hit_id]
    hit = mturk.get_hit(HITId=p.hit_id)["HIT"]
    assert hit["MaxAssignments"] == 4
    assert abs((hit["Expiration"] - until).total_seconds()) < 2
    assert crowd.accept_status(p.hit_id, "AFOUR") == 303  # accepted: a worker can take it


def test_the_budget_left_stops_an_extension(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    p = split_hit(crowd, ledger, platform)
    outcome = round_of(platform, ledger, [p], approval_cents={p.hit_id: 6}, budget_left_cents=5)
    assert outcome.extended == [] and "exceed the budget left ($0.05)" in outcome.refused[p.hit_id]
    assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 3


def test_an_extension_refused_for_want_of_funds_is_made_once_when_funds_are_free(
    tmp_path, ledger, caplog
):
    """MTurk holds what a HIT may pay from its creation, so another batch can take the funds
    an extension needs (the budget check at creation reserves nothing): the refused extension
    neither stops the review round nor is lost; it stays claimed and a later round (when other
    HITs were extended) or a rerun of the batch makes it, with the same request token, once."""
    crowd = sandbox_fixtures.start_sandbox(tmp_path / "state.sqlite", "--balance", "1.00")
    try:
        mturk = crowd.client()
        platform = mturk_platform(mturk)
        p = split_hit(crowd, ledger, platform)  # holds 3 x 0.06
        other = create_hit(  # another batch's HIT: holds 0.46 for a minute
            mturk, Reward="0.38", MaxAssignments=1, LifetimeInSeconds=60, RequesterAnnotation="b2"
        )
        # The review pays three bonuses of 0.10 + 0.02 from what is left (0.36): nothing
        # remains for one more assignment (0.06).
        with caplog.at_level(logging.WARNING, logger="include.crowd.extend"):
            outcome = round_of(platform, ledger, [p])
        assert outcome.extended == [] and "available funds" in outcome.refused[p.hit_id]
        assert "insufficient funds" in caplog.text
        assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 3
        assert ledger.get("extensions", f"{p.hit_id}.1")["status"] == "requesting"

        crowd.admin("clock", {"advance": 61})  # the other HIT expires untaken
        assert mturk.get_hit(HITId=other["HITId"])["HIT"]["HITStatus"] == "Reviewable"
        again = round_of(platform, ledger, [p])
        assert again.extended == [p.hit_id] and again.refused == {}
        assert mturk.get_hit(HITId=p.hit_id)["HIT"]["MaxAssignments"] == 4
        assert ledger.get("extensions", f"{p.hit_id}.1")["status"] == "done"
        assert ledger.get("extensions", f"{p.hit_id}.2") is None
        assert added_assignments(ledger) == {p.hit_id: 1}
    finally:
        crowd.stop()


def test_fixed_overlap_never_extends(crowd, ledger):
    mturk = crowd.client()
    platform = mturk_platform(mturk)
    p = split_hit(crowd, ledger, platform)
    fixed = Overlap(start=3, maximum=3, confidence=0.95)
    assert round_of(platform, ledger, [p], overlap=fixed).extended == []
    assert ledger.entries("extensions") == {}


def test_the_gold_anchored_posterior_is_an_aggregation_method_of_the_results():
    from include.crowd.aggregation.registry import aggregate

    p = created("a.jpg", "H1")
    good, bad = "a.jpg-match1.jpg", "a.jpg-match2.jpg"
    reviews = [review(p, "WG1", good), review(p, "WG2", good)]
    reviews += [review(p, f"WB{n}", bad, gold=False) for n in range(3)]  # outvote, fail gold
    results = aggregate([p], reviews, computed_at="2026-01-01T00:00:00+00:00")
    (query,) = results["queries"]
    verdict = query["methods"]["gold_skill"]
    assert verdict["winner"] == good
    expected = posteriors([p], reviews)["H1"].confidence
    assert verdict["confidence"] == pytest.approx(expected, abs=1e-3) and expected > 0.7
    assert results["methods"]["gold_skill"]["title"] == "Gold-anchored posterior"
    # The failing workers' agreement with it is 0: their votes all differ from its pick.
    agreement = {w["worker"]: w["agreement"]["gold_skill"] for w in results["workers"]}
    assert sorted(agreement.values()) == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("key", "doc"),
    [
        ("H1.1", {"status": "done", "count": "1", "target": 4}),
        ("H1.1", {"status": "maybe", "count": 1, "target": 4}),
        ("H1.1", {"status": "done", "count": 0, "target": 4}),
        ("H1.1", {"status": "done", "count": True, "target": 4}),
        ("H1.1", {"status": "done", "count": 5, "target": 4}),
        ("H1.1", ["not", "an", "object"]),
        ("H1", {"status": "done", "count": 1, "target": 4}),
        ("H1.2", {"status": "done", "count": 1, "target": 4}),  # no H1.1
    ],
)
def test_a_damaged_extension_entry_stops_extending_rather_than_guessing(ledger, key, doc):
    from include.crowd.extend import DamagedEntry, extensions_of

    ledger.put_json(ledger.entry_name("extensions", key), doc)
    with pytest.raises(DamagedEntry, match="no HIT is extended"):
        extensions_of(ledger)
    with pytest.raises(DamagedEntry):
        added_assignments(ledger)  # the review's budget reads them too: it stops as well
