"""Copy a batch's results to Google Drive, one timestamped subfolder per snapshot.

When the Param ``results_drive_folder`` is ``gdrive://FOLDER_ID``, ``write_results`` copies the
results it wrote, plus two images per query, into a new subfolder of that folder::

    FOLDER_ID/
      20261202T101500Z/             the snapshot name the caller passes (UTC, see snapshot_name)
        results.json  results.csv  report.html
        q01.jpg                     the query image, under the query's own name
        q01_winner_0.67.jpg         the crowd's winner: 2 of its 3 counted votes

This module is plain Python: the caller passes the Drive v3 service, which is what
``GoogleDriveHook(gcp_conn_id=...).get_conn()`` returns, so nothing here imports Airflow.

Names:

- The winner's file is ``<query stem>_winner_<share><ext>``, as the original notebook named it.
  ``share`` is the winner's counted votes divided by the query's counted votes, rounded half up
  to two decimals and written with a dot ("0.67" for 2 of 3, "0.50", "1.00"). ``ext`` comes from
  the image's bytes, not its name (``.jpg`` for JPEG, as in the notebook; ``.png``, ...). The
  winner is the one the results carry at the top level (the primary aggregation method's); the
  share is always the share of counted votes, whatever the method.
- A query with no winning image (a tie, "none of these" won, or no votes yet) has only its query
  image in the snapshot. ``results.csv`` says why. No placeholder file stands in for the winner.
- Names from outside (query and image names) are made printable and bounded. Path separators,
  control and format characters, and every other character Python does not print become ``_``.
  Unicode is NFC-normalised. A leading ``.`` becomes ``_.``. A name is cut to 255 UTF-8 bytes
  (what most file systems allow) so that a downloaded copy of the folder still works; the stem
  is cut, never the ``_winner_<share><ext>`` tail. When two files would get one name with
  different content, the later one (in the results' query order) gets
  ``__<first 8 hex digits of its sha256>`` between its stem and its tail. The same name with the
  same content is uploaded once.
- An image whose bytes do not hash to the sha256 the results name, or that is not an image
  (JPEG, PNG, GIF, WebP, BMP, TIFF by its first bytes), is logged and left out. So is a missing
  image. A results document of the wrong shape is refused (``ResultsDocumentError``) before
  anything is uploaded.

Exactly once: a task retry makes no second subfolder and no second copy of a file. The subfolder
is looked up again by name, parent, folder type and "not trashed". A file already in it with the
same name and the same md5 (its size when Drive has no md5) is skipped. A file with the same name
and other content is replaced in place (``files.update``), never added beside the old one.
Writes are sent once per call (``num_retries=0``): the answer to a write can be lost after Drive
has done it, and only the next listing can tell, so it is the task's retry, which lists first,
that resumes. Reads are retried ``num_retries`` times. Files in the subfolder that this upload
does not name are left alone and counted in the log.

Scopes: writing needs ``https://www.googleapis.com/auth/drive`` on the Google connection when the
folder was shared with a service account. ``https://www.googleapis.com/auth/drive.file`` only
reaches files the app created itself, or files a user picked for it in the Google Picker. A
service account never goes through a picker, so with that scope it cannot see a folder shared
with it. A service account also has no Drive storage of its own, so the folder must be in a
shared drive where it is a Contributor or Content manager, unless the connection uses
domain-wide delegation or a user's OAuth credentials.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from include.common.text import shown
from include.crowd.aggregation.results import RESULTS_VERSION
from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef
from include.crowd.report import FILES

log = logging.getLogger(__name__)

PARAM = "results_drive_folder"
DRIVE_SCHEME = "gdrive://"
DEFAULT_CONN_ID = "google_cloud_default"
DEFAULT_NUM_RETRIES = 3
WRITE_SCOPE = "https://www.googleapis.com/auth/drive"
FILE_SCOPE = "https://www.googleapis.com/auth/drive.file"
FOLDER_MIME_TYPE = "application/vnd.google-apps.folder"
LIST_FIELDS = "nextPageToken, files(id, name, mimeType, md5Checksum, size)"
PAGE_SIZE = 1000
MAX_NAME_BYTES = 255
WINNER_INFIX = "_winner_"

# Drive file ids are URL-safe base64-like strings: 28-44 characters for files and folders,
# 19 for a shared drive's root ("0A..."). The bounds only keep out what cannot be an id.
_FOLDER_ID = re.compile(r"[A-Za-z0-9_-]{10,128}")
# A snapshot is a folder name this module makes up, not outside text: keep it plain.
_SNAPSHOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SNAPSHOT_FORMAT = "%Y%m%dT%H%M%SZ"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STATUSES = frozenset({"decided", "tie", "no votes"})
_RESULT_MIME_TYPES = {"json": "application/json", "csv": "text/csv", "html": "text/html"}
_IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", ".jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", ".png", "image/png"),
    (b"GIF87a", ".gif", "image/gif"),
    (b"GIF89a", ".gif", "image/gif"),
    (b"II*\x00", ".tif", "image/tiff"),
    (b"MM\x00*", ".tif", "image/tiff"),
    (b"BM", ".bmp", "image/bmp"),
)
# Structured reasons Drive puts in an error's "errors" and "details" lists.
_SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
_APP_REASONS = frozenset({"appNotAuthorizedToFile"})
_ROLE_REASONS = frozenset({"insufficientFilePermissions", "forbidden"})
_QUOTA_REASONS = frozenset({"storageQuotaExceeded", "quotaExceeded"})
_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_SHOWN_PROBLEMS = 10

ImageSource = Callable[[ImageRef], "bytes | None"]


class ResultsDocumentError(ValueError):
    """A results document (or its files) that cannot be copied as it is: damaged or missing."""


class DriveResultsError(RuntimeError):
    """Drive refused part of the copy. The message says why and what is already in Drive;
    ``retryable`` says whether trying again can help (a server error, a rate limit, a damaged
    upload) or a setting must change first (scopes, sharing, the folder id)."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class DriveFile:
    """One file to put in the snapshot: its Drive name, content and MIME type."""

    name: str
    data: bytes = field(repr=False)
    mime_type: str

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class UploadSummary:
    """What one ``upload_snapshot`` call found and did, by file name."""

    folder_id: str
    folder_name: str
    folder_created: bool
    uploaded: tuple[str, ...]
    replaced: tuple[str, ...]
    already_there: tuple[str, ...]
    bytes_sent: int

    @property
    def url(self) -> str:
        return f"https://drive.google.com/drive/folders/{self.folder_id}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for XCom or a log line)."""
        return {
            "folder_id": self.folder_id,
            "folder_name": self.folder_name,
            "folder_created": self.folder_created,
            "url": self.url,
            "uploaded": list(self.uploaded),
            "replaced": list(self.replaced),
            "already_there": list(self.already_there),
            "bytes_sent": self.bytes_sent,
        }


# --- the Param --------------------------------------------------------------------------------


def parse_folder(text: str | None) -> str | None:
    """The Drive folder id of Param ``results_drive_folder``, or None when it is empty.

    :raises ValueError: naming the Param, unless ``text`` is empty or ``gdrive://FOLDER_ID``.
    """
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    folder_id = text[len(DRIVE_SCHEME) :].rstrip("/") if text.startswith(DRIVE_SCHEME) else None
    if folder_id is None or not _FOLDER_ID.fullmatch(folder_id):
        raise ValueError(
            f"Param {PARAM} = {shown(text)} is not a Drive folder: write gdrive://FOLDER_ID, "
            "with FOLDER_ID the last part of the folder's URL "
            "(https://drive.google.com/drive/folders/FOLDER_ID), or leave it empty to keep the "
            "results out of Drive"
        )
    return folder_id


def snapshot_name(moment: datetime) -> str:
    """The snapshot folder name for ``moment`` in UTC, e.g. ``20261202T101500Z``.

    Pass a moment that stays the same across retries, such as the run's ``run_after``, so that
    a retry finds the folder of its first attempt.
    """
    if moment.tzinfo is None:
        raise ValueError("give an aware datetime: a snapshot name is in UTC")
    return moment.astimezone(UTC).strftime(_SNAPSHOT_FORMAT)


# --- what to upload ---------------------------------------------------------------------------


def result_files(results_dir: str | Path) -> list[DriveFile]:
    """``results.json``, ``results.csv`` and ``report.html`` from ``results_dir``, as written by
    ``include.crowd.report.write_results``.

    :raises ResultsDocumentError: a file is missing, or ``results.json`` is not the document
        the crowd stage writes (``read_results``).
    """
    results_dir = Path(results_dir)
    files = []
    for kind, name in FILES.items():
        path = results_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise ResultsDocumentError(
                f"{path} is missing: the results are written before they are copied to Drive"
            ) from error
        if kind == "json":
            read_results(data)
        files.append(DriveFile(name, data, _RESULT_MIME_TYPES[kind]))
    return files


def read_results(data: bytes) -> dict[str, Any]:
    """The results document in ``data`` (``results.json``), checked as ``query_image_files``
    reads it.

    :raises ResultsDocumentError: not UTF-8 JSON, or not of the shape the crowd stage writes.
    """
    try:
        results = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsDocumentError(f"results.json is not valid JSON: {error}") from error
    _read_queries(results)
    return results


def snapshot_files(
    results_dir: str | Path, plans: Iterable[HitPlan], image_bytes: ImageSource
) -> list[DriveFile]:
    """Every file of a snapshot: the three result files of ``results_dir``, then each query's
    images (see ``query_image_files``), with ``results.json`` read back from the disk."""
    files = result_files(results_dir)
    results = read_results(next(f.data for f in files if f.name == FILES["json"]))
    return files + query_image_files(
        results, plans, image_bytes, reserved={f.name: f.data for f in files}
    )


def query_image_files(
    results: Any,
    plans: Iterable[HitPlan],
    image_bytes: ImageSource,
    *,
    reserved: Mapping[str, bytes] | None = None,
) -> list[DriveFile]:
    """Each query's image and, when the crowd chose one, its winner's image, named as the
    module docstring says, in the results' query order.

    :param results: the results document (``results.json`` parsed); checked first.
    :param plans: the HITs' plans, for the images' hashes and S3 keys. A query without a plan
        has only its query image, looked up by the hash in the results.
    :param image_bytes: returns an image's bytes, or None when it cannot be found (the image is
        then logged and left out). Give the function the report's thumbnails come from.
    :param reserved: names already taken in the snapshot, with their content.
    :raises ResultsDocumentError: the document is not what the crowd stage writes, or does not
        match the plans.
    """
    queries = _read_queries(results)
    by_hit = {(plan.query.name, plan.hit_id): plan for plan in plans}
    names = _Names(reserved or {})
    files: list[DriveFile] = []
    no_winner: dict[str, int] = {}
    missing = winners = 0
    for query in queries:
        plan = by_hit.get((query.name, query.hit_id))
        if plan is not None and plan.query.sha256 != query.sha256:
            raise ResultsDocumentError(
                f"results.json query {shown(query.name)} (HIT {query.hit_id}) has sha256 "
                f"{query.sha256}, its plan {plan.query.sha256}: the results are not this batch's"
            )
        ref = plan.query if plan is not None else ImageRef(query.name, query.sha256)
        data = _image(image_bytes, ref, f"query {shown(query.name)}")
        if data is None:
            missing += 1
        else:
            extension, mime_type = _image_type(data)
            stem, own_extension = _split(query.name)
            name = names.claim(stem, own_extension or extension, data, query.sha256)
            if name is not None:
                files.append(DriveFile(name, data, mime_type))

        reason = _no_winner_reason(query)
        if reason is None and plan is None:
            reason = "no plan for its HIT"
        if reason is not None:
            no_winner[reason] = no_winner.get(reason, 0) + 1
            continue
        winner = _option_ref(plan, query.winner)
        if winner is None:
            raise ResultsDocumentError(
                f"results.json names winner {shown(query.winner)} for query "
                f"{shown(query.name)}, which is not among its plan's options"
            )
        data = _image(image_bytes, winner, f"winner {shown(winner.name)}")
        if data is None:
            missing += 1
            continue
        extension, mime_type = _image_type(data)
        share = share_text(query.votes[query.winner], query.counted)
        name = names.claim(
            _split(query.name)[0], f"{WINNER_INFIX}{share}{extension}", data, winner.sha256
        )
        if name is not None:
            files.append(DriveFile(name, data, mime_type))
            winners += 1
    log.info(
        "Drive snapshot images: %d queries, %d files (%d winners); no winner image for %d (%s); "
        "%d images missing or unusable",
        len(queries),
        len(files),
        winners,
        sum(no_winner.values()),
        ", ".join(f"{reason} {count}" for reason, count in sorted(no_winner.items())) or "-",
        missing,
    )
    return files


def share_text(votes: int, counted: int) -> str:
    """``votes / counted`` rounded half up to two decimals: ``share_text(2, 3) == "0.67"``."""
    if counted <= 0 or not 0 <= votes <= counted:
        raise ValueError(f"{votes} of {counted} counted votes is not a share")
    share = (Decimal(votes) / Decimal(counted)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return f"{share:.2f}"


def drive_name(name: str, *, tail: str = "") -> str:
    """``name`` + ``tail`` made printable and at most ``MAX_NAME_BYTES`` UTF-8 bytes long,
    by shortening ``name``'s stem (see the module docstring).

    :raises ValueError: nothing usable is left of ``name``.
    """
    stem, extension = os.path.splitext(_printable(name))
    if not stem.strip():
        raise ValueError(f"{shown(name)} is not usable as a file name")
    return _fit(stem, extension + tail)


# --- the upload -------------------------------------------------------------------------------


def upload_snapshot(
    service: Any,
    parent_id: str,
    snapshot: str,
    files: Sequence[DriveFile],
    *,
    num_retries: int = DEFAULT_NUM_RETRIES,
    gcp_conn_id: str = DEFAULT_CONN_ID,
) -> UploadSummary:
    """Create (or find again) subfolder ``snapshot`` of Drive folder ``parent_id`` and upload
    ``files`` into it, skipping those already there (see the module docstring).

    .. seealso:: Drive v3 ``files.get``, ``files.list``, ``files.create``, ``files.update``.

    :param service: a Drive v3 service, ``GoogleDriveHook(gcp_conn_id=...).get_conn()``.
    :param parent_id: the folder of Param ``results_drive_folder`` (``parse_folder``).
    :param snapshot: the subfolder's name, e.g. ``snapshot_name(run_after)``: stable across a
        task's retries.
    :param files: unique names, each as ``drive_name`` leaves it.
    :param num_retries: retries of each read (the hook's ``num_retries``); writes go once.
    :param gcp_conn_id: the connection the service was built from, named in error messages.
    :raises DriveResultsError: Drive refused a step; the message says what to change.
    """
    _check_upload(parent_id, snapshot, files)
    drive = _Drive(service, num_retries, gcp_conn_id, parent_id)
    drive_id = drive.check_parent()
    folder_id, created = drive.snapshot_folder(snapshot, drive_id)
    where = f"Drive folder {parent_id}/{snapshot} ({folder_id})"
    present = {} if created else drive.children(folder_id, drive_id)
    uploaded: list[str] = []
    replaced: list[str] = []
    already: list[str] = []
    sent = 0
    for file in files:
        existing = present.get(file.name, [])
        if any(_same_content(entry, file) for entry in existing):
            already.append(file.name)
            continue
        done = len(uploaded) + len(replaced) + len(already)
        if existing:
            drive.replace(existing[0]["id"], file, where, done, len(files))
            replaced.append(file.name)
            log.warning(
                "replaced %s in %s: the copy there had other content", shown(file.name), where
            )
        else:
            drive.create(folder_id, file, where, done, len(files))
            uploaded.append(file.name)
        sent += len(file.data)
    planned = {file.name for file in files}
    others = sorted(name for name in present if name not in planned)
    if others:
        log.warning(
            "%s also holds %d files this upload does not name (left alone): %s",
            where,
            len(others),
            ", ".join(shown(name) for name in others[:5]) + (", ..." if len(others) > 5 else ""),
        )
    log.info(
        "copied results to %s: %d/%d files uploaded, %d replaced, %d already there, %s bytes; %s",
        where,
        len(uploaded),
        len(files),
        len(replaced),
        len(already),
        f"{sent:,}",
        f"https://drive.google.com/drive/folders/{folder_id}",
    )
    return UploadSummary(
        folder_id=folder_id,
        folder_name=snapshot,
        folder_created=created,
        uploaded=tuple(uploaded),
        replaced=tuple(replaced),
        already_there=tuple(already),
        bytes_sent=sent,
    )


def escape_query_value(value: str) -> str:
    r"""``value`` escaped for a single-quoted string literal of a Drive ``q`` query.

    Drive's search syntax escapes ``\`` as ``\\`` and ``'`` as ``\'``; backslashes go first so
    the quotes' escapes are not doubled.
    """
    return value.replace("\\", "\\\\").replace("'", "\\'")


class _Drive:
    """The Drive calls of one upload, each mapping Drive's refusals to a clear error."""

    def __init__(self, service: Any, num_retries: int, gcp_conn_id: str, parent_id: str):
        self.files = service.files()
        self.num_retries = num_retries
        self.conn = gcp_conn_id
        self.parent_id = parent_id

    def check_parent(self) -> str | None:
        """Check the parent is a folder the connection may add to; return its shared drive id."""
        request = self.files.get(
            fileId=self.parent_id,
            fields="id, name, mimeType, driveId, capabilities(canAddChildren)",
            supportsAllDrives=True,
        )
        try:
            folder = request.execute(num_retries=self.num_retries)
        except HttpError as error:
            raise self._refused(error, "read the folder", "Nothing was uploaded.") from error
        if folder.get("mimeType") != FOLDER_MIME_TYPE:
            raise DriveResultsError(
                f"Param {PARAM}: Drive id {self.parent_id} is {shown(folder.get('name', ''))} of "
                f"type {folder.get('mimeType')}, not a folder; give the id of a folder"
            )
        if folder.get("capabilities", {}).get("canAddChildren") is False:
            raise DriveResultsError(
                f"Param {PARAM}: Drive folder {self.parent_id} ({shown(folder.get('name', ''))}) "
                f"is shared with the service account of connection {self.conn!r} without the "
                "right to add files: share it as Editor, or in a shared drive as Contributor or "
                "Content manager. Nothing was uploaded."
            )
        return folder.get("driveId")

    def snapshot_folder(self, name: str, drive_id: str | None) -> tuple[str, bool]:
        """The id of subfolder ``name`` of the parent, created if missing; True if created."""
        query = (
            f"name = '{escape_query_value(name)}' and '{escape_query_value(self.parent_id)}' in "
            f"parents and mimeType = '{FOLDER_MIME_TYPE}' and trashed = false"
        )
        found = self._list(query, "files(id, name, createdTime)", drive_id, order="createdTime")
        if found:
            if len(found) > 1:
                log.warning(
                    "Drive folder %s has %d subfolders named %s: using the oldest, %s",
                    self.parent_id,
                    len(found),
                    name,
                    found[0]["id"],
                )
            return found[0]["id"], False
        request = self.files.create(
            body={"name": name, "mimeType": FOLDER_MIME_TYPE, "parents": [self.parent_id]},
            fields="id",
            supportsAllDrives=True,
        )
        try:
            created = request.execute(num_retries=0)
        except HttpError as error:
            raise self._refused(
                error, f"create subfolder {name}", "Nothing was uploaded."
            ) from error
        log.info("created Drive folder %s/%s (%s)", self.parent_id, name, created["id"])
        return created["id"], True

    def children(self, folder_id: str, drive_id: str | None) -> dict[str, list[dict[str, Any]]]:
        """The files in ``folder_id`` (not trashed), by name."""
        query = f"'{escape_query_value(folder_id)}' in parents and trashed = false"
        by_name: dict[str, list[dict[str, Any]]] = {}
        for entry in self._list(query, LIST_FIELDS, drive_id, order="name"):
            by_name.setdefault(entry.get("name", ""), []).append(entry)
        return by_name

    def create(self, folder_id: str, file: DriveFile, where: str, done: int, total: int) -> None:
        request = self.files.create(
            body={"name": file.name, "mimeType": file.mime_type, "parents": [folder_id]},
            media_body=_media(file),
            fields="id, md5Checksum",
            supportsAllDrives=True,
        )
        self._write(request, file, where, done, total)

    def replace(self, file_id: str, file: DriveFile, where: str, done: int, total: int) -> None:
        request = self.files.update(
            fileId=file_id,
            media_body=_media(file),
            fields="id, md5Checksum",
            supportsAllDrives=True,
        )
        self._write(request, file, where, done, total)

    def _write(self, request: Any, file: DriveFile, where: str, done: int, total: int) -> None:
        kept = (
            f"Nothing is lost: {done} of the {total} files are in {where}, and a retry of the "
            "task skips them."
        )
        try:
            answer = request.execute(num_retries=0)
        except HttpError as error:
            raise self._refused(error, f"upload {shown(file.name)}", kept) from error
        stored = answer.get("md5Checksum")
        if stored is not None and stored != file.md5:
            raise DriveResultsError(
                f"Drive stored {shown(file.name)} in {where} with md5 {stored}, not {file.md5}: "
                f"the upload was damaged on the way. {kept}",
                retryable=True,
            )

    def _list(
        self, query: str, fields: str, drive_id: str | None, *, order: str
    ) -> list[dict[str, Any]]:
        # In a shared drive, search that drive: the default corpus is the user's own files.
        scope = {"corpora": "drive", "driveId": drive_id} if drive_id else {}
        entries: list[dict[str, Any]] = []
        page_token = None
        while True:
            request = self.files.list(
                q=query,
                fields=fields if "nextPageToken" in fields else f"nextPageToken, {fields}",
                pageSize=PAGE_SIZE,
                pageToken=page_token,
                orderBy=order,
                supportsAllDrives=True,
                includeItemsFromAllDrives=True,
                **scope,
            )
            try:
                answer = request.execute(num_retries=self.num_retries)
            except HttpError as error:
                raise self._refused(
                    error, "list the folder", "Nothing new was uploaded."
                ) from error
            entries.extend(answer.get("files", []))
            page_token = answer.get("nextPageToken")
            if not page_token:
                return entries

    def _refused(self, error: HttpError, action: str, kept: str) -> DriveResultsError:
        status = getattr(error.resp, "status", None)
        reasons = _reasons(error)
        folder = f"Drive folder {self.parent_id} (Param {PARAM})"
        scopes = (
            f"Give connection {self.conn!r} the scope {WRITE_SCOPE} (its Scopes field, extra "
            f"'scope'): {FILE_SCOPE} reaches only files the app created itself or a user picked "
            "for it, never a folder shared with a service account."
        )
        if status == 403 and reasons & _SCOPE_REASONS:
            why = (
                f"the access token of connection {self.conn!r} lacks the Drive scope this "
                f"needs. {scopes}"
            )
        elif reasons & _APP_REASONS:
            why = f"the app may not open {folder}. {scopes}"
        elif status == 404:
            why = (
                f"{folder} was not found: check the folder id, that the folder is shared with "
                f"the service account of connection {self.conn!r}, and that the connection has "
                f"the scope {WRITE_SCOPE} ({FILE_SCOPE} cannot see a folder the app did not "
                "create)."
            )
        elif status == 403 and reasons & _QUOTA_REASONS:
            why = (
                "Drive counts the files against the storage of their owner, and a service "
                "account has none: use a folder in a shared drive where the service account of "
                f"connection {self.conn!r} is a Contributor or Content manager, or domain-wide "
                "delegation."
            )
        elif status == 403 and reasons & _ROLE_REASONS:
            why = (
                f"the service account of connection {self.conn!r} may not add files to {folder}: "
                "share it as Editor, or in a shared drive as Contributor or Content manager."
            )
        else:
            why = f"HTTP {status}: {error.reason}."
        retryable = (
            status is None or status >= 500 or status == 429 or bool(reasons & _RATE_REASONS)
        )
        return DriveResultsError(f"Drive refused to {action}: {why} {kept}", retryable=retryable)


# --- reading the results document --------------------------------------------------------------


@dataclass(frozen=True)
class _Query:
    name: str
    sha256: str
    hit_id: str | None
    status: str
    winner: str | None
    counted: int
    votes: dict[str, int]


def _read_queries(results: Any) -> list[_Query]:
    """The queries of ``results``, each checked field by field; every problem is named."""
    problems: list[str] = []
    if not isinstance(results, dict):
        raise ResultsDocumentError("results.json is not a JSON object")
    if results.get("version") != RESULTS_VERSION:
        problems.append(f"version is {results.get('version')!r}, not {RESULTS_VERSION}")
    raw = results.get("queries")
    if not isinstance(raw, list):
        problems.append("queries is not a list")
        raw = []
    queries = []
    for index, item in enumerate(raw):
        query = _read_query(item, f"queries[{index}]", problems)
        if query is not None:
            queries.append(query)
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        raise ResultsDocumentError(
            "results.json is not the document the crowd stage writes, so nothing of it is "
            "copied to Drive: "
            + "; ".join(problems[:_SHOWN_PROBLEMS])
            + (f"; and {more} more" if more > 0 else "")
        )
    return queries


def _read_query(item: Any, where: str, problems: list[str]) -> _Query | None:
    before = len(problems)
    if not isinstance(item, dict):
        problems.append(f"{where} is not an object")
        return None
    name = _field(item, "query", str, where, problems)
    sha = _field(item, "query_sha256", str, where, problems)
    hit_id = _field(item, "hit_id", (str, type(None)), where, problems)
    status = _field(item, "status", str, where, problems)
    winner = _field(item, "winner", (str, type(None)), where, problems)
    counted = _count(item, "counted_votes", where, problems)
    candidates = _field(item, "candidates", list, where, problems)
    none = _field(item, "none", dict, where, problems)
    if isinstance(name, str) and not name:
        problems.append(f"{where}.query is empty")
    if isinstance(sha, str) and not _SHA256.fullmatch(sha):
        problems.append(f"{where}.query_sha256 is not a sha256 in hex")
    if isinstance(status, str) and status not in _STATUSES:
        problems.append(f"{where}.status is {shown(status)}, not one of {sorted(_STATUSES)}")
    votes: dict[str, int] = {}
    for index, candidate in enumerate(candidates if isinstance(candidates, list) else []):
        at = f"{where}.candidates[{index}]"
        if not isinstance(candidate, dict):
            problems.append(f"{at} is not an object")
            continue
        option = _field(candidate, "name", str, at, problems)
        count = _count(candidate, "votes", at, problems)
        if isinstance(option, str) and isinstance(count, int):
            votes[option] = count
    if isinstance(none, dict):
        count = _count(none, "votes", f"{where}.none", problems)
        if isinstance(count, int):
            votes[NONE_OF_THESE] = count
    if len(problems) > before:
        return None
    if (status == "decided") != (winner is not None):
        problems.append(f"{where} has status {status!r} and winner {winner!r}")
    elif winner is not None and winner not in votes:
        problems.append(f"{where}.winner {shown(winner)} is not among its options")
    if any(count > counted for count in votes.values()):
        problems.append(f"{where} has more votes for one option than counted_votes ({counted})")
    elif winner is not None and counted == 0:
        problems.append(f"{where} has a winner and no counted votes")
    if len(problems) > before:
        return None
    return _Query(name, sha, hit_id, status, winner, counted, votes)


def _field(item: dict, key: str, kind: type | tuple[type, ...], where: str, problems: list[str]):
    if key not in item:
        problems.append(f"missing field {where}.{key}")
        return None
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        problems.append(f"{where}.{key} has the wrong type ({type(value).__name__})")
        return None
    return value


def _count(item: dict, key: str, where: str, problems: list[str]) -> int | None:
    value = _field(item, key, int, where, problems)
    if isinstance(value, int) and value < 0:
        problems.append(f"{where}.{key} is negative")
        return None
    return value


def _no_winner_reason(query: _Query) -> str | None:
    if query.status == "tie":
        return "tie"
    if query.status == "no votes":
        return "no votes"
    if query.winner == NONE_OF_THESE:
        return "none of these"
    return None


def _option_ref(plan: HitPlan, name: str) -> ImageRef | None:
    return next((o.image for o in plan.model.options if o.image and o.image.name == name), None)


# --- images and names --------------------------------------------------------------------------


def _image(image_bytes: ImageSource, ref: ImageRef, what: str) -> bytes | None:
    """The bytes of ``ref`` if they are there, hash to ``ref.sha256`` and are an image."""
    try:
        data = image_bytes(ref)
    except OSError as error:
        log.warning("leaving %s out of the Drive snapshot: cannot read it (%s)", what, error)
        return None
    if data is None:
        log.warning("leaving %s out of the Drive snapshot: image not found", what)
        return None
    if not isinstance(data, bytes | bytearray) or hashlib.sha256(data).hexdigest() != ref.sha256:
        log.warning(
            "leaving %s out of the Drive snapshot: its bytes are not the image the results name "
            "(sha256 %s)",
            what,
            ref.sha256,
        )
        return None
    if _image_type(data) == (None, None):
        log.warning("leaving %s out of the Drive snapshot: not an image file", what)
        return None
    return bytes(data)


def _image_type(data: bytes) -> tuple[str, str] | tuple[None, None]:
    """``(extension, MIME type)`` of image ``data`` by its first bytes, or ``(None, None)``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp", "image/webp"
    for signature, extension, mime_type in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return extension, mime_type
    return None, None


def _printable(name: str) -> str:
    """``name`` NFC-normalised with every unprintable character and path separator as ``_``,
    outer spaces stripped and a leading ``.`` as ``_.``."""
    normal = unicodedata.normalize("NFC", str(name))
    safe = "".join(c if c == " " or (c.isprintable() and c not in "/\\") else "_" for c in normal)
    safe = safe.strip()
    return "_" + safe if safe.startswith(".") else safe


def _split(name: str) -> tuple[str, str]:
    """The stem and extension of ``name`` made printable; the stem is "query" if nothing of it
    is left."""
    stem, extension = os.path.splitext(_printable(name))
    return stem if stem.strip() else "query", extension


def _fit(stem: str, tail: str) -> str:
    """``stem + tail``, the stem cut (on a character boundary) to fit ``MAX_NAME_BYTES``."""
    room = MAX_NAME_BYTES - len(tail.encode())
    if room < 1:
        raise ValueError(f"{shown(tail)} leaves no room for a name")
    cut = stem.encode()[:room].decode(errors="ignore").rstrip()
    return cut + tail


class _Names:
    """Unique snapshot names: the same name with the same content once, another content under
    ``<stem>__<sha8><ext>``."""

    def __init__(self, reserved: Mapping[str, bytes]):
        self.taken = {name: hashlib.sha256(data).hexdigest() for name, data in reserved.items()}

    def claim(self, stem: str, tail: str, data: bytes, sha256: str) -> str | None:
        """The name (``stem`` cut to fit, then ``tail``) to upload ``data`` under, or None when
        the same content is already planned under it."""
        for name in (_fit(stem, tail), _fit(stem, f"__{sha256[:8]}{tail}")):
            if name not in self.taken:
                self.taken[name] = sha256
                return name
            if self.taken[name] == sha256:
                return None
        raise ResultsDocumentError(f"two images would both be named {shown(stem + tail)}")


def _same_content(entry: Mapping[str, Any], file: DriveFile) -> bool:
    if entry.get("md5Checksum"):
        return entry["md5Checksum"] == file.md5
    return entry.get("size") is not None and str(entry["size"]) == str(len(file.data))


def _media(file: DriveFile) -> MediaIoBaseUpload:
    # One request per file (multipart): snapshot files are small, and a resumable session
    # would be one more thing a lost answer leaves half done.
    return MediaIoBaseUpload(io.BytesIO(file.data), mimetype=file.mime_type, resumable=False)


def _reasons(error: HttpError) -> set[str]:
    """The machine-readable reasons of a Drive error (``errors[].reason``, ``details[].reason``)."""
    try:
        body = json.loads(error.content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return set()
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        return set()
    entries = [*(detail.get("errors") or []), *(detail.get("details") or [])]
    return {
        e["reason"] for e in entries if isinstance(e, dict) and isinstance(e.get("reason"), str)
    }


def _check_upload(parent_id: str, snapshot: str, files: Sequence[DriveFile]) -> None:
    if not _FOLDER_ID.fullmatch(parent_id or ""):
        raise ValueError(f"{shown(parent_id)} is not a Drive folder id (Param {PARAM})")
    if not _SNAPSHOT.fullmatch(snapshot or ""):
        raise ValueError(
            f"snapshot name {shown(snapshot)} is not plain: use letters, digits, '.', '_', '-' "
            "(snapshot_name gives 20261202T101500Z)"
        )
    seen: set[str] = set()
    for file in files:
        if file.name in seen:
            raise ValueError(f"two files are named {shown(file.name)}")
        seen.add(file.name)
        if not file.name or _printable(file.name) != file.name:
            raise ValueError(f"{shown(file.name)} is not a name drive_name leaves as it is")
        if len(file.name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"{shown(file.name)} is longer than {MAX_NAME_BYTES} bytes")
        if not isinstance(file.data, bytes):
            raise TypeError(f"{shown(file.name)}: data must be bytes")
