"""Clean up one batch: expire its HITs, settle them, delete what MTurk lets us delete.

Only HITs whose ``RequesterAnnotation`` is this batch id are touched (and, when a manifest is
given, only HITs it lists), so other batches and other tools' HITs are left alone. Settling is
the caller's review (``review.review_batch``): it approves submitted work and pays bonuses, so
nobody's work is thrown away. A HIT whose workers are still inside their assignment time stays
(MTurk refuses to delete it); run the cleanup again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

EXPIRED = datetime(2015, 1, 1, tzinfo=UTC)  # any past instant expires a HIT at once


@dataclass
class CleanupOutcome:
    expired: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # HIT id -> why it is still there


def batch_hits(mturk, batch_id: str) -> list[dict]:
    """Every live HIT of this batch (ListHITs, all pages, filtered by RequesterAnnotation)."""
    found = []
    for page in mturk.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 100}):
        found.extend(h for h in page.get("HITs", []) if h.get("RequesterAnnotation") == batch_id)
    return found


def cleanup_batch(
    mturk,
    batch_id: str,
    *,
    settle: Callable[[], object] | None = None,
    hit_ids: set[str] | None = None,
) -> CleanupOutcome:
    """Expire, settle (``settle()``, e.g. a review run) and delete the batch's HITs."""
    outcome = CleanupOutcome()
    hits = [h for h in batch_hits(mturk, batch_id) if hit_ids is None or h["HITId"] in hit_ids]
    for hit in hits:
        if hit["HITStatus"] in ("Assignable", "Unassignable"):
            mturk.update_expiration_for_hit(HITId=hit["HITId"], ExpireAt=EXPIRED)
            outcome.expired.append(hit["HITId"])
    log.info("batch %s: %d HITs, %d expired now", batch_id, len(hits), len(outcome.expired))
    if settle is not None:
        settle()
    for hit in hits:
        hit_id = hit["HITId"]
        current = mturk.get_hit(HITId=hit_id)["HIT"]
        if current["HITStatus"] == "Disposed":
            continue
        try:
            mturk.delete_hit(HITId=hit_id)
            outcome.deleted.append(hit_id)
        except ClientError as error:
            reason = error.response.get("Error", {}).get("Message", str(error))
            outcome.kept[hit_id] = reason
            log.warning("HIT %s kept: %s", hit_id, reason)
    log.info(
        "batch %s cleaned up: %d HITs deleted, %d kept (workers still busy or work unreviewed)",
        batch_id,
        len(outcome.deleted),
        len(outcome.kept),
    )
    return outcome
