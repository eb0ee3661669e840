"""MTurk's published fees (https://requester.mturk.com/pricing), in cents.

20 % on rewards and bonuses (at least $0.01 each), 20 % more on rewards of HITs with 10 or more
assignments, and 5 % more on rewards of HITs that require Masters. (The crowd sandbox charges
the same schedule through its own, separate implementation, so the two check each other in the
tests.)
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

HIGH_FEE_ASSIGNMENTS = 10


def _fee(amount_cents: int, rate: Decimal) -> int:
    if amount_cents <= 0:
        return 0
    return max(1, int((amount_cents * rate).to_integral_value(ROUND_HALF_UP)))


class MTurkFees:
    """``platform.FeeSchedule`` for Mechanical Turk."""

    def reward_fee(self, reward_cents: int, assignments: int, masters: bool = False) -> int:
        rate = Decimal("0.20")
        if assignments >= HIGH_FEE_ASSIGNMENTS:
            rate += Decimal("0.20")
        if masters:
            rate += Decimal("0.05")
        return _fee(reward_cents, rate)

    def bonus_fee(self, bonus_cents: int) -> int:
        return _fee(bonus_cents, Decimal("0.20"))

    def warning(self, assignments: int) -> str | None:
        if assignments < HIGH_FEE_ASSIGNMENTS:
            return None
        return (
            f"{assignments} assignments per HIT: MTurk charges 40 % instead of 20 % on rewards "
            f"of HITs with {HIGH_FEE_ASSIGNMENTS} or more assignments"
        )


FEES = MTurkFees()
