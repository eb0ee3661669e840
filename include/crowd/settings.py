"""The crowd stage's settings: one object, built once from the DAG's Params, stored with the
batch (``settings.json``) and read back strictly.

``CrowdSettings`` is made of small parts, each what one concern needs: the HITs' ``posting``
(text, assignments, times), the ``payment`` (reward, bonus, caps), the ``review`` (messages,
how long links last, exclusion of failed workers, worker ids in the report), the ``workers``
who may take the HITs, and the ``storage`` in S3. Defaults live in one place only, the DAG's
Params: ``from_params`` reads every Param it needs and fails naming a missing one, and the
stored file must hold exactly these fields (an unknown or missing field is an error that says
which), so a damaged or crafted file is refused rather than half-read. The defaults of the
fields a format-2 file lacks (``DEFAULT_HIT_INSTRUCTIONS``, ``DEFAULT_EMAIL_SUBJECT``) are
written here and the DAG's Params take them from here, so an old batch read back gets exactly
what a new one gets by default.

Texts workers read may hold placeholders the code fills (``fill``): the HIT's instructions and
description take ``{bonus}``, the bonus amount as workers see it ("$0.05"). Nothing else of
``str.format`` works in them (no attribute, index, conversion or width), ``{{`` and ``}}`` are
literal braces and so is a lone brace; an unknown ``{name}`` is refused, naming the Param.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.common.strict import SettingsError, read_document, to_document
from include.crowd import costs
from include.crowd.aggregation import check_primary
from include.crowd.platform import TaskSpec, WorkerRequirements
from include.crowd.quality import Overlap

# settings.json's layout: 1 was flat, 2 has parts, 3 adds posting.instructions,
# review.email_subject and review.min_work_seconds, and reads posting.description as a text
# with placeholders; 4 adds review.exclude_after_gold_answers,
# review.exclude_below_gold_accuracy and workers.max_hits_per_worker. Format-2 and format-3
# files are still read (``from_stored``): a campaign spans upgrades.
FORMAT = 4
DEFAULT_HIT_INSTRUCTIONS = (
    "Each of the two questions below shows a reference picture and a few options. For each "
    "question, pick the option whose picture is the most similar to the reference picture: the "
    "same scene, object or place. If none of the options is similar, pick \u201cNone of "
    "these\u201d.\n\n"
    "One of the two questions checks your attention: its right answer is known. Answer it "
    "right and you earn a bonus of {bonus} on top of the reward. Only the answers of workers "
    "who answer it right are counted."
)
DEFAULT_HIT_DESCRIPTION = (
    "Two short questions: pick the picture most similar to a reference picture. Answer the "
    "attention check right for a bonus of {bonus}."
)
DEFAULT_CONFIDENCE = 0.95  # adaptive overlap's target posterior of a winner
DEFAULT_EMAIL_SUBJECT = "No bonus this time: the check question"
# A worker is excluded (Param exclude_failed_workers) once their gold record across the
# prefix's batches holds this many answers and the share right is below this.
DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS = 3
DEFAULT_EXCLUDE_BELOW_GOLD_ACCURACY = 0.6
DEFAULT_MAX_HITS_PER_WORKER = 0  # no cap
MAX_GOLD_ANSWERS_PARAM = 1000
MAX_HITS_PER_WORKER_PARAM = 10000
INSTRUCTIONS_MAX = 4000  # characters, filled in; the page must stay well under MTurk's 64 KiB
DESCRIPTION_MAX = 2000  # MTurk's longest HIT description
EMAIL_SUBJECT_MAX = 200  # NotifyWorkers' longest Subject
EMAIL_TEXT_MAX = 4096  # NotifyWorkers' longest MessageText (the review keeps within it)
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
    "max_assignments": ("posting", "max_assignments"),
    "masters": ("workers", "masters"),
    "environment": (None, "environment"),
}
AMOUNTS = ("reward", "bonus", "max_bonus", "budget")


@dataclass(frozen=True)
class Posting:
    """What each HIT shows and how long it lives."""

    title: str
    description: str  # with placeholders (``fill``), as ``instructions``
    keywords: str
    assignments: int
    lifetime_s: int
    assignment_duration_s: int
    auto_approval_delay_s: int
    create_concurrency: int
    instructions: str  # shown above the questions; a blank line starts a paragraph
    max_assignments: int  # adaptive overlap's most per HIT; == assignments: fixed overlap
    confidence: float  # adaptive overlap asks more workers while a winner is less sure

    def overlap(self) -> Overlap:
        """Adaptive overlap from these settings (``quality.Overlap``)."""
        return Overlap(
            start=self.assignments, maximum=self.max_assignments, confidence=self.confidence
        )


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
    email_subject: str  # of the no-bonus e-mail; plain text, no placeholders
    min_work_seconds: float  # a submission faster than this is not counted; 0: no minimum
    # with exclude_failed_workers: excluded once a worker's gold record across batches holds
    # at least this many answers and the share right is below the accuracy
    exclude_after_gold_answers: int
    exclude_below_gold_accuracy: float

    def __post_init__(self) -> None:
        check_primary(self.aggregation)
        check_subject(self.email_subject)
        if not (math.isfinite(self.min_work_seconds) and 0 <= self.min_work_seconds <= 3600):
            raise SettingsError(
                "the Param 'min_work_seconds' must be 0 (no minimum) to 3600 seconds, not "
                f"{self.min_work_seconds!r}"
            )
        if not 1 <= self.exclude_after_gold_answers <= MAX_GOLD_ANSWERS_PARAM:
            raise SettingsError(
                f"the Param 'exclude_after_gold_answers' must be 1 to {MAX_GOLD_ANSWERS_PARAM} "
                f"gold answers, not {self.exclude_after_gold_answers!r}"
            )
        accuracy = self.exclude_below_gold_accuracy
        if not (math.isfinite(accuracy) and 0 <= accuracy <= 1):
            raise SettingsError(
                "the Param 'exclude_below_gold_accuracy' must be a share from 0 (nobody is "
                f"excluded) to 1 (excluded after one miss), not {accuracy!r}"
            )


@dataclass(frozen=True)
class Workers:
    """Who may take the HITs (``platform.WorkerRequirements`` without the exclusion's id)."""

    min_approval_rate: int | None
    min_approved_hits: int | None
    locales: tuple[str, ...]
    masters: bool
    max_hits_per_worker: int  # of one batch (a qualification enforces it); 0: no cap

    def __post_init__(self) -> None:
        if not 0 <= self.max_hits_per_worker <= MAX_HITS_PER_WORKER_PARAM:
            raise SettingsError(
                f"the Param 'max_hits_per_worker' must be 0 (no cap) to "
                f"{MAX_HITS_PER_WORKER_PARAM}, not {self.max_hits_per_worker!r}"
            )


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

    def __post_init__(self) -> None:
        """Refuse texts that cannot be filled in or are too long once filled, naming the Param
        (at the run's first check, not when the first HIT is made)."""
        for param, text, limit in (
            ("hit_instructions", self.instructions, INSTRUCTIONS_MAX),
            ("hit_description", self.description, DESCRIPTION_MAX),
        ):
            if len(text) > limit:
                raise SettingsError(
                    f"the Param {param!r} is {len(text)} characters long once filled in, over "
                    f"the {limit} a HIT allows; shorten it"
                )
        try:
            self.posting.overlap()
        except ValueError as error:
            raise SettingsError(
                f"{error} (Params assignments_per_hit, max_assignments_per_hit, confidence_target)"
            ) from None

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
                instructions=param("hit_instructions"),
                # 0: as many as a HIT starts with (fixed overlap)
                max_assignments=int(param("max_assignments_per_hit"))
                or int(param("assignments_per_hit")),
                confidence=float(param("confidence_target")),
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
                email_subject=param("email_subject"),
                min_work_seconds=float(param("min_work_seconds")),
                exclude_after_gold_answers=int(param("exclude_after_gold_answers")),
                exclude_below_gold_accuracy=float(param("exclude_below_gold_accuracy")),
            ),
            workers=Workers(
                min_approval_rate=param("min_approval_rate"),
                min_approved_hits=param("min_approved_hits"),
                locales=locales,
                masters=bool(param("require_masters")),
                max_hits_per_worker=int(param("max_hits_per_worker")),
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
        """Settings from a stored ``settings.json``: exactly these fields, each of its type. A
        format-2 file (written before this version) is read as format 3 (``_format_2_as_3``),
        a format-3 file as format 4 (``_format_3_as_4``).

        :raises SettingsError: naming every unknown, missing or mistyped field.
        """
        if isinstance(stored, dict) and stored.get("format") == 2:
            stored = _format_2_as_3(stored)
        if isinstance(stored, dict) and stored.get("format") == 3:
            stored = _format_3_as_4(stored)
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

    @property
    def placeholders(self) -> dict[str, str]:
        """What the placeholders of the HIT's texts stand for (``fill``)."""
        bonus = self.payment.bonus
        try:
            bonus = costs.usd(costs.cents(bonus))
        except ValueError:  # a damaged file: refused where amounts are checked, named there
            pass
        return {"bonus": bonus}

    @property
    def instructions(self) -> str:
        """The HIT's instructions as workers read them (``posting.instructions`` filled in)."""
        return fill(self.posting.instructions, self.placeholders, "hit_instructions")

    @property
    def description(self) -> str:
        """The HIT's description as MTurk lists it (``posting.description`` filled in)."""
        return fill(self.posting.description, self.placeholders, "hit_description")

    def task_spec(self, exclusion_id: str | None, cap_id: str | None = None) -> TaskSpec:
        """What each HIT of the batch offers, and who may take it: not the holders of
        ``exclusion_id`` nor of ``cap_id`` (the batch's HIT cap reached)."""
        posting = self.posting
        return TaskSpec(
            title=posting.title,
            description=self.description,
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
                capped=cap_id,
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


def _format_2_as_3(stored: dict[str, Any]) -> dict[str, Any]:
    """A format-2 ``settings.json`` as format 3: the fields format 3 added get the defaults the
    DAG's Params have, and the description's braces stay literal (format 2 filled nothing in).
    A format-2 file that already has a field of format 3 was not written by format 2: refused.
    """
    upgraded = {**stored, "format": 3}
    added = (
        ("posting", "instructions", DEFAULT_HIT_INSTRUCTIONS),
        ("review", "email_subject", DEFAULT_EMAIL_SUBJECT),
        ("review", "min_work_seconds", 0.0),  # no minimum: format 2 had none
        ("posting", "confidence", DEFAULT_CONFIDENCE),
    )
    posting = stored.get("posting")
    if isinstance(posting, dict) and "assignments" in posting:
        added += (("posting", "max_assignments", posting["assignments"]),)  # fixed overlap
    _add_fields(upgraded, added, 2)
    description = upgraded.get("posting", {}).get("description")
    if isinstance(description, str):
        upgraded["posting"]["description"] = description.replace("{", "{{").replace("}", "}}")
    return upgraded


def _format_3_as_4(stored: dict[str, Any]) -> dict[str, Any]:
    """A format-3 ``settings.json`` as format 4: the exclusion rule and the HIT cap get the
    defaults the DAG's Params have (format 3 excluded after one miss; the review of such a
    batch now uses the rule over the workers' records, as every batch does). A format-3 file
    that already has a field of format 4 was not written by format 3: refused."""
    upgraded = {**stored, "format": 4}
    added = (
        ("review", "exclude_after_gold_answers", DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS),
        ("review", "exclude_below_gold_accuracy", DEFAULT_EXCLUDE_BELOW_GOLD_ACCURACY),
        ("workers", "max_hits_per_worker", DEFAULT_MAX_HITS_PER_WORKER),
    )
    _add_fields(upgraded, added, 3)
    return upgraded


def _add_fields(upgraded: dict, added: tuple, old_format: int) -> None:
    """Give the parts of ``upgraded`` the fields a later format added, with their defaults; a
    file of ``old_format`` that already has one was not written by that format: refused."""
    for part, name, default in added:
        holder = upgraded.get(part)
        if not isinstance(holder, dict):
            continue  # reading it names what is wrong
        if name in holder:
            raise SettingsError(
                f"settings.json: format {old_format} has no field {part}.{name}; the file was "
                "not written by this project"
            )
        upgraded[part] = {**holder, name: default}


# --- texts with placeholders ----------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def fill(text: str, values: Mapping[str, str], param: str) -> str:
    """``text`` with each ``{name}`` of ``values`` replaced by its value (values are not read
    again), ``{{`` and ``}}`` by a brace; a lone brace stays as it is.

    Only bare names: ``{bonus!r}``, ``{bonus:>999999}``, ``{bonus.real}`` or ``{0}`` are not
    placeholders here, so a text can neither reach into a value nor blow up in size.

    :raises SettingsError: a ``{...}`` that is not one of ``values``, naming the Param.
    """

    def replace(match: re.Match) -> str:
        whole, name = match.group(0), match.group(1)
        if whole in ("{{", "}}"):
            return whole[0]
        if name in values:
            return values[name]
        allowed = ", ".join(f"{{{n}}}" for n in values) or "none"
        raise SettingsError(
            f"the Param {param!r} has the placeholder {whole[:40]!r}, which is not filled in "
            f"(placeholders: {allowed}); write {{{{ and }}}} for a literal brace"
        )

    return _PLACEHOLDER.sub(replace, text)


def check_subject(subject: str) -> None:
    """Refuse an e-mail subject that is empty, over NotifyWorkers' limit or not one line of
    printable text, naming the Param."""
    if not subject.strip() or len(subject) > EMAIL_SUBJECT_MAX:
        raise SettingsError(
            f"the Param 'email_subject' must be 1 to {EMAIL_SUBJECT_MAX} characters, not "
            f"{len(subject)}"
        )
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in subject):
        raise SettingsError(
            "the Param 'email_subject' holds a line break or another control character; "
            "make it one line of text"
        )
