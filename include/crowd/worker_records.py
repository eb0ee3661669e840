"""Each worker's gold record across the batches of one S3 prefix, and the exclusion rule that
reads it.

**Layout.** One small object per gold answer, under the prefix every batch of it shares, its
outcome in its key::

    <prefix>/workers/<worker id>/<batch id>/<assignment id>.right    (or .wrong)

- *Concurrency*: every fact has a key of its own and is written once; nothing is read,
  changed and written back, so two batches reviewing at once (or a batch's review and its
  collect run) can never lose each other's updates.
- *Exactly once*: the key is the assignment's id, written with a conditional ``PutObject``
  (``If-None-Match: *``) after a listing: a retried or rerun review finds the answer already
  there (or is refused the write) and counts nothing twice.
- *Cheap reads*: one listing of ``<prefix>/workers/<worker id>/`` is the worker's whole
  record, no object is read (the body, ``{"hit": ..., "gold": ...}``, is for a person
  auditing the bucket).

**Hostile input.** Keys read back are checked strictly: worker, batch and assignment ids
against their patterns, the outcome ``right`` or ``wrong``, an object no bigger than we write
(``MAX_OBJECT_BYTES``), one outcome per assignment (an assignment recorded twice, with two
outcomes, in two batches or for two workers, is not counted at all), at most
``MAX_ANSWERS_PER_WORKER`` answers per worker. Anything else is named in the log and ignored:
never fatal, never counted. Worker ids the platform gives are checked the same way before a
key is made of them.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from include.common.batch import BATCH_ID_PATTERN
from include.common.text import shown
from include.crowd.quality import Skill

log = logging.getLogger(__name__)

FOLDER = "workers"
WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # MTurk's: upper-case letters and digits
ASSIGNMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BATCH_ID = re.compile(BATCH_ID_PATTERN)
OUTCOMES = {"right": True, "wrong": False}
MAX_OBJECT_BYTES = 1024  # ours are under 200 bytes; a bigger object was not written here
MAX_ANSWERS_PER_WORKER = 20_000  # bounds one worker's listing (20 pages of 1,000 keys)
THREADS = 8  # under botocore's pool of 10 connections: more would discard connections, warning
SHOWN_PROBLEMS = 10  # damaged records named per read; the rest are counted


class RecordsUnavailable(RuntimeError):
    """S3 could not list or keep the gold records (after the client's retries); the crowd
    logic catches this, never boto's errors."""


@contextmanager
def _s3_errors(action: str):
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise RecordsUnavailable(f"{action}: {error}") from error


@dataclass(frozen=True)
class GoldAnswer:
    """One valid gold answer of a worker in a batch: right or wrong."""

    worker_id: str
    batch_id: str
    assignment_id: str
    right: bool
    hit_id: str = ""


def gold_answers(batch_id: str, reviews: Mapping[str, Mapping[str, Any]]) -> list[GoldAnswer]:
    """The gold answers among a batch's review entries (the ledger's ``reviews``, by
    assignment id): valid ones only (a malformed or too-fast answer says nothing about the
    worker), each assignment once; an entry whose ids could not be a key is logged and left
    out."""
    found = []
    for assignment_id, review in sorted(reviews.items()):
        if not isinstance(review, Mapping) or review.get("valid") is not True:
            continue
        right, worker_id = review.get("gold_correct"), review.get("worker_id")
        if not isinstance(right, bool):
            continue
        if not (
            isinstance(worker_id, str)
            and WORKER_ID.fullmatch(worker_id)
            and ASSIGNMENT_ID.fullmatch(assignment_id)
        ):
            log.warning(
                "the gold answer of assignment %s (worker %s) is not kept in the workers' "
                "records: its ids are not plain",
                shown(assignment_id),
                shown(str(worker_id)),
            )
            continue
        hit_id = review.get("hit_id")
        found.append(
            GoldAnswer(
                worker_id, batch_id, assignment_id, right, hit_id if isinstance(hit_id, str) else ""
            )
        )
    return found


def by_worker(answers: Iterable[GoldAnswer]) -> dict[str, list[GoldAnswer]]:
    grouped: dict[str, list[GoldAnswer]] = defaultdict(list)
    for answer in answers:
        grouped[answer.worker_id].append(answer)
    return dict(grouped)


def records_of(reviews: Mapping[str, Mapping[str, Any]]) -> dict[str, Skill]:
    """Each worker's gold record in one batch's review entries (``gold_answers``)."""
    return skills_of(by_worker(gold_answers("", reviews)))


def combined(*records: Mapping[str, Skill]) -> dict[str, Skill]:
    """Gold records added up per worker (this batch's and the other batches')."""
    right: Counter = Counter()
    wrong: Counter = Counter()
    for record in records:
        for worker_id, skill in record.items():
            right[worker_id] += skill.right
            wrong[worker_id] += skill.wrong
    return {w: Skill(right=right[w], wrong=wrong[w]) for w in sorted(set(right) | set(wrong))}


def skills_of(
    answers: Mapping[str, Iterable[GoldAnswer]], *, excluding_batch: str | None = None
) -> dict[str, Skill]:
    """Each worker's record (``quality.Skill``) from their answers, leaving out the answers of
    ``excluding_batch`` (the batch being reviewed counts its own answers itself)."""
    records = {}
    for worker_id, theirs in answers.items():
        counted = Counter(a.right for a in theirs if a.batch_id != excluding_batch)
        if counted:
            records[worker_id] = Skill(right=counted[True], wrong=counted[False])
    return records


@dataclass(frozen=True)
class ExclusionPolicy:
    """Exclude a worker once their gold record (across batches) holds at least
    ``min_answers`` answers and the share right is below ``below_accuracy``. One miss in
    ``min_answers=1, below_accuracy=1.0`` is the old "excluded after one miss"."""

    min_answers: int
    below_accuracy: float

    def excludes(self, record: Skill) -> bool:
        if record.answers < max(self.min_answers, 1):
            return False
        return record.right / record.answers < self.below_accuracy


class WorkerRecords:
    """The gold records of the workers of one S3 prefix (``<prefix>/workers/``)."""

    def __init__(self, s3, bucket: str, prefix: str, *, threads: int = THREADS) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.root = "/".join(p for p in (prefix.strip("/"), FOLDER) if p)
        self.threads = threads

    def key(self, answer: GoldAnswer) -> str:
        outcome = "right" if answer.right else "wrong"
        return f"{self.root}/{answer.worker_id}/{answer.batch_id}/{answer.assignment_id}.{outcome}"

    # --- reading ----------------------------------------------------------------------------

    def answers(self, worker_ids: Iterable[str]) -> dict[str, list[GoldAnswer]]:
        """The recorded gold answers of each of ``worker_ids`` (one listing each, in
        parallel), damaged records named in the log and left out."""
        workers = sorted({w for w in worker_ids if WORKER_ID.fullmatch(w or "")})
        if not workers:
            return {}
        with (
            _s3_errors("the gold records could not be listed"),
            ThreadPoolExecutor(max_workers=min(self.threads, len(workers))) as pool,
        ):
            listed = dict(zip(workers, pool.map(self._listing, workers), strict=True))
        problems: list[str] = []
        parsed: dict[str, list[GoldAnswer]] = {}
        for worker_id, (items, truncated) in listed.items():
            if truncated:
                problems.append(
                    f"worker {worker_id} has more than {MAX_ANSWERS_PER_WORKER} gold answers "
                    "recorded; only the first are read"
                )
            parsed[worker_id] = [
                a for a in (self._parse(worker_id, item, problems) for item in items) if a
            ]
        clean = _without_conflicts(parsed, problems)
        more = len(problems) - SHOWN_PROBLEMS
        if problems:
            log.warning(
                "%d damaged gold records under s3://%s/%s/ ignored: %s%s",
                len(problems),
                self.bucket,
                self.root,
                "; ".join(problems[:SHOWN_PROBLEMS]),
                f"; and {more} more" if more > 0 else "",
            )
        return clean

    def history(self, worker_ids: Iterable[str], *, excluding_batch: str) -> dict[str, Skill]:
        """Each worker's record in the prefix's other batches (``quality``'s ``history``)."""
        return skills_of(self.answers(worker_ids), excluding_batch=excluding_batch)

    def _listing(self, worker_id: str) -> tuple[list[dict], bool]:
        prefix = f"{self.root}/{worker_id}/"
        items: list[dict] = []
        token = None
        while True:
            page = self.s3.list_objects_v2(
                Bucket=self.bucket,
                Prefix=prefix,
                MaxKeys=1000,
                **({"ContinuationToken": token} if token else {}),
            )
            items += page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return items[:MAX_ANSWERS_PER_WORKER], len(items) > MAX_ANSWERS_PER_WORKER
            if len(items) > MAX_ANSWERS_PER_WORKER:
                return items[:MAX_ANSWERS_PER_WORKER], True

    def _parse(self, worker_id: str, item: dict, problems: list[str]) -> GoldAnswer | None:
        key = str(item.get("Key", ""))
        rest = key[len(f"{self.root}/{worker_id}/") :]
        parts = rest.split("/")
        size = item.get("Size")
        if len(parts) != 2:
            problems.append(f"{shown(key[-120:])}: not <batch>/<assignment>.<outcome>")
            return None
        batch_id, leaf = parts
        assignment_id, _, outcome = leaf.rpartition(".")
        if not BATCH_ID.fullmatch(batch_id):
            problems.append(f"{shown(key[-120:])}: not a batch id")
        elif not ASSIGNMENT_ID.fullmatch(assignment_id) or outcome not in OUTCOMES:
            problems.append(f"{shown(key[-120:])}: not <assignment id>.right or .wrong")
        elif type(size) is not int or not 0 <= size <= MAX_OBJECT_BYTES:
            problems.append(f"{shown(key[-120:])}: {size!r} bytes, not a record of ours")
        else:
            return GoldAnswer(worker_id, batch_id, assignment_id, OUTCOMES[outcome])
        return None

    # --- writing ----------------------------------------------------------------------------

    def add(
        self,
        answers: Iterable[GoldAnswer],
        known: Mapping[str, Iterable[GoldAnswer]] | None = None,
    ) -> int:
        """Record each of ``answers`` not recorded yet (``known``: what ``answers`` read, to
        skip; read here when not given), each with a conditional write: never twice. Returns
        how many this call wrote."""
        answers = list(answers)
        if known is None:
            known = self.answers(a.worker_id for a in answers)
        there = {a.assignment_id for theirs in known.values() for a in theirs}
        new = [a for a in answers if a.assignment_id not in there]
        if not new:
            return 0
        with (
            _s3_errors("the gold records could not be kept"),
            ThreadPoolExecutor(max_workers=min(self.threads, len(new))) as pool,
        ):
            written = sum(pool.map(self._put_once, new))
        log.info(
            "gold records: %d new answers of %d workers kept under s3://%s/%s/ (%d were there)",
            written,
            len({a.worker_id for a in new}),
            self.bucket,
            self.root,
            len(answers) - written,
        )
        return written

    def _put_once(self, answer: GoldAnswer) -> bool:
        body = {"hit": answer.hit_id, "gold": "right" if answer.right else "wrong"}
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key(answer),
                Body=json.dumps(body, sort_keys=True).encode("utf-8"),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status in (409, 412):  # written meanwhile (a concurrent review or a retry)
                return False
            raise
        return True


def _without_conflicts(
    parsed: Mapping[str, list[GoldAnswer]], problems: list[str]
) -> dict[str, list[GoldAnswer]]:
    """``parsed`` without any assignment recorded more than once: an assignment has one
    worker, one batch and one outcome, so a second record is damage and neither is trusted."""
    seen: dict[str, int] = defaultdict(int)
    for theirs in parsed.values():
        for answer in theirs:
            seen[answer.assignment_id] += 1
    doubled = sorted(a for a, n in seen.items() if n > 1)
    for assignment_id in doubled:
        problems.append(f"assignment {assignment_id} is recorded more than once")
    return {
        worker: [a for a in theirs if seen[a.assignment_id] == 1]
        for worker, theirs in parsed.items()
    }
