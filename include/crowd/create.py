"""Create one HIT per query, each exactly once, whatever retries and reruns happen.

Three guards, checked in this order for every planned HIT:

1. the S3 ledger (``ledger/hits/<token>``): a HIT recorded there exists; nothing is called;
2. MTurk's ``UniqueRequestToken`` (= the plan's token, from batch id and query content hash):
   if the ledger write was lost after a successful CreateHIT (a crash, a killed worker), the
   repeated call is refused by MTurk and the HIT is found again by its token, which the HIT's
   HTML carries in a comment (the token is a hash: it says nothing about answers);
3. the token expires after 24 h at MTurk; the ledger does not, so a rerun days later still
   creates nothing twice.

Every HIT carries ``RequesterAnnotation`` = the batch id, so cleanup touches only its own HITs.
The manifest ``hits.jsonl`` (one ``HitPlan`` per line, sorted by query) is rewritten from the
ledger at the end of every attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from include.crowd.layout import MASTERS
from include.crowd.ledger import S3Ledger
from include.crowd.records import HitPlan

log = logging.getLogger(__name__)

MANIFEST = "hits.jsonl"
TOKEN_MARK = "request-token:"


class CreateError(RuntimeError):
    """A HIT could not be created (and was not created)."""


@dataclass(frozen=True)
class HitSettings:
    title: str
    description: str
    keywords: str
    reward: str  # USD, e.g. "0.05"
    assignments: int
    lifetime_s: int
    assignment_duration_s: int
    auto_approval_delay_s: int
    qualification_requirements: list = field(default_factory=list)


def requires_masters(requirements: Sequence[dict]) -> bool:
    """Whether a HIT's qualification requirements ask for Masters (MTurk then charges 5 %
    more on its rewards)."""
    return any(r.get("QualificationTypeId") in MASTERS.values() for r in requirements or [])


def mark_token(question_xml: str, token: str) -> str:
    """Put the request token in the HIT's HTML as a comment (to find the HIT again)."""
    marker = "<![CDATA["
    at = question_xml.find(marker)
    if at < 0:
        raise ValueError("the question has no CDATA HTML content to mark")
    at += len(marker)
    return f"{question_xml[:at]}<!-- {TOKEN_MARK}{token} -->{question_xml[at:]}"


def find_hit_by_token(mturk, batch_id: str, token: str) -> dict | None:
    """Find a HIT of this batch whose HTML carries ``token`` (ListHITs, all pages)."""
    needle = f"{TOKEN_MARK}{token} "
    for page in mturk.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 100}):
        for hit in page.get("HITs", []):
            if hit.get("RequesterAnnotation") == batch_id and needle in hit.get("Question", ""):
                return hit
    return None


def _is_duplicate_token(error: ClientError) -> bool:
    info = error.response.get("Error", {})
    text = f"{info.get('Code', '')} {info.get('Message', '')}"
    return "UniqueRequestToken" in text or "HitAlreadyExists" in text


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
    mturk,
    plans: Sequence[HitPlan],
    ledger: S3Ledger,
    settings: HitSettings,
    render: Callable[[HitPlan], str],
    *,
    concurrency: int = 4,
    known: dict[str, HitPlan] | None = None,
) -> list[HitPlan]:
    """Create the HITs of ``plans`` that do not exist yet; return every plan with its ids.

    ``known`` is the ledger's content if the caller already read it (``created_plans``).
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
        question = mark_token(render(plan), plan.token)
        try:
            hit = mturk.create_hit(
                Title=settings.title,
                Description=settings.description,
                Keywords=settings.keywords,
                Reward=settings.reward,
                MaxAssignments=settings.assignments,
                LifetimeInSeconds=settings.lifetime_s,
                AssignmentDurationInSeconds=settings.assignment_duration_s,
                AutoApprovalDelayInSeconds=settings.auto_approval_delay_s,
                Question=question,
                RequesterAnnotation=plan.batch_id,
                UniqueRequestToken=plan.token,
                QualificationRequirements=settings.qualification_requirements,
            )["HIT"]
            kind = "created"
        except ClientError as error:
            if not _is_duplicate_token(error):
                raise
            hit = find_hit_by_token(mturk, plan.batch_id, plan.token)
            if hit is None:
                raise CreateError(
                    f"MTurk says a HIT with token {plan.token} (query {plan.query.name!r}) "
                    "exists, but no HIT of this batch carries it"
                ) from error
            kind = "recovered"
        created = replace(
            plan,
            hit_id=hit["HITId"],
            hit_type_id=hit["HITTypeId"],
            created_at=_iso(hit.get("CreationTime")),
            reward=hit.get("Reward", settings.reward),
            max_assignments=int(hit.get("MaxAssignments", settings.assignments)),
            masters=requires_masters(
                hit.get("QualificationRequirements", settings.qualification_requirements)
            ),
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
    every = {**known}
    write_manifest(ledger, list(every.values()))
    return result


def _iso(value) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return datetime.now(UTC).isoformat()
