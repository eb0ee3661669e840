"""Aggregation of reviewed assignments: majority vote over counted votes, Dawid-Skene with gold.

``make_plan`` and ``make_review`` build the records the way the crowd stage does (shuffled option
positions, "none of these" last); test_report.py uses them too.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from include.crowd.aggregate import aggregate, money, usd
from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef, Option, Question, Review

NOW = "2026-01-02T03:04:05Z"


def make_plan(
    query: str,
    candidates: list[str],
    *,
    hit_id: str | None,
    order: tuple[int, ...] | None = None,
    gold_correct: int = 1,
    batch_id: str = "batch-1",
) -> HitPlan:
    """A HIT for ``query`` whose model matches are ``candidates`` (rank order); ``order`` gives
    each rank's position on the page (default 1, 2, 3); "none of these" is the last position."""
    order = order or tuple(range(1, len(candidates) + 1))
    scores = [0.95 - 0.07 * i for i in range(len(candidates))]
    model_options = tuple(
        sorted(
            (
                Option(pos, ImageRef(name, f"sha-{name}", f"img/{name}"), rank, scores[rank - 1])
                for rank, (name, pos) in enumerate(zip(candidates, order, strict=True), start=1)
            ),
            key=lambda o: o.position,
        )
    ) + (Option(len(candidates) + 1, None),)
    gold_options = tuple(
        Option(pos, ImageRef(f"gold-{pos}.jpg", f"sha-gold-{pos}")) for pos in (1, 2, 3)
    )
    return HitPlan(
        batch_id=batch_id,
        query=ImageRef(query, f"sha-{query}", f"img/{query}"),
        token=f"token-{query}",
        questions=(
            Question(
                "q1",
                "gold",
                ImageRef("known.jpg", "sha-known"),
                gold_options,
                "known1",
                gold_correct,
            ),
            Question("q2", "model", ImageRef(query, f"sha-{query}"), model_options),
        ),
        hit_id=hit_id,
    )


def make_review(
    plan: HitPlan,
    worker: str,
    pick: str,
    *,
    gold_ok: bool = True,
    valid: bool = True,
    gold_pick: int | None = None,
    assignment: str | None = None,
    problems: tuple[str, ...] = (),
) -> Review:
    """``worker``'s answer to ``plan``: ``pick`` is an image name or NONE_OF_THESE; the gold
    answer is right when ``gold_ok`` (or the explicit position ``gold_pick``)."""
    model = plan.model
    position = next(
        o.position for o in model.options if (o.image.name if o.image else NONE_OF_THESE) == pick
    )
    correct = plan.gold.correct_position
    if gold_pick is None:
        gold_pick = correct if gold_ok else (correct % 3) + 1
    gold_ok = gold_pick == correct
    return Review(
        assignment_id=assignment or f"A-{plan.hit_id}-{worker}",
        hit_id=plan.hit_id,
        worker_id=worker,
        query=plan.query.name,
        valid=valid,
        gold_correct=gold_ok if valid else None,
        gold_position=gold_pick if valid else None,
        model_position=position if valid else None,
        vote=pick if valid else None,
        counted=valid and gold_ok,
        problems=list(problems),
    )


def by_query(results: dict) -> dict[str, dict]:
    return {q["query"]: q for q in results["queries"]}


@pytest.fixture
def plan() -> HitPlan:
    return make_plan("q.jpg", ["a.jpg", "b.jpg", "c.jpg"], hit_id="H1", order=(3, 1, 2))


def test_majority_winner_shares_and_agreement(plan):
    reviews = [make_review(plan, f"W{i}", "a.jpg") for i in range(3)]
    reviews.append(make_review(plan, "W9", "b.jpg"))

    query = aggregate([plan], reviews, computed_at=NOW)["queries"][0]

    assert query["status"] == "decided"
    assert query["winner"] == "a.jpg"
    assert query["confidence"] == 0.75
    assert query["tie"] == []
    assert [(c["name"], c["rank"], c["votes"], c["share"]) for c in query["candidates"]] == [
        ("a.jpg", 1, 3, 0.75),
        ("b.jpg", 2, 1, 0.25),
        ("c.jpg", 3, 0, 0.0),
    ]
    assert query["none"] == {"votes": 0, "share": 0.0}
    assert query["agrees_with_model"] is True
    assert query["ds"]["winner"] == "a.jpg"


def test_crowd_picking_another_candidate_disagrees_with_model(plan):
    other = make_plan("r.jpg", ["d.jpg", "e.jpg", "f.jpg"], hit_id="H2")
    reviews = [make_review(plan, f"W{i}", "b.jpg") for i in range(3)]
    reviews += [make_review(other, f"W{i}", "d.jpg") for i in range(3)]

    results = aggregate([plan, other], reviews, computed_at=NOW)

    assert by_query(results)["q.jpg"]["agrees_with_model"] is False
    assert by_query(results)["r.jpg"]["agrees_with_model"] is True
    assert results["summary"]["agreement"] == {"agree": 1, "decided": 2, "share": 0.5}


def test_none_of_these_can_win(plan):
    reviews = [make_review(plan, f"W{i}", NONE_OF_THESE) for i in range(2)]

    query = aggregate([plan], reviews, computed_at=NOW)["queries"][0]

    assert query["winner"] == NONE_OF_THESE
    assert query["none"] == {"votes": 2, "share": 1.0}
    assert query["agrees_with_model"] is False


def test_tie_is_reported_in_rank_order_and_is_deterministic(plan):
    reviews = [
        make_review(plan, "W1", NONE_OF_THESE),
        make_review(plan, "W2", "c.jpg"),
        make_review(plan, "W3", NONE_OF_THESE),
        make_review(plan, "W4", "c.jpg"),
    ]
    first = aggregate([plan], reviews, computed_at=NOW)
    query = first["queries"][0]

    assert query["status"] == "tie"
    assert query["winner"] is None
    assert query["tie"] == ["c.jpg", NONE_OF_THESE]
    assert query["confidence"] is None
    assert query["agrees_with_model"] is None
    assert first["summary"]["queries_tied"] == 1
    assert first["summary"]["queries_decided"] == 0
    for seed in range(5):
        shuffled = reviews[:]
        random.Random(seed).shuffle(shuffled)
        assert aggregate([plan], shuffled, computed_at=NOW) == first


def test_votes_failing_gold_are_not_counted_but_feed_gold_stats(plan):
    reviews = [make_review(plan, "W1", "a.jpg")]
    reviews += [make_review(plan, f"S{i}", "b.jpg", gold_ok=False) for i in range(3)]

    results = aggregate([plan], reviews, computed_at=NOW)
    query = results["queries"][0]

    assert query["winner"] == "a.jpg"
    assert query["counted_votes"] == 1
    assert query["candidates"][1]["votes"] == 0
    assert query["assignments"] == {
        "submitted": 4,
        "valid": 4,
        "counted": 1,
        "gold_passed": 1,
        "gold_failed": 3,
        "invalid": 0,
        "problems": [],
    }
    assert results["summary"]["gold_pass_rate"] == 0.25


def test_invalid_answers_are_ignored_and_their_problems_listed(plan):
    reviews = [
        make_review(plan, "W1", "b.jpg"),
        make_review(plan, "W2", "a.jpg", valid=False, problems=("missing field q2",)),
        make_review(plan, "W3", "a.jpg", valid=False, problems=("missing field q2",)),
        make_review(plan, "W4", "a.jpg", valid=False, problems=("unknown value '9' for q1",)),
    ]

    results = aggregate([plan], reviews, computed_at=NOW)
    query = results["queries"][0]

    assert query["winner"] == "b.jpg"
    assert query["counted_votes"] == 1
    assert query["assignments"]["invalid"] == 3
    assert query["assignments"]["problems"] == [
        {"problem": "missing field q2", "count": 2},
        {"problem": "unknown value '9' for q1", "count": 1},
    ]
    assert results["summary"]["valid"] == 1
    assert results["summary"]["invalid"] == 3


def test_counted_vote_for_an_image_not_in_the_hit_is_not_counted(plan):
    stray = make_review(plan, "W1", "a.jpg")
    stray.vote = "elsewhere.jpg"

    query = aggregate([plan], [stray], computed_at=NOW)["queries"][0]

    assert query["counted_votes"] == 0
    assert query["status"] == "no votes"
    assert "not an option" in query["assignments"]["problems"][0]["problem"]


def test_queries_without_answers_are_present(plan):
    waiting = make_plan("w.jpg", ["x.jpg", "y.jpg", "z.jpg"], hit_id="H2")
    not_created = make_plan("n.jpg", ["x.jpg", "y.jpg", "z.jpg"], hit_id=None)

    results = aggregate(
        [waiting, not_created, plan], [make_review(plan, "W1", "a.jpg")], computed_at=NOW
    )

    assert [q["query"] for q in results["queries"]] == ["n.jpg", "q.jpg", "w.jpg"]
    for name in ("n.jpg", "w.jpg"):
        query = by_query(results)[name]
        assert query["status"] == "no votes"
        assert query["winner"] is None and query["confidence"] is None
        assert query["ds"]["winner"] is None
        assert [c["share"] for c in query["candidates"]] == [None, None, None]
        assert query["assignments"]["submitted"] == 0
    assert by_query(results)["n.jpg"]["hit_id"] is None
    summary = results["summary"]
    assert (summary["hits"], summary["hits_created"], summary["queries_with_votes"]) == (3, 2, 1)


def test_duplicate_and_foreign_reviews(plan, caplog):
    first = make_review(plan, "W1", "a.jpg", assignment="A1")
    again = make_review(plan, "W1", "b.jpg", assignment="A1")  # re-recorded: the last one wins
    foreign = make_review(plan, "W2", "a.jpg", assignment="A2")
    foreign.hit_id = "ANOTHER-HIT"

    results = aggregate([plan], [first, again, foreign], computed_at=NOW)

    assert results["summary"]["assignments"] == 1
    assert results["summary"]["unmatched_reviews"] == 1
    assert results["queries"][0]["winner"] == "b.jpg"
    assert "ignored 1 reviews" in caplog.text


def test_no_worker_ids_in_results_and_json_ready(plan):
    reviews = [make_review(plan, f"AWORKERID{i}", "a.jpg") for i in range(3)]

    results = aggregate([plan], reviews, spent={"rewards": 30}, computed_at=NOW)
    text = json.dumps(results)

    assert "AWORKERID" not in text
    assert [w["worker"] for w in results["workers"]] == ["worker 1", "worker 2", "worker 3"]
    assert json.loads(text) == results
    assert results["worker_ids_shown"] is False


def test_worker_ids_are_shown_only_when_asked(plan):
    reviews = [make_review(plan, f"AWORKERID{i}", "a.jpg") for i in range(3)]

    results = aggregate([plan], reviews, computed_at=NOW, show_worker_ids=True)

    assert [w["worker"] for w in results["workers"]] == [f"AWORKERID{i}" for i in range(3)]
    assert results["worker_ids_shown"] is True


def test_summary_money_and_time(plan):
    spent = {"rewards": 150, "bonuses": "0.45", "fees": 39, "approved": 3}

    results = aggregate([plan], [], spent=spent, computed_at=NOW)

    assert results["computed_at"] == NOW
    assert results["batch_id"] == "batch-1"
    assert results["summary"]["spent"] == {
        "approved": 3,
        "rewards_cents": 150,
        "rewards": "$1.50",
        "bonuses_cents": 45,
        "bonuses": "$0.45",
        "fees_cents": 39,
        "fees": "$0.39",
        "total_cents": 234,
        "total": "$2.34",
    }
    assert results["summary"]["gold_pass_rate"] is None
    assert aggregate([plan], [])["computed_at"].endswith("Z")


def test_money_helpers():
    assert usd(0) == "$0.00" and usd(123456) == "$1,234.56" and usd(-5) == "-$0.05"
    assert money({"rewards": 100, "total": 999})["total"] == "$9.99"
    assert money(None) is None
    with pytest.raises(TypeError, match="integer cents or a dollar string"):
        money({"fees": 0.2})


def spammer_scenario() -> tuple[list[HitPlan], list[Review], dict[str, str]]:
    """Nine HITs answered by 3 diligent workers and 4 spammers who always click position 1.

    The gold question's correct position is 1 on HITs 0, 3 and 6, so there the spammers pass
    gold and their (position-1) votes count and outnumber the diligent workers'.
    """
    plans, reviews, truth = [], [], {}
    for i in range(9):
        names = [f"m{i}-r1.jpg", f"m{i}-r2.jpg", f"m{i}-r3.jpg"]
        order = [(2, 3, 1), (1, 2, 3), (3, 1, 2)][i % 3]
        plan = make_plan(f"q{i}.jpg", names, hit_id=f"H{i}", order=order, gold_correct=(i % 3) + 1)
        plans.append(plan)
        truth[plan.query.name] = names[1] if i in (4, 5) else names[0]
        first = next(o for o in plan.model.options if o.position == 1)
        for w in range(3):
            reviews.append(make_review(plan, f"DILIGENT{w}", truth[plan.query.name]))
        for s in range(4):
            reviews.append(make_review(plan, f"SPAM{s}", first.image.name, gold_pick=1))
    return plans, reviews, truth


def test_dawid_skene_sees_through_lucky_spammers_that_fool_majority_vote():
    plans, reviews, truth = spammer_scenario()

    results = aggregate(plans, reviews, computed_at=NOW)
    queries = by_query(results)

    lucky = {"q0.jpg", "q3.jpg", "q6.jpg"}
    for name, query in queries.items():
        assert query["ds"]["winner"] == truth[name], name
        assert query["ds"]["probability"] > 0.9
        if name in lucky:
            # 4 spammers passed gold by luck: the counted majority follows them.
            assert query["counted_votes"] == 7
            assert query["winner"] != truth[name]
            assert query["confidence"] == round(4 / 7, 4)
        else:
            # The spammers failed gold: only the diligent workers' votes count.
            assert query["counted_votes"] == 3
            assert query["winner"] == truth[name]
            assert query["confidence"] == 1.0
    assert results["summary"]["gold_pass_rate"] == round((27 + 12) / 63, 4)
    assert results["summary"]["ds_agreement"] == {"agree": 7, "decided": 9, "share": 0.7778}
    agreement = sorted(w["ds_agreement"] for w in results["workers"])
    assert agreement[:4] == [agreement[0]] * 4 and agreement[0] < 0.5  # the spammers
    assert agreement[4:] == [1.0, 1.0, 1.0]  # the diligent workers


def herd_scenario(*, with_gold: bool) -> tuple[list[HitPlan], list[Review]]:
    """Six HITs: 2 careful workers pick the rank-1 image and pass gold; a herd of 3 agree with
    each other on a wrong image and a wrong gold answer (whose position varies). Without the
    gold's correct positions the herd's consistency would make it look right."""
    orders = [(1, 2, 3), (2, 3, 1), (3, 1, 2), (1, 3, 2), (2, 1, 3), (3, 2, 1)]
    plans, reviews = [], []
    for i in range(6):
        names = [f"a{i}.jpg", f"b{i}.jpg", f"c{i}.jpg"]
        plan = make_plan(
            f"q{i}.jpg", names, hit_id=f"H{i}", order=orders[i], gold_correct=(i % 3) + 1
        )
        correct = plan.gold.correct_position
        herd_gold = correct % 3 + 1 if i % 2 else (correct + 1) % 3 + 1
        reviews += [make_review(plan, f"CAREFUL{w}", names[0]) for w in range(2)]
        reviews += [
            make_review(plan, f"HERD{h}", names[2 - i % 2], gold_pick=herd_gold) for h in range(3)
        ]
        if not with_gold:
            gold = dataclasses.replace(plan.gold, correct_position=None)
            plan = dataclasses.replace(plan, questions=(gold, plan.model))
        plans.append(plan)
    return plans, reviews


def test_dawid_skene_uses_gold_to_trust_a_careful_minority():
    plans, reviews = herd_scenario(with_gold=True)

    results = aggregate(plans, reviews, computed_at=NOW)

    for i, query in enumerate(results["queries"]):
        assert query["winner"] == f"a{i}.jpg"  # only the careful workers passed gold
        assert query["ds"]["winner"] == f"a{i}.jpg"  # 2 against 3, but gold says who is right
        assert query["ds"]["probability"] > 0.9
    assert results["summary"]["ds_agreement"]["share"] == 1.0
    assert sorted(w["ds_agreement"] for w in results["workers"]) == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_without_gold_dawid_skene_follows_the_consistent_herd():
    plans, reviews = herd_scenario(with_gold=False)

    queries = aggregate(plans, reviews, computed_at=NOW)["queries"]

    assert all(query["ds"]["winner"] != f"a{i}.jpg" for i, query in enumerate(queries))
