"""The requests and responses the sandbox's server hands to its parts (API, worker site).

In a module of their own so the server and the worker site both import them, and neither
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    headers: dict[str, str]

    def arg(self, name: str, default: str | None = None) -> str | None:
        for key, value in [*self.query, *self.form]:
            if key == name:
                return value
        return default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
