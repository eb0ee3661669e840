"""Fault injection for reliability tests: throttling, 5xx and slow responses at set rates.

Faults apply to the requester API only (what the product calls), never to the worker page.
A 5xx fault happens either before the operation runs or after it has committed (the answer is
lost on the way back), half and half: the second kind is what ``UniqueRequestToken`` and the
product's ledgers exist for.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FaultConfig:
    throttle_rate: float = 0.0  # share of calls answered with ThrottlingException (HTTP 400)
    error_rate: float = 0.0  # share answered with ServiceFault 500 or ServiceUnavailable 503
    slow_rate: float = 0.0  # share delayed by slow_seconds before they run
    slow_seconds: float = 2.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("throttle_rate", "error_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.throttle_rate + self.error_rate > 1.0:
            raise ValueError("throttle_rate + error_rate must not exceed 1")
        if self.slow_seconds < 0:
            raise ValueError(f"slow_seconds must be >= 0, got {self.slow_seconds}")


@dataclass
class Decision:
    slow: float = 0.0
    fault: str | None = None  # "throttle", "error-before", "error-after" or None
    status: int = 500


@dataclass
class Faults:
    """The current fault settings and counters of what was injected (thread-safe)."""

    config: FaultConfig = field(default_factory=FaultConfig)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(self.config.seed)

    def configure(self, **settings: Any) -> FaultConfig:
        with self._lock:
            merged = {**asdict(self.config), **settings}
            self.config = FaultConfig(**merged)
            self._random = random.Random(self.config.seed)
            return self.config

    def decide(self) -> Decision:
        with self._lock:
            config, draw = self.config, self._random
            decision = Decision()
            if config.slow_rate and draw.random() < config.slow_rate:
                decision.slow = config.slow_seconds
                self._count("slow")
            roll = draw.random()
            if roll < config.throttle_rate:
                decision.fault = "throttle"
            elif roll < config.throttle_rate + config.error_rate:
                decision.fault = "error-after" if draw.random() < 0.5 else "error-before"
                decision.status = 503 if draw.random() < 0.5 else 500
            if decision.fault:
                self._count(decision.fault)
            return decision

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"config": asdict(self.config), "injected": dict(self.counts)}
