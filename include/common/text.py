"""Strings from outside (a worker, a file, a platform), made safe to log."""

from __future__ import annotations

SHOWN_CHARS = 60


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """An outside string, safe to log: quoted and escaped (a newline cannot start a forged log
    line), cut to ``limit`` characters."""
    text = str(text)
    cut = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(cut)
