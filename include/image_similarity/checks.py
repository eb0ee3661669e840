"""What the similarity stage will need, checked before a run lists or embeds anything.

``problems`` looks at the settings of a run as an operator would before pressing *Trigger*: is
each source a folder that exists and can be read, or a Drive folder id (those are checked by
the caller through the Google connection: ``drive_folders``), can the model be named, can the
output folder be written. Every problem found is returned, each naming the Param to fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from include.image_similarity.embedding import RUNTIMES, ModelSpec
from include.image_similarity.settings import SimilaritySettings
from include.image_similarity.sources import SourceSpec

SOURCE_PARAMS = {
    "dataset": "dataset_source",
    "queries": "queries_source",
    "known_answers": "known_answers_source",
}


def problems(settings: SimilaritySettings, base_dir: Path) -> list[str]:
    """The problems of the local sources and the model (Drive folders: ``drive_folders``)."""
    found = []
    for collection, text in settings.sources.used().items():
        param = SOURCE_PARAMS[collection]
        try:
            spec = SourceSpec.parse(text, base_dir=base_dir)
        except ValueError as error:
            found.append(f"Param {param}: {error}")
            continue
        if spec.kind != "local":
            continue
        path = Path(spec.location)
        if not path.exists():
            found.append(f"Param {param}: the folder {str(path)!r} does not exist")
        elif not path.is_dir():
            found.append(f"Param {param}: {str(path)!r} is not a folder")
        elif not os.access(path, os.R_OK | os.X_OK):
            found.append(f"Param {param}: the folder {str(path)!r} cannot be read")
    try:
        ModelSpec.parse(settings.embedding.model)
    except ValueError as error:
        found.append(f"Param model: {error}")
    if settings.embedding.runtime not in RUNTIMES:
        found.append(
            f"Param embedding_runtime: {str(settings.embedding.runtime)[:40]!r} is not one of "
            f"{', '.join(RUNTIMES)}"
        )
    return found


def drive_folders(settings: SimilaritySettings) -> dict[str, str]:
    """The Drive folder ids among the sources, by the Param that names them."""
    folders = {}
    for collection, text in settings.sources.used().items():
        try:
            spec = SourceSpec.parse(text)
        except ValueError:
            continue  # reported by ``problems``
        if spec.kind == "gdrive":
            folders[SOURCE_PARAMS[collection]] = spec.location
    return folders


def output_problems(folder: Path, param: str = "output_dir") -> list[str]:
    """Whether the output folder (or its nearest existing parent) can be written."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"Param {param}: the folder {str(folder)!r} cannot be written"]
    return []
