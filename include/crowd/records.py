"""The records the crowd stage passes between its steps (and stores in S3 as JSON).

- ``HitPlan``: one HIT per query, as planned before creation and completed with its ids after;
  one JSON line per HIT in ``batches/<batch_id>/hits.jsonl`` (the manifest). It holds the
  position → image mapping of both questions and the gold question's correct position; none of
  this is ever put in the HIT's HTML beyond the images themselves.
- ``Review``: what one submitted assignment said and what the review decided.
- ``Vote``-level data for aggregation is derived from ``Review`` records (crowd-kit's
  ``task, worker, label`` table).

Answer values in the HIT form are option positions ("1", "2", ...), shuffled per HIT, so a value
says nothing about which image it is or which option is right. The "none of these" option, when a
question has one, is the last position and has no image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

NONE_OF_THESE = "none"

QuestionKind = Literal["model", "gold"]


@dataclass(frozen=True)
class ImageRef:
    """An image a worker sees: its file name, content hash and content-addressed S3 key."""

    name: str
    sha256: str
    key: str = ""


@dataclass(frozen=True)
class Option:
    """One answer a worker can pick: an image (with the model's rank and score for model
    questions), or ``image=None`` for "none of these"."""

    position: int
    image: ImageRef | None
    rank: int | None = None
    score: float | None = None


@dataclass(frozen=True)
class Question:
    """A target image and its options, under an opaque form field name."""

    field: str
    kind: QuestionKind
    target: ImageRef
    options: tuple[Option, ...]
    gold_set: str | None = None  # known-answer set id, gold questions only
    correct_position: int | None = None  # gold questions only

    def option(self, position: int) -> Option | None:
        for option in self.options:
            if option.position == position:
                return option
        return None


@dataclass
class HitPlan:
    """One query's HIT: both questions in page order, the request token and, once created,
    the HIT's ids."""

    batch_id: str
    query: ImageRef
    token: str  # UniqueRequestToken, from (batch id, query content hash)
    questions: tuple[Question, ...]
    hit_id: str | None = None
    hit_type_id: str | None = None
    created_at: str | None = None  # ISO 8601, UTC
    # What the HIT was created with (from CreateHIT's answer): what MTurk charges per
    # approved assignment follows from these, whatever the settings say later.
    reward: str | None = None  # USD, e.g. "0.05"
    max_assignments: int | None = None
    masters: bool | None = None

    @property
    def model(self) -> Question:
        return next(q for q in self.questions if q.kind == "model")

    @property
    def gold(self) -> Question:
        return next(q for q in self.questions if q.kind == "gold")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HitPlan:
        def image(d: dict | None) -> ImageRef | None:
            return ImageRef(**d) if d else None

        questions = tuple(
            Question(
                field=q["field"],
                kind=q["kind"],
                target=ImageRef(**q["target"]),
                options=tuple(
                    Option(o["position"], image(o["image"]), o.get("rank"), o.get("score"))
                    for o in q["options"]
                ),
                gold_set=q.get("gold_set"),
                correct_position=q.get("correct_position"),
            )
            for q in data["questions"]
        )
        return cls(
            batch_id=data["batch_id"],
            query=ImageRef(**data["query"]),
            token=data["token"],
            questions=questions,
            hit_id=data.get("hit_id"),
            hit_type_id=data.get("hit_type_id"),
            created_at=data.get("created_at"),
            reward=data.get("reward"),
            max_assignments=data.get("max_assignments"),
            masters=data.get("masters"),
        )

    @classmethod
    def from_json(cls, line: str) -> HitPlan:
        return cls.from_dict(json.loads(line))


@dataclass
class Review:
    """One submitted assignment, read and decided.

    ``valid`` is False when the answer is malformed or tampered with (missing field, unknown
    value, extra fields are ignored but noted in ``problems``); such an answer never counts, and
    ``gold_correct`` is None. ``vote`` is the chosen dataset image's name, ``NONE_OF_THESE``, or
    None when invalid. ``counted`` is True only for valid answers whose gold answer is right.
    """

    assignment_id: str
    hit_id: str
    worker_id: str
    query: str
    valid: bool
    gold_correct: bool | None
    gold_position: int | None
    model_position: int | None
    vote: str | None
    counted: bool
    problems: list[str] = field(default_factory=list)
    submit_time: str | None = None  # ISO 8601, UTC
    work_seconds: float | None = None  # from accept to submit; None: the platform did not say
    too_fast: bool = False  # under the batch's minimum work time: never counted, no bonus

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Review:
        return cls(**data)
