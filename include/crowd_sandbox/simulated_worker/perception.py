"""Looking at pictures: which option of an image question looks most like its target, and
how alike the options look among themselves (what a strategic worker goes by).

A careful person compares a reference with each option by lining them up: is all of the
reference in this picture, at some position and size? So does a simulated worker
(``look``): the whole target is fitted inside the option (``WHOLE_SCALES`` of the option's
width, every position; ZNCC on ``LINE_UP_WIDTH``-pixel greyscale copies), and so is its central
part (``PART`` of each side, ``PART_SCALES``), which still lines up when the two pictures are
different crops of one picture. Of neighbouring video frames, the one that holds all of a
cropped view wins on the whole fit (a frame that lacks a strip of it cannot line up
completely); of unrelated pictures none fits. ``resemblance`` (the best of the whole fit, the
part fit and the colours, for a sparse picture such as a star field) says whether an option
shows the target at all; below ``NONE_THRESHOLD`` "None of these" is the answer.

Results are kept per pair of pictures (by content), so the workers of one HIT do not redo the
same arithmetic; what each worker then picks is still its own draw.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from include.crowd_sandbox.simulated_worker.page import Question

THUMB_SIDE = 32
LINE_UP_WIDTH = 64
"""Width of the greyscale copies pictures are lined up on (a frame a few percent of a pan
away is a few pixels off at this size)."""
WHOLE_SCALES = tuple(round(0.70 + 0.03 * i, 2) for i in range(11))  # 0.70 .. 1.00
PART = 0.70
PART_SCALES = tuple(round(0.50 + 0.03 * i, 2) for i in range(14))  # 0.50 .. 0.89
WHOLE_MATCH = 0.75
"""A whole fit this good means the option shows all of the target: of such options the best
fit wins (measured on the demo's pans: a query's source frame fits at 0.85 or more, frames of
other scenes at most about 0.55)."""
NONE_THRESHOLD = 0.85
"""Below this ``resemblance`` of the best option, an option without an image ("None of
these") is the right answer (measured on the demo's pictures: another crop of the same frame
scores 0.89 or more on the part fit, frames of other scenes 0.81 or less in 999 of 1000)."""
_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class Look:
    """How an option compares with a target: the fits of the whole target and of its central
    part inside the option, and their colours (each in [-1, 1])."""

    whole: float
    part: float
    colour: float

    @property
    def resemblance(self) -> float:
        return max(self.whole, self.part, self.colour)


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


def _grey(data: bytes, width: int) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (width * 2, width * 2))
            grey = image.convert("L")
            height = max(1, round(width * grey.height / max(1, grey.width)))
            return np.asarray(grey.resize((width, height), Image.Resampling.BOX), np.float64)
    except Exception:  # noqa: BLE001 - a picture that does not decode is just not seen
        return None


def _fit(target: Image.Image, option: np.ndarray, scales: tuple[float, ...]) -> float:
    """The best ZNCC of ``target`` placed inside ``option`` at any of ``scales`` (a share of
    the option's width) and any position; -1 when it fits nowhere."""
    best = -1.0
    ratio = target.height / max(1, target.width)
    for scale in scales:
        width = int(round(scale * option.shape[1]))
        height = int(round(width * ratio))
        if not (4 <= width <= option.shape[1] and 4 <= height <= option.shape[0]):
            continue
        template = np.asarray(target.resize((width, height), Image.Resampling.BOX), np.float64)
        template = template.ravel() - template.mean()
        norm = float(np.linalg.norm(template))
        if norm < 1e-6:
            continue
        windows = sliding_window_view(option, (height, width)).reshape(-1, height * width)
        centred = windows - windows.mean(axis=1, keepdims=True)
        scores = centred @ (template / norm) / (np.linalg.norm(centred, axis=1) + 1e-9)
        best = max(best, float(scores.max()))
    return best


class _Looks:
    """``look`` results by the content of both pictures (bounded, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: OrderedDict[tuple[bytes, bytes], Look | None] = OrderedDict()

    def get(self, target: bytes, option: bytes) -> Look | None:
        key = (hashlib.sha1(target).digest(), hashlib.sha1(option).digest())
        with self._lock:
            if key in self._found:
                self._found.move_to_end(key)
                return self._found[key]
        found = _look(target, option)
        with self._lock:
            self._found[key] = found
            while len(self._found) > _CACHE_SIZE:
                self._found.popitem(last=False)
        return found


_looks = _Looks()


def look(target: bytes, option: bytes) -> Look | None:
    """Line ``option`` up with ``target`` (see the module docstring); None if either does not
    decode."""
    return _looks.get(target, option)


def _look(target_data: bytes, option_data: bytes) -> Look | None:
    option = _grey(option_data, LINE_UP_WIDTH)
    try:
        with Image.open(io.BytesIO(target_data)) as image:
            image.draft("L", (LINE_UP_WIDTH * 4, LINE_UP_WIDTH * 4))
            target = image.convert("L")
            width = 2 * LINE_UP_WIDTH  # enough detail for every scale, cheap to resize
            if target.width > width:
                height = max(1, round(width * target.height / target.width))
                target = target.resize((width, height), Image.Resampling.BOX)
    except Exception:  # noqa: BLE001 - a picture that does not decode is just not seen
        return None
    if option is None:
        return None
    w, h = target.size
    margin = (1 - PART) / 2
    part = target.crop((w * margin, h * margin, w * (1 - margin), h * (1 - margin)))
    target_colours, option_colours = colours(target_data), colours(option_data)
    colour = (
        colour_similarity(target_colours, option_colours)
        if target_colours is not None and option_colours is not None
        else -1.0
    )
    return Look(_fit(target, option, WHOLE_SCALES), _fit(part, option, PART_SCALES), colour)


def best_option(
    question: Question, fetch: Callable[[str], bytes | None]
) -> tuple[int | None, list[float | None]]:
    """The index of the option that looks most like the target, and every option's
    ``resemblance``.

    Of the options the whole target fits inside (``WHOLE_MATCH``), the best fit; else the
    option that resembles the target most, or the option without an image when none resembles
    it enough (``NONE_THRESHOLD``). None when the worker cannot tell (no target, or neither it
    nor any option image loads).
    """
    scores: list[float | None] = [None] * len(question.options)
    target_data = fetch(question.target) if question.target else None
    if not target_data:
        return None, scores
    looks: dict[int, Look] = {}
    for index, option in enumerate(question.options):
        data = fetch(option.image) if option.image else None
        found = look(target_data, data) if data else None
        if found is not None:
            looks[index] = found
            scores[index] = found.resemblance
    if not looks:
        return None, scores
    whole = [(found.whole, i) for i, found in looks.items() if found.whole >= WHOLE_MATCH]
    if whole:
        return max(whole)[1], scores
    best_score, best = max((found.resemblance, i) for i, found in looks.items())
    if best_score < NONE_THRESHOLD:
        imageless = [i for i, o in enumerate(question.options) if o.image is None]
        if imageless:
            return imageless[0], scores
    return best, scores


def options_alike(question: Question, fetch: Callable[[str], bytes | None]) -> float | None:
    """How alike the option pictures look among themselves at a glance: the mean, over every
    pair of options whose picture loads, of the better of their 32x32 ZNCC (``thumbnail``,
    ``similarity``) and their colour similarity (no lining up: a glance, not a comparison).

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
