"""What a batch can cost, checked before any HIT exists, and money as the crowd logic writes it.

The fees are the platform's (``platform.FeeSchedule``; MTurk's in ``include/crowd/mturk/fees.py``).
The estimate is the most the batch can cost: every assignment approved and every worker paid the
bonus. Amounts are integer cents; ``cents`` is the one way in from text.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from include.crowd.platform import FeeSchedule

log = logging.getLogger(__name__)


# No single bonus may exceed this unless the run raises the cap (Param max_bonus_usd): a typo
# such as 50.00 for 0.50 must not reach workers' accounts.
DEFAULT_MAX_BONUS = "5.00"
# The most a batch may commit unless the run says otherwise (Param budget_usd).
DEFAULT_BUDGET = "20.00"
_AMOUNT = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,2})?")


class BudgetError(RuntimeError):
    """The batch could cost more than the budget cap or the account balance."""


def check_bonus(bonus_cents: int, max_bonus_cents: int) -> None:
    """Refuse a bonus above the per-bonus cap (before any HIT exists, and before each payment)."""
    if bonus_cents > max_bonus_cents:
        raise BudgetError(
            f"the bonus of {usd(bonus_cents)} is above the per-bonus cap of "
            f"{usd(max_bonus_cents)}; lower the bonus or raise max_bonus_usd (section Payments)"
        )


def cents(amount: str) -> int:
    """Parse a US dollar amount ("0.05", "20", "1000.00") into integer cents.

    Only plain non-negative amounts with at most two decimals: anything else (a number rather
    than a string, a sign, an exponent, "NaN", "Infinity", a third decimal) raises
    ``ValueError``, so a damaged or crafted setting can never become a payment.
    """
    if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount):
        raise ValueError(f"not a US dollar amount like 0.05: {str(amount)[:40]!r}")
    return int((Decimal(amount) * 100).to_integral_value(ROUND_HALF_UP))


def balance_cents(amount: str) -> int:
    """An account balance in cents (a balance, unlike a payment, may be negative)."""
    if isinstance(amount, str) and amount.startswith("-"):
        return -cents(amount[1:])
    return cents(amount)


def currency_amount(value: int) -> str:
    """Cents as MTurk writes an amount (``CurrencyAmount``): 5 → "0.05", 123456 → "1234.56"."""
    if value < 0:
        raise ValueError(f"an amount cannot be negative ({value} cents)")
    return f"{value // 100}.{value % 100:02d}"


def usd(value: int) -> str:
    """Format integer cents as dollars: 123456 → "$1,234.56"."""
    return f"${value // 100:,}.{value % 100:02d}" if value >= 0 else f"-{usd(-value)}"


@dataclass(frozen=True)
class CostEstimate:
    hits: int
    assignments_per_hit: int
    rewards: int  # cents
    max_bonuses: int
    fees: int
    note: str | None = None  # why the fees are higher than usual, if they are

    @property
    def total(self) -> int:
        return self.rewards + self.max_bonuses + self.fees

    def describe(self) -> str:
        return (
            f"{self.hits} HITs x {self.assignments_per_hit} assignments: rewards "
            f"{usd(self.rewards)} + bonuses up to {usd(self.max_bonuses)} + fees "
            f"{usd(self.fees)} = at most {usd(self.total)}"
        )


def estimate(
    hits: int,
    assignments: int,
    reward_cents: int,
    bonus_cents: int,
    *,
    fees: FeeSchedule,
    masters: bool = False,
) -> CostEstimate:
    n = hits * assignments
    return CostEstimate(
        hits=hits,
        assignments_per_hit=assignments,
        rewards=n * reward_cents,
        max_bonuses=n * bonus_cents,
        fees=n
        * (fees.reward_fee(reward_cents, assignments, masters) + fees.bonus_fee(bonus_cents)),
        note=fees.warning(assignments),
    )


def check_budget(
    cost: CostEstimate,
    *,
    balance_cents: int,
    budget_cents: int | None,
    committed_cents: int = 0,
) -> None:
    """Raise ``BudgetError`` when the batch could exceed the budget cap or the balance.

    :param committed_cents: the most the batch's existing HITs can still cost (a rerun that
        adds queries to a batch is checked for the whole batch, not only for its new HITs).
    """
    log.info("cost estimate: %s", cost.describe())
    if cost.note:
        log.warning("%s", cost.note)
    whole = cost.total + committed_cents
    if budget_cents is not None and whole > budget_cents:
        already = f" + {usd(committed_cents)} for its existing HITs" if committed_cents else ""
        raise BudgetError(
            f"the batch could cost {usd(whole)}, over the budget cap of "
            f"{usd(budget_cents)} ({cost.describe()}{already}); no HIT was created"
        )
    if cost.total > balance_cents:
        raise BudgetError(
            f"the batch could cost {usd(cost.total)}, but the account balance is "
            f"{usd(balance_cents)}; no HIT was created"
        )
    log.info(
        "budget check passed: balance %s, cap %s",
        usd(balance_cents),
        usd(budget_cents) if budget_cents is not None else "none",
    )
