"""Where images come from: a local folder, or a Google Drive folder staged to a local folder.

Everything downstream works on local files: a Drive folder is downloaded (incrementally, by
Drive's md5) into a staging folder first. A source is written as a plain path for a local folder
or as ``gdrive://<folder id>`` for a Drive folder.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DRIVE_SCHEME = "gdrive://"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageFile:
    """One image file of a source, identified by its name and its content hash."""

    name: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Problem:
    """A file left out of a run, with the reason a person can act on."""

    name: str
    reason: str
    stage: str = "listing"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason, "stage": self.stage}


@dataclass
class Listing:
    """The images of one source, and the files that were left out with why."""

    source: str
    images: list[ImageFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source location: ``kind`` is ``"local"`` or ``"gdrive"``."""

    kind: str
    location: str

    @classmethod
    def parse(cls, text: str, base_dir: str | Path | None = None) -> SourceSpec:
        """Parse ``gdrive://FOLDER_ID`` or a local path (relative to ``base_dir`` if given)."""
        text = (text or "").strip()
        if not text:
            raise ValueError("an image source is empty: give a local folder or gdrive://FOLDER_ID")
        if text.startswith(DRIVE_SCHEME):
            folder_id = text[len(DRIVE_SCHEME) :].strip("/")
            if not folder_id or "/" in folder_id:
                raise ValueError(
                    f"{text!r} is not a Drive folder: write gdrive://FOLDER_ID with the id from "
                    "the folder's URL (https://drive.google.com/drive/folders/FOLDER_ID)"
                )
            return cls("gdrive", folder_id)
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        return cls("local", str(path))

    def __str__(self) -> str:
        return DRIVE_SCHEME + self.location if self.kind == "gdrive" else self.location


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_local_images(folder: str | Path) -> Listing:
    """List the image files directly inside ``folder``, sorted by name, hashing each one.

    Sub-folders, hidden files and files whose extension is not an image's are left out and
    reported by name. A missing folder is an error: a typo must not look like an empty dataset.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist or is not a folder; check the source setting"
        )
    listing = Listing(source=str(folder))
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith("."):
            continue
        if path.is_dir():
            listing.problems.append(Problem(name, "is a folder; sub-folders are not read"))
        elif not is_image_name(name):
            listing.problems.append(
                Problem(name, f"not an image file name (expected one of {_extensions_text()})")
            )
        else:
            listing.images.append(ImageFile(name, path, sha256_of_file(path), path.stat().st_size))
    for problem in listing.problems:
        log.warning("skipping %s in %s: %s", problem.name, folder, problem.reason)
    log.info(
        "listed %d images in %s (%d other entries skipped)",
        len(listing.images),
        folder,
        len(listing.problems),
    )
    return listing


def _extensions_text() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))
