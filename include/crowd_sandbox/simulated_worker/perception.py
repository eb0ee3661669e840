"""Looking at pictures: which option of an image question looks most like its target
(ZNCC of 32x32 greyscale thumbnails, or colour histograms when they say "alike" more), and
how alike the options look among themselves (what a strategic worker goes by)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from include.crowd_sandbox.simulated_worker.page import Question

THUMB_SIDE = 32
NONE_THRESHOLD = 0.15
"""Below this best ZNCC, an option without an image ("None of these") is the right answer.

Low on purpose: an off-centre crop with a brightness change and blur scores about 0.25 against
its source on 32x32 thumbnails, while unrelated pictures score around 0 (measured on the demo's
known-answer sets)."""


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> np.ndarray | None:
    """A zero-mean, unit-norm ``side`` x ``side`` greyscale thumbnail (None if undecodable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (side * 2, side * 2))
            grey = image.convert("L").resize((side, side), Image.Resampling.BOX)
    except Exception:  # noqa: BLE001 - a picture that does not decode is just not seen
        return None
    pixels = np.asarray(grey, dtype=np.float64).ravel()
    pixels -= pixels.mean()
    norm = float(np.linalg.norm(pixels))
    return pixels / norm if norm > 1e-6 else pixels


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """ZNCC of two thumbnails, in [-1, 1] (0 when either is flat)."""
    return float(np.dot(a, b))


def colours(data: bytes) -> np.ndarray | None:
    """A normalised 8x8x8 RGB histogram of a small copy (None if undecodable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (128, 128))
            rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.uint16) // 32
    except Exception:  # noqa: BLE001 - a picture that does not decode is just not seen
        return None
    bins = np.bincount((rgb[..., 0] * 64 + rgb[..., 1] * 8 + rgb[..., 2]).ravel(), minlength=512)
    return bins / bins.sum()


def colour_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection mapped to [-1, 1], comparable with ZNCC."""
    return 2.0 * float(np.minimum(a, b).sum()) - 1.0


def best_option(
    question: Question, fetch: Callable[[str], bytes | None]
) -> tuple[int | None, list[float | None]]:
    """The index of the option that looks most like the target, and every option's score.

    None when the worker cannot tell (no target, or neither it nor any option image loads).
    """
    scores: list[float | None] = [None] * len(question.options)
    target_data = fetch(question.target) if question.target else None
    target = thumbnail(target_data) if target_data else None
    if target is None:
        return None, scores
    target_colours = colours(target_data)
    for index, option in enumerate(question.options):
        data = fetch(option.image) if option.image else None
        thumb = thumbnail(data) if data else None
        if thumb is not None:
            # Layout (ZNCC) or colour, whichever says "alike" more: a shifted crop of a star
            # field has no layout in common with its source, but the same colours.
            score = similarity(target, thumb)
            option_colours = colours(data)
            if target_colours is not None and option_colours is not None:
                score = max(score, colour_similarity(target_colours, option_colours))
            scores[index] = score
    seen = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not seen:
        return None, scores
    best_score, best = max(seen)
    if best_score < NONE_THRESHOLD:
        imageless = [i for i, o in enumerate(question.options) if o.image is None]
        if imageless:
            return imageless[0], scores
    return best, scores


def options_alike(question: Question, fetch: Callable[[str], bytes | None]) -> float | None:
    """How alike the option pictures look among themselves: the mean, over every pair of
    options whose picture loads, of the score ``best_option`` gives against the target.

    Only the pictures count (options without one, such as "None of these", are left out).
    None when fewer than two option pictures load.
    """
    seen = []
    for option in question.options:
        data = fetch(option.image) if option.image else None
        thumb = thumbnail(data) if data else None
        if thumb is not None:
            seen.append((thumb, colours(data)))
    scores = []
    for i, (thumb_a, colours_a) in enumerate(seen):
        for thumb_b, colours_b in seen[i + 1 :]:
            score = similarity(thumb_a, thumb_b)
            if colours_a is not None and colours_b is not None:
                score = max(score, colour_similarity(colours_a, colours_b))
            scores.append(score)
    return sum(scores) / len(scores) if scores else None
