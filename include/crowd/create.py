"""Create one HIT per query, each exactly once, whatever retries and reruns happen.

Three guards, checked in this order for every planned HIT:

1. the S3 ledger (``ledger/hits/<token>``): a HIT recorded there exists; nothing is called;
2. the platform's request token (= the plan's token, from batch id and query content hash):
   if the ledger write was lost after a successful creation (a crash, a killed worker), the
   repeated request is refused (``platform.DuplicateRequest``) and the HIT is found again by its
   token (``CrowdPlatform.find_task``; on MTurk the HIT's HTML carries it in a comment: the token
   is a hash, it says nothing about answers);
3. the token expires after 24 h at MTurk; the ledger does not, so a rerun days later still
   creates nothing twice.

Every HIT is labelled with the batch id, so cleanup touches only its own HITs.
The manifest ``hits.jsonl`` (one ``HitPlan`` per line, sorted by query) is rewritten from the
ledger at the end of every attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

from include.crowd.ledger import S3Ledger
from include.crowd.platform import CrowdPlatform, DuplicateRequest, PlatformError, TaskSpec
from include.crowd.records import HitPlan

log = logging.getLogger(__name__)

MANIFEST = "hits.jsonl"


class CreateError(RuntimeError):
    """A HIT could not be created (and was not created)."""


def load_manifest(ledger: S3Ledger) -> list[HitPlan]:
    data = ledger.get_bytes(MANIFEST)
    if not data:
        return []
    return [HitPlan.from_json(line) for line in data.decode("utf-8").splitlines() if line]


def created_plans(ledger: S3Ledger) -> dict[str, HitPlan]:
    """Every HIT the ledger knows for this batch, by token."""
    return {token: HitPlan.from_dict(doc) for token, doc in ledger.entries("hits").items()}


def write_manifest(ledger: S3Ledger, plans: Sequence[HitPlan]) -> str:
    ordered = sorted(plans, key=lambda p: (p.query.name, p.query.sha256))
    body = "".join(plan.to_json() + "\n" for plan in ordered).encode("utf-8")
    return ledger.put_bytes(MANIFEST, body, "application/x-ndjson")


def create_hits(
    platform: CrowdPlatform,
    plans: Sequence[HitPlan],
    ledger: S3Ledger,
    spec: TaskSpec,
    render: Callable[[HitPlan], str],
    *,
    concurrency: int = 4,
    known: dict[str, HitPlan] | None = None,
) -> list[HitPlan]:
    """Create the HITs of ``plans`` that do not exist yet; return every plan with its ids.

    ``render(plan)`` is the page a worker sees; ``known`` is the ledger's content if the
    caller already read it (``created_plans``).
    """
    known = dict(created_plans(ledger) if known is None else known)
    todo = [plan for plan in plans if plan.token not in known]
    total, done = len(plans), len(plans) - len(todo)
    if done:
        log.info("%d/%d HITs already exist (ledger); creating %d", done, total, len(todo))
    lock = threading.Lock()
    counter = {"created": 0, "recovered": 0}
    step = max(1, len(todo) // 10)

    def create(plan: HitPlan) -> HitPlan:
        page = render(plan)
        try:
            task = platform.create_task(spec, page, batch_id=plan.batch_id, token=plan.token)
            kind = "created"
        except DuplicateRequest as error:
            task = platform.find_task(plan.batch_id, plan.token)
            if task is None:
                raise CreateError(
                    f"the platform says a HIT with token {plan.token} (query "
                    f"{plan.query.name!r}) exists, but no HIT of this batch carries it"
                ) from error
            kind = "recovered"
        except PlatformError as error:  # insufficient funds, a parameter, a rule, a fault
            error.add_note(
                f"The HIT of query {plan.query.name!r} was not created. The HITs created before "
                f"it are kept in the ledger of batch {plan.batch_id}; once the cause is fixed, "
                "a rerun creates the rest, none twice."
            )
            raise
        created = replace(
            plan,
            hit_id=task.id,
            hit_type_id=task.type_id,
            created_at=task.created_at or datetime.now(UTC).isoformat(),
            reward=task.reward or spec.reward,
            max_assignments=task.max_assignments or spec.assignments,
            masters=task.masters,
        )
        ledger.put("hits", plan.token, created.to_dict())
        with lock:
            counter[kind] += 1
            n = done + counter["created"] + counter["recovered"]
            if n == total or (n - done) % step == 0:
                log.info("HITs created %d/%d", n, total)
        return created

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for created in pool.map(create, todo):
                known[created.token] = created
    if counter["recovered"]:
        log.info("%d HITs were found again by their request token", counter["recovered"])
    result = [known[plan.token] for plan in plans]
    write_manifest(ledger, list(known.values()))
    return result
