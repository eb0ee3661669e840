"""What every benchmark prints about the machine, and how it measures memory."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
from collections.abc import Sequence
from pathlib import Path


def version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` that is installed."""
    for name in distributions:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "not installed"


def machine_line(*packages: tuple[str, str]) -> str:
    """``machine: 2 cores (CPU), Linux x86_64, Python 3.11.7, <label> <version>, ...``.

    ``packages`` are ``(label, distribution)`` pairs; a label of an extra (already formatted)
    text is passed as ``(text, "")``.
    """
    cpu = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        f"machine: {cores} cores ({cpu})",
        f"{platform.system()} {platform.machine()}",
        f"Python {platform.python_version()}",
    ]
    parts += [f"{label} {version(name)}" if name else label for label, name in packages]
    return ", ".join(parts)


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    ``ru_maxrss`` alone is wrong for a child started by ``subprocess``: Linux carries the
    parent's peak over ``vfork`` + ``exec`` into it. ``VmHWM`` belongs to the new address space
    only, so it is used where ``/proc`` has it, and ``ru_maxrss`` (KB on Linux) elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_line(before: float) -> str:
    """How busy the machine was: the load average at the start and now, against its CPUs."""
    return (
        f"load average {before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs: above that, other processes were competing for the CPU)"
    )


def render(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    """A Markdown table of ``rows`` under ``header``, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(r) for r in rows
    ])  # fmt: skip
