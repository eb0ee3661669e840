"""Amounts in cents, and MTurk's published fees.

MTurk charges the requester a 20 % commission on rewards and bonuses (at least $0.01 each), a
further 20 % on rewards of HITs with 10 or more assignments, and 5 % more on rewards of HITs
that require the Masters qualification.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

BASE_FEE = Decimal("0.20")
LARGE_HIT_FEE = Decimal("0.20")
LARGE_HIT_ASSIGNMENTS = 10
MASTERS_FEE = Decimal("0.05")
MINIMUM_FEE_CENTS = 1

_AMOUNT = re.compile(r"^[0-9]+(\.)?[0-9]{0,2}$")


def parse_amount(text: str) -> int:
    """Parse an MTurk ``CurrencyAmount`` ("5", "0.05", "101.42") into cents."""
    if not _AMOUNT.match(text):
        raise ValueError(f"not a US dollar amount: {text!r}")
    return int((Decimal(text) * 100).to_integral_value(ROUND_HALF_UP))


def format_amount(cents: int) -> str:
    """Format cents as MTurk does ("0.05", "10000.00")."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _fee(cents: int, rate: Decimal) -> int:
    if cents <= 0:
        return 0
    fee = int((Decimal(cents) * rate).to_integral_value(ROUND_HALF_UP))
    return max(MINIMUM_FEE_CENTS, fee)


def reward_fee(reward_cents: int, max_assignments: int, masters: bool = False) -> int:
    """MTurk's commission on one approved assignment's reward."""
    rate = BASE_FEE
    if max_assignments >= LARGE_HIT_ASSIGNMENTS:
        rate += LARGE_HIT_FEE
    if masters:
        rate += MASTERS_FEE
    return _fee(reward_cents, rate)


def bonus_fee(bonus_cents: int) -> int:
    """MTurk's commission on a bonus."""
    return _fee(bonus_cents, BASE_FEE)
