"""The crowd stage's settings: one object, built once from the DAG's Params, stored with the
batch (``settings.json``) and read back strictly.

``CrowdSettings`` is made of small parts, each what one concern needs: the HITs' ``posting``
(text, assignments, times), the ``payment`` (reward, bonus, caps), the ``review`` (messages,
how long links last, exclusion of failed workers, worker ids in the report), the ``workers``
who may take the HITs, and the ``storage`` in S3. Defaults live in one place only, the DAG's
Params: ``from_params`` reads every Param it needs and fails naming a missing one, and the
stored file must hold exactly these fields (an unknown or missing field is an error that says
which), so a damaged or crafted file is refused rather than half-read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from include.common.strict import SettingsError, read_document, to_document
from include.crowd import costs
from include.crowd.aggregation import check_primary
from include.crowd.platform import TaskSpec, WorkerRequirements

FORMAT = 2  # settings.json's layout: parts (format 1, before parts, was flat)
# Fixed when a batch's first HIT is about to be created: a later run of the batch with any of
# these changed would pay some workers differently from others (or past the caps it was
# checked against), so it is refused before any call. The environment too: a sandbox batch
# rerun in production would create real, paid HITs. Name -> (part, field) in the stored file.
MONEY_FIELDS = {
    "reward": ("payment", "reward"),
    "bonus": ("payment", "bonus"),
    "max_bonus": ("payment", "max_bonus"),
    "budget": ("payment", "budget"),
    "assignments": ("posting", "assignments"),
    "masters": ("workers", "masters"),
    "environment": (None, "environment"),
}
AMOUNTS = ("reward", "bonus", "max_bonus", "budget")


@dataclass(frozen=True)
class Posting:
    """What each HIT shows and how long it lives."""

    title: str
    description: str
    keywords: str
    assignments: int
    lifetime_s: int
    assignment_duration_s: int
    auto_approval_delay_s: int
    create_concurrency: int


@dataclass(frozen=True)
class Payment:
    """US dollar amounts as text ("0.05"); ``budget`` None: no cap."""

    reward: str
    bonus: str
    max_bonus: str
    budget: str | None


@dataclass(frozen=True)
class ReviewPolicy:
    """What the review says and does beyond paying."""

    bonus_message: str
    no_bonus_message: str
    review_window_s: int
    exclude_failed_workers: bool
    show_worker_ids: bool
    aggregation: str  # the primary aggregation method (``aggregation.Method``)

    def __post_init__(self) -> None:
        check_primary(self.aggregation)


@dataclass(frozen=True)
class Workers:
    """Who may take the HITs (``platform.WorkerRequirements`` without the exclusion's id)."""

    min_approval_rate: int | None
    min_approved_hits: int | None
    locales: tuple[str, ...]
    masters: bool


@dataclass(frozen=True)
class Storage:
    """Where the batch lives in S3, and an optional public base URL for its images."""

    bucket: str
    prefix: str
    public_image_base_url: str


PARTS: dict[str, type] = {
    "posting": Posting,
    "payment": Payment,
    "review": ReviewPolicy,
    "workers": Workers,
    "storage": Storage,
}


@dataclass(frozen=True)
class CrowdSettings:
    """Everything the crowd stage reads, for one batch."""

    batch_id: str
    environment: str
    posting: Posting
    payment: Payment
    review: ReviewPolicy
    workers: Workers
    storage: Storage

    @classmethod
    def from_params(cls, params: dict[str, Any], batch_id: str) -> CrowdSettings:
        """The settings of a run, from its Params (every Param named here must be there)."""

        def param(name: str) -> Any:
            try:
                return params[name]
            except KeyError:
                raise SettingsError(f"the Param {name!r} is missing") from None

        def hours(name: str) -> int:
            return int(float(param(name)) * 3600)

        locales = tuple(x.strip() for x in (param("worker_locales") or "").split(",") if x.strip())
        return cls(
            batch_id=batch_id,
            environment=param("mturk_environment"),
            posting=Posting(
                title=param("hit_title"),
                description=param("hit_description"),
                keywords=param("hit_keywords"),
                assignments=int(param("assignments_per_hit")),
                lifetime_s=hours("hit_lifetime_hours"),
                assignment_duration_s=int(float(param("assignment_duration_minutes")) * 60),
                auto_approval_delay_s=hours("auto_approval_delay_hours"),
                create_concurrency=int(param("create_concurrency")),
            ),
            payment=Payment(
                reward=param("reward_usd"),
                bonus=param("bonus_usd"),
                max_bonus=param("max_bonus_usd") or costs.DEFAULT_MAX_BONUS,
                budget=param("budget_usd") or None,  # None: the trigger form's empty field
            ),
            review=ReviewPolicy(
                bonus_message=param("bonus_message"),
                no_bonus_message=param("no_bonus_message"),
                review_window_s=hours("review_window_hours"),
                exclude_failed_workers=bool(param("exclude_failed_workers")),
                show_worker_ids=bool(param("show_worker_ids")),
                aggregation=param("aggregation_method"),
            ),
            workers=Workers(
                min_approval_rate=param("min_approval_rate"),
                min_approved_hits=param("min_approved_hits"),
                locales=locales,
                masters=bool(param("require_masters")),
            ),
            storage=Storage(
                bucket=param("s3_bucket"),
                prefix=param("s3_prefix"),
                public_image_base_url=param("public_image_base_url") or "",
            ),
        )

    # --- stored with the batch ---------------------------------------------------------------

    def to_stored(self) -> dict[str, Any]:
        """The JSON document ``settings.json`` holds."""
        return to_document(self, FORMAT)

    @classmethod
    def from_stored(cls, stored: Any) -> CrowdSettings:
        """Settings from a stored ``settings.json``: exactly these fields, each of its type.

        :raises SettingsError: naming every unknown, missing or mistyped field.
        """
        return read_document(cls, stored, name="settings.json", version=FORMAT)

    def money(self) -> dict[str, Any]:
        """The money settings by name, normalised (amounts in cents) for comparison."""
        values = {name: self.money_field(name) for name in MONEY_FIELDS}
        for name in AMOUNTS:
            values[name] = costs.cents(values[name]) if values[name] else None
        return values

    def money_field(self, name: str) -> Any:
        part, field = MONEY_FIELDS[name]
        return getattr(getattr(self, part) if part else self, field)

    def with_storage(self, bucket: str, prefix: str, batch_id: str) -> CrowdSettings:
        return dataclasses.replace(
            self,
            batch_id=batch_id,
            storage=dataclasses.replace(self.storage, bucket=bucket, prefix=prefix),
        )

    # --- what the steps need -----------------------------------------------------------------

    def task_spec(self, exclusion_id: str | None) -> TaskSpec:
        """What each HIT of the batch offers, and who may take it."""
        posting = self.posting
        return TaskSpec(
            title=posting.title,
            description=posting.description,
            keywords=posting.keywords,
            reward=self.payment.reward,
            assignments=posting.assignments,
            lifetime_s=posting.lifetime_s,
            assignment_duration_s=posting.assignment_duration_s,
            auto_approval_delay_s=posting.auto_approval_delay_s,
            requirements=WorkerRequirements(
                min_approval_rate=self.workers.min_approval_rate,
                min_approved_hits=self.workers.min_approved_hits,
                locales=self.workers.locales,
                masters=self.workers.masters,
                excluded=exclusion_id,
            ),
        )

    @property
    def link_lifetime_s(self) -> int:
        """How long the images' links must work: the HIT's life, an assignment, the review."""
        return (
            self.posting.lifetime_s
            + self.posting.assignment_duration_s
            + self.review.review_window_s
        )


def stored_money_fields(stored: Any) -> list[str]:
    """The money fields a stored ``settings.json`` lacks (by name)."""
    missing = []
    for name, (part, field) in MONEY_FIELDS.items():
        holder = stored.get(part) if isinstance(stored, dict) and part else stored
        if not isinstance(holder, dict) or field not in holder:
            missing.append(name)
    return missing
