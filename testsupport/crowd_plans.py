"""HIT plans, settings and helpers shared by the crowd-stage tests (creation, review, crash,
fault and outage runs).

Plans are built from the batch id alone (hashes, not ``hash()``), so separate processes agree
on them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

from include.crowd.platform import TaskSpec
from include.crowd.records import HitPlan, ImageRef, Option, Question
from include.crowd.review import ReviewSettings
from include.crowd.settings import CrowdSettings

GOLD_CORRECT = "2"
RELIABILITY_ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts" / "reliability"

SETTINGS = TaskSpec(
    title="Which picture is most similar?",
    description="Pick the most similar picture",
    keywords="image",
    reward="0.05",
    assignments=3,
    lifetime_s=3600,
    assignment_duration_s=600,
    auto_approval_delay_s=86400,
)
REVIEW = ReviewSettings(
    reward="0.05",
    bonus="0.10",
    bonus_message="Right check answer: here is a bonus.",
    no_bonus_message="The check question was answered wrongly, so no bonus this time.",
    assignments_per_hit=3,
)

# Every Param ``CrowdSettings.from_params`` reads, with test values (the DAG's trigger form
# gives them all; a test overrides what it is about).
PARAMS = {
    "mturk_environment": "sandbox",
    "hit_title": "t",
    "hit_description": "d",
    "hit_instructions": "Pick the most similar picture; the check question pays {bonus}.",
    "hit_keywords": "k",
    "assignments_per_hit": 3,
    "hit_lifetime_hours": 1,
    "assignment_duration_minutes": 10,
    "auto_approval_delay_hours": 1,
    "create_concurrency": 4,
    "reward_usd": "0.05",
    "bonus_usd": "0.10",
    "max_bonus_usd": "5.00",
    "budget_usd": "20.00",
    "bonus_message": "bonus",
    "no_bonus_message": "no bonus",
    "email_subject": "No bonus this time",
    "min_work_seconds": 0,
    "max_assignments_per_hit": 0,
    "confidence_target": 0.95,
    "review_window_hours": 1,
    "exclude_failed_workers": False,
    "exclude_after_gold_answers": 3,
    "exclude_below_gold_accuracy": 0.6,
    "max_hits_per_worker": 0,
    "show_worker_ids": False,
    "aggregation_method": "majority",
    "min_approval_rate": None,
    "min_approved_hits": None,
    "worker_locales": None,
    "require_masters": False,
    "s3_bucket": "",
    "s3_prefix": "image-similarity",
    "public_image_base_url": None,
}


def crowd_settings(batch_id: str = "batch-1", **params) -> CrowdSettings:
    """``CrowdSettings.from_params`` of ``PARAMS`` with ``params`` changed (Param names)."""
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise KeyError(f"not a Param the crowd settings read: {sorted(unknown)}")
    return CrowdSettings.from_params({**PARAMS, **params}, batch_id)


def _image(name: str) -> ImageRef:
    return ImageRef(name, hashlib.sha256(name.encode()).hexdigest(), f"images/{name}")


def plans_for(batch_id: str, queries: int) -> list[HitPlan]:
    """``queries`` HIT plans of a batch; the gold answer is option 2."""
    plans = []
    for i in range(queries):
        query = f"q{i}.jpg"
        tag = hashlib.sha256(f"{batch_id}/{query}".encode()).hexdigest()[:8]
        matches = [
            Option(r, _image(f"{query}-m{r}.jpg"), rank=r, score=1 - r / 10) for r in (1, 2, 3)
        ]
        model = Question(
            field=f"f{tag}a",
            kind="model",
            target=_image(query),
            options=(*matches, Option(4, None)),
        )
        gold = Question(
            field=f"f{tag}b",
            kind="gold",
            target=_image("known1.jpg"),
            options=(*(Option(r, _image(f"known1_{r}.jpg")) for r in (1, 2, 3)), Option(4, None)),
            gold_set="known1",
            correct_position=int(GOLD_CORRECT),
        )
        plans.append(HitPlan(batch_id, _image(query), f"tok-{batch_id}-{i}", (gold, model)))
    return plans


def render(plan: HitPlan) -> str:
    """The page of a plan's HIT (a small real form; the platform wraps it)."""
    from testsupport.sandbox_process import html_page

    return html_page(plan.query.name)


def answer_two_pass_one_fail(crowd, plans: list[HitPlan]) -> None:
    """Per HIT: APASS1 and APASS2 answer the gold question right (a bonus each), and a worker
    of its own, AFAIL<n>, wrongly (an e-mail)."""
    for n, plan in enumerate(plans):
        answers = (("APASS1", GOLD_CORRECT), ("APASS2", GOLD_CORRECT), (f"AFAIL{n}", "4"))
        for worker, gold in answers:
            crowd.work(plan.hit_id, worker, {plan.gold.field: gold, plan.model.field: "1"})


@contextmanager
def reliability_record(name: str) -> Generator[dict[str, dict], None, None]:
    """Collect a test module's counts; merge them into ``.artifacts/reliability/<name>.json``
    (the numbers RELIABILITY.md quotes)."""
    results: dict[str, dict] = {}
    yield results
    path = RELIABILITY_ARTIFACTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
