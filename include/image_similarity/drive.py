"""Stage the images of a Google Drive folder into a local folder, downloading only what changed.

This module is plain Python: the caller passes in an Airflow ``GoogleDriveHook`` (or any object
with the same ``get_conn()``, ``download_file(file_id, file_handle)`` and ``num_retries``), so
nothing here imports Airflow.

The staging folder mirrors the Drive folder's images: a file whose Drive md5 matches the staged
copy is reused, a new or changed file is downloaded to a temporary name and renamed into place
(a crash never leaves a half-written image under a real name), and staged files that are no
longer in Drive are removed. Files that are not images are left out and reported by name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from googleapiclient.errors import HttpError

from include.common.files import atomic_file
from include.common.image_files import IMAGE_EXTENSIONS, is_image_name
from include.image_similarity.sources import DRIVE_SCHEME, ImageFile, Listing, Problem

log = logging.getLogger(__name__)

FOLDER_MIME_TYPE = "application/vnd.google-apps.folder"
GOOGLE_APPS_MIME_PREFIX = "application/vnd.google-apps."
LIST_FIELDS = "nextPageToken, files(id, name, mimeType, md5Checksum, size, modifiedTime)"
PAGE_SIZE = 1000
DEFAULT_NUM_RETRIES = 3

# Written into the staging folder so that it is only ever mirrored (files deleted) when this
# module created it: pointing the staging setting at a folder of other files must not wipe it.
MARKER_NAME = ".gdrive-folder-id"
_TEMP_PREFIX = ".gdrive-download-"
_TEMP_SUFFIX = ".part"
# Most local file systems (ext4, APFS, NTFS) limit one file name to 255 bytes or characters.
_MAX_NAME_BYTES = 255
_SEPARATORS = str.maketrans({"/": "_", "\\": "_", "\x00": "_"})
_HASH_CHUNK = 1 << 20


class DriveFolderError(ValueError):
    """The Drive folder of a source cannot be read: wrong id, no access, or not a folder."""


@dataclass(frozen=True)
class DriveEntry:
    """One file of a Drive folder as ``files.list`` describes it."""

    id: str
    name: str
    mime_type: str
    md5: str | None
    size: int | None
    modified_time: str | None


def escape_query_value(value: str) -> str:
    r"""Escape ``value`` for use inside a single-quoted string literal of a Drive ``q`` query.

    Drive v3 search syntax delimits string literals with ``'`` and escapes ``\`` as ``\\`` and
    ``'`` as ``\'``. Backslashes are escaped first so the quote escapes are not doubled.
    """
    return value.replace("\\", "\\\\").replace("'", "\\'")


def list_drive_folder(hook: Any, folder_id: str) -> list[DriveEntry]:
    """List the files directly inside Drive folder ``folder_id`` (not trashed), in name order.

    Follows ``nextPageToken`` until every page is read and includes shared-drive items. An
    empty result is checked against the folder's own metadata, so that a wrong id or a folder
    the service account cannot see raises :class:`DriveFolderError` rather than looking like an
    empty dataset.
    """
    service = hook.get_conn()
    num_retries = _num_retries(hook)
    query = f"'{escape_query_value(folder_id)}' in parents and trashed = false"
    entries: list[DriveEntry] = []
    page_token: str | None = None
    while True:
        request = service.files().list(
            q=query,
            fields=LIST_FIELDS,
            pageToken=page_token,
            pageSize=PAGE_SIZE,
            supportsAllDrives=True,
            includeItemsFromAllDrives=True,
            orderBy="name",
        )
        response = _execute(request, folder_id, num_retries)
        entries.extend(_entry(item) for item in response.get("files", []))
        page_token = response.get("nextPageToken")
        if not page_token:
            break
    if not entries:
        _check_is_folder(service, folder_id, num_retries)
    log.debug("Drive folder %s lists %d entries", folder_id, len(entries))
    return entries


def stage_drive_folder(hook: Any, folder_id: str, staging_dir: str | Path) -> Listing:
    """Mirror the images of Drive folder ``folder_id`` into ``staging_dir`` and list them.

    A staged file whose md5 equals Drive's ``md5Checksum`` is reused; other images are
    downloaded through ``hook.download_file`` to a temporary name and renamed into place.
    Non-image entries (Google Docs, sub-folders, other files) are skipped and returned as
    problems. Several Drive files with one name (compared ignoring case, so that the staged
    folder also works on case-insensitive file systems) keep the first name in ``(name, id)``
    order; the others are staged as ``<stem>__<file id><ext>``. Staged files no longer in Drive
    are deleted. ``staging_dir`` is created if missing; an existing non-empty folder that this
    function did not create is refused rather than emptied.
    """
    staging_dir = Path(staging_dir)
    entries = list_drive_folder(hook, folder_id)
    _prepare_staging_dir(staging_dir, folder_id)
    listing = Listing(source=DRIVE_SCHEME + folder_id)
    images = _select_images(entries, listing.problems)
    downloaded = reused = 0
    for entry, local_name in _assign_local_names(images, listing.problems):
        target = staging_dir / local_name
        hashed = _reusable(target, entry)
        if hashed is not None:
            reused += 1
        else:
            try:
                hashed = _download(hook, entry, target)
            except _DownloadSkipped as skipped:
                listing.problems.append(Problem(entry.name, str(skipped), stage="download"))
                continue
            downloaded += 1
        sha256, size = hashed
        listing.images.append(ImageFile(local_name, target, sha256, size))
    listing.images.sort(key=lambda image: image.name)
    removed = _remove_stale(staging_dir, keep={image.name for image in listing.images})
    for problem in listing.problems:
        log.warning("skipping %r in Drive folder %s: %s", problem.name, folder_id, problem.reason)
    log.info(
        "Drive folder %s: %d images (%d downloaded, %d unchanged), %d skipped, "
        "%d stale staged files removed, staged in %s",
        folder_id,
        len(listing.images),
        downloaded,
        reused,
        len(listing.problems),
        removed,
        staging_dir,
    )
    return listing


def safe_local_name(name: str) -> str:
    """Return Drive file name ``name`` as a name that stays inside its local folder.

    Path separators (``/``, ``\\``) and NUL become ``_`` and a leading ``.`` (a hidden file)
    becomes ``_.``; Unicode, quotes and spaces are kept. Raises ``ValueError`` for names that
    are empty or ``.``/``..`` after that.
    """
    safe = name.translate(_SEPARATORS)
    if safe.strip() in ("", ".", ".."):
        raise ValueError(f"{name!r} is not usable as a local file name")
    if safe.startswith("."):
        safe = "_" + safe
    return safe


class _DownloadSkipped(Exception):
    """A file that could not be staged, with the reason to report."""


def _num_retries(hook: Any) -> int:
    return int(getattr(hook, "num_retries", DEFAULT_NUM_RETRIES))


def _status(exc: HttpError) -> int | None:
    return getattr(exc.resp, "status", None)


def _not_found_message(folder_id: str) -> str:
    return (
        f"Google Drive folder {folder_id!r} was not found (HTTP 404). Check the folder id (the "
        "last part of the folder's URL, https://drive.google.com/drive/folders/FOLDER_ID) and "
        "that the folder is shared with the service account of the Google Cloud connection "
        "(Drive answers 404 for folders it may not see)."
    )


def _entry(item: dict[str, Any]) -> DriveEntry:
    size = item.get("size")
    return DriveEntry(
        id=item["id"],
        name=item.get("name", ""),
        mime_type=item.get("mimeType", ""),
        md5=item.get("md5Checksum"),
        size=int(size) if size is not None else None,
        modified_time=item.get("modifiedTime"),
    )


def _execute(request: Any, folder_id: str, num_retries: int) -> dict[str, Any]:
    """Run a Drive request about ``folder_id``; a 404 becomes a ``DriveFolderError``."""
    try:
        return request.execute(num_retries=num_retries)
    except HttpError as exc:
        if _status(exc) == 404:
            raise DriveFolderError(_not_found_message(folder_id)) from exc
        raise


def check_folder(hook: Any, folder_id: str) -> str:
    """The name of Drive folder ``folder_id``; ``DriveFolderError`` unless it is a folder the
    hook's connection can see (a run checks its folders before it lists anything)."""
    return _folder_name(hook.get_conn(), folder_id, _num_retries(hook))


def _folder_name(service: Any, folder_id: str, num_retries: int) -> str:
    request = service.files().get(
        fileId=folder_id, fields="id, name, mimeType", supportsAllDrives=True
    )
    metadata = _execute(request, folder_id, num_retries)
    mime_type = metadata.get("mimeType")
    if mime_type != FOLDER_MIME_TYPE:
        raise DriveFolderError(
            f"Google Drive id {folder_id!r} is {metadata.get('name')!r} of type {mime_type}, not "
            "a folder; give the id of the folder that holds the images"
        )
    return str(metadata.get("name", ""))


def _check_is_folder(service: Any, folder_id: str, num_retries: int) -> None:
    """Raise ``DriveFolderError`` unless ``folder_id`` is a folder the caller can see."""
    name = _folder_name(service, folder_id, num_retries)
    log.warning("Drive folder %s (%r) has no files", folder_id, name)


def _select_images(entries: Iterable[DriveEntry], problems: list[Problem]) -> list[DriveEntry]:
    """Return the image entries; record every other entry in ``problems``."""
    images = []
    for entry in entries:
        if entry.mime_type == FOLDER_MIME_TYPE:
            problems.append(Problem(entry.name, "is a folder; sub-folders are not read"))
        elif entry.mime_type.startswith(GOOGLE_APPS_MIME_PREFIX):
            problems.append(
                Problem(
                    entry.name,
                    f"is a Google Drive document ({entry.mime_type}), not an image file; "
                    "upload the image itself",
                )
            )
        elif not is_image_name(entry.name) or not entry.mime_type.startswith("image/"):
            problems.append(
                Problem(
                    entry.name,
                    f"not an image file (Drive type {entry.mime_type or 'unknown'}; the name "
                    f"must end in one of {', '.join(sorted(IMAGE_EXTENSIONS))})",
                )
            )
        else:
            images.append(entry)
    return images


def _assign_local_names(
    entries: Iterable[DriveEntry], problems: list[Problem]
) -> list[tuple[DriveEntry, str]]:
    """Pair each entry with a unique, safe local file name, in ``(name, id)`` order."""
    taken: set[str] = set()
    planned = []
    for entry in sorted(entries, key=lambda e: (e.name, e.id)):
        try:
            local_name = safe_local_name(entry.name)
        except ValueError as exc:
            problems.append(Problem(entry.name, str(exc)))
            continue
        if local_name.casefold() in taken:
            renamed = _with_id(local_name, entry.id)
            log.warning(
                "Drive folder has more than one file named %r: staging file %s as %r",
                entry.name,
                entry.id,
                renamed,
            )
            local_name = renamed
        elif len(local_name.encode()) > _MAX_NAME_BYTES:
            local_name = _with_id(local_name, entry.id)
        if local_name.casefold() in taken:
            problems.append(Problem(entry.name, f"its local name {local_name!r} is already used"))
            continue
        taken.add(local_name.casefold())
        planned.append((entry, local_name))
    return planned


def _with_id(name: str, file_id: str) -> str:
    """Return ``<stem>__<file id><ext>``, shortening the stem to fit the name length limit."""
    stem, ext = os.path.splitext(name)
    tail = f"__{file_id}{ext}"
    room = _MAX_NAME_BYTES - len(tail.encode())
    stem = stem.encode()[: max(room, 1)].decode(errors="ignore")
    return stem + tail


def _prepare_staging_dir(staging_dir: Path, folder_id: str) -> None:
    """Create ``staging_dir`` or check it is ours to mirror, and record the folder id in it."""
    marker = staging_dir / MARKER_NAME
    if staging_dir.exists() and not staging_dir.is_dir():
        raise DriveFolderError(f"staging path {staging_dir} exists and is not a folder")
    if marker.is_file():
        previous = marker.read_text(encoding="utf-8").strip()
        if previous != folder_id:
            log.warning(
                "staging folder %s held Drive folder %s; it now mirrors %s instead",
                staging_dir,
                previous,
                folder_id,
            )
    elif staging_dir.is_dir():
        foreign = sorted(p.name for p in staging_dir.iterdir() if not p.name.startswith("."))
        if foreign:
            raise DriveFolderError(
                f"staging folder {staging_dir} already holds files ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}) and was not made by the Drive "
                "staging; it would be emptied to mirror Drive, so give an empty or new folder"
            )
    staging_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(folder_id + "\n", encoding="utf-8")


def _hash_file(path: Path) -> tuple[str, str, int]:
    """Return the md5 and sha256 hex digests and the size of the file at ``path``."""
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha256.hexdigest(), size


def _reusable(target: Path, entry: DriveEntry) -> tuple[str, int] | None:
    """Return ``(sha256, size)`` of the staged copy if it matches Drive's md5, else ``None``."""
    if not entry.md5 or not target.is_file() or target.is_symlink():
        return None
    md5, sha256, size = _hash_file(target)
    return (sha256, size) if md5 == entry.md5.lower() else None


def _download(hook: Any, entry: DriveEntry, target: Path) -> tuple[str, int]:
    """Download ``entry`` to ``target`` through a temporary file; return ``(sha256, size)``.

    Raises ``_DownloadSkipped`` when Drive refuses this one file (gone since the listing, or
    not downloadable) or its content does not match Drive's md5; other errors propagate so the
    task fails and is retried (already staged files are then reused).
    """
    with atomic_file(target, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX) as handle:
        try:
            hook.download_file(file_id=entry.id, file_handle=handle)
        except HttpError as exc:
            if _status(exc) == 404 or (_status(exc) == 403 and not _is_rate_limit(exc)):
                raise _DownloadSkipped(
                    f"Drive refused the download (HTTP {_status(exc)}): {exc.reason}"
                ) from exc
            raise
        handle.flush()
        md5, sha256, size = _hash_file(Path(handle.name))
        if entry.md5 and md5 != entry.md5.lower():
            raise _DownloadSkipped(
                f"downloaded content has md5 {md5} but Drive reports {entry.md5}; try again"
            )
    log.debug("downloaded %r (%s) to %s", entry.name, entry.id, target)
    return sha256, size


def _is_rate_limit(exc: HttpError) -> bool:
    return b"ratelimitexceeded" in exc.content.lower()


def _remove_stale(staging_dir: Path, keep: set[str]) -> int:
    """Delete staged files not in ``keep`` and leftover temporary files; return how many."""
    removed = 0
    for path in staging_dir.iterdir():
        name = path.name
        leftover = name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)
        if name in keep or (name.startswith(".") and not leftover):
            continue
        if path.is_dir() and not path.is_symlink():
            log.warning("leaving folder %s in staging folder %s alone", name, staging_dir)
            continue
        path.unlink(missing_ok=True)
        removed += 1
        if not leftover:
            log.info("removed %s from %s: no longer in the Drive folder", name, staging_dir)
    return removed
