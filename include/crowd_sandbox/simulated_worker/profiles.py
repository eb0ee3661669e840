"""The kinds of simulated worker (``PROFILES``, the one table to change), the
``--workers`` spec that says how many of each, and their worker ids; the table is in the
docstring of ``include.crowd_sandbox.workers``.

A spec is either counts, ``"diligent:6,careless:3,spammer:1"``, or a total and shares,
``"20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"``: the shares (each in [0, 1],
summing to 1 within ``SHARE_TOLERANCE``) are rounded to whole counts that sum to the total by
the largest-remainder method (ties go to the larger share, then to the profile named first),
so a spec always starts the same workers. A profile whose share rounds to 0 starts no worker.
Either way at most ``MAX_WORKERS`` workers in all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    """How one kind of worker behaves; see the table in ``include.crowd_sandbox.workers``."""

    name: str
    looks: bool
    """Whether the worker looks at the images at all (if not, it guesses)."""
    accuracy: float
    """When looking: the probability of picking the most similar option (else another one)."""
    first_option_share: float
    """When not looking: the share of these workers who always pick the first option (the
    others pick uniformly at random). Chosen once per worker."""
    speed: float
    """Multiplies ``seconds_per_assignment``."""
    registration: dict[str, Any]
    """The worker profile registered with the sandbox (checked by qualification requirements).
    Approval rates are high for all, as on MTurk, where they say little about quality."""
    sentences: tuple[str, ...]
    """What the worker writes into free-text fields."""
    careful_below: float | None = None
    """Strategic workers: answer an image question carefully (as ``accuracy`` says) only when
    its option pictures look unrelated to each other, i.e. when their mean pairwise similarity
    (``perception.options_alike``: 32x32 ZNCC or colour, at a glance) is below this; any
    other image question gets a uniformly random option. None: every image question is
    answered carefully (when ``looks``)."""


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "diligent",
            looks=True,
            accuracy=0.97,
            first_option_share=0.0,
            speed=1.0,
            registration={
                "PercentAssignmentsApproved": 99,
                "NumberHITsApproved": 5000,
                "Locale": {"Country": "US"},
                "Masters": True,
            },
            sentences=(
                "Compared every option with the target carefully.",
                "The chosen picture shows the same scene as the target.",
                "Checked the details; this is my best answer.",
            ),
        ),
        Profile(
            "careless",
            looks=True,
            accuracy=0.60,
            first_option_share=0.0,
            speed=0.6,
            registration={
                "PercentAssignmentsApproved": 97,
                "NumberHITsApproved": 1500,
                "Locale": {"Country": "US"},
                "Masters": False,
            },
            sentences=("looks ok", "fine", "similar"),
        ),
        Profile(
            "spammer",
            looks=False,
            accuracy=0.0,
            first_option_share=0.5,
            speed=0.25,
            registration={
                "PercentAssignmentsApproved": 95,
                "NumberHITsApproved": 1000,
                "Locale": {"Country": "US"},
                "Masters": False,
            },
            sentences=("good", "nice", "ok"),
        ),
        # Strategic: does the questions that look easy (options that are clearly different
        # pictures, as a known-answer check usually is) well, and guesses on the hard ones
        # (options that look almost the same, like neighbouring frames of a video). On 32x32
        # thumbnails clearly different pictures score about -0.4 to 0.2 against each other and
        # frames a few percent of the width apart about 0.7 to 0.95 (measured on random
        # textures and on scikit-image photos panned by 2 to 10 % of their width), so 0.45
        # sits in the gap. It sees only the pictures: it never reads field names, option
        # order or markup to tell which question is the known-answer one.
        Profile(
            "strategic",
            looks=True,
            accuracy=0.97,
            first_option_share=0.0,
            speed=0.5,
            registration={
                "PercentAssignmentsApproved": 98,
                "NumberHITsApproved": 3000,
                "Locale": {"Country": "US"},
                "Masters": False,
            },
            sentences=("same picture", "done", "looks right"),
            careful_below=0.45,
        ),
    )
}

MAX_WORKERS = 1000
"""The most simulated workers one spec may start (each is a thread)."""
SHARE_TOLERANCE = 1e-6
"""How far from 1 the shares of a spec may sum."""

_WORKER_SPEC = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(\S+?)\s*$")
_SHARE_SPEC = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(\S+?)\s*$")
_EXAMPLES = '"diligent:6,careless:3" or "20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"'


def parse_spec(spec: str) -> list[tuple[Profile, int]]:
    """Parse ``"diligent:6,careless:3,spammer:1"`` or ``"20:diligent=0.7,careless=0.3"``.

    Returns ``(profile, count)`` pairs in spec order, every count at least 1 (a share that
    rounds to 0 is left out); raises ``ValueError`` saying what is wrong.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            '--workers is empty; give "profile:count" pairs or a total and shares, '
            f"e.g. {_EXAMPLES}"
        )
    if "=" in spec or re.match(r"\s*[+-]?[0-9]", spec):
        parsed = _parse_shares(spec)
    else:
        parsed = _parse_counts(spec)
    total = sum(count for _, count in parsed)
    if total > MAX_WORKERS:
        raise ValueError(f"--workers: {total} workers in all; at most {MAX_WORKERS}")
    return parsed


def _profile(name: str, seen: set[str]) -> Profile:
    name = name.lower()
    if name not in PROFILES:
        raise ValueError(f"--workers: unknown profile {name!r} (profiles: {', '.join(PROFILES)})")
    if name in seen:
        raise ValueError(f"--workers: profile {name!r} is given twice")
    seen.add(name)
    return PROFILES[name]


def _parse_counts(spec: str) -> list[tuple[Profile, int]]:
    known = ", ".join(PROFILES)
    parsed: list[tuple[Profile, int]] = []
    seen: set[str] = set()
    for part in spec.split(","):
        match = _WORKER_SPEC.match(part)
        if not match:
            raise ValueError(
                f'--workers: {part.strip()!r} is not "profile:count" (profiles: {known})'
            )
        name, count_text = match.group(1).lower(), match.group(2)
        profile = _profile(name, seen)
        count = _whole_number(count_text)
        if count is None:
            raise ValueError(
                f"--workers: the count of {name!r} must be a whole number, not {count_text!r}"
            )
        if count < 1:
            raise ValueError(
                f"--workers: the count of {name!r} must be at least 1, not {count_text}"
            )
        parsed.append((profile, count))
    return parsed


def _parse_shares(spec: str) -> list[tuple[Profile, int]]:
    known = ", ".join(PROFILES)
    total_text, colon, rest = spec.partition(":")
    total_text = total_text.strip()
    if not colon or not rest.strip():
        raise ValueError(
            f'--workers: {spec.strip()!r} is not "total:profile=share,..." (e.g. {_EXAMPLES})'
        )
    total = _whole_number(total_text)
    if total is None:
        raise ValueError(
            f"--workers: the total before ':' must be a whole number of workers, "
            f"not {total_text!r} (e.g. {_EXAMPLES})"
        )
    if total < 1:
        raise ValueError(f"--workers: the total must be at least 1, not {total_text}")
    if total > MAX_WORKERS:
        raise ValueError(f"--workers: the total is {total_text}; at most {MAX_WORKERS}")

    shares: list[tuple[Profile, float]] = []
    seen: set[str] = set()
    for part in rest.split(","):
        match = _SHARE_SPEC.match(part)
        if not match:
            raise ValueError(
                f'--workers: {part.strip()!r} is not "profile=share" (profiles: {known})'
            )
        name, share_text = match.group(1).lower(), match.group(2)
        profile = _profile(name, seen)
        try:
            share = float(share_text) if len(share_text) <= 32 else math.nan
        except ValueError:
            share = math.nan
        if not math.isfinite(share):
            raise ValueError(
                f"--workers: the share of {name!r} must be a number between 0 and 1, "
                f"not {share_text!r}"
            )
        if share < 0 or share > 1:
            raise ValueError(
                f"--workers: the share of {name!r} must be between 0 and 1, not {share_text}"
            )
        shares.append((profile, share))
    summed = math.fsum(share for _, share in shares)
    if abs(summed - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"--workers: the shares sum to {summed:.9g}, not 1")

    # Largest remainder: everyone gets the floor of their quota, the rest go to the largest
    # remainders (ties: the larger share, then the profile named first).
    quotas = [total * share / summed for _, share in shares]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), -shares[i][1], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return [
        (profile, count) for (profile, _), count in zip(shares, counts, strict=True) if count > 0
    ]


def _whole_number(text: str) -> int | None:
    """``text`` as an integer (None if it is none); absurdly large ones are clamped."""
    match = re.fullmatch(r"([+-]?)0*([0-9]+)", text.strip())
    if not match:
        return None
    sign, digits = match.groups()
    value = int(digits) if len(digits) <= 12 else 10**12
    return -value if sign == "-" else value


def format_spec(parsed: list[tuple[Profile, int]]) -> str:
    """The counts spec of parsed workers, e.g. ``"diligent:14,careless:2"``."""
    return ",".join(f"{profile.name}:{count}" for profile, count in parsed)


def worker_ids(spec: str) -> list[tuple[str, Profile]]:
    """The workers a spec starts, as ``(worker id, profile)``, in spec order."""
    found = []
    for profile, count in parse_spec(spec):
        width = max(2, len(str(count)))
        for index in range(1, count + 1):
            found.append((f"A{profile.name.upper()}{index:0{width}d}", profile))
    return found
