"""The crowd stage's steps over a batch folder, called by the DAG's tasks (plain Python).

Each step reads what the previous ones left in the local batch folder and in S3 under
``<prefix>/batches/<batch_id>/``, takes boto3 clients (the DAG gets them from ``S3Hook`` and
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

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from include.common.files import read_json, write_json
from include.crowd import costs, layout
from include.crowd.create import HitSettings, create_hits, created_plans, load_manifest
from include.crowd.ledger import S3Ledger
from include.crowd.publish import (
    HitCopies,
    ImageUrls,
    LocalImage,
    batch_secret,
    check_bucket,
    publish_images,
)
from include.crowd.records import HitPlan, ImageRef, Review
from include.crowd.review import HitTerms, ReviewSettings, review_batch, spent
from include.image_similarity.pipeline import load_listings

log = logging.getLogger(__name__)

PUBLISHED = "published.json"
SETTINGS = "settings.json"
FAILED_GOLD_QUALIFICATION = "image-similarity: failed a known-answer question"
FAILED_GOLD_DESCRIPTION = (
    "Workers who answered a known-answer question of an image-similarity batch wrongly."
)
# Fixed when a batch's first HIT is about to be created: a later run of the batch with any of
# these changed would pay some workers differently from others (or past the caps it was
# checked against), so it is refused before any call.
# The environment too: a sandbox batch rerun in production would create real, paid HITs.
MONEY_FIELDS = ("reward", "bonus", "max_bonus", "budget", "assignments", "masters", "environment")


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
            max_bonus=params.get("max_bonus_usd") or costs.DEFAULT_MAX_BONUS,
            budget=params.get("budget_usd") or None,
        )

    def check(self, settings: CrowdSettings) -> None:
        """Refuse a batch whose bonus or budget is above these caps (before anything is paid)."""
        bonus, cap = costs.cents(settings.bonus), costs.cents(self.max_bonus)
        if bonus > cap:
            raise costs.BudgetError(
                f"batch {settings.batch_id!r} pays a bonus of {costs.usd(bonus)}, above this "
                f"run's per-bonus cap of {costs.usd(cap)} (Param max_bonus_usd); nothing was paid"
            )
        if self.budget is None:
            return
        if settings.budget is None or costs.cents(settings.budget) > costs.cents(self.budget):
            stored = costs.usd(costs.cents(settings.budget)) if settings.budget else "no cap"
            raise costs.BudgetError(
                f"batch {settings.batch_id!r} has a budget of {stored}, above this run's budget "
                f"cap of {costs.usd(costs.cents(self.budget))} (Param budget_usd); nothing was "
                "paid"
            )

    def tightest(self, settings: CrowdSettings) -> tuple[str, str | None]:
        """The per-bonus cap and budget in force: the lower of the batch's and this run's."""
        max_bonus = min(settings.max_bonus, self.max_bonus, key=costs.cents)
        budgets = [b for b in (settings.budget, self.budget) if b]
        return max_bonus, min(budgets, key=costs.cents) if budgets else None


@dataclass(frozen=True)
class CrowdSettings:
    """The Params the crowd stage reads (see the DAG's trigger form)."""

    batch_id: str
    bucket: str
    prefix: str
    environment: str
    title: str
    description: str
    keywords: str
    assignments: int
    lifetime_s: int
    assignment_duration_s: int
    auto_approval_delay_s: int
    review_window_s: int
    reward: str
    bonus: str
    budget: str | None
    bonus_message: str
    no_bonus_message: str
    min_approval_rate: int | None = None
    min_approved_hits: int | None = None
    locales: tuple[str, ...] = ()
    exclude_failed_workers: bool = False
    masters: bool = False
    public_image_base_url: str = ""
    create_concurrency: int = 4
    show_worker_ids: bool = False
    max_bonus: str = costs.DEFAULT_MAX_BONUS

    @classmethod
    def from_params(cls, params: dict[str, Any], batch_id: str) -> CrowdSettings:
        locales = tuple(
            x.strip() for x in (params.get("worker_locales") or "").split(",") if x.strip()
        )  # None: the trigger form's empty field
        return cls(
            batch_id=batch_id,
            bucket=params["s3_bucket"],
            prefix=params["s3_prefix"],
            environment=params["mturk_environment"],
            title=params["hit_title"],
            description=params["hit_description"],
            keywords=params["hit_keywords"],
            assignments=int(params["assignments_per_hit"]),
            lifetime_s=int(float(params["hit_lifetime_hours"]) * 3600),
            assignment_duration_s=int(float(params["assignment_duration_minutes"]) * 60),
            auto_approval_delay_s=int(float(params["auto_approval_delay_hours"]) * 3600),
            review_window_s=int(float(params.get("review_window_hours", 24)) * 3600),
            reward=params["reward_usd"],
            bonus=params["bonus_usd"],
            budget=params.get("budget_usd") or None,
            bonus_message=params["bonus_message"],
            no_bonus_message=params["no_bonus_message"],
            min_approval_rate=params.get("min_approval_rate"),
            min_approved_hits=params.get("min_approved_hits"),
            locales=locales,
            exclude_failed_workers=bool(params.get("exclude_failed_workers", False)),
            masters=bool(params.get("require_masters", False)),
            public_image_base_url=params.get("public_image_base_url") or "",
            create_concurrency=int(params.get("create_concurrency", 4)),
            show_worker_ids=bool(params.get("show_worker_ids", False)),
            max_bonus=params.get("max_bonus_usd") or costs.DEFAULT_MAX_BONUS,
        )

    @classmethod
    def from_batch(cls, s3, bucket: str, prefix: str, batch_id: str) -> CrowdSettings:
        """The settings a batch was created with (``settings.json`` in its S3 folder)."""
        stored = S3Ledger(s3, bucket, prefix, batch_id).get_json(SETTINGS)
        if stored is None:
            raise ValueError(
                f"batch {batch_id!r} has no settings in s3://{bucket}/{prefix}/batches/"
                f"{batch_id}/: was it created with this bucket and prefix?"
            )
        like = cls.from_stored(stored, None)
        return replace(like, bucket=bucket, prefix=prefix, batch_id=batch_id)

    @classmethod
    def from_stored(cls, stored: Any, current: CrowdSettings | None) -> CrowdSettings:
        """Settings from a stored ``settings.json`` (``current`` fills in what it lacks)."""
        if not isinstance(stored, dict):
            raise ValueError("settings.json is not a JSON object")
        known = {f.name for f in fields(cls)}
        stored = {k: v for k, v in stored.items() if k in known}
        base = asdict(current) if current is not None else {}
        merged = {**base, **stored}
        merged["locales"] = tuple(merged.get("locales", ()))
        return cls(**merged)

    def review_settings(self, caps: PaymentCaps | None = None) -> ReviewSettings:
        max_bonus, budget = (caps or PaymentCaps(self.max_bonus, self.budget)).tightest(self)
        return ReviewSettings(
            reward=self.reward,
            bonus=self.bonus,
            bonus_message=self.bonus_message,
            no_bonus_message=self.no_bonus_message,
            assignments_per_hit=self.assignments,
            max_bonus=max_bonus,
            budget=budget,
            masters=self.masters,
        )

    def money(self) -> dict[str, Any]:
        """The money settings, normalised (amounts in cents) for comparison."""
        values = {name: getattr(self, name) for name in MONEY_FIELDS}
        for name in ("reward", "bonus", "max_bonus", "budget"):
            values[name] = costs.cents(values[name]) if values[name] else None
        return values


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
        missing = [
            name for name in MONEY_FIELDS if not isinstance(stored, dict) or name not in stored
        ]
        if missing:
            raise ValueError(f"settings.json lacks {', '.join(missing)}")
        before = CrowdSettings.from_stored(stored, settings).money()
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
    if name in ("reward", "bonus", "max_bonus", "budget"):
        return costs.usd(value) if value is not None else "none"
    return str(value)


def pin_settings(s3, settings: CrowdSettings) -> None:
    """Write the batch's ``settings.json`` once (conditional write); if it is already there,
    check that the money settings agree with it."""
    check_money_settings(s3, settings)  # also refuses a batch with HITs whose file is gone
    if not ledger_for(s3, settings).put_json_once(SETTINGS, asdict(settings)):
        check_money_settings(s3, settings)  # written meanwhile by another run


def ledger_for(s3, settings: CrowdSettings) -> S3Ledger:
    return S3Ledger(s3, settings.bucket, settings.prefix, settings.batch_id)


def s3_uri(ledger: S3Ledger, name: str = "") -> str:
    return f"s3://{ledger.bucket}/{ledger.key(name)}"


# --- 1. publish -----------------------------------------------------------------------------


def _worker_images(batch_dir: Path) -> tuple[list[dict], list[dict], dict[str, LocalImage]]:
    similarity = read_json(batch_dir / "similarity.json")
    known = read_json(batch_dir / "known_answers.json")
    listings = load_listings(batch_dir)
    by_name = {
        (collection, image.name): image
        for collection, listing in listings.items()
        for image in listing.images
    }
    images: dict[str, LocalImage] = {}

    def add(collection: str, name: str) -> None:
        image = by_name[(collection, name)]
        images.setdefault(image.sha256, LocalImage(image.name, Path(image.path), image.sha256))

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
    check_bucket(s3, settings.bucket)
    _, _, images = _worker_images(batch_dir)
    refs = publish_images(s3, settings.bucket, settings.prefix, images.values())
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


def _plans(batch_dir: Path, existing: dict[str, HitPlan], batch_id: str) -> list[HitPlan]:
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
    by_query = {plan.query.sha256: plan for plan in existing.values()}
    return layout.plan_hits(batch_id, plan_queries, gold_sets, existing=by_query)


def create(
    batch_dir: Path, s3, mturk, settings: CrowdSettings, *, qualification_type_id: str | None
) -> list[HitPlan]:
    """Plan, check the budget, and create the batch's HITs (each exactly once)."""
    ledger = ledger_for(s3, settings)
    existing = created_plans(ledger)
    plans = _plans(batch_dir, existing, settings.batch_id)
    new = [plan for plan in plans if plan.token not in existing]
    check_money_settings(s3, settings)
    costs.check_bonus(costs.cents(settings.bonus), costs.cents(settings.max_bonus))
    cost = costs.estimate(
        len(new),
        settings.assignments,
        costs.cents(settings.reward),
        costs.cents(settings.bonus),
        masters=settings.masters,
    )
    if new:
        balance = costs.balance_cents(mturk.get_account_balance()["AvailableBalance"])
        budget = costs.cents(settings.budget) if settings.budget else None
        committed = _committed_cents(existing.values(), settings)
        costs.check_budget(
            cost, balance_cents=balance, budget_cents=budget, committed_cents=committed
        )
    else:
        log.info(
            "all %d HITs of batch %s already exist: nothing to create",
            len(plans),
            settings.batch_id,
        )
    requirements = layout.qualification_requirements(
        min_approval_rate=settings.min_approval_rate,
        min_approved_hits=settings.min_approved_hits,
        locales=list(settings.locales) or None,
        exclude_qualification_id=qualification_type_id if settings.exclude_failed_workers else None,
        masters=settings.masters,
        environment=settings.environment,
    )
    hit_settings = HitSettings(
        title=settings.title,
        description=settings.description,
        keywords=settings.keywords,
        reward=settings.reward,
        assignments=settings.assignments,
        lifetime_s=settings.lifetime_s,
        assignment_duration_s=settings.assignment_duration_s,
        auto_approval_delay_s=settings.auto_approval_delay_s,
        qualification_requirements=requirements,
    )
    copies = HitCopies(
        s3,
        settings.bucket,
        settings.prefix,
        batch_secret(ledger),
        local_paths={sha: image.path for sha, image in _worker_images(batch_dir)[2].items()},
    )
    copies.publish(new)  # each HIT's own copies of its images, before its CreateHIT
    urls = ImageUrls(
        s3,
        settings.bucket,
        expires_in=settings.lifetime_s + settings.assignment_duration_s + settings.review_window_s,
        public_base_url=settings.public_image_base_url or None,
        copies=copies,
    )
    render = partial(layout.render_hit, hit_urls=urls.for_hit, title=settings.title)
    pin_settings(s3, settings)
    return create_hits(
        mturk,
        plans,
        ledger,
        hit_settings,
        render,
        concurrency=settings.create_concurrency,
        known=existing,
    )


def _committed_cents(plans, settings: CrowdSettings) -> int:
    """The most the batch's existing HITs can cost: each at its own reward and assignment
    count, every assignment approved and paid the bonus."""
    bonus, fallback = costs.cents(settings.bonus), settings.review_settings()
    return sum(
        costs.estimate(
            1, terms.max_assignments, terms.reward_cents, bonus, masters=terms.masters
        ).total
        for terms in (HitTerms.of(plan, fallback) for plan in plans if plan.hit_id)
    )


# --- 3. review and 4. results -----------------------------------------------------------------


def review(
    s3,
    mturk,
    settings: CrowdSettings,
    *,
    caps: PaymentCaps,
    qualification_type_id: str | None = None,
):
    """Review every submitted assignment of the batch (exactly-once side effects).

    ``caps`` come from the Params of the run that pays: the batch's bonus and budget must be
    within them, and every bonus is checked against the lower of both caps.
    """
    ledger = ledger_for(s3, settings)
    check_money_settings(s3, settings)
    caps.check(settings)
    plans = load_manifest(ledger)
    if not plans:
        raise ValueError(f"batch {settings.batch_id!r} has no HIT manifest in {s3_uri(ledger)}")
    try:
        return review_batch(mturk, plans, ledger, settings.review_settings(caps))
    finally:  # also when one HIT failed: the others' failing workers are still excluded
        if qualification_type_id:
            exclude_failed_workers(mturk, ledger, qualification_type_id)


def failed_gold_qualification(hook, enabled: bool) -> str | None:
    """The id of the custom qualification that marks workers who failed a known answer (made
    on first use through ``hook.get_or_create_qualification_type``); None when not used."""
    if not enabled:
        return None
    found = hook.get_or_create_qualification_type(
        FAILED_GOLD_QUALIFICATION, FAILED_GOLD_DESCRIPTION
    )
    return found["QualificationTypeId"]


def exclude_failed_workers(mturk, ledger: S3Ledger, qualification_type_id: str) -> None:
    """Grant the exclusion qualification to every worker the ledger says answered a known
    answer wrongly, once each (``ledger/exclusions/``). A refusal for one worker (a closed
    account, say) is logged and the others go on: an exclusion must never stop a review."""
    reviews = ledger.entries("reviews").values()
    failed = sorted({r["worker_id"] for r in reviews if r.get("valid") and not r["gold_correct"]})
    done = ledger.entries("exclusions")
    excluded = refused = 0
    for worker_id in (w for w in failed if w not in done):
        try:
            mturk.associate_qualification_with_worker(
                QualificationTypeId=qualification_type_id,
                WorkerId=worker_id,
                IntegerValue=1,
                SendNotification=False,
            )
        except ClientError as error:
            refused += 1
            log.warning("worker %r could not be excluded from later HITs: %s", worker_id, error)
            continue
        ledger.put("exclusions", worker_id, {"qualification": qualification_type_id})
        excluded += 1
    if excluded or refused:
        log.info(
            "%d workers who failed a known answer are now excluded from later HITs "
            "(%d before, %d refused)",
            excluded,
            len(done),
            refused,
        )


def load_reviews(ledger: S3Ledger) -> list[Review]:
    data = ledger.get_bytes("reviews.jsonl") or b""
    return [
        Review.from_dict(json.loads(line)) for line in data.decode("utf-8").splitlines() if line
    ]


def results(batch_dir: Path, s3, settings: CrowdSettings) -> dict[str, str]:
    """Aggregate the batch's reviews; write results.json / results.csv / report.html locally
    (``<batch_dir>/results/``) and to S3 (``results/``). Returns local paths and S3 URIs."""
    from include.crowd.aggregate import aggregate
    from include.crowd.report import write_results

    ledger = ledger_for(s3, settings)
    plans = load_manifest(ledger)
    money = spent(ledger, settings.review_settings(), plans)
    aggregated = aggregate(
        plans,
        load_reviews(ledger),
        spent={key: money[f"{key}_cents"] for key in ("rewards", "bonuses", "fees", "total")},
        show_worker_ids=settings.show_worker_ids,
    )
    local_paths = _local_image_paths(batch_dir)

    def thumbnail(ref: ImageRef) -> bytes | None:
        path = local_paths.get(ref.sha256)
        if path is not None and path.exists():
            return path.read_bytes()
        if ref.key:
            try:
                return s3.get_object(Bucket=settings.bucket, Key=ref.key)["Body"].read()
            except Exception:  # a missing image shows a placeholder in the report
                log.warning("no image for %s in S3 (%s)", ref.name, ref.key)
        return None

    out_dir = batch_dir / "results"
    written = write_results(aggregated, plans, out_dir, thumbnails=thumbnail)
    uris = {}
    for name, path in written.items():
        content_type = {
            ".json": "application/json",
            ".csv": "text/csv",
            ".html": "text/html; charset=utf-8",
        }.get(Path(path).suffix, "application/octet-stream")
        ledger.put_bytes(f"results/{Path(path).name}", Path(path).read_bytes(), content_type)
        uris[name] = s3_uri(ledger, f"results/{Path(path).name}")
    summary = aggregated.get("summary", {})
    log.info("results: %s", json.dumps(summary, sort_keys=True, default=str)[:1000])
    return {**{k: str(v) for k, v in written.items()}, **{f"s3_{k}": v for k, v in uris.items()}}


def _local_image_paths(batch_dir: Path) -> dict[str, Path]:
    try:
        listings = load_listings(batch_dir)
    except FileNotFoundError:
        return {}
    return {
        image.sha256: Path(image.path) for listing in listings.values() for image in listing.images
    }


def report_url(s3, settings: CrowdSettings, expires_in: int = 7 * 24 * 3600) -> str:
    """A link to the batch's report in S3 (presigned: the bucket is private)."""
    ledger = ledger_for(s3, settings)
    return s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": settings.bucket, "Key": ledger.key("results/report.html")},
        ExpiresIn=expires_in,
    )
