"""Aggregation of reviewed assignments: majority vote over counted votes, Dawid-Skene with gold,
Wawa, and the registry that runs them with one primary method on top."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from include.crowd import aggregation
from include.crowd.aggregation import DEFAULT_PRIMARY, Method, registry
from include.crowd.aggregation.registry import aggregate
from include.crowd.aggregation.results import money
from include.crowd.costs import usd
from include.crowd.records import NONE_OF_THESE, HitPlan, Review
from testsupport.crowd_answers import make_plan, make_review

NOW = "2026-01-02T03:04:05Z"


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
    assert query["methods"]["dawid_skene"]["winner"] == "a.jpg"


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
        assert query["methods"]["dawid_skene"]["winner"] is None
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
        ds = query["methods"]["dawid_skene"]
        assert ds["winner"] == truth[name], name
        assert ds["confidence"] > 0.9
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
    assert results["summary"]["methods"]["dawid_skene"]["agreement"] == {
        "agree": 7,
        "decided": 9,
        "share": 0.7778,
    }
    agreement = sorted(w["agreement"]["dawid_skene"] for w in results["workers"])
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
        ds = query["methods"]["dawid_skene"]
        assert ds["winner"] == f"a{i}.jpg"  # 2 against 3, but gold says who is right
        assert ds["confidence"] > 0.9
    assert results["summary"]["methods"]["dawid_skene"]["agreement"]["share"] == 1.0
    agreement = sorted(w["agreement"]["dawid_skene"] for w in results["workers"])
    assert agreement == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_without_gold_dawid_skene_follows_the_consistent_herd():
    plans, reviews = herd_scenario(with_gold=False)

    queries = aggregate(plans, reviews, computed_at=NOW)["queries"]

    assert all(
        query["methods"]["dawid_skene"]["winner"] != f"a{i}.jpg" for i, query in enumerate(queries)
    )


def test_every_method_is_one_module_named_by_one_enum_value():
    package = Path(aggregation.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "registry", "table", "results"}

    assert modules == {method.value for method in Method}  # no module without a name, no name
    assert list(registry.methods) == list(Method)  # without a module; in report order
    for method, module in registry.methods.items():
        assert module.__name__ == f"include.crowd.aggregation.{method.value}"
        assert callable(module.fit) and module.TITLE and module.READS and module.ABOUT
    assert DEFAULT_PRIMARY == Method.MAJORITY


def test_every_method_appears_in_results_summary_and_workers(plan):
    reviews = [make_review(plan, f"W{i}", "a.jpg") for i in range(3)]
    reviews.append(make_review(plan, "W9", "b.jpg"))

    results = aggregate([plan], reviews, computed_at=NOW)
    names = [method.value for method in Method]

    assert names == ["majority", "dawid_skene", "wawa", "gold_skill"]
    assert results["primary"] == "majority"
    assert list(results["methods"]) == names
    assert results["methods"]["wawa"]["title"] == "Wawa"
    query = results["queries"][0]
    assert list(query["methods"]) == names
    assert list(results["summary"]["methods"]) == names
    assert all(list(w["agreement"]) == names for w in results["workers"])
    wawa = query["methods"]["wawa"]
    assert (wawa["status"], wawa["winner"], wawa["agrees_with_model"]) == ("decided", "a.jpg", True)
    assert list(wawa["probabilities"]) == ["a.jpg", "b.jpg", "c.jpg", NONE_OF_THESE]
    # W9 disagrees with the majority on its one decided query: skill 0, so it weighs nothing.
    assert wawa["confidence"] == 1.0 and wawa["probabilities"]["b.jpg"] == 0.0
    majority = query["methods"]["majority"]
    assert majority["probabilities"] == {"a.jpg": 0.75, "b.jpg": 0.25, "c.jpg": 0.0, "none": 0.0}
    assert {k: query[k] for k in ("status", "winner", "tie", "confidence")} == {
        k: majority[k] for k in ("status", "winner", "tie", "confidence")
    }


def test_primary_selects_whose_verdict_is_on_top():
    plans, reviews, truth = spammer_scenario()

    default = aggregate(plans, reviews, computed_at=NOW)
    results = aggregate(plans, reviews, computed_at=NOW, primary="dawid_skene")

    assert results["primary"] == "dawid_skene"
    for name, query in by_query(results).items():
        ds = query["methods"]["dawid_skene"]
        assert query["winner"] == ds["winner"] == truth[name]
        assert query["confidence"] == ds["confidence"] > 0.9
        assert (query["status"], query["tie"]) == ("decided", [])
        assert query["agrees_with_model"] == ds["agrees_with_model"]
        # The other methods' verdicts stay where they are, the same as with the default.
        assert query["methods"] == by_query(default)[name]["methods"]
    lucky = by_query(default)["q0.jpg"]
    assert (
        lucky["winner"] != truth["q0.jpg"]
        and lucky["winner"] == lucky["methods"]["majority"]["winner"]
    )
    summary = results["summary"]
    assert summary["agreement"] == summary["methods"]["dawid_skene"]["agreement"]
    assert summary["agreement"] == {"agree": 7, "decided": 9, "share": 0.7778}
    assert default["summary"]["agreement"] == default["summary"]["methods"]["majority"]["agreement"]
    assert aggregate(plans, reviews, computed_at=NOW, primary=Method.WAWA)["primary"] == "wawa"


def test_an_unknown_primary_names_the_known_methods(plan):
    with pytest.raises(ValueError, match="'borda'") as raised:
        aggregate([plan], [], computed_at=NOW, primary="borda")

    assert "'majority', 'dawid_skene', 'wawa', 'gold_skill'" in str(raised.value)


def wawa_scenario() -> tuple[list[HitPlan], list[Review]]:
    """Three HITs that A, B and E decide against C and D (skills 1 and 0), then three ties of
    one counted vote each: A against C, A against B, C against D."""
    plans = [
        make_plan(f"q{i}.jpg", [f"r1-{i}.jpg", f"r2-{i}.jpg"], hit_id=f"H{i}") for i in range(6)
    ]
    reviews = []
    for plan in plans[:3]:
        reviews += [make_review(plan, w, plan.model.options[0].image.name) for w in "ABE"]
        reviews += [make_review(plan, w, plan.model.options[1].image.name) for w in "CD"]
    for plan, (first, second) in zip(plans[3:], ("AC", "AB", "CD"), strict=True):
        reviews.append(make_review(plan, first, plan.model.options[0].image.name))
        reviews.append(make_review(plan, second, plan.model.options[1].image.name))
    return plans, reviews


def test_wawa_weighs_workers_by_agreement_and_keeps_honest_ties():
    plans, reviews = wawa_scenario()

    queries = aggregate(plans, reviews, computed_at=NOW)["queries"]
    wawa = [q["methods"]["wawa"] for q in queries]

    assert [q["status"] for q in queries] == ["decided"] * 3 + ["tie"] * 3  # majority
    assert [w["winner"] for w in wawa[:4]] == ["r1-0.jpg", "r1-1.jpg", "r1-2.jpg", "r1-3.jpg"]
    assert wawa[3]["confidence"] == 1.0  # A agrees with every decided majority, C with none
    # A and B weigh the same: crowd-kit's own Wawa would break this tie by label order.
    assert (wawa[4]["status"], wawa[4]["tie"]) == ("tie", ["r1-4.jpg", "r2-4.jpg"])
    # C and D both weigh 0: the plain shares stand.
    assert (wawa[5]["status"], wawa[5]["tie"]) == ("tie", ["r1-5.jpg", "r2-5.jpg"])
    assert wawa[5]["probabilities"] == {"r1-5.jpg": 0.5, "r2-5.jpg": 0.5, NONE_OF_THESE: 0.0}


def test_wawa_without_any_decided_query_is_the_plain_majority(plan):
    reviews = [make_review(plan, "W1", "a.jpg"), make_review(plan, "W2", "b.jpg")]

    query = aggregate([plan], reviews, computed_at=NOW)["queries"][0]

    assert query["methods"]["wawa"] == query["methods"]["majority"]
    assert query["methods"]["wawa"]["tie"] == ["a.jpg", "b.jpg"]
