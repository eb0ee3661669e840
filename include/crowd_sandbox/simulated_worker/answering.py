"""Answering: a valid value for every field of a form, as a worker of a profile would
give it (the rules are in the docstring of ``include.crowd_sandbox.workers``)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from include.crowd_sandbox.simulated_worker.page import Control, Form, Question
from include.crowd_sandbox.simulated_worker.perception import best_option, options_alike
from include.crowd_sandbox.simulated_worker.profiles import Profile


@dataclass
class Answer:
    fields: list[tuple[str, str]]
    choices: dict[str, str]  # radio group -> chosen value
    notes: dict[str, str]
    """radio group -> how it was chosen: looked (the most similar option), erred (another
    one), guessed (could not tell), skimmed (a strategic worker's random pick where the options
    look alike), first or random (a worker who does not look)."""


def answer_form(
    form: Form,
    profile: Profile,
    rng: random.Random,
    fetch: Callable[[str], bytes | None],
    *,
    first_option: bool = False,
) -> Answer:
    """Fill every field of a form as a worker of ``profile`` would.

    The rules are in the docstring of ``include.crowd_sandbox.workers``. ``first_option``: this
    (not looking) worker always takes a radio group's first option.
    """
    fields: list[tuple[str, str]] = []
    choices: dict[str, str] = {}
    notes: dict[str, str] = {}
    for question in form.questions:
        options = question.options
        if profile.looks and profile.careful_below is not None:
            index, note = _strategic(question, profile, rng, fetch, profile.careful_below)
        elif profile.looks:
            index, note = _careful(question, profile, rng, fetch)
        elif first_option:
            index, note = 0, "first"
        else:
            index, note = rng.randrange(len(options)), "random"
        choices[question.name] = options[index].value
        notes[question.name] = note

    submit_done = False
    for control in form.controls:
        kind, name = control.kind, control.name
        if kind in ("file", "button", "reset", "image"):
            continue
        if kind == "submit":
            if not submit_done:
                submit_done = True
                if name:
                    fields.append((name, control.value))
            continue
        if kind == "checkbox":
            continue  # below, per group
        if kind == "hidden" or "readonly" in control.attrs:
            fields.append((name, control.value))
        elif kind == "select":
            fields.extend((name, v) for v in _pick_select(control, profile, rng))
        else:
            fields.append((name, _typed_value(control, profile, rng)))

    checkboxes: dict[str, list[Control]] = {}
    for control in form.controls:
        if control.kind == "checkbox":
            checkboxes.setdefault(control.name, []).append(control)
    for name, boxes in checkboxes.items():
        if not profile.looks:
            ticked = [boxes[0]] if len(boxes) == 1 or rng.random() < 0.5 else boxes
        else:
            ticked = [b for b in boxes if rng.random() < 0.5] or [rng.choice(boxes)]
        ticked = _within_counts(ticked, boxes, boxes[0].attrs, rng)
        fields.extend((name, b.value) for b in ticked)

    fields.extend(choices.items())
    if not fields or all(name == "assignmentId" for name, _ in fields):
        fields.append(("answer", rng.choice(profile.sentences)))
    return Answer(fields, choices, notes)


def _careful(
    question: Question,
    profile: Profile,
    rng: random.Random,
    fetch: Callable[[str], bytes | None],
) -> tuple[int, str]:
    """Look at the pictures: the most similar option with ``profile.accuracy``, else another."""
    options = question.options
    best = None
    if question.has_images and len(options) > 1:
        best, _ = best_option(question, fetch)
    if best is None:
        return rng.randrange(len(options)), "guessed"
    if rng.random() < profile.accuracy:
        return best, "looked"
    return rng.choice([i for i in range(len(options)) if i != best]), "erred"


def _strategic(
    question: Question,
    profile: Profile,
    rng: random.Random,
    fetch: Callable[[str], bytes | None],
    careful_below: float,
) -> tuple[int, str]:
    """Careful where the option pictures look unrelated to each other, a random pick elsewhere.

    Decided from the pictures alone (``options_alike``), never from names or markup.
    """
    options = question.options
    alike = None
    if question.has_images and len(options) > 1:
        alike = options_alike(question, fetch)
    if alike is None:
        return rng.randrange(len(options)), "guessed"
    if alike < careful_below:
        return _careful(question, profile, rng, fetch)
    return rng.randrange(len(options)), "skimmed"


def _pick_select(control: Control, profile: Profile, rng: random.Random) -> list[str]:
    usable = [v for v, disabled in control.options if not disabled]
    real = [v for v in usable if v] or usable
    if not real:
        return []
    if not profile.looks:
        if "multiple" in control.attrs:
            return _within_counts([real[0]], real, control.attrs, rng)
        return [real[0]]
    if "multiple" in control.attrs and len(real) > 1:
        picked = [v for v in real if rng.random() < 0.5] or [rng.choice(real)]
        return _within_counts(picked, real, control.attrs, rng)
    return [rng.choice(real)]


def _within_counts(picked: list, pool: list, attrs: dict[str, str], rng: random.Random) -> list:
    """Keep a multiple choice within ``data-min-selections``/``data-max-selections`` (how a
    QuestionForm page states MinSelectionCount and MaxSelectionCount), in page order."""
    chosen = [i for i, item in enumerate(pool) if any(item is p for p in picked)]
    high = _number(attrs.get("data-max-selections"))
    if high is not None and len(chosen) > high >= 1:
        chosen = sorted(rng.sample(chosen, int(high)))
    low = int(_number(attrs.get("data-min-selections")) or 0)
    rest = [i for i in range(len(pool)) if i not in chosen]
    while len(chosen) < low and rest:
        chosen.append(rest.pop(rng.randrange(len(rest))))
    return [pool[i] for i in sorted(chosen)]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _typed_value(control: Control, profile: Profile, rng: random.Random) -> str:
    kind, attrs = control.kind, control.attrs
    if control.value.strip():
        return control.value
    if kind in ("number", "range"):
        low, high = _number(attrs.get("min")), _number(attrs.get("max"))
        if kind == "range":
            low, high = low if low is not None else 0.0, high if high is not None else 100.0
        if low is not None and high is not None and high >= low:
            if attrs.get("step") == "any":
                return f"{rng.uniform(low, high):.2f}"
            if math.ceil(low) <= math.floor(high):
                return str(rng.randint(math.ceil(low), math.floor(high)))
            return _plain(low)
        return _plain(low if low is not None else high if high is not None else 1.0)
    fixed = {
        "email": "worker@example.com",
        "url": "http://example.com/",
        "tel": "5555550100",
        "date": attrs.get("min") or "2024-01-01",
        "time": attrs.get("min") or "12:00",
        "datetime-local": attrs.get("min") or "2024-01-01T12:00",
        "month": attrs.get("min") or "2024-01",
        "week": attrs.get("min") or "2024-W01",
        "color": "#808080",
    }
    if kind in fixed:
        return fixed[kind]
    text = rng.choice(profile.sentences)
    minimum = int(_number(attrs.get("minlength")) or 0)
    while len(text) < minimum:
        text = f"{text} {rng.choice(profile.sentences)}"
    maximum = _number(attrs.get("maxlength"))
    if maximum is not None and maximum >= 1:
        text = text[: int(maximum)]
    return text
