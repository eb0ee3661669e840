"""Review submitted assignments: read the answers, approve, pay gold passers, mail the others.

Per assignment, in this order, each step recorded in the batch's S3 ledger before the next:

1. **decide** (``decide``): read the submission's answers (the platform parsed them: MTurk's
   ``QuestionFormAnswers`` in ``include/crowd/mturk/answers.py``); the gold answer is right or
   wrong; the model answer becomes a vote. Malformed or tampered answers (a missing field, a
   value that is not an option, unparsable XML) are recorded with their problems and never
   counted. Policy: such an assignment is still approved (the worker did submit work and MTurk
   would auto-approve it anyway), it gets no bonus and no e-mail, and its vote is ignored.
2. **approve** every submitted assignment (an already approved one is left alone).
3. **bonus** when the gold answer is right: a bonus with a request token from (batch, HIT,
   worker) and the bonus message as its reason; before paying, the ledger and then the
   platform's record of paid bonuses are checked, so a bonus is paid at most once per worker
   per HIT even after MTurk's 24 h token memory is gone. The vote counts.
4. **e-mail** when the gold answer is wrong: one e-mail per worker (``no_bonus_email``), the
   no-bonus message followed by the HITs whose check question they answered wrongly and the
   bonus each did not pay, and, when they answered the check question of every other HIT of
   the batch they did right, a sentence saying so; within NotifyWorkers' limits (the list of
   HITs is cut to "and N more"). Sent after approval, workers with the same text together in
   calls of at most the platform's limit (100 on MTurk), and each failed HIT named in at most
   one e-mail: a worker is mailed again only about HITs no earlier e-mail of theirs named (a
   campaign's later run), under the next of the ledger keys ``<worker>``, ``<worker>.2``, ...
   (``_next_key``). The ledger entry is claimed as "sending" *before* the call with a
   conditional write
   (``If-None-Match: *``), so neither a crash during the call nor a concurrent review (the
   collect DAG) can cause a second e-mail (an interrupted one is logged as possibly unsent
   instead). E-mails carry no request token: when the platform cannot say whether they went
   out (``platform.OutcomeUnknown``) they are not sent again; when it throttled them to the end
   (``platform.Throttled``: nothing was sent) the claims are released for the task's retry.
   Per-worker failures are logged and kept. The vote is ignored.

Running the review again pays and mails nobody twice; it only picks up new submissions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from include.common.text import shown
from include.crowd.costs import (
    DEFAULT_MAX_BONUS,
    BudgetError,
    cents,
    check_bonus,
    currency_amount,
    usd,
)
from include.crowd.create import created_plans
from include.crowd.extend import added_assignments
from include.crowd.ledger import LedgerUnavailable, S3Ledger
from include.crowd.platform import (
    CrowdPlatform,
    FeeSchedule,
    OutcomeUnknown,
    Submission,
    Throttled,
)
from include.crowd.records import NONE_OF_THESE, HitPlan, Review
from include.crowd.settings import DEFAULT_EMAIL_SUBJECT, EMAIL_TEXT_MAX

log = logging.getLogger(__name__)

# An answer value is an option position as the form posts it: "1" to "999", ASCII digits,
# no sign, no leading zero, no space. ``str.isdigit`` also
# accepts "²", "①" and 5,000-digit numbers, which ``int()`` then refuses.
_POSITION = re.compile(r"[1-9][0-9]{0,2}")
MAX_PROBLEMS = 20  # per assignment: 64 KiB of empty answers must not make a 245 KB log line
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,60}")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # MTurk's ids are 30 upper-case letters and digits
TITLE_CHARS = 128  # MTurk's longest HIT title


@dataclass
class ReviewSettings:
    """What the review pays and says. ``reward``, ``assignments_per_hit`` and ``masters`` are
    only the fallback for HITs whose ledger entry predates recording them (each HIT's own
    reward and assignment count are used otherwise). ``max_bonus`` caps every bonus and
    ``budget`` (None: no cap) caps everything the batch commits, checked before each bonus.
    ``hit_title`` names the HITs in the no-bonus e-mail ("": not named)."""

    reward: str
    bonus: str
    bonus_message: str
    no_bonus_message: str
    email_subject: str = DEFAULT_EMAIL_SUBJECT
    hit_title: str = ""
    assignments_per_hit: int = 1
    max_bonus: str = DEFAULT_MAX_BONUS
    budget: str | None = None
    min_work_seconds: float = 0  # faster submissions are not counted (``decide``)
    masters: bool = False


@dataclass
class ReviewOutcome:
    reviews: list[Review] = field(default_factory=list)
    approved: int = 0
    bonuses_paid: int = 0
    emails_sent: int = 0
    email_failures: list[dict] = field(default_factory=list)
    spent: dict = field(default_factory=dict)
    failed_hits: dict[str, str] = field(default_factory=dict)  # HIT id -> what went wrong


def _name(text: str) -> str:
    """A field name for a note: as it is when plain, else quoted and escaped (``shown``)."""
    return text if _PLAIN_NAME.fullmatch(text) else shown(text)


def work_seconds(submission: Submission) -> float | None:
    """Seconds from accepting to submitting, or None when the platform gave no usable times
    (missing, unparsable, or submitted before accepted)."""
    try:
        accepted = datetime.fromisoformat(submission.accepted_at or "")
        submitted = datetime.fromisoformat(submission.submitted_at or "")
        seconds = (submitted - accepted).total_seconds()
    except (TypeError, ValueError):  # missing, unparsable, or one aware and one naive
        return None
    return round(seconds, 3) if seconds >= 0 else None


def too_fast_problem(min_seconds: float) -> str:
    return f"answered in under the minimum work time of {min_seconds:g} s"


def decide(plan: HitPlan, submission: Submission, min_seconds: float = 0) -> Review:
    """Read one submission against its HIT's plan (pure: no calls; never raises on what a
    worker submitted: anything it cannot understand makes the review invalid). A submission
    made less than ``min_seconds`` after its accept (the Param ``min_work_seconds``; 0: no
    minimum) is invalid too (``too_fast``): approved, never counted, no bonus, no e-mail.
    Without usable times the minimum cannot be checked and the submission is judged on its
    answers."""
    answers, problems = submission.answers, list(submission.problems)
    seconds = work_seconds(submission)
    too_fast = bool(min_seconds > 0 and seconds is not None and seconds < min_seconds)
    if too_fast:
        problems.insert(0, too_fast_problem(min_seconds))
    positions: dict[str, int | None] = {}
    for question in plan.questions:
        raw = answers.get(question.field)
        if raw is None:
            problems.append(f"question {question.field!r} is not answered")
            positions[question.kind] = None
            continue
        position = int(raw) if _POSITION.fullmatch(raw) else None
        if position is None or question.option(position) is None:
            problems.append(f"question {question.field!r} has an unknown value {shown(raw)}")
            positions[question.kind] = None
            continue
        positions[question.kind] = position
    fields = {q.field for q in plan.questions}
    extra = sorted(name for name in answers if name not in fields)
    notes = (
        [f"extra fields ignored: {', '.join(_name(name) for name in extra[:5])}"]
        + ([f"and {len(extra) - 5} more"] if len(extra) > 5 else [])
        if extra
        else []
    )
    valid = not problems
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more problems"]
    gold_correct = positions.get("gold") == plan.gold.correct_position if valid else None
    vote = None
    if valid:
        option = plan.model.option(positions["model"])
        vote = option.image.name if option and option.image else NONE_OF_THESE
    return Review(
        assignment_id=submission.id,
        hit_id=submission.task_id,
        worker_id=submission.worker_id,
        query=plan.query.name,
        valid=valid,
        gold_correct=gold_correct,
        gold_position=positions.get("gold"),
        model_position=positions.get("model"),
        vote=vote,
        counted=bool(valid and gold_correct),
        problems=problems + notes,
        submit_time=submission.submitted_at,
        work_seconds=seconds,
        too_fast=too_fast,
    )


def bonus_token(plan: HitPlan, worker_id: str) -> str:
    digest = hashlib.sha256(f"{plan.batch_id}|{plan.hit_id}|{worker_id}".encode()).hexdigest()
    return f"bonus-{digest[:40]}"


class _Isolation:
    """Keeps the errors of the parts of a review (an assignment, a HIT, the e-mails) so that
    the other parts go on; ``raise_first`` then fails loudly. S3 being unreachable is never
    kept: nothing could be recorded then."""

    def __init__(self) -> None:
        self.first: Exception | None = None
        self.failed: dict[str, str] = {}  # part -> what went wrong

    @contextmanager
    def part(self, key: str, what: str) -> Generator[None, None, None]:
        try:
            yield
        except LedgerUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - one part must not stop the others
            self.first = self.first or error
            self.failed[key] = f"{type(error).__name__}: {error}"
            log.error("%s failed, going on with the others: %s", what, self.failed[key])

    def raise_first(self, note: str | None = None) -> None:
        if self.first is not None:
            if note:
                self.first.add_note(note)
            raise self.first


@dataclass
class _Run:
    """One review's platform, settings, the ledger's entries as read at its start (kept
    current) and what it did so far."""

    platform: CrowdPlatform
    ledger: S3Ledger
    settings: ReviewSettings
    purse: Purse
    decided: dict[str, Review]
    approvals: dict[str, dict]
    bonuses: dict[str, dict]
    emails: dict[str, dict]
    outcome: ReviewOutcome = field(default_factory=ReviewOutcome)
    to_mail: dict[str, Review] = field(default_factory=dict)


def review_batch(
    platform: CrowdPlatform, plans: Sequence[HitPlan], ledger: S3Ledger, settings: ReviewSettings
) -> ReviewOutcome:
    """Review every submitted assignment of the batch's HITs (see the module docstring).

    An unexpected error on one assignment or HIT (a refused call, a cap that stops a bonus) is
    logged with its id and the review goes on with the others; at the end the first such error
    is raised again, with a note naming every HIT concerned, so the task fails loudly and its
    retry resumes exactly there (nothing done is repeated). S3 being unreachable stops at once:
    nothing can be recorded then.
    """
    plans = [plan for plan in plans if plan.hit_id]
    bonuses = ledger.entries("bonuses")
    run = _Run(
        platform=platform,
        ledger=ledger,
        settings=settings,
        purse=Purse.of(plans, bonuses, settings, platform.fees, added_assignments(ledger)),
        decided={key: Review.from_dict(doc) for key, doc in ledger.entries("reviews").items()},
        approvals=ledger.entries("approvals"),
        bonuses=bonuses,
        emails=ledger.entries("emails"),
    )
    outcome = run.outcome
    isolation = _Isolation()

    for index, plan in enumerate(plans, 1):
        with isolation.part(plan.hit_id, f"HIT {plan.hit_id} (query {shown(plan.query.name)})"):
            _review_hit(run, plan)
        if index % max(1, len(plans) // 10) == 0 or index == len(plans):
            log.info(
                "reviewed %d/%d HITs: %d assignments, %d approved now, %d bonuses paid now",
                index,
                len(plans),
                len(outcome.reviews),
                outcome.approved,
                outcome.bonuses_paid,
            )

    with isolation.part("e-mails", "sending the e-mails"):
        letters = _no_bonus_letters(run)
        _send_emails(
            platform,
            ledger,
            run.emails,
            sorted(letters),
            settings,
            outcome,
            bodies={worker: letter.text for worker, letter in letters.items()},
            keys={worker: letter.key for worker, letter in letters.items()},
            hits={worker: letter.hits for worker, letter in letters.items()},
        )
    outcome.failed_hits = isolation.failed
    outcome.spent = spent(ledger, settings, platform.fees, plans)
    log.info(
        "review done: %d assignments (%d valid, %d counted); approved %d, bonuses paid %d, "
        "e-mails sent %d; spent so far %s",
        len(outcome.reviews),
        sum(r.valid for r in outcome.reviews),
        sum(r.counted for r in outcome.reviews),
        outcome.approved,
        outcome.bonuses_paid,
        outcome.emails_sent,
        usd(outcome.spent["total_cents"]),
    )
    reviews = sorted(outcome.reviews, key=lambda r: (r.query, r.assignment_id))
    ledger.put_bytes(
        "reviews.jsonl",
        "".join(_json_line(r.to_dict()) for r in reviews).encode("utf-8"),
        "application/x-ndjson",
    )
    isolation.raise_first(
        f"the review of {len(isolation.failed)} of {len(plans)} HITs is incomplete "
        f"(HITs {', '.join(sorted(isolation.failed))}); every other HIT was reviewed, "
        "and a retry continues from the ledger without paying or mailing anyone twice"
    )
    return outcome


def _review_hit(run: _Run, plan: HitPlan) -> None:
    """Every submission of one HIT; one that fails leaves the others reviewed, then raises."""
    isolation = _Isolation()
    for submission in run.platform.submissions(plan.hit_id):
        shown_id = shown(submission.id)
        with isolation.part(shown_id, f"assignment {shown_id} of HIT {plan.hit_id}"):
            _review_assignment(run, plan, submission)
    isolation.raise_first()


def _review_assignment(run: _Run, plan: HitPlan, submission: Submission) -> None:
    """Decide, approve, then pay the bonus or queue the e-mail, for one submission."""
    review = run.decided.get(submission.id)
    if review is None:
        review = decide(plan, submission, run.settings.min_work_seconds)
        run.ledger.put("reviews", submission.id, review.to_dict())
        run.decided[submission.id] = review
        if not review.valid:
            log.warning(
                "assignment %s of worker %s (query %s) is not counted: %s",
                shown(submission.id),
                shown(review.worker_id),
                shown(plan.query.name),
                "; ".join(review.problems),
            )
    run.outcome.reviews.append(review)
    _approve(run, submission, plan)
    if review.valid and review.gold_correct:
        _pay_bonus(run, plan, review)
    elif review.valid:
        run.to_mail.setdefault(review.worker_id, review)  # unless every HIT was named before


def _json_line(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n"


def _approve(run: _Run, submission: Submission, plan: HitPlan) -> None:
    if submission.id in run.approvals:
        return
    if submission.status == "submitted":
        if run.platform.approve(submission.id):
            run.outcome.approved += 1
    elif submission.status == "rejected":
        log.warning("assignment %s was rejected outside this review; left as is", submission.id)
    entry = {
        "status": "Rejected" if submission.status == "rejected" else "Approved",
        "worker": submission.worker_id,
        "hit": plan.hit_id,
    }
    run.ledger.put("approvals", submission.id, entry)
    run.approvals[submission.id] = entry


@dataclass
class Purse:
    """What the batch has committed, kept current during a review: every HIT's assignments at
    its own reward and fees (the platform pays them on approval, or auto-approval, whatever the
    review does) plus every bonus paid with its fee. A bonus is paid only if it fits under the
    per-bonus cap and keeps this total within the budget."""

    committed_cents: int
    budget_cents: int | None
    max_bonus_cents: int
    fees: FeeSchedule

    @classmethod
    def of(
        cls,
        plans: Sequence[HitPlan],
        bonuses: dict,
        settings: ReviewSettings,
        fees: FeeSchedule,
        added: dict[str, int] | None = None,
    ) -> Purse:
        """``added``: assignments adaptive overlap added to each HIT (``extend``)."""
        added = added or {}
        rewards = 0
        for plan in plans:
            terms = HitTerms.of(plan, settings)
            count = terms.max_assignments + added.get(plan.hit_id, 0)
            rewards += count * terms.approval_cents(fees)
        paid = sum(_bonus_cost(cents(b["amount"]), fees) for b in bonuses.values())
        return cls(
            committed_cents=rewards + paid,
            budget_cents=cents(settings.budget) if settings.budget else None,
            max_bonus_cents=cents(settings.max_bonus),
            fees=fees,
        )

    def allow_bonus(self, amount_cents: int) -> None:
        check_bonus(amount_cents, self.max_bonus_cents)
        after = self.committed_cents + _bonus_cost(amount_cents, self.fees)
        if self.budget_cents is not None and after > self.budget_cents:
            raise BudgetError(
                f"a bonus of {usd(amount_cents)} would bring what this batch committed to "
                f"{usd(after)}, over its budget of {usd(self.budget_cents)}; it was not paid. "
                "A batch's budget is fixed: pay it by hand if it is due, and give the next "
                "batch a budget that covers every assignment and bonus"
            )

    def add_bonus(self, amount_cents: int) -> None:
        self.committed_cents += _bonus_cost(amount_cents, self.fees)


def _bonus_cost(amount_cents: int, fees: FeeSchedule) -> int:
    return amount_cents + fees.bonus_fee(amount_cents)


@dataclass(frozen=True)
class HitTerms:
    """What a HIT was created with, as the platform charges it: its own reward (cents),
    assignment count and Masters requirement."""

    reward_cents: int
    max_assignments: int
    masters: bool

    @classmethod
    def of(cls, plan: HitPlan | None, settings: ReviewSettings) -> HitTerms:
        """The HIT's own terms; ``settings`` stand in for what a HIT recorded before these
        were kept (or for a HIT the manifest does not know)."""

        def own(name: str, fallback):
            value = getattr(plan, name, None) if plan is not None else None
            return fallback if value is None else value

        return cls(
            reward_cents=cents(own("reward", settings.reward)),
            max_assignments=own("max_assignments", settings.assignments_per_hit),
            masters=own("masters", settings.masters),
        )

    def approval_cents(self, fees: FeeSchedule) -> int:
        """What one approved assignment costs: the reward plus its tier's fee."""
        return self.reward_cents + fees.reward_fee(
            self.reward_cents, self.max_assignments, self.masters
        )


def _pay_bonus(run: _Run, plan: HitPlan, review: Review) -> None:
    key = f"{plan.hit_id}.{review.worker_id}"
    if key in run.bonuses:
        return
    paid = run.platform.bonuses_paid(review.assignment_id)
    if paid:  # paid before a crash lost the ledger write: record what the platform says
        amount = paid[0]
    else:
        amount = cents(run.settings.bonus)
        run.purse.allow_bonus(amount)
        if run.platform.pay_bonus(
            worker_id=review.worker_id,
            submission_id=review.assignment_id,
            amount_cents=amount,
            reason=run.settings.bonus_message,
            token=bonus_token(plan, review.worker_id),
        ):
            run.outcome.bonuses_paid += 1
            log.info(
                "bonus %s paid to %s for HIT %s", usd(amount), shown(review.worker_id), plan.hit_id
            )
        else:
            log.info(
                "bonus for %s on HIT %s was already paid", shown(review.worker_id), plan.hit_id
            )
    run.purse.add_bonus(amount)
    entry = {"assignment": review.assignment_id, "amount": currency_amount(amount)}
    run.ledger.put("bonuses", key, entry)
    run.bonuses[key] = entry


@dataclass(frozen=True)
class _Letter:
    """One no-bonus e-mail to send: its ledger key, the HITs it names and its text."""

    key: str
    hits: tuple[str, ...]
    text: str


def _email_keys(emails: Mapping[str, dict]) -> dict[str, list[dict]]:
    """Each worker's e-mail entries in the ledger (an entry names its worker; one from before
    entries did is keyed by the worker id). A worker's next e-mail is keyed ``<worker>`` first,
    then ``<worker>.2``, ``<worker>.3``... (``_next_key``: two concurrent reviews pick the same
    next key, so only one of them sends)."""
    by_worker: dict[str, list[dict]] = {}
    for key, doc in emails.items():
        by_worker.setdefault(doc.get("worker", key), []).append(doc)
    return by_worker


def _next_key(worker_id: str, entries: list[dict]) -> str:
    return worker_id if not entries else f"{worker_id}.{len(entries) + 1}"


def _no_bonus_letters(run: _Run) -> dict[str, _Letter]:
    """The e-mail of each worker to mail now, from every review of the batch in the ledger:
    the HITs whose check question they answered wrongly that no earlier e-mail named (an entry
    from before e-mails recorded their HITs names all of them)."""
    by_worker: dict[str, list[Review]] = {worker: [] for worker in run.to_mail}
    for review in run.decided.values():
        if review.worker_id in by_worker:
            by_worker[review.worker_id].append(review)
    letters = {}
    mailed = _email_keys(run.emails)
    for worker_id, reviews in by_worker.items():
        failed = {r.hit_id for r in reviews if r.valid and not r.gold_correct}
        entries = mailed.get(worker_id, [])
        key = _next_key(worker_id, entries)
        if any(not isinstance(entry.get("hits"), list) for entry in entries):
            # mailed before e-mails named HITs (or an entry this code did not write): about
            # all of them; never a second e-mail on a guess
            continue
        named = {hit for entry in entries for hit in entry["hits"]}
        new = sorted(failed - named)
        if not new:
            continue
        others = [r for r in reviews if r.hit_id not in failed]
        passed = bool(others) and all(r.valid and r.gold_correct for r in others)
        others_hits = {r.hit_id for r in others}
        text = no_bonus_email(
            run.settings.no_bonus_message,
            title=run.settings.hit_title,
            failed_hits=new,
            bonus=usd(cents(run.settings.bonus)),
            passed_others=len(others_hits) if passed else 0,
            others_paid=all(f"{hit}.{worker_id}" in run.bonuses for hit in others_hits),
        )
        letters[worker_id] = _Letter(key=key, hits=tuple(new), text=text)
    return letters


def no_bonus_email(
    message: str,
    *,
    title: str,
    failed_hits: Sequence[str],
    bonus: str,
    passed_others: int = 0,
    others_paid: bool = False,
    limit: int = EMAIL_TEXT_MAX,
) -> str:
    """The no-bonus e-mail to one worker, at most ``limit`` characters (NotifyWorkers' 4096).

    ``message`` (the Param ``no_bonus_message``), then the HITs ``failed_hits`` (ids from the
    platform, written as they are only when plain, else quoted and escaped) under the HIT title
    ``title`` (one line), each with the ``bonus`` it did not pay ("$0.05"); then, when
    ``passed_others`` > 0 (the worker answered the check question of that many other HITs of
    the batch, every one they did, right), a sentence saying so, and that their bonuses were
    paid if ``others_paid``. Too long, the list of HITs ends early with "and N more"; only a
    message that leaves no room for even that is cut, with "...".
    """
    ids = [hit if _PLAIN_ID.fullmatch(hit) else shown(hit) for hit in failed_hits]
    count = len(ids)
    head = "The HIT concerned" if count == 1 else f"The {count} HITs concerned"
    title = _one_line(title, TITLE_CHARS)
    head += f': "{title}"' if title else ":"
    tail = []
    if passed_others:
        yours = "your other HIT" if passed_others == 1 else f"your {passed_others} other HITs"
        paid = ("its bonus" if passed_others == 1 else "their bonuses") if others_paid else ""
        tail.append(
            f"You answered the check question of {yours} in this batch correctly"
            + (f" and were paid {paid}." if paid else ".")
        )

    def text(shown_ids: int, body: str = message) -> str:
        lines = [f"- HIT {hit}: bonus of {bonus} not paid" for hit in ids[:shown_ids]]
        if shown_ids < count:
            rest = count - shown_ids
            lines.append(
                f"- and {rest} more HIT{'s' if rest > 1 else ''}: bonus of {bonus}"
                f"{' each' if rest > 1 else ''} not paid"
            )
        return "\n\n".join([body, "\n".join([head, *lines]), *tail])

    if len(text(count)) <= limit:
        return text(count)
    shown_ids = 0
    while shown_ids + 1 < count and len(text(shown_ids + 1)) <= limit:
        shown_ids += 1
    if len(text(shown_ids)) <= limit:
        return text(shown_ids)
    room = limit - (len(text(shown_ids, "")) + len("..."))
    return text(shown_ids, message[: max(room, 0)].rstrip() + "...")


def _one_line(text: str, limit: int) -> str:
    """``text`` as one line of at most ``limit`` characters: control characters and line
    breaks become spaces, runs of spaces one."""
    spaced = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    line = " ".join(spaced.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _send_emails(
    platform: CrowdPlatform,
    ledger: S3Ledger,
    emails: dict[str, dict],
    worker_ids: Sequence[str],
    settings: ReviewSettings,
    outcome: ReviewOutcome,
    *,
    bodies: Mapping[str, str] | None = None,
    keys: Mapping[str, str] | None = None,
    hits: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """E-mail each of ``worker_ids`` once: ``bodies[worker]`` (``no_bonus_email``), else the
    no-bonus message alone, under the ledger key ``keys[worker]`` (else the worker id), its
    entry naming ``hits[worker]``. Workers with the same text share calls of at most the
    platform's limit; each e-mail is claimed in the ledger before its call (see the module
    docstring)."""
    bodies, keys, hits = bodies or {}, keys or {}, hits or {}

    def doc(worker_id: str, **fields) -> dict:
        if worker_id in hits:
            fields.update(worker=worker_id, hits=list(hits[worker_id]))
        return fields

    groups: dict[str, list[str]] = {}
    for worker_id in worker_ids:
        groups.setdefault(bodies.get(worker_id, settings.no_bonus_message), []).append(worker_id)
    limit = platform.notify_limit
    calls = [
        (text, workers[start : start + limit])
        for text, workers in groups.items()
        for start in range(0, len(workers), limit)
    ]
    for index, (text, chunk) in enumerate(calls, 1):
        # At most once, also against a concurrent review (a collect run): each e-mail is
        # claimed with a conditional write before the call; whoever claims it sends it.
        chunk = [
            w for w in chunk if ledger.claim("emails", keys.get(w, w), doc(w, status="sending"))
        ]
        if not chunk:
            continue
        for worker_id in chunk:
            emails[keys.get(worker_id, worker_id)] = doc(worker_id, status="sending")
        try:
            failed = platform.notify(settings.email_subject, text, chunk)
        except OutcomeUnknown as error:
            log.warning("%s; not sent again to %d workers", error, len(chunk))
            continue  # their entries stay "sending": reported below, never mailed twice
        except Throttled:
            # Throttled even after the platform client's retries: nothing was sent, so the
            # claims are released and a later review (the task's retry) sends these e-mails.
            for worker_id in chunk:
                ledger.delete("emails", keys.get(worker_id, worker_id))
                emails.pop(keys.get(worker_id, worker_id), None)
            log.warning(
                "e-mails to %d workers throttled, not sent: the retry sends them", len(chunk)
            )
            raise
        for worker_id in chunk:
            if worker_id in failed:
                log.warning("e-mail to %s failed: %s", shown(worker_id), shown(failed[worker_id]))
                entry = doc(worker_id, status="failed", reason=failed[worker_id])
                outcome.email_failures.append({"worker": worker_id, "reason": failed[worker_id]})
            else:
                entry = doc(worker_id, status="sent")
                outcome.emails_sent += 1
            ledger.put("emails", keys.get(worker_id, worker_id), entry)
            emails[keys.get(worker_id, worker_id)] = entry
        if index % max(1, len(calls) // 10) == 0 or index == len(calls):
            log.info(
                "e-mails sent %d/%d (%d calls of %d)",
                outcome.emails_sent,
                len(worker_ids),
                index,
                len(calls),
            )
    unsure = [e.get("worker", k) for k, e in emails.items() if e.get("status") == "sending"]
    if unsure:
        log.warning(
            "%d e-mails may not have been sent (a previous attempt stopped during the call); "
            "they are not sent again: %s",
            len(unsure),
            ", ".join(sorted(unsure)[:20]),
        )


def spent(
    ledger: S3Ledger,
    settings: ReviewSettings,
    fees: FeeSchedule,
    plans: Sequence[HitPlan] | None = None,
) -> dict:
    """Money charged so far by this batch, from the ledger, as the platform charges it
    (``fees``): each approved assignment at its own HIT's reward plus that HIT's fee (on MTurk
    20 %, +20 % at 10 or more assignments, +5 % Masters, at least $0.01), each bonus plus its
    fee (20 %, at least $0.01).

    ``plans`` (the HIT manifest; read from the ledger when not given) give each HIT's reward,
    assignment count and Masters requirement; HITs recorded before these were kept fall back to
    ``settings``.
    """
    if plans is None:
        plans = list(created_plans(ledger).values())
    by_hit = {plan.hit_id: plan for plan in plans if plan.hit_id}
    reviews = None
    rewards = charged = approved = 0
    for assignment_id, approval in ledger.entries("approvals").items():
        if approval["status"] != "Approved":
            continue
        hit_id = approval.get("hit")
        if hit_id is None:  # recorded before approvals named their HIT
            if reviews is None:
                reviews = ledger.entries("reviews")
            hit_id = reviews.get(assignment_id, {}).get("hit_id")
        terms = HitTerms.of(by_hit.get(hit_id), settings)
        approved += 1
        rewards += terms.reward_cents
        charged += terms.approval_cents(fees) - terms.reward_cents
    bonus_amounts = [cents(b["amount"]) for b in ledger.entries("bonuses").values()]
    bonus_total = sum(bonus_amounts)
    charged += sum(fees.bonus_fee(amount) for amount in bonus_amounts)
    return {
        "rewards_cents": rewards,
        "bonuses_cents": bonus_total,
        "fees_cents": charged,
        "total_cents": rewards + bonus_total + charged,
        "approved": approved,
        "bonuses_paid": len(bonus_amounts),
    }


def at_fixed_overlap(
    plans: Sequence[HitPlan],
    money: Mapping[str, int],
    assignments: int,
    settings: ReviewSettings,
    fees: FeeSchedule,
) -> dict:
    """What the batch would have cost had every created HIT been given ``assignments`` (the
    most adaptive overlap may reach) from the start, all of them approved: each HIT's reward
    and its fee at that tier, and bonuses at this batch's own rate (bonuses paid per approved
    assignment, from ``money``, ``spent``'s result) with their fee. The comparison adaptive
    overlap is judged by; an estimate only in its bonuses."""
    created = [plan for plan in plans if plan.hit_id]
    rewards = fees_cents = 0
    for plan in created:
        terms = HitTerms.of(plan, settings)
        terms = HitTerms(terms.reward_cents, assignments, terms.masters)
        rewards += assignments * terms.reward_cents
        fees_cents += assignments * (terms.approval_cents(fees) - terms.reward_cents)
    total_assignments = assignments * len(created)
    bonuses_paid = (
        round(total_assignments * money["bonuses_paid"] / money["approved"])
        if money["approved"]
        else 0
    )
    bonus = cents(settings.bonus)
    fees_cents += bonuses_paid * fees.bonus_fee(bonus)
    return {
        "assignments_per_hit": assignments,
        "assignments": total_assignments,
        "total_cents": rewards + bonuses_paid * bonus + fees_cents,
    }
