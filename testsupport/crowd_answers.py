"""HIT plans and review decisions built the way the crowd stage builds them (shuffled option
positions, "none of these" last), for the aggregation and report tests."""

from __future__ import annotations

from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef, Option, Question, Review


def make_plan(
    query: str,
    candidates: list[str],
    *,
    hit_id: str | None,
    order: tuple[int, ...] | None = None,
    gold_correct: int = 1,
    batch_id: str = "batch-1",
) -> HitPlan:
    """A HIT for ``query`` whose model matches are ``candidates`` (rank order); ``order`` gives
    each rank's position on the page (default 1, 2, 3); "none of these" is the last position."""
    order = order or tuple(range(1, len(candidates) + 1))
    scores = [0.95 - 0.07 * i for i in range(len(candidates))]
    model_options = tuple(
        sorted(
            (
                Option(pos, ImageRef(name, f"sha-{name}", f"img/{name}"), rank, scores[rank - 1])
                for rank, (name, pos) in enumerate(zip(candidates, order, strict=True), start=1)
            ),
            key=lambda o: o.position,
        )
    ) + (Option(len(candidates) + 1, None),)
    gold_options = tuple(
        Option(pos, ImageRef(f"gold-{pos}.jpg", f"sha-gold-{pos}")) for pos in (1, 2, 3)
    )
    return HitPlan(
        batch_id=batch_id,
        query=ImageRef(query, f"sha-{query}", f"img/{query}"),
        token=f"token-{query}",
        questions=(
            Question(
                "q1",
                "gold",
                ImageRef("known.jpg", "sha-known"),
                gold_options,
                "known1",
                gold_correct,
            ),
            Question("q2", "model", ImageRef(query, f"sha-{query}"), model_options),
        ),
        hit_id=hit_id,
    )


def make_review(
    plan: HitPlan,
    worker: str,
    pick: str,
    *,
    gold_ok: bool = True,
    valid: bool = True,
    gold_pick: int | None = None,
    assignment: str | None = None,
    problems: tuple[str, ...] = (),
) -> Review:
    """``worker``'s answer to ``plan``: ``pick`` is an image name or NONE_OF_THESE; the gold
    answer is right when ``gold_ok`` (or the explicit position ``gold_pick``)."""
    model = plan.model
    position = next(
        o.position for o in model.options if (o.image.name if o.image else NONE_OF_THESE) == pick
    )
    correct = plan.gold.correct_position
    if gold_pick is None:
        gold_pick = correct if gold_ok else (correct % 3) + 1
    gold_ok = gold_pick == correct
    return Review(
        assignment_id=assignment or f"A-{plan.hit_id}-{worker}",
        hit_id=plan.hit_id,
        worker_id=worker,
        query=plan.query.name,
        valid=valid,
        gold_correct=gold_ok if valid else None,
        gold_position=gold_pick if valid else None,
        model_position=position if valid else None,
        vote=pick if valid else None,
        counted=valid and gold_ok,
        problems=list(problems),
    )
