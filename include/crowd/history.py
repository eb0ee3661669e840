"""The results' history: every results write also keeps a snapshot, and the report says how
the crowd's verdicts changed since the previous one.

Snapshots live beside the current results, under ``results/history/<UTC time>/`` in the batch's
S3 folder and in the local batch folder (``20261202T101500Z``: sortable, one path segment on
every file system). S3 is the record: the previous snapshot is the newest one listed there, so
a write from another worker or machine still compares against it. A snapshot read back is
treated as outside input: one that cannot be read is named in the log and skipped, never
trusted and never fatal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

HISTORY = "results/history"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP = re.compile(r"^\d{8}T\d{6}Z(-\d{1,4})?$")
MAX_CHANGES_SHOWN = 200
MAX_SNAPSHOT_BYTES = 256 << 20  # a results.json of 10^5 queries is well below


def stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)


def next_stamp(now: str, taken: list[str]) -> str:
    """``now``, or ``now-2``, ``now-3``, ... when a snapshot of that second exists."""
    if now not in taken:
        return now
    n = 2
    while f"{now}-{n}" in taken:
        n += 1
    return f"{now}-{n}"


def snapshots(s3, bucket: str, batch_prefix: str) -> list[str]:
    """The names of a batch's snapshots in S3, oldest first (names that are not ours are
    ignored)."""
    prefix = f"{batch_prefix}/{HISTORY}/"
    names: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    ):
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"][len(prefix) :].rstrip("/")
            if _STAMP.fullmatch(name):
                names.add(name)
    return sorted(names, key=_order)


def _order(name: str) -> tuple[str, int]:
    base, _, n = name.partition("-")
    return base, int(n or 1)


def verdicts(results: Any) -> dict[str, dict[str, Any]]:
    """Each query's verdict in a results document, by HIT (or query hash before its HIT
    exists); an entry that is not what the crowd stage writes is left out."""
    found: dict[str, dict[str, Any]] = {}
    queries = results.get("queries") if isinstance(results, Mapping) else None
    for entry in queries if isinstance(queries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        key = entry.get("hit_id") or entry.get("query_sha256")
        winner = entry.get("winner")
        if not isinstance(key, str) or not (winner is None or isinstance(winner, str)):
            continue
        query = entry.get("query")
        found[key] = {
            "query": query if isinstance(query, str) else "",
            "winner": winner,
            "status": entry.get("status") if isinstance(entry.get("status"), str) else None,
        }
    return found


def compare(previous: Any, current: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from ``previous`` (a results document, or None) to ``current``: queries
    new since then, and those whose winner changed (before and after)."""
    before, now = verdicts(previous) if previous is not None else {}, verdicts(current)
    changed = [
        {"query": v["query"], "hit_id": key, "before": before[key]["winner"], "after": v["winner"]}
        for key, v in now.items()
        if key in before and before[key]["winner"] != v["winner"]
    ]
    changed.sort(key=lambda c: (c["query"], c["hit_id"]))
    return {
        "new": sorted(v["query"] for key, v in now.items() if key not in before),
        "changed_count": len(changed),
        "changed": changed[:MAX_CHANGES_SHOWN],
        "unchanged": sum(
            1
            for key, v in now.items()
            if key in before and key not in {c["hit_id"] for c in changed}
        ),
    }


def read_snapshot(s3, bucket: str, batch_prefix: str, name: str) -> Any | None:
    """A snapshot's ``results.json``, or None (logged) when it is missing or unreadable."""
    key = f"{batch_prefix}/{HISTORY}/{name}/results.json"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_SNAPSHOT_BYTES)
        return json.loads(body)
    except Exception as error:  # noqa: BLE001 - a damaged snapshot must not stop a results write
        log.warning("results snapshot %s cannot be read (%s); compared with nothing", key, error)
        return None


def history_of(s3, bucket: str, batch_prefix: str, results: dict, now: str) -> dict[str, Any]:
    """The ``history`` part of a results document about to be written as a snapshot taken at
    ``now`` (``stamp``): its name, how many snapshots exist with it, the previous one's name,
    and what changed since."""
    existing = snapshots(s3, bucket, batch_prefix)
    name = next_stamp(now, existing)
    previous = existing[-1] if existing else None
    earlier = read_snapshot(s3, bucket, batch_prefix, previous) if previous else None
    return {
        "snapshot": name,
        "snapshots": len(existing) + 1,
        "previous": previous,
        "since_previous": compare(earlier, results) if previous else None,
    }
