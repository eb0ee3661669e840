"""Read a stored JSON document back into frozen dataclasses, strictly.

A settings file written by one run and read by another may be damaged or crafted: it must hold
exactly the fields of its dataclasses, each of its type, or it is refused with every problem
named by its path ("unknown field payment.oops", "missing field posting.title",
"matching.k has the wrong type (str)"), never half-read.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """Settings that cannot be used: a missing Param, or a stored file that is not exactly the
    settings it should hold."""


def to_document(settings: Any, version: int) -> dict[str, Any]:
    """The JSON document of a settings dataclass: its fields and ``format`` = ``version``."""
    return {"format": version, **dataclasses.asdict(settings)}


def read_document(cls: type[T], stored: Any, *, name: str, version: int) -> T:
    """An instance of ``cls`` from the JSON document ``name`` (``to_document``'s output).

    :raises SettingsError: naming every unknown, missing or mistyped field, or another format.
    """
    if not isinstance(stored, dict):
        raise SettingsError(f"{name} is not a JSON object")
    problems: list[str] = []
    if stored.get("format") != version:
        problems.append(f"format is {stored.get('format')!r}, not {version}")
    values = read_fields(cls, {k: v for k, v in stored.items() if k != "format"}, "", problems)
    if problems:
        raise SettingsError(f"{name}: " + "; ".join(problems))
    return cls(**values)


def read_fields(cls: type, data: dict, where: str, problems: list[str]) -> dict[str, Any]:
    """The constructor arguments of dataclass ``cls`` read from ``data``.

    Nested dataclasses are read from nested objects and built; ``where`` prefixes each field's
    path in the messages (``""`` at the top, ``"posting."`` inside a part). Every unknown,
    missing or mistyped field is appended to ``problems``; the caller raises if there are any.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for unknown in sorted(set(data) - set(names)):
        problems.append(f"unknown field {where}{unknown}")
    values: dict[str, Any] = {}
    for name in names:
        path = f"{where}{name}"
        if name not in data:
            problems.append(f"missing field {path}")
            continue
        kind, value = hints[name], data[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                problems.append(f"{path} is not an object")
                continue
            before = len(problems)
            inner = read_fields(kind, value, f"{path}.", problems)
            if len(problems) == before:
                values[name] = kind(**inner)
            continue
        checked = _typed(kind, value)
        if checked is _WRONG:
            problems.append(f"{path} has the wrong type ({type(value).__name__})")
        else:
            values[name] = checked
    return values


_WRONG = object()


def _typed(kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (str, int, float, bool, tuple[str, ...], or X | None), else
    ``_WRONG``. A float is any finite JSON number (an int too); NaN and infinities are wrong."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            if all(isinstance(item, str) for item in value):
                return tuple(value)
    return _WRONG
