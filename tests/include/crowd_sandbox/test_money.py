"""MTurk's fee schedule and currency amounts."""

from __future__ import annotations

import pytest

from include.crowd_sandbox import money


@pytest.mark.parametrize(
    ("text", "cents"), [("5", 500), ("0.05", 5), ("101.42", 10142), ("1.5", 150), ("0", 0)]
)
def test_amounts_parse_as_mturk_writes_them(text, cents):
    assert money.parse_amount(text) == cents
    assert money.parse_amount(money.format_amount(cents)) == cents


@pytest.mark.parametrize("text", ["$1", "1.234", "-1", "1,00", ""])
def test_malformed_amounts_are_refused(text):
    with pytest.raises(ValueError, match="not a US dollar amount"):
        money.parse_amount(text)


def test_fees_follow_the_published_schedule():
    assert money.reward_fee(100, max_assignments=9) == 20
    assert money.reward_fee(100, max_assignments=10) == 40
    assert money.reward_fee(100, max_assignments=3, masters=True) == 25
    assert money.reward_fee(4, max_assignments=1) == 1  # at least one cent
    assert money.bonus_fee(25) == 5
    assert money.bonus_fee(1) == 1
    assert money.bonus_fee(0) == 0
    assert money.format_amount(-5) == "-0.05"
