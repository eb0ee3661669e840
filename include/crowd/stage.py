"""The crowd stage's steps over a batch folder, called by the DAG's tasks (plain Python).

Each step reads what the previous ones left in the local batch folder and in S3 under
``<prefix>/batches/<batch_id>/``, takes an S3 client (the DAG gets it from ``S3Hook``) and a
crowd platform (``platform.CrowdPlatform``; the DAG passes ``mturk.MTurkPlatform`` over
``MTurkHook``), and returns only ids and URIs, which is all XCom carries:

1. ``publish``: the originals of the images workers see → S3 (content-addressed), plus the
   batch's inputs (workers see only the per-HIT copies ``create`` makes, ``publish.HitCopies``);
2. ``create``: plan the HITs, check the cost against the balance and the budget cap, create
   each HIT exactly once (``create.create_hits``), write ``hits.jsonl``;
3. ``review``: approve, pay, mail, exactly once (``review.review_batch``);
4. ``results``: aggregate (crowd-kit) and write ``results.json``, ``results.csv`` and
   ``report.html`` to S3 and to the local folder.

``collect`` is 3 + 4, usable at any time (also while workers are still answering).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from include.common.batch import GOLD_SOURCES
from include.common.files import read_json, write_bytes, write_json
from include.crowd import costs, history, layout, quality
from include.crowd import preflight as preflight_checks
from include.crowd.create import create_hits, created_plans, load_manifest
from include.crowd.extend import RoundOutcome, added_assignments, extend_unsure, extensions_of
from include.crowd.ledger import S3Ledger
from include.crowd.platform import CrowdPlatform, FeeSchedule, PlatformError
from include.crowd.publish import (
    HitCopies,
    ImageUrls,
    LocalImage,
    batch_secret,
    check_bucket,
    publish_images,
)
from include.crowd.records import HitPlan, ImageRef, Review
from include.crowd.review import (
    HitTerms,
    Purse,
    ReviewSettings,
    at_fixed_overlap,
    review_batch,
    spent,
)
from include.crowd.settings import (
    AMOUNTS,
    MONEY_FIELDS,
    CrowdSettings,
    stored_money_fields,
)
from include.crowd.worker_records import (
    ExclusionPolicy,
    RecordsUnavailable,
    WorkerRecords,
    combined,
    gold_answers,
    records_of,
    skills_of,
)

log = logging.getLogger(__name__)

PUBLISHED = "published.json"
SOURCES = "sources.json"  # the similarity stage's listing of the three collections
SETTINGS = "settings.json"
FAILED_GOLD_QUALIFICATION = "image-similarity: failed a known-answer question"
FAILED_GOLD_DESCRIPTION = (
    "Workers whose answers to the known-answer questions of image-similarity batches were "
    "too often wrong."
)


class SettingsChanged(ValueError):
    """A run of an existing batch asks for other money settings than the batch was made with."""


@dataclass(frozen=True)
class PaymentCaps:
    """The most one bonus and the whole batch may cost, taken from the Params of the run that
    pays, never from a file read back from S3 (which anyone with write access could change)."""

    max_bonus: str
    budget: str | None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PaymentCaps:
        return cls(
            max_bonus=params["max_bonus_usd"] or costs.DEFAULT_MAX_BONUS,
            budget=params["budget_usd"] or None,
        )

    def check(self, settings: CrowdSettings) -> None:
        """Refuse a batch whose bonus or budget is above these caps (before anything is paid)."""
        payment = settings.payment
        bonus, cap = costs.cents(payment.bonus), costs.cents(self.max_bonus)
        if bonus > cap:
            raise costs.BudgetError(
                f"batch {settings.batch_id!r} pays a bonus of {costs.usd(bonus)}, above this "
                f"run's per-bonus cap of {costs.usd(cap)} (Param max_bonus_usd); nothing was paid"
            )
        if self.budget is None:
            return
        if payment.budget is None or costs.cents(payment.budget) > costs.cents(self.budget):
            stored = costs.usd(costs.cents(payment.budget)) if payment.budget else "no cap"
            raise costs.BudgetError(
                f"batch {settings.batch_id!r} has a budget of {stored}, above this run's budget "
                f"cap of {costs.usd(costs.cents(self.budget))} (Param budget_usd); nothing was "
                "paid"
            )

    def tightest(self, settings: CrowdSettings) -> tuple[str, str | None]:
        """The per-bonus cap and budget in force: the lower of the batch's and this run's."""
        max_bonus = min(settings.payment.max_bonus, self.max_bonus, key=costs.cents)
        budgets = [b for b in (settings.payment.budget, self.budget) if b]
        return max_bonus, min(budgets, key=costs.cents) if budgets else None


def review_settings(settings: CrowdSettings, caps: PaymentCaps | None = None) -> ReviewSettings:
    """What the review pays and says: the batch's settings under the tightest caps."""
    payment = settings.payment
    max_bonus, budget = (caps or PaymentCaps(payment.max_bonus, payment.budget)).tightest(settings)
    return ReviewSettings(
        reward=payment.reward,
        bonus=payment.bonus,
        bonus_message=settings.review.bonus_message,
        no_bonus_message=settings.review.no_bonus_message,
        email_subject=settings.review.email_subject,
        min_work_seconds=settings.review.min_work_seconds,
        hit_title=settings.posting.title,
        assignments_per_hit=settings.posting.assignments,
        max_bonus=max_bonus,
        budget=budget,
        masters=settings.workers.masters,
    )


def batch_settings(s3, bucket: str, prefix: str, batch_id: str) -> CrowdSettings:
    """The settings a batch was created with (``settings.json`` in its S3 folder), read
    strictly, with this run's bucket, prefix and batch id."""
    stored = S3Ledger(s3, bucket, prefix, batch_id).get_json(SETTINGS)
    if stored is None:
        raise ValueError(
            f"batch {batch_id!r} has no settings in s3://{bucket}/{prefix}/batches/"
            f"{batch_id}/: was it created with this bucket and prefix?"
        )
    return CrowdSettings.from_stored(stored).with_storage(bucket, prefix, batch_id)


def check_money_settings(s3, settings: CrowdSettings) -> None:
    """Refuse, before any call, a run whose money settings differ from those the batch was
    created with (``settings.json``, written once when its first HIT is created)."""
    ledger = ledger_for(s3, settings)
    stored = ledger.get_json(SETTINGS)
    if stored is None:
        if ledger.has_entries("hits"):
            raise SettingsChanged(
                f"batch {settings.batch_id!r} has HITs but no settings.json in "
                f"{s3_uri(ledger)}: its money settings cannot be checked, so nothing is created "
                "or paid; restore the file or use a new batch id"
            )
        return
    try:
        missing = stored_money_fields(stored)
        if missing:
            raise ValueError(f"settings.json lacks {', '.join(missing)}")
        before = CrowdSettings.from_stored(stored).money()
    except (TypeError, ValueError) as error:
        raise SettingsChanged(
            f"batch {settings.batch_id!r} has unreadable stored settings ({error}); "
            "nothing was paid: use a new batch id"
        ) from error
    now = settings.money()
    changed = [name for name in MONEY_FIELDS if before[name] != now[name]]
    if changed:
        shown = ", ".join(
            f"{name} {_money_text(name, before[name])} -> {_money_text(name, now[name])}"
            for name in changed
        )
        raise SettingsChanged(
            f"batch {settings.batch_id!r} was created with other money settings ({shown}); "
            "a batch pays every worker alike, so its money settings cannot change: run with a "
            "new batch id (Param batch_id), or with the batch's settings. Nothing was created "
            "or paid"
        )


def _money_text(name: str, value: Any) -> str:
    if name in AMOUNTS:
        return costs.usd(value) if value is not None else "none"
    return str(value)


def pin_settings(s3, settings: CrowdSettings) -> None:
    """Write the batch's ``settings.json`` once (conditional write); if it is already there,
    check that the money settings agree with it."""
    check_money_settings(s3, settings)  # also refuses a batch with HITs whose file is gone
    if not ledger_for(s3, settings).put_json_once(SETTINGS, settings.to_stored()):
        check_money_settings(s3, settings)  # written meanwhile by another run


def ledger_for(s3, settings: CrowdSettings) -> S3Ledger:
    return S3Ledger(s3, settings.storage.bucket, settings.storage.prefix, settings.batch_id)


def s3_uri(ledger: S3Ledger, name: str = "") -> str:
    return f"s3://{ledger.bucket}/{ledger.key(name)}"


# --- 1. publish -----------------------------------------------------------------------------


def _listed_images(batch_dir: Path) -> dict[tuple[str, str], LocalImage]:
    """The images the similarity stage listed (``sources.json``), by collection and name."""
    listings = read_json(batch_dir / SOURCES)
    return {
        (collection, image["name"]): LocalImage(image["name"], Path(image["path"]), image["sha256"])
        for collection, listing in listings.items()
        for image in listing["images"]
    }


def _worker_images(batch_dir: Path) -> tuple[list[dict], list[dict], dict[str, LocalImage]]:
    similarity = read_json(batch_dir / "similarity.json")
    known = read_json(batch_dir / "known_answers.json")
    by_name = _listed_images(batch_dir)
    images: dict[str, LocalImage] = {}

    def add(collection: str, name: str) -> None:
        image = by_name[(collection, name)]
        images.setdefault(image.sha256, image)

    for entry in similarity["queries"]:
        add("queries", entry["query"]["name"])
        for match in entry["matches"]:
            add("dataset", match["name"])
    for gold in known:
        for name in (gold["target"], gold["correct"], *gold["wrong"]):
            add("known_answers", name)
    return similarity["queries"], known, images


def publish(batch_dir: Path, s3, settings: CrowdSettings) -> str:
    """Upload the originals of the images workers see (content-addressed; ``create`` makes
    each HIT's own copies from them) and the batch's inputs; return the batch's S3 URI."""
    check_bucket(s3, settings.storage.bucket)
    _, _, images = _worker_images(batch_dir)
    refs = publish_images(s3, settings.storage.bucket, settings.storage.prefix, images.values())
    write_json(
        batch_dir / PUBLISHED,
        {sha: {"name": ref.name, "key": ref.key} for sha, ref in sorted(refs.items())},
    )
    ledger = ledger_for(s3, settings)
    for name in ("matches.json", "similarity.json", "known_answers.json", "problems.json"):
        if (batch_dir / name).exists():
            ledger.put_bytes(f"inputs/{name}", (batch_dir / name).read_bytes(), "application/json")
    return s3_uri(ledger)


# --- 2. create ------------------------------------------------------------------------------


def _plans(
    batch_dir: Path, existing: dict[str, HitPlan], batch_id: str, reask_changed: bool = False
) -> list[HitPlan]:
    queries, known, images = _worker_images(batch_dir)
    published = read_json(batch_dir / PUBLISHED)

    def ref(sha: str) -> ImageRef:
        return ImageRef(published[sha]["name"], sha, published[sha]["key"])

    plan_queries = sorted(
        (
            (
                ref(entry["query"]["sha256"]),
                [(ref(m["sha256"]), m["rank"], m["score"]) for m in entry["matches"]],
            )
            for entry in queries
        ),
        key=lambda q: (q[0].name, q[0].sha256),
    )
    gold_sets = [
        (
            gold["set_id"],
            ref(gold["hashes"][gold["target"]]),
            ref(gold["hashes"][gold["correct"]]),
            tuple(ref(gold["hashes"][name]) for name in gold["wrong"]),
        )
        for gold in known
    ]
    by_query = newest_plans(existing.values())
    source = gold_source(batch_dir)
    return layout.plan_hits(
        batch_id,
        plan_queries,
        gold_sets,
        existing=by_query,
        reask_changed=reask_changed,
        own_gold=source == "generated",
        preferred=[gold["set_id"] for gold in known if gold.get("generated")],
    )


def gold_source(batch_dir: Path) -> str:
    """Where the batch's gold comes from (``gold.json``; provided before it existed)."""
    path = batch_dir / "gold.json"
    data = read_json(path) if path.exists() else {"source": "provided"}
    source = data.get("source") if isinstance(data, dict) else None
    if source not in GOLD_SOURCES:
        raise ValueError(f"gold.json names an unknown gold source {source!r}")
    return source


def newest_plans(plans) -> dict[str, HitPlan]:
    """Each query's newest plan, by query content hash (a query asked again about other
    matches has several; the newest is the one a campaign's rerun keeps)."""
    ordered = sorted(plans, key=lambda p: (p.created_at or "", p.hit_id or "", p.token))
    return {plan.query.sha256: plan for plan in ordered}


def create(
    batch_dir: Path,
    s3,
    platform: CrowdPlatform,
    settings: CrowdSettings,
    *,
    exclusion_id: str | None,
    reask_changed: bool = False,
) -> list[HitPlan]:
    """Plan, check the budget, and create the batch's HITs (each exactly once).

    ``exclusion_id``: the exclusion whose holders may not see the HITs (``failed_gold_exclusion``),
    used when ``settings.review.exclude_failed_workers``. ``reask_changed``: a query whose
    matches changed since its HIT was made gets a new HIT (``layout.plan_hits``).
    """
    ledger = ledger_for(s3, settings)
    existing = created_plans(ledger)
    plans = _plans(batch_dir, existing, settings.batch_id, reask_changed)
    new = [plan for plan in plans if plan.token not in existing]
    check_money_settings(s3, settings)
    costs.check_bonus(costs.cents(settings.payment.bonus), costs.cents(settings.payment.max_bonus))
    cost = costs.estimate(  # at the most assignments adaptive overlap may add up to
        len(new),
        settings.posting.max_assignments,
        costs.cents(settings.payment.reward),
        costs.cents(settings.payment.bonus),
        fees=platform.fees,
        masters=settings.workers.masters,
    )
    if new:
        budget = costs.cents(settings.payment.budget) if settings.payment.budget else None
        committed = _committed_cents(existing.values(), settings, platform.fees)
        costs.check_budget(
            cost,
            balance_cents=platform.balance_cents(),
            budget_cents=budget,
            committed_cents=committed,
        )
    else:
        log.info(
            "all %d HITs of batch %s already exist: nothing to create",
            len(plans),
            settings.batch_id,
        )
    spec = settings.task_spec(
        exclusion_id if settings.review.exclude_failed_workers else None,
        hit_cap_qualification(platform, settings),
    )
    platform.check_spec(spec)
    copies = HitCopies(
        s3,
        settings.storage.bucket,
        settings.storage.prefix,
        batch_secret(ledger),
        local_paths={sha: image.path for sha, image in _worker_images(batch_dir)[2].items()},
    )
    copies.publish(new)  # each HIT's own copies of its images, before its creation
    urls = ImageUrls(
        s3,
        settings.storage.bucket,
        expires_in=settings.link_lifetime_s,
        public_base_url=settings.storage.public_image_base_url or None,
        copies=copies,
    )
    render = partial(
        layout.render_hit,
        hit_urls=urls.for_hit,
        title=settings.posting.title,
        instructions=settings.instructions,
    )
    pin_settings(s3, settings)
    return create_hits(
        platform,
        plans,
        ledger,
        spec,
        render,
        concurrency=settings.posting.create_concurrency,
        known=existing,
    )


def _committed_cents(plans, settings: CrowdSettings, fees: FeeSchedule) -> int:
    """The most the batch's existing HITs can cost: each at its own reward and assignment
    count (or the most adaptive overlap may add up to), every assignment approved and paid the
    bonus."""
    bonus, fallback = costs.cents(settings.payment.bonus), review_settings(settings)
    most = settings.posting.max_assignments
    return sum(
        costs.estimate(
            1,
            max(terms.max_assignments, most),
            terms.reward_cents,
            bonus,
            fees=fees,
            masters=terms.masters,
        ).total
        for terms in (HitTerms.of(plan, fallback) for plan in plans if plan.hit_id)
    )


# --- 3. review and 4. results -----------------------------------------------------------------


def review(
    s3,
    platform: CrowdPlatform,
    settings: CrowdSettings,
    *,
    caps: PaymentCaps,
    exclusion_id: str | None = None,
):
    """Review every submitted assignment of the batch (exactly-once side effects).

    ``caps`` come from the Params of the run that pays: the batch's bonus and budget must be
    within them, and every bonus is checked against the lower of both caps. Then
    (``after_review``) the batch's gold answers join the workers' records under the prefix,
    workers whose record is below the exclusion rule get ``exclusion_id`` (when given), and
    workers at the batch's HIT cap get its cap qualification.
    """
    ledger = ledger_for(s3, settings)
    check_money_settings(s3, settings)
    caps.check(settings)
    plans = load_manifest(ledger)
    if not plans:
        raise ValueError(f"batch {settings.batch_id!r} has no HIT manifest in {s3_uri(ledger)}")
    try:
        return review_batch(platform, plans, ledger, review_settings(settings, caps))
    finally:  # also when one HIT failed: the others' failing workers are still excluded
        after_review(s3, platform, settings, exclusion_id)


def extend(
    s3,
    platform: CrowdPlatform,
    settings: CrowdSettings,
    reviews: Sequence[Review],
    *,
    caps: PaymentCaps,
    open_until: datetime,
    now: datetime | None = None,
) -> RoundOutcome:
    """Adaptive overlap after a review round: more assignments for every HIT whose winner's
    posterior (``quality``) is below the confidence target, within the most assignments per
    HIT and what the budget leaves (see ``extend.extend_unsure``). Nothing with fixed overlap.
    """
    overlap = settings.posting.overlap()
    if not overlap.adaptive:
        return RoundOutcome()
    ledger = ledger_for(s3, settings)
    plans = [plan for plan in load_manifest(ledger) if plan.hit_id]
    rules = review_settings(settings, caps)
    fees = platform.fees
    bonus = costs.cents(settings.payment.bonus)
    # One more assignment may be approved and paid the bonus: reward, fees, bonus, its fee.
    each = {
        plan.hit_id: HitTerms.of(plan, rules).approval_cents(fees) + bonus + fees.bonus_fee(bonus)
        for plan in plans
    }
    entries = extensions_of(ledger)  # read once: for the budget left and for the round
    left = None
    if rules.budget:
        committed = Purse.of(
            plans, ledger.entries("bonuses"), rules, fees, added_assignments(ledger, entries)
        ).committed_cents
        left = costs.cents(rules.budget) - committed
    return extend_unsure(
        platform,
        plans,
        ledger,
        quality.posteriors(plans, reviews, gold_history(s3, settings, reviews)),
        dict(Counter(review.hit_id for review in {r.assignment_id: r for r in reviews}.values())),
        overlap,
        open_until=open_until,
        approval_cents=each,
        budget_left_cents=left,
        now=now,
        entries=entries,
    )


def failed_gold_exclusion(platform: CrowdPlatform, enabled: bool) -> str | None:
    """The id of the exclusion that marks workers who failed a known answer (made on first
    use); None when not used."""
    if not enabled:
        return None
    return platform.exclusion(FAILED_GOLD_QUALIFICATION, FAILED_GOLD_DESCRIPTION)


def exclusion_policy(settings: CrowdSettings) -> ExclusionPolicy:
    return ExclusionPolicy(
        min_answers=settings.review.exclude_after_gold_answers,
        below_accuracy=settings.review.exclude_below_gold_accuracy,
    )


def worker_records(s3, settings: CrowdSettings) -> WorkerRecords:
    """The gold records of the workers of the batch's S3 prefix (shared by its batches)."""
    return WorkerRecords(s3, settings.storage.bucket, settings.storage.prefix)


def gold_history(s3, settings: CrowdSettings, reviews: Sequence[Review]) -> dict:
    """The gold records, in the prefix's other batches, of the workers of ``reviews``
    (``quality``'s ``history``); none when S3 cannot say (logged): the posterior then rests on
    this batch's answers alone."""
    try:
        return worker_records(s3, settings).history(
            {r.worker_id for r in reviews}, excluding_batch=settings.batch_id
        )
    except RecordsUnavailable as error:
        log.warning("the workers' gold records in other batches could not be read: %s", error)
        return {}


def after_review(
    s3, platform: CrowdPlatform, settings: CrowdSettings, exclusion_id: str | None
) -> None:
    """What follows each review (round): keep the batch's gold answers in the workers'
    records (``worker_records``: each once), exclude the workers the rule judges too often
    wrong over their whole record (when ``exclusion_id``), and give the batch's cap
    qualification to workers at its HIT cap. Nothing here stops a review: S3 or the platform
    failing is logged, and the next round does what this one could not."""
    ledger = ledger_for(s3, settings)
    entries = ledger.entries("reviews")
    answers = gold_answers(settings.batch_id, entries)
    store = worker_records(s3, settings)
    earlier = None
    try:
        known = store.answers({a.worker_id for a in answers})
        store.add(answers, known)
        earlier = skills_of(known, excluding_batch=settings.batch_id)
    except RecordsUnavailable as error:
        log.warning(
            "the workers' gold records under s3://%s/%s/ could not be read or kept (%s): "
            "nobody is excluded this round; the next review keeps them",
            store.bucket,
            store.root,
            error,
        )
    if exclusion_id and earlier is not None:
        exclude_failed_workers(
            platform,
            ledger,
            exclusion_id,
            policy=exclusion_policy(settings),
            history=earlier,
            entries=entries,
        )
    cap = settings.workers.max_hits_per_worker
    if cap:
        try:
            cap_id = hit_cap_qualification(platform, settings)
        except PlatformError as error:
            log.warning("the HIT cap's qualification could not be found or made: %s", error)
        else:
            cap_workers(platform, ledger, cap_id, cap, entries=entries)


def exclude_failed_workers(
    platform: CrowdPlatform,
    ledger: S3Ledger,
    exclusion_id: str,
    *,
    policy: ExclusionPolicy,
    history: dict | None = None,
    entries: dict[str, dict] | None = None,
) -> None:
    """Exclude from later HITs every worker of the batch whose gold record (their valid
    answers in this batch's ledger plus ``history``, their record in the prefix's other
    batches) ``policy`` excludes, once each (``ledger/exclusions/``). A refusal for one worker
    (a closed account, say) is logged and the others go on: an exclusion must never stop a
    review."""
    entries = ledger.entries("reviews") if entries is None else entries
    mine = records_of(entries)
    records = combined(mine, {w: s for w, s in (history or {}).items() if w in mine})
    failed = sorted(w for w, record in records.items() if policy.excludes(record))
    done = ledger.entries("exclusions")
    excluded = refused = 0
    for worker_id in (w for w in failed if w not in done):
        try:
            platform.grant_exclusion(exclusion_id, worker_id)
        except PlatformError as error:
            refused += 1
            log.warning("worker %r could not be excluded from later HITs: %s", worker_id, error)
            continue
        record = records[worker_id]
        ledger.put(
            "exclusions",
            worker_id,
            {"qualification": exclusion_id, "right": record.right, "answers": record.answers},
        )
        excluded += 1
    if excluded or refused:
        log.info(
            "%d workers are now excluded from later HITs: under %.0f%% right after %d or more "
            "gold answers across batches (%d before, %d refused)",
            excluded,
            policy.below_accuracy * 100,
            policy.min_answers,
            len(done),
            refused,
        )


def hit_cap_qualification(platform: CrowdPlatform, settings: CrowdSettings) -> str | None:
    """The id of the batch's "reached the HIT cap" exclusion (made on first use), or None
    without a cap (Param max_hits_per_worker 0). One per batch of a bucket and prefix: a
    worker holds it for this batch only."""
    if not settings.workers.max_hits_per_worker:
        return None
    where = f"{settings.storage.bucket}/{settings.storage.prefix}".encode()
    tag = hashlib.sha256(where).hexdigest()[:8]
    return platform.exclusion(
        f"image-similarity: reached the HIT cap of batch {settings.batch_id} ({tag})",
        f"Workers who did the most HITs one worker may do of image-similarity batch "
        f"{settings.batch_id}.",
    )


def cap_workers(
    platform: CrowdPlatform,
    ledger: S3Ledger,
    cap_id: str,
    cap: int,
    *,
    entries: dict[str, dict] | None = None,
) -> list[str]:
    """Give ``cap_id`` to every worker who submitted ``cap`` or more HITs of the batch (any
    submission, counted or not: each showed them a gold question), once each
    (``ledger/capped/``); return who got it now. A refusal is logged, retried next round."""
    entries = ledger.entries("reviews") if entries is None else entries
    hits: dict[str, set[str]] = {}
    for assignment_id, review in entries.items():
        if isinstance(review, dict) and isinstance(review.get("worker_id"), str):
            theirs = hits.setdefault(review["worker_id"], set())
            theirs.add(str(review.get("hit_id", assignment_id)))
    done = ledger.entries("capped")
    granted = []
    for worker_id in sorted(w for w, theirs in hits.items() if len(theirs) >= cap):
        if worker_id in done:
            continue
        try:
            platform.grant_exclusion(cap_id, worker_id)
        except PlatformError as error:
            log.warning("worker %r could not be kept from the batch's HITs: %s", worker_id, error)
            continue
        ledger.put("capped", worker_id, {"qualification": cap_id, "hits": len(hits[worker_id])})
        granted.append(worker_id)
    if granted:
        log.info(
            "%d workers reached the cap of %d HITs of this batch and see no more of them "
            "(%d before)",
            len(granted),
            cap,
            len(done),
        )
    return granted


def load_reviews(ledger: S3Ledger) -> list[Review]:
    data = ledger.get_bytes("reviews.jsonl") or b""
    return [
        Review.from_dict(json.loads(line)) for line in data.decode("utf-8").splitlines() if line
    ]


def results(
    batch_dir: Path, s3, settings: CrowdSettings, fees: FeeSchedule, *, now=None
) -> dict[str, str]:
    """Aggregate the batch's reviews; write results.json / results.csv / report.html locally
    (``<batch_dir>/results/``) and to S3 (``results/``), each also as a snapshot under
    ``results/history/<UTC time>/`` (``history``). Returns local paths, S3 URIs and the
    snapshot's name. ``now``: the snapshot's time (a ``datetime``; default the clock's)."""
    from include.crowd.aggregation.registry import aggregate
    from include.crowd.report import write_results

    ledger = ledger_for(s3, settings)
    plans = load_manifest(ledger)
    terms = review_settings(settings)
    money = spent(ledger, terms, fees, plans)
    reviews = load_reviews(ledger)
    paid = {key: money[f"{key}_cents"] for key in ("rewards", "bonuses", "fees", "total")}
    if settings.posting.max_assignments > settings.posting.assignments:  # adaptive overlap
        fixed = at_fixed_overlap(plans, money, settings.posting.max_assignments, terms, fees)
        paid["at_fixed_overlap"] = fixed | {"total": costs.usd(fixed["total_cents"])}
    aggregated = aggregate(
        plans,
        reviews,
        spent=paid,
        show_worker_ids=settings.review.show_worker_ids,
        primary=settings.review.aggregation,
        history=gold_history(s3, settings, reviews),
    )
    thumbnail = image_source(batch_dir, s3, settings)
    past = history.history_of(
        s3, settings.storage.bucket, ledger.root, aggregated, history.stamp(now)
    )
    aggregated["history"] = past
    out_dir = batch_dir / "results"
    written = write_results(aggregated, plans, out_dir, thumbnails=thumbnail)
    snapshot = f"{history.HISTORY}/{past['snapshot']}"
    uris = {}
    for name, path in written.items():
        content_type = {
            ".json": "application/json",
            ".csv": "text/csv",
            ".html": "text/html; charset=utf-8",
        }.get(Path(path).suffix, "application/octet-stream")
        data = Path(path).read_bytes()
        ledger.put_bytes(f"results/{Path(path).name}", data, content_type)
        uris[name] = s3_uri(ledger, f"results/{Path(path).name}")
        # the snapshot: in S3 (the record the next write compares with), then locally
        ledger.put_bytes(f"{snapshot}/{Path(path).name}", data, content_type)
        write_bytes(batch_dir / snapshot / Path(path).name, data)
    summary = aggregated.get("summary", {})
    log.info("results: %s", json.dumps(summary, sort_keys=True, default=str)[:1000])
    log.info(
        "results snapshot %d of batch %s: %s (%s)",
        past["snapshots"],
        settings.batch_id,
        s3_uri(ledger, snapshot + "/"),
        _changes_line(past),
    )
    return {
        **{k: str(v) for k, v in written.items()},
        **{f"s3_{k}": v for k, v in uris.items()},
        "snapshot": past["snapshot"],
    }


def _changes_line(past: dict[str, Any]) -> str:
    since = past["since_previous"]
    if since is None:
        return "the first"
    return (
        f"since {past['previous']}: {since['changed_count']} winner(s) changed, "
        f"{len(since['new'])} new quer{'y' if len(since['new']) == 1 else 'ies'}"
    )


def image_source(
    batch_dir: Path, s3, settings: CrowdSettings
) -> Callable[[ImageRef], bytes | None]:
    """An image's bytes by reference: the local file the similarity stage listed, else its
    published original in S3; None (logged) when neither is there."""
    local_paths = _local_image_paths(batch_dir)

    def read(ref: ImageRef) -> bytes | None:
        path = local_paths.get(ref.sha256)
        if path is not None and path.exists():
            return path.read_bytes()
        if ref.key:
            try:
                return s3.get_object(Bucket=settings.storage.bucket, Key=ref.key)["Body"].read()
            except Exception:  # a missing image shows a placeholder in the report
                log.warning("no image for %s in S3 (%s)", ref.name, ref.key)
        return None

    return read


def _local_image_paths(batch_dir: Path) -> dict[str, Path]:
    try:
        return {image.sha256: image.path for image in _listed_images(batch_dir).values()}
    except FileNotFoundError:
        return {}


def report_url(s3, settings: CrowdSettings, expires_in: int = 7 * 24 * 3600) -> str:
    """A link to the batch's report in S3 (presigned: the bucket is private)."""
    ledger = ledger_for(s3, settings)
    return s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": settings.storage.bucket, "Key": ledger.key("results/report.html")},
        ExpiresIn=expires_in,
    )


# --- 0. before anything ---------------------------------------------------------------------


def preflight(
    s3, connect: Callable[[], CrowdPlatform], settings: CrowdSettings, aws_conn_id: str
) -> list[str]:
    """Every problem that would stop the crowd stage, found before the run lists or embeds
    anything: the bucket, the platform and its balance, the money settings, and an existing
    batch's pinned ones (``preflight``). Each names the Param or connection to fix."""
    found = preflight_checks.storage_problems(s3, settings, aws_conn_id)
    platform, reached = preflight_checks.connect(connect, settings, aws_conn_id)
    found += reached
    if platform is not None:
        balance = preflight_checks.balance(platform, settings, aws_conn_id, found)
        found += preflight_checks.money_problems(settings, platform.fees, balance)
    if not found:  # the bucket is there: an existing batch's pinned settings can be read
        try:
            check_money_settings(s3, settings)
        except ValueError as error:
            found.append(str(error))
    return found
