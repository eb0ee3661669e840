"""The aggregation methods loaded (one module per :class:`~include.crowd.aggregation.Method`)
and run over a batch's reviews (``aggregate``)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from datetime import datetime
from types import ModuleType

from include.crowd.aggregation import DEFAULT_PRIMARY, Method, check_primary
from include.crowd.aggregation.results import assemble
from include.crowd.aggregation.table import Table
from include.crowd.quality import Skill
from include.crowd.records import HitPlan, Review

log = logging.getLogger(__name__)


methods: dict[Method, ModuleType] = {
    method: importlib.import_module(f"include.crowd.aggregation.{method.value}")
    for method in Method
}


def aggregate(
    plans: list[HitPlan],
    reviews: list[Review],
    *,
    spent: dict | None = None,
    computed_at: datetime | str | None = None,
    show_worker_ids: bool = False,
    primary: str = DEFAULT_PRIMARY,
    history: Mapping[str, Skill] | None = None,
) -> dict:
    """Aggregate ``reviews`` per HIT of ``plans`` with every method.

    :param plans: every planned HIT; each yields one query entry, with or without answers.
    :param reviews: the review decisions so far, matched to plans by HIT id; de-duplicated by
        assignment id (the last one given wins).
    :param spent: money spent so far: ``rewards``, ``bonuses``, ``fees`` and optionally
        ``total`` (summed when absent), as integer cents or as dollar strings ("1.20").
    :param computed_at: the time to report (default: now, UTC).
    :param show_worker_ids: list workers by their MTurk ids instead of pseudonyms.
    :param primary: the method whose verdict the top-level fields carry (a :class:`Method`
        value).
    :param history: each worker's gold record in other batches of the S3 prefix
        (``worker_records``): the gold-anchored posterior weighs workers by it too, and the
        worker table shows it.
    """
    primary = check_primary(primary)
    table = Table.build(plans, reviews, history)
    fitted = {method.value: module.fit(table) for method, module in methods.items()}
    about = {
        method.value: {"title": module.TITLE, "reads": module.READS, "about": module.ABOUT}
        for method, module in methods.items()
    }
    results = assemble(
        plans,
        table,
        fitted,
        about,
        primary=primary.value,
        spent=spent,
        computed_at=computed_at,
        show_worker_ids=show_worker_ids,
    )
    summary = results["summary"]
    log.info(
        "aggregated %d HITs: %d assignments (%d valid, %d counted), gold pass rate %s; %s",
        summary["hits"],
        summary["assignments"],
        summary["valid"],
        summary["counted"],
        _percent(summary["gold_pass_rate"]),
        "; ".join(
            f"{name}{' (primary)' if name == primary else ''}: {m['decided']} decided, "
            f"{m['tied']} tied, agrees with the model's rank 1 on "
            f"{m['agreement']['agree']}/{m['agreement']['decided']}"
            for name, m in summary["methods"].items()
        ),
    )
    return results


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"
