"""Where images come from: a local folder, or a Google Drive folder staged to a local folder.

Everything downstream works on local files: a Drive folder is downloaded (incrementally, by
Drive's md5) into a staging folder first. A source is written as a plain path for a local folder
or as ``gdrive://<folder id>`` for a Drive folder.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from include.common.image_files import (
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    NotARegularFile,
    describe_file_type,
    is_image_name,
    open_regular_file,
)

log = logging.getLogger(__name__)

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
    hidden: list[Problem] = field(default_factory=list)
    """Hidden entries (names starting with '.'), named but not problems: ``.DS_Store``, editors'
    swap files and the Drive staging marker belong in a folder without anyone acting on them."""


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
    return _sha256_and_size(open_regular_file(path))[0]


def _sha256_and_size(handle: BinaryIO, limit: int | None = None) -> tuple[str, int]:
    """Hash an open file to its end and close it; returns the digest and the bytes read.

    With ``limit``, a file that grows past it while being read raises ``_Skipped``: a file
    written to without end must not keep the listing reading for ever.
    """
    digest, size = hashlib.sha256(), 0
    with handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise _Skipped(_too_big(size) + "; it grew while being read")
    return digest.hexdigest(), size


def list_local_images(folder: str | Path, *, follow_external_symlinks: bool = False) -> Listing:
    """List the image files directly inside ``folder``, sorted by name, hashing each one.

    Only regular files are read. Everything else is left out and reported by name with the
    reason: sub-folders, files whose extension is not an image's, FIFOs, devices and sockets
    (never opened), files above ``MAX_FILE_BYTES``, names that are not valid UTF-8, broken
    symbolic links and symbolic-link loops, and links whose target is outside ``folder`` unless
    ``follow_external_symlinks`` (an image from elsewhere on the machine must not reach workers
    by accident). A link to an image inside the folder is listed like a file, under its own
    name and path. Hidden entries (names starting with '.') are named in ``Listing.hidden``.
    A missing folder is an error: a typo must not look like an empty dataset.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist or is not a folder; check the source setting"
        )
    root = Path(os.path.realpath(folder))
    listing = Listing(source=str(folder))
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
            listing.hidden.append(Problem(_printable(name), f"hidden {kind}: skipped"))
        elif not _is_utf8(name):  # it could not be written to sources.json or shown on a page
            listing.problems.append(
                Problem(_printable(name), "its name is not valid UTF-8 text; rename the file")
            )
        else:
            path = Path(entry.path)
            try:
                sha256, size = _hash_entry(path, root, follow_external_symlinks)
            except _Skipped as skipped:
                listing.problems.append(Problem(name, str(skipped)))
            else:
                listing.images.append(ImageFile(name, path, sha256, size))
    for problem in listing.problems:
        log.warning("skipping %r in %s: %s", problem.name, folder, problem.reason)
    if listing.hidden:
        log.info(
            "skipping %d hidden entries in %s: %s",
            len(listing.hidden),
            folder,
            ", ".join(repr(p.name) for p in listing.hidden[:20])
            + (", ..." if len(listing.hidden) > 20 else ""),
        )
    log.info(
        "listed %d images in %s (%d other entries skipped, %d hidden)",
        len(listing.images),
        folder,
        len(listing.problems),
        len(listing.hidden),
    )
    return listing


class _Skipped(Exception):
    """An entry left out of a listing; the message is the reason."""


def _hash_entry(path: Path, root: Path, follow_external: bool) -> tuple[str, int]:
    """Return ``(sha256, size)`` of an image entry (a link's target), or raise ``_Skipped``."""
    try:
        info = os.lstat(path)
        target, link = path, ""
        if stat.S_ISLNK(info.st_mode):
            target, link = _resolve_link(path, root, follow_external), "a symbolic link to "
            info = os.stat(target)
        if not stat.S_ISREG(info.st_mode):
            kind = describe_file_type(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                raise _Skipped(f"is {link}a folder; sub-folders are not read")
            raise _Skipped(f"is {link}{kind}, not a regular file; it was not opened")
        if not is_image_name(path.name):
            raise _Skipped(f"not an image file name (expected one of {_extensions_text()})")
        if info.st_size > MAX_FILE_BYTES:
            raise _Skipped(_too_big(info.st_size) + "; it was not read")
        # Its last component is no link (a link's target is resolved): one swapped in since the
        # check is refused (ELOOP), as is a FIFO or device (fstat after the open).
        handle = open_regular_file(target, follow_symlinks=False)
        if (size := os.fstat(handle.fileno()).st_size) > MAX_FILE_BYTES:
            handle.close()
            raise _Skipped(_too_big(size) + "; it was not read")
        return _sha256_and_size(handle, MAX_FILE_BYTES)
    except NotARegularFile as exc:
        raise _Skipped(
            f"{exc.strerror}, not a regular file (it was replaced while being listed)"
        ) from exc
    except OSError as exc:
        raise _Skipped(f"cannot be read ({exc.strerror or exc})") from exc


def _resolve_link(path: Path, root: Path, follow_external: bool) -> Path:
    try:
        target = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError as exc:
        raise _Skipped("is a broken symbolic link (its target does not exist)") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Skipped("is a symbolic link loop (it leads back to itself)") from exc
        raise _Skipped(f"is a symbolic link that cannot be followed ({exc.strerror})") from exc
    if not follow_external and not target.is_relative_to(root):
        raise _Skipped(
            f"is a symbolic link to {target}, outside the folder; links that leave the folder "
            "are not followed (allow them with follow_external_symlinks / "
            "--follow-external-symlinks)"
        )
    return target


def _too_big(size: int) -> str:
    return (
        f"is {size / 2**20:,.0f} MB, larger than any image this tool decodes "
        f"(limit {MAX_FILE_BYTES / 2**20:.0f} MB)"
    )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by the file system as surrogates
        return False
    return True


def _printable(name: str) -> str:
    """The name as text that can be written to JSON, undecodable bytes shown as ``\\xff``."""
    return name if _is_utf8(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


def _extensions_text() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))
