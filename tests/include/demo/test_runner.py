"""What the demo prints of the crowd's results: every aggregation method, the primary on top."""

from __future__ import annotations

import json

from include.crowd.aggregation.registry import aggregate
from include.demo.runner import crowd_lines
from testsupport.crowd_answers import make_plan, make_review


def sample() -> tuple[list, list]:
    agreed = make_plan("agreed.jpg", ["a.jpg", "b.jpg", "c.jpg"], hit_id="H1")
    split = make_plan("split.jpg", ["d.jpg", "e.jpg", "f.jpg"], hit_id="H2")
    reviews = [make_review(agreed, w, "a.jpg") for w in ("W1", "W2", "W3")]
    reviews.append(make_review(agreed, "W4", "b.jpg"))
    reviews += [make_review(split, "W1", "e.jpg"), make_review(split, "W4", "d.jpg")]
    return [agreed, split], reviews


def test_each_method_gets_a_line_and_differing_picks_are_shown():
    plans, reviews = sample()
    results = json.loads(json.dumps(aggregate(plans, reviews, spent={"rewards": 25})))

    lines = crowd_lines(results)

    assert lines[0] == "\ncrowd (2 HITs, 6 assignments):"
    assert lines[1].startswith("  agreed.jpg   winner a.jpg") and "agrees with model" in lines[1]
    assert "dawid_skene" not in lines[1] and "wawa" not in lines[1]  # all three agree
    # Majority vote ties 1-1; Wawa weighs W1 (agreed with the majority) over W4 (did not).
    assert lines[2].startswith("  split.jpg    winner tie d.jpg/e.jpg")
    assert "wawa: e.jpg" in lines[2]
    assert (
        lines[3]
        == "majority (primary): 1 decided, 1 tied, agrees with the model's first match on 1/1"
    )
    assert lines[4].startswith("dawid_skene: ") and lines[5].startswith("wawa: 2 decided, 0 tied")
    assert lines[6].startswith(
        "gold pass rate 100%; crowd agrees with the model's first match on 1/1"
    )
    assert "spent $0.25" in lines[6]


def test_the_primary_method_leads_the_lines():
    plans, reviews = sample()
    results = aggregate(plans, reviews, primary="wawa")

    lines = crowd_lines(results)

    assert lines[2].startswith("  split.jpg    winner e.jpg") and "majority: tie" in lines[2]
    assert lines[5].startswith("wawa (primary): 2 decided")
