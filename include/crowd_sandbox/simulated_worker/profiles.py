"""The kinds of simulated worker (``PROFILES``, the one table to change), the
``--workers`` spec that says how many of each, and their worker ids; the table is in the
docstring of ``include.crowd_sandbox.workers``."""

from __future__ import annotations

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
    )
}

_WORKER_SPEC = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(\S+?)\s*$")


def parse_spec(spec: str) -> list[tuple[Profile, int]]:
    """Parse ``"diligent:6,careless:3,spammer:1"``; raise ``ValueError`` saying what is wrong."""
    if not spec or not spec.strip():
        raise ValueError('--workers is empty; give "profile:count" pairs, e.g. "diligent:2"')
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
        if name not in PROFILES:
            raise ValueError(f"--workers: unknown profile {name!r} (profiles: {known})")
        if name in seen:
            raise ValueError(f"--workers: profile {name!r} is given twice")
        try:
            count = int(count_text)
        except ValueError:
            raise ValueError(
                f"--workers: the count of {name!r} must be a whole number, not {count_text!r}"
            ) from None
        if count < 1:
            raise ValueError(f"--workers: the count of {name!r} must be at least 1, not {count}")
        seen.add(name)
        parsed.append((PROFILES[name], count))
    return parsed


def worker_ids(spec: str) -> list[tuple[str, Profile]]:
    """The workers a spec starts, as ``(worker id, profile)``, in spec order."""
    found = []
    for profile, count in parse_spec(spec):
        width = max(2, len(str(count)))
        for index in range(1, count + 1):
            found.append((f"A{profile.name.upper()}{index:0{width}d}", profile))
    return found
