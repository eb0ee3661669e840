"""Clean up one batch: expire its HITs, settle them, delete what the platform lets us delete.

Only HITs labelled with this batch id are touched (and, when a manifest is given, only HITs it
lists), so other batches and other tools' HITs are left alone. Settling is the caller's review
(``review.review_batch``): it approves submitted work and pays bonuses, so nobody's work is
thrown away. A HIT whose workers are still inside their assignment time stays (the platform
refuses to delete it); run the cleanup again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from include.crowd.platform import CrowdPlatform, PlatformError

log = logging.getLogger(__name__)


@dataclass
class CleanupOutcome:
    expired: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # HIT id -> why it is still there


def cleanup_batch(
    platform: CrowdPlatform,
    batch_id: str,
    *,
    settle: Callable[[], object] | None = None,
    hit_ids: set[str] | None = None,
) -> CleanupOutcome:
    """Expire, settle (``settle()``, e.g. a review run) and delete the batch's HITs."""
    outcome = CleanupOutcome()
    tasks = [t for t in platform.batch_tasks(batch_id) if hit_ids is None or t.id in hit_ids]
    for task in tasks:
        if task.open:
            platform.expire(task.id)
            outcome.expired.append(task.id)
    log.info("batch %s: %d HITs, %d expired now", batch_id, len(tasks), len(outcome.expired))
    if settle is not None:
        settle()
    for task in tasks:
        if platform.task(task.id).disposed:
            continue
        try:
            platform.delete(task.id)
            outcome.deleted.append(task.id)
        except PlatformError as error:
            outcome.kept[task.id] = error.reason
            log.warning("HIT %s kept: %s", task.id, error.reason)
    log.info(
        "batch %s cleaned up: %d HITs deleted, %d kept (workers still busy or work unreviewed)",
        batch_id,
        len(outcome.deleted),
        len(outcome.kept),
    )
    return outcome
