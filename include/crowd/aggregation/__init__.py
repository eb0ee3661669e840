"""Aggregate reviewed assignments into per-query results: a registry of methods.

Each method is a module of this package named by its :class:`Method` value, in crowd-kit's
shape: ``fit(table) -> Result`` reads what it needs from one :class:`~.table.Table` (the counted
votes, or every valid answer with the gold answers' true labels) and returns one
:class:`~.table.Outcome` per query, plus ``TITLE``, ``READS`` and ``ABOUT`` for the report.
Every method runs; every query's result lists each one's verdict under ``methods[name]``, and
its top-level ``status``, ``winner``, ``tie``, ``confidence`` and ``agrees_with_model`` are the
*primary* method's (see :mod:`.results` for the whole structure).

To add a method, write its module here and add its name to :class:`Method`; the results, the
CSV and the report pick it up. This module holds only the names (light enough for the DAG file's
Params); :mod:`.registry` loads the methods and runs them (``aggregate``).
"""

from __future__ import annotations

from enum import StrEnum


class Method(StrEnum):
    """The aggregation methods, in report order; each value names its module."""

    MAJORITY = "majority"
    DAWID_SKENE = "dawid_skene"
    WAWA = "wawa"
    GOLD_SKILL = "gold_skill"


DEFAULT_PRIMARY = Method.MAJORITY


def check_primary(primary: str) -> Method:
    """``primary`` as a :class:`Method`; a ValueError naming the known methods otherwise."""
    try:
        return Method(primary)
    except ValueError:
        known = ", ".join(repr(m.value) for m in Method)
        raise ValueError(
            f"unknown primary aggregation method {primary!r}: choose one of {known}"
        ) from None
