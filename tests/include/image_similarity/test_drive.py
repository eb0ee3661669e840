"""Tests for staging a Google Drive folder, through googleapiclient's real request path.

The Drive service is built from the discovery document shipped with googleapiclient on top of an
``HttpMockSequence``, and the real ``GoogleDriveHook`` is used with only ``get_conn`` patched, so
``hook.download_file`` runs its real ``MediaIoBaseDownload`` code against the canned responses.
A request the sequence has no response for fails the test (``IndexError``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.google.suite.hooks.drive import GoogleDriveHook
from googleapiclient.http import HttpMockSequence
from PIL import Image

from include.image_similarity.drive import (
    MARKER_NAME,
    DriveEntry,
    DriveFolderError,
    escape_query_value,
    list_drive_folder,
    safe_local_name,
    stage_drive_folder,
)
from include.image_similarity.sources import list_local_images
from testsupport.drivekit import Response, drive_service, error, requested

FOLDER = "1AbCfolderId_-x"


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """Encode a tiny solid-colour image with Pillow."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format=fmt)
    return buffer.getvalue()


RED = image_bytes((255, 0, 0))
GREEN = image_bytes((0, 255, 0))
BLUE_JPEG = image_bytes((0, 0, 255), "JPEG")


def item(file_id: str, name: str, data: bytes | None, mime: str = "image/png") -> dict[str, Any]:
    """Describe one Drive file the way ``files.list`` does (``data=None``: no md5, no size)."""
    described: dict[str, Any] = {
        "id": file_id,
        "name": name,
        "mimeType": mime,
        "modifiedTime": "2024-05-01T12:00:00.000Z",
    }
    if data is not None:
        described["md5Checksum"] = hashlib.md5(data).hexdigest()
        described["size"] = str(len(data))
    return described


def page(files: list[dict[str, Any]], next_token: str | None = None) -> Response:
    body: dict[str, Any] = {"files": files}
    if next_token:
        body["nextPageToken"] = next_token
    return {"status": "200"}, json.dumps(body)


def media(data: bytes) -> Response:
    return {"status": "200", "content-length": str(len(data))}, data


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> GoogleDriveHook:
    # The hook reads its connection in __init__; an environment connection avoids the database.
    conn = {"conn_type": "google_cloud_platform", "extra": {"num_retries": 2}}
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(conn))
    return GoogleDriveHook()


@pytest.fixture
def connect(hook: GoogleDriveHook, monkeypatch: pytest.MonkeyPatch):
    """Point ``hook.get_conn`` at a Drive service answering ``responses`` in order."""

    def _connect(responses: list[Response]) -> HttpMockSequence:
        http = HttpMockSequence(responses)  # records (uri, method, body, headers) per request
        service = drive_service(http)
        monkeypatch.setattr(hook, "get_conn", lambda: service)
        return http

    return _connect


def test_escape_query_value_escapes_backslash_then_quote() -> None:
    assert escape_query_value("plain-id_1") == "plain-id_1"
    assert escape_query_value("it's") == "it\\'s"
    assert escape_query_value("a\\b") == "a\\\\b"
    assert escape_query_value("\\'") == "\\\\\\'"


def test_list_follows_pages_and_sends_the_documented_parameters(hook, connect) -> None:
    http = connect(
        [
            page([item("id-a", "a.png", RED)], next_token="token-2"),
            page([item("id-b", "b.jpg", BLUE_JPEG, "image/jpeg")]),
        ]
    )

    entries = list_drive_folder(hook, FOLDER)

    assert entries == [
        DriveEntry(
            "id-a",
            "a.png",
            "image/png",
            hashlib.md5(RED).hexdigest(),
            len(RED),
            "2024-05-01T12:00:00.000Z",
        ),
        DriveEntry(
            "id-b",
            "b.jpg",
            "image/jpeg",
            hashlib.md5(BLUE_JPEG).hexdigest(),
            len(BLUE_JPEG),
            "2024-05-01T12:00:00.000Z",
        ),
    ]
    (path1, first), (path2, second) = requested(http)
    assert path1 == path2 == "/drive/v3/files"
    assert first["q"] == f"'{FOLDER}' in parents and trashed = false"
    assert "pageToken" not in first
    assert second["pageToken"] == "token-2"
    for params in (first, second):
        assert params["q"] == first["q"]
        assert params["supportsAllDrives"] == "true"
        assert params["includeItemsFromAllDrives"] == "true"
        assert params["pageSize"] == "1000"
        assert params["orderBy"] == "name"
        assert "md5Checksum" in params["fields"] and "nextPageToken" in params["fields"]


def test_list_escapes_the_folder_id_in_the_query(hook, connect) -> None:
    http = connect([page([item("id-a", "a.png", RED)])])

    list_drive_folder(hook, "odd'id\\x")

    [(_, params)] = requested(http)
    assert params["q"] == "'odd\\'id\\\\x' in parents and trashed = false"


def test_stage_downloads_images_and_reports_what_it_skips(hook, connect, tmp_path, caplog):
    quoted = "café \"night\" 'shot' 東京.png"
    files = [
        item("id-doc", "Plan", None, "application/vnd.google-apps.document"),
        item("id-dir", "old", None, "application/vnd.google-apps.folder"),
        item("id-a", "a.png", RED),
        item("id-slash", "2024/05 b.jpg", BLUE_JPEG, "image/jpeg"),
        item("id-q", quoted, GREEN),
        item("id-txt", "notes.txt", b"hello\n", "text/plain"),
        item("id-fake", "fake.png", b"%PDF", "application/pdf"),
    ]
    # Images are downloaded in (name, id) order: 2024/05 b.jpg, a.png, then the quoted name.
    http = connect([page(files), media(BLUE_JPEG), media(RED), media(GREEN)])
    staging = tmp_path / "staged" / FOLDER

    with caplog.at_level(logging.INFO, logger="include.image_similarity.drive"):
        listing = stage_drive_folder(hook, FOLDER, staging)

    assert listing.source == f"gdrive://{FOLDER}"
    assert [image.name for image in listing.images] == ["2024_05 b.jpg", "a.png", quoted]
    for image, data in zip(listing.images, [BLUE_JPEG, RED, GREEN], strict=True):
        assert image.path == staging / image.name
        assert image.path.read_bytes() == data
        assert image.sha256 == hashlib.sha256(data).hexdigest()
        assert image.size == len(data)
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [MARKER_NAME, "2024_05 b.jpg", "a.png", quoted]
    )
    assert not (staging / "2024").exists()
    media_ids = [
        path.rsplit("/", 1)[1] for path, params in requested(http) if params["alt"] == "media"
    ]
    assert media_ids == ["id-slash", "id-a", "id-q"]

    reasons = {problem.name: problem.reason for problem in listing.problems}
    assert set(reasons) == {"Plan", "old", "notes.txt", "fake.png"}
    assert "Google Drive document" in reasons["Plan"]
    assert "folder" in reasons["old"]
    assert "text/plain" in reasons["notes.txt"]
    assert "application/pdf" in reasons["fake.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in reasons:
        assert any(repr(name) in message for message in warnings), name
    assert any(
        f"Drive folder {FOLDER}: 3 images (3 downloaded, 0 unchanged), 4 skipped" in r.getMessage()
        for r in caplog.records
    )
    # The staged folder reads back as the same images with a plain local listing.
    local = list_local_images(staging)
    assert [(i.name, i.sha256) for i in local.images] == [
        (i.name, i.sha256) for i in listing.images
    ]
    assert local.problems == []


def test_second_run_with_unchanged_md5_downloads_nothing(hook, connect, tmp_path, caplog):
    files = [item("id-a", "a.png", RED), item("id-b", "b.png", GREEN)]
    connect([page(files), media(RED), media(GREEN)])
    first = stage_drive_folder(hook, FOLDER, tmp_path)
    mtimes = {image.name: image.path.stat().st_mtime_ns for image in first.images}

    http = connect([page(files)])  # no media responses: any download would fail the test
    with caplog.at_level(logging.INFO, logger="include.image_similarity.drive"):
        second = stage_drive_folder(hook, FOLDER, tmp_path)

    assert len(http.request_sequence) == 1
    assert second.images == first.images
    assert {image.name: image.path.stat().st_mtime_ns for image in second.images} == mtimes
    assert any("2 images (0 downloaded, 2 unchanged)" in r.getMessage() for r in caplog.records)


def test_changed_md5_downloads_again(hook, connect, tmp_path) -> None:
    unchanged = item("id-b", "b.png", GREEN)
    connect([page([item("id-a", "a.png", RED), unchanged]), media(RED), media(GREEN)])
    stage_drive_folder(hook, FOLDER, tmp_path)

    http = connect([page([item("id-a", "a.png", GREEN), unchanged]), media(GREEN)])
    listing = stage_drive_folder(hook, FOLDER, tmp_path)

    media_paths = [path for path, params in requested(http) if params["alt"] == "media"]
    assert media_paths == ["/drive/v3/files/id-a"]
    assert (tmp_path / "a.png").read_bytes() == GREEN
    assert listing.images[0].sha256 == hashlib.sha256(GREEN).hexdigest()


def test_files_gone_from_drive_are_removed_from_staging(hook, connect, tmp_path) -> None:
    files = [item("id-a", "a.png", RED), item("id-b", "b.png", GREEN)]
    connect([page(files), media(RED), media(GREEN)])
    stage_drive_folder(hook, FOLDER, tmp_path)
    leftover = tmp_path / ".gdrive-download-abc.part"
    leftover.write_bytes(b"half a file")

    connect([page([item("id-b", "b.png", GREEN)])])
    listing = stage_drive_folder(hook, FOLDER, tmp_path)

    assert [image.name for image in listing.images] == ["b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_NAME, "b.png"]


def test_same_name_twice_keeps_the_first_and_suffixes_the_others(hook, connect, tmp_path, caplog):
    files = [
        item("id-2", "cat.png", GREEN),
        item("id-1", "cat.png", RED),
        item("id-3", "CAT.png", BLUE_JPEG),
    ]
    connect([page(files), media(BLUE_JPEG), media(RED), media(GREEN)])

    with caplog.at_level(logging.WARNING, logger="include.image_similarity.drive"):
        listing = stage_drive_folder(hook, FOLDER, tmp_path)

    staged = {image.name: image.path.read_bytes() for image in listing.images}
    assert staged == {"CAT.png": BLUE_JPEG, "cat__id-1.png": RED, "cat__id-2.png": GREEN}
    assert listing.problems == []
    assert sum("more than one file named" in r.getMessage() for r in caplog.records) == 2


def test_folder_not_found_gives_a_clear_error(hook, connect, tmp_path) -> None:
    connect([error(404, f"File not found: {FOLDER}.")])
    staging = tmp_path / "staged"

    with pytest.raises(DriveFolderError) as raised:
        stage_drive_folder(hook, FOLDER, staging)

    message = str(raised.value)
    assert FOLDER in message
    assert "check the folder id" in message.lower()
    assert "service account" in message
    assert not staging.exists()


def test_empty_listing_of_an_unknown_id_is_an_error(hook, connect) -> None:
    http = connect([page([]), error(404, "File not found: nope.")])

    with pytest.raises(DriveFolderError, match="'nope'.*service account"):
        list_drive_folder(hook, "nope")

    path, params = requested(http)[1]
    assert path == "/drive/v3/files/nope" and params["supportsAllDrives"] == "true"


def test_empty_listing_of_a_file_id_says_it_is_not_a_folder(hook, connect) -> None:
    connect([page([]), ({"status": "200"}, json.dumps(item("id-a", "a.png", RED)))])

    with pytest.raises(DriveFolderError, match="not a folder"):
        list_drive_folder(hook, "id-a")


def test_empty_folder_stages_nothing(hook, connect, tmp_path) -> None:
    folder = {"id": FOLDER, "name": "photos", "mimeType": "application/vnd.google-apps.folder"}
    connect([page([]), ({"status": "200"}, json.dumps(folder))])

    listing = stage_drive_folder(hook, FOLDER, tmp_path / "staged")

    assert listing.images == [] and listing.problems == []


def test_refuses_to_mirror_into_a_folder_of_other_files(hook, connect, tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    connect([page([item("id-a", "a.png", RED)])])

    with pytest.raises(DriveFolderError, match="precious.txt"):
        stage_drive_folder(hook, FOLDER, tmp_path)

    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_file_drive_refuses_is_reported_and_the_rest_staged(hook, connect, tmp_path) -> None:
    files = [item("id-a", "a.png", RED), item("id-b", "b.png", GREEN)]
    http = connect(
        [
            page(files),
            error(403, "This file cannot be downloaded.", "cannotDownloadFile"),
            media(GREEN),
        ]
    )

    listing = stage_drive_folder(hook, FOLDER, tmp_path)

    assert [image.name for image in listing.images] == ["b.png"]
    [problem] = listing.problems
    assert (problem.name, problem.stage) == ("a.png", "download")
    assert "cannot be downloaded" in problem.reason
    assert len(http.request_sequence) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_NAME, "b.png"]


def test_content_not_matching_drive_md5_is_not_staged(hook, connect, tmp_path) -> None:
    connect([page([item("id-a", "a.png", RED)]), media(GREEN)])

    listing = stage_drive_folder(hook, FOLDER, tmp_path)

    assert listing.images == []
    [problem] = listing.problems
    assert problem.stage == "download" and "md5" in problem.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_NAME]


def test_server_errors_propagate_and_leave_no_partial_file(hook, connect, tmp_path) -> None:
    connect([page([item("id-a", "a.png", RED)]), error(500, "Backend Error", "backendError")])

    with pytest.raises(Exception, match="500"):
        stage_drive_folder(hook, FOLDER, tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_NAME]


@pytest.mark.parametrize(
    ("drive_name", "local_name"),
    [
        ("a/b.png", "a_b.png"),
        ("..\\..\\x.png", "_.._.._x.png"),
        ("../../etc/passwd.png", "_.._.._etc_passwd.png"),
        (".hidden.png", "_.hidden.png"),
        ('l\'été "2024".png', 'l\'été "2024".png'),
    ],
)
def test_safe_local_name(drive_name: str, local_name: str) -> None:
    assert safe_local_name(drive_name) == local_name
    assert Path(local_name).name == local_name


@pytest.mark.parametrize("drive_name", ["", ".", "..", " "])
def test_safe_local_name_rejects_unusable_names(drive_name: str) -> None:
    with pytest.raises(ValueError):
        safe_local_name(drive_name)


def test_overlong_name_is_shortened_with_the_file_id(hook, connect, tmp_path) -> None:
    name = "é" * 200 + ".png"  # 404 bytes in UTF-8
    connect([page([item("id-long", name, RED)]), media(RED)])

    [image] = stage_drive_folder(hook, FOLDER, tmp_path).images

    assert image.name.endswith("__id-long.png")
    assert len(image.name.encode()) <= 255
    assert image.path.read_bytes() == RED
