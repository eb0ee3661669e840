"""Deterministic HIT plans and settings for the reliability tests (crash and fault runs).

Built from the batch id alone (hashes, not ``hash()``), so separate processes agree on them.
"""

from __future__ import annotations

import hashlib

from include.crowd.create import HitSettings
from include.crowd.records import HitPlan, ImageRef, Option, Question
from include.crowd.review import ReviewSettings

GOLD_CORRECT = "2"

SETTINGS = HitSettings(
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
    from sandbox_process import html_question

    return html_question(plan.query.name)
