"""Batch ids and the local batch folder, shared by the main DAG and the batch DAGs.

A batch id names a folder under the output folder and a prefix in S3
(``<prefix>/batches/<batch id>/``), so it must be one safe path segment: letters, digits,
``.``, ``_`` and ``-``, at most 64 characters, not starting with a dot (which also rules out
``.`` and ``..``, which would name the output folder itself or its parent).
"""

from __future__ import annotations

import re
from pathlib import Path

MAX_BATCH_ID = 64
BATCH_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
_BATCH_ID = re.compile(BATCH_ID_PATTERN)
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


def check_batch_id(batch_id: str) -> str:
    """Return ``batch_id`` if it is one safe path segment; raise ``ValueError`` otherwise."""
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise ValueError(
            f"batch id {str(batch_id)[:80]!r} is not usable: use 1-{MAX_BATCH_ID} letters, "
            "digits, '.', '_' or '-', not starting with '.' (Param batch_id)"
        )
    return batch_id


def batch_id_for(param: str | None, run_id: str) -> str:
    """The batch id a run uses: the Param when set (checked), else derived from the run id."""
    if param:
        return check_batch_id(param)
    derived = _NOT_ID.sub("_", run_id).strip("._-")[:MAX_BATCH_ID].rstrip(".")
    return check_batch_id(derived or "run")


def batch_dir(output_dir: str, batch_id: str, root: Path) -> Path:
    """``<output folder>/<batch id>``; a relative output folder is relative to ``root``."""
    base = Path(output_dir).expanduser()
    if not base.is_absolute():
        base = root / base
    return base / check_batch_id(batch_id)


def batch_dir_for_run(output_dir: str, param: str | None, run_id: str, root: Path) -> Path:
    """The local folder of the batch a run works on (see ``batch_id_for``)."""
    return batch_dir(output_dir, batch_id_for(param, run_id), root)
