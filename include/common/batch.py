"""Batch ids and the local batch folder, shared by the main DAG and the batch DAGs.

A batch id names a folder under the output folder and a prefix in S3
(``<prefix>/batches/<batch id>/``), so it must be one safe path segment: letters, digits,
``.``, ``_`` and ``-``, at most 64 characters, not starting with a dot (which also rules out
``.`` and ``..``, which would name the output folder itself or its parent).

By default a run works on its **campaign**: the batch of its DAG, its three sources and its
MTurk environment (``campaign_id``), the same for every scheduled or manual run over those
folders, so a rerun asks the crowd only about what is new. The Param ``batch_id`` names another
batch; ``@run`` makes a new batch of every run (its id derived from the run id).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

MAX_BATCH_ID = 64
BATCH_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
_BATCH_ID = re.compile(BATCH_ID_PATTERN)
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")
PER_RUN = "@run"  # the Param value that makes every run its own batch
BATCH_PARAM_PATTERN = f"^$|^{PER_RUN}$|{BATCH_ID_PATTERN}"
CAMPAIGN_PREFIX = "campaign-"
GOLD_SOURCES = ("provided", "generated", "both")
"""Where a batch's gold questions come from (the similarity stage writes it into the batch
folder's ``gold.json``, the crowd stage plans HITs by it): the provided known-answer sets; sets
generated from the dataset, one of its own per HIT; or both, generated first (each HIT its own
while they last), the provided sets when the generated ones run out."""
_HINT_CHARS = 24


def check_batch_id(batch_id: str) -> str:
    """Return ``batch_id`` if it is one safe path segment; raise ``ValueError`` otherwise."""
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise ValueError(
            f"batch id {str(batch_id)[:80]!r} is not usable: use 1-{MAX_BATCH_ID} letters, "
            "digits, '.', '_' or '-', not starting with '.' (Param batch_id)"
        )
    return batch_id


def run_batch_id(run_id: str) -> str:
    """A batch id derived from a run id (always safe, whatever the run id holds)."""
    derived = _NOT_ID.sub("_", run_id).strip("._-")[:MAX_BATCH_ID].rstrip(".")
    return check_batch_id(derived or "run")


def campaign_id(dag_id: str, environment: str, sources: Mapping[str, str]) -> str:
    """The batch id of a standing campaign: the same for every run of ``dag_id`` over the same
    ``sources`` (collection -> normalised location) in the same MTurk ``environment``.

    ``campaign-<queries folder name>-<16 hex digits>``: the name is only a hint for people
    (made safe, shortened); the digest of all the inputs is what tells campaigns apart.
    """
    identity = json.dumps(
        {"dag": dag_id, "environment": environment, "sources": dict(sources)}, sort_keys=True
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    queries = str(sources.get("queries", "")).rstrip("/\\")
    hint = _NOT_ID.sub("_", re.split(r"[/\\:]", queries)[-1]).strip("._-")[:_HINT_CHARS]
    return check_batch_id(f"{CAMPAIGN_PREFIX}{hint + '-' if hint else ''}{digest}")


def batch_id_for(param: str | None, run_id: str, campaign: str | None = None) -> str:
    """The batch id a run uses: the Param when set (checked); ``@run`` or, without a
    ``campaign``, derived from the run id; else the campaign's id."""
    if param == PER_RUN or (not param and campaign is None):
        return run_batch_id(run_id)
    if param:
        return check_batch_id(param)
    return check_batch_id(campaign)


def batch_dir(output_dir: str, batch_id: str, root: Path) -> Path:
    """``<output folder>/<batch id>``; a relative output folder is relative to ``root``."""
    base = Path(output_dir).expanduser()
    if not base.is_absolute():
        base = root / base
    return base / check_batch_id(batch_id)


def batch_dir_for_run(
    output_dir: str, param: str | None, run_id: str, root: Path, campaign: str | None = None
) -> Path:
    """The local folder of the batch a run works on (see ``batch_id_for``)."""
    return batch_dir(output_dir, batch_id_for(param, run_id, campaign), root)
