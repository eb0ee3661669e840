"""Copying results to Google Drive, through googleapiclient's real request path.

The Drive service is built from the discovery document shipped with googleapiclient on top of
``testsupport.drivekit.FakeDrive``, an in-memory Drive that parses what googleapiclient sends
(``q`` queries, multipart uploads) and keeps what it is given, so a retry sees what the first
attempt left. The results are real: aggregated with crowd-kit and written by
``report.write_results``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from include.crowd import drive_results
from include.crowd.aggregation.registry import aggregate
from include.crowd.drive_results import (
    FILE_SCOPE,
    WRITE_SCOPE,
    DriveFile,
    DriveResultsError,
    ResultsDocumentError,
    drive_name,
    escape_query_value,
    parse_folder,
    query_image_files,
    share_text,
    snapshot_files,
    snapshot_name,
    upload_snapshot,
)
from include.crowd.records import NONE_OF_THESE, HitPlan, ImageRef
from include.crowd.report import write_results
from testsupport.crowd_answers import make_plan, make_review
from testsupport.drivekit import FOLDER_MIME_TYPE, FakeDrive, error, insufficient_scope, requested
from testsupport.imagekit import jpeg_bytes, textured

PARENT = "1ResultsParent_Folder-x"
SNAPSHOT = "20261202T101500Z"
NOW = "2026-12-02T10:15:00Z"


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    textured(64, 48, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def rehash(plan: HitPlan, images: dict[str, bytes]) -> HitPlan:
    """``plan`` with the real sha256 of every image it names that ``images`` holds."""

    def ref(image: ImageRef) -> ImageRef:
        data = images.get(image.name)
        return replace(image, sha256=hashlib.sha256(data).hexdigest()) if data else image

    questions = tuple(
        replace(
            question,
            target=ref(question.target),
            options=tuple(
                replace(o, image=ref(o.image)) if o.image else o for o in question.options
            ),
        )
        for question in plan.questions
    )
    return replace(plan, query=ref(plan.query), questions=questions)


class Batch:
    """Five queries: a winner (2 of 3 votes), a PNG winner (3 of 3), a tie, "none of these"
    chosen, and a query with no HIT yet; plus every image's bytes."""

    def __init__(self, names: dict[str, str] | None = None, images: dict[str, bytes] | None = None):
        names = {"coffee": "coffee_q.jpg", "rocket": "rocket_q.jpg", **(names or {})}
        coffee, rocket = names["coffee"], names["rocket"]
        self.images: dict[str, bytes] = {
            coffee: jpeg_bytes(textured(seed=1)),
            "frame_01.jpg": jpeg_bytes(textured(seed=2)),
            "frame_02.jpg": jpeg_bytes(textured(seed=3)),
            "frame_03.jpg": jpeg_bytes(textured(seed=4)),
            rocket: jpeg_bytes(textured(seed=5)),
            "frame_11.png": png_bytes(6),
            "frame_12.jpg": jpeg_bytes(textured(seed=7)),
            "tie_q.jpg": jpeg_bytes(textured(seed=8)),
            "frame_21.jpg": jpeg_bytes(textured(seed=9)),
            "none_q.png": png_bytes(10),
            "frame_31.jpg": jpeg_bytes(textured(seed=11)),
            "waiting_q.jpg": jpeg_bytes(textured(seed=12)),
            **(images or {}),
        }
        frames = ["frame_01.jpg", "frame_02.jpg", "frame_03.jpg"]
        self.plans = [
            rehash(make_plan(coffee, frames, hit_id="HCOFFEE"), self.images),
            rehash(
                make_plan(rocket, ["frame_11.png", "frame_12.jpg"], hit_id="HROCKET"), self.images
            ),
            rehash(make_plan("tie_q.jpg", ["frame_21.jpg"], hit_id="HTIE"), self.images),
            rehash(make_plan("none_q.png", ["frame_31.jpg"], hit_id="HNONE"), self.images),
            rehash(make_plan("waiting_q.jpg", ["frame_01.jpg"], hit_id=None), self.images),
        ]
        plan = {p.query.name: p for p in self.plans}
        votes = {
            coffee: ["frame_01.jpg", "frame_02.jpg", "frame_01.jpg"],
            rocket: ["frame_11.png"] * 3,
            "tie_q.jpg": ["frame_21.jpg", NONE_OF_THESE],
            "none_q.png": [NONE_OF_THESE, NONE_OF_THESE, "frame_31.jpg"],
        }
        self.reviews = [
            make_review(plan[query], f"W{i}", pick)
            for query, picks in votes.items()
            for i, pick in enumerate(picks)
        ]
        self.results = aggregate(self.plans, self.reviews, computed_at=NOW)
        self.by_sha = {hashlib.sha256(d).hexdigest(): d for d in self.images.values()}

    def image_bytes(self, ref: ImageRef) -> bytes | None:
        return self.by_sha.get(ref.sha256)

    def write(self, folder: Path) -> Path:
        write_results(self.results, self.plans, folder, thumbnails=self.image_bytes)
        return folder


@pytest.fixture
def batch() -> Batch:
    return Batch()


@pytest.fixture
def drive() -> FakeDrive:
    fake = FakeDrive()
    fake.add_folder("crowd results", file_id=PARENT)
    return fake


def expected_files(batch: Batch, results_dir: Path) -> dict[str, bytes]:
    image = batch.images
    return {
        "results.json": (results_dir / "results.json").read_bytes(),
        "results.csv": (results_dir / "results.csv").read_bytes(),
        "report.html": (results_dir / "report.html").read_bytes(),
        "coffee_q.jpg": image["coffee_q.jpg"],
        "coffee_q_winner_0.67.jpg": image["frame_01.jpg"],
        "none_q.png": image["none_q.png"],
        "rocket_q.jpg": image["rocket_q.jpg"],
        "rocket_q_winner_1.00.png": image["frame_11.png"],
        "tie_q.jpg": image["tie_q.jpg"],
        "waiting_q.jpg": image["waiting_q.jpg"],
    }


def writes(drive: FakeDrive) -> list[tuple[str, str]]:
    return [(method, uri) for uri, method, *_ in drive.request_sequence if method != "GET"]


def the_snapshot(drive: FakeDrive) -> str:
    [folder] = drive.children(PARENT)
    assert (folder["name"], folder["mimeType"]) == (SNAPSHOT, FOLDER_MIME_TYPE)
    return folder["id"]


# --- the first upload ---------------------------------------------------------------------------


def test_first_upload_creates_the_subfolder_and_every_file(batch, drive, tmp_path, caplog):
    results_dir = batch.write(tmp_path / "results")
    files = snapshot_files(results_dir, batch.plans, batch.image_bytes)

    with caplog.at_level(logging.INFO, logger="include.crowd.drive_results"):
        summary = upload_snapshot(drive.service, PARENT, SNAPSHOT, files, gcp_conn_id="gcp_x")

    folder_id = the_snapshot(drive)
    expected = expected_files(batch, results_dir)
    assert drive.named(folder_id) == expected
    assert len(drive.children(folder_id)) == len(expected)
    assert (summary.folder_id, summary.folder_name, summary.folder_created) == (
        folder_id,
        SNAPSHOT,
        True,
    )
    assert sorted(summary.uploaded) == sorted(expected)
    assert summary.already_there == summary.replaced == ()
    assert summary.bytes_sent == sum(len(data) for data in expected.values())
    assert summary.url == f"https://drive.google.com/drive/folders/{folder_id}"

    mime = {upload.metadata["name"]: upload.metadata["mimeType"] for upload in drive.uploads}
    assert mime["results.json"] == "application/json"
    assert mime["results.csv"] == "text/csv"
    assert mime["report.html"] == "text/html"
    assert mime["coffee_q_winner_0.67.jpg"] == mime["coffee_q.jpg"] == "image/jpeg"
    assert mime["rocket_q_winner_1.00.png"] == mime["none_q.png"] == "image/png"
    for upload in drive.uploads:
        assert upload.metadata["parents"] == [folder_id]
        assert upload.content_type == upload.metadata["mimeType"]

    calls = requested(drive)
    (get_path, get), (find_path, find), (create_path, create), *uploads = calls
    assert get_path == f"/drive/v3/files/{PARENT}" and get["supportsAllDrives"] == "true"
    assert "canAddChildren" in get["fields"]
    assert find_path == "/drive/v3/files"
    assert find["q"] == (
        f"name = '{SNAPSHOT}' and '{PARENT}' in parents and "
        "mimeType = 'application/vnd.google-apps.folder' and trashed = false"
    )
    assert find["includeItemsFromAllDrives"] == "true" and "corpora" not in find
    assert (create_path, create["fields"]) == ("/drive/v3/files", "id")
    assert len(uploads) == len(expected)  # a new folder is empty: no listing before the uploads
    for path, params in uploads:
        assert path == "/upload/drive/v3/files"
        assert params["uploadType"] == "multipart"
        assert params["supportsAllDrives"] == "true"
        assert params["fields"] == "id, md5Checksum"
    assert any(
        f"copied results to Drive folder {PARENT}/{SNAPSHOT}" in r.getMessage()
        and f"{len(expected)}/{len(expected)} files uploaded" in r.getMessage()
        for r in caplog.records
    )


def test_queries_without_a_winning_image_have_only_their_query_image(batch, caplog):
    with caplog.at_level(logging.INFO, logger="include.crowd.drive_results"):
        files = query_image_files(batch.results, batch.plans, batch.image_bytes)

    names = [file.name for file in files]
    assert names == [
        "coffee_q.jpg",
        "coffee_q_winner_0.67.jpg",
        "none_q.png",
        "rocket_q.jpg",
        "rocket_q_winner_1.00.png",
        "tie_q.jpg",
        "waiting_q.jpg",
    ]
    statuses = {q["query"]: (q["status"], q["winner"]) for q in batch.results["queries"]}
    assert statuses["tie_q.jpg"] == ("tie", None)
    assert statuses["none_q.png"] == ("decided", NONE_OF_THESE)
    assert statuses["waiting_q.jpg"] == ("no votes", None)
    assert any(
        "no winner image for 3 (no votes 1, none of these 1, tie 1)" in r.getMessage()
        for r in caplog.records
    )


# --- retries ------------------------------------------------------------------------------------


def test_a_retry_uploads_nothing_twice(batch, drive, tmp_path):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    first = upload_snapshot(drive.service, PARENT, SNAPSHOT, files)
    before = copy.deepcopy(drive.items)
    drive.request_sequence.clear()

    second = upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    assert writes(drive) == []
    assert drive.items == before
    assert (second.folder_id, second.folder_created) == (first.folder_id, False)
    assert second.uploaded == second.replaced == ()
    assert sorted(second.already_there) == sorted(file.name for file in files)
    assert second.bytes_sent == 0


def test_answers_lost_after_drive_acted_are_not_repeated(batch, drive, tmp_path):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    # Drive creates the folder, then the answer is lost; the same for the first file.
    drive.fail(
        "POST", "/drive/v3/files", error(503, "Backend Error", "backendError"), after_applying=True
    )
    drive.fail(
        "POST",
        "/upload/drive/v3/files",
        error(500, "Backend Error", "backendError"),
        after_applying=True,
    )

    with pytest.raises(DriveResultsError, match="Nothing was uploaded") as first:
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files)
    with pytest.raises(DriveResultsError, match=r"Nothing is lost: 0 of the 10 files .* skips"):
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files)
    assert first.value.retryable
    summary = upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    folder_id = the_snapshot(drive)  # one folder, though its creation "failed"
    assert summary.folder_id == folder_id and not summary.folder_created
    assert summary.already_there == (files[0].name,)
    assert len(summary.uploaded) == len(files) - 1
    assert sorted(upload.metadata["name"] for upload in drive.uploads) == sorted(
        file.name for file in files
    )
    assert drive.named(folder_id) == {file.name: file.data for file in files}


def test_a_file_changed_since_the_last_attempt_is_replaced_in_place(batch, drive, tmp_path):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    upload_snapshot(drive.service, PARENT, SNAPSHOT, files)
    folder_id = the_snapshot(drive)
    [csv_id] = [i["id"] for i in drive.children(folder_id) if i["name"] == "results.csv"]
    changed = [
        replace(file, data=file.data + b"late,row\r\n") if file.name == "results.csv" else file
        for file in files
    ]
    drive.request_sequence.clear()

    summary = upload_snapshot(drive.service, PARENT, SNAPSHOT, changed)

    assert summary.replaced == ("results.csv",) and summary.uploaded == ()
    assert [(m, u.split("?")[0]) for m, u in writes(drive)] == [
        ("PATCH", f"https://www.googleapis.com/upload/drive/v3/files/{csv_id}")
    ]
    assert [i["name"] for i in drive.children(folder_id)].count("results.csv") == 1
    assert drive.content[csv_id].endswith(b"late,row\r\n")


def test_listing_follows_pages(batch, drive, tmp_path, monkeypatch):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    upload_snapshot(drive.service, PARENT, SNAPSHOT, files)
    monkeypatch.setattr(drive_results, "PAGE_SIZE", 3)
    drive.request_sequence.clear()

    summary = upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    listings = [
        p for path, p in requested(drive) if path == "/drive/v3/files" and "in parents" in p["q"]
    ]
    assert len(listings) == 1 + 4  # the folder lookup, then 10 files in pages of 3
    assert [p.get("pageToken") for p in listings[1:]] == [None, "3", "6", "9"]
    assert len(summary.already_there) == len(files) and writes(drive) == []


def test_a_folder_in_a_shared_drive_is_searched_in_that_drive(batch, tmp_path):
    drive = FakeDrive()
    drive.add_folder("results", file_id=PARENT, drive_id="0AsharedDriveId")
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    again = upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    assert len(again.already_there) == len(files)
    listings = [p for path, p in requested(drive) if path == "/drive/v3/files" and "q" in p]
    assert listings and all(
        (p["corpora"], p["driveId"]) == ("drive", "0AsharedDriveId") for p in listings
    )


# --- names from outside ------------------------------------------------------------------------


def test_hostile_query_names_become_printable_bounded_names(drive, tmp_path):
    evil = '../..\\ev\'il "q"\n\x00\u202e' + "e\u0301" * 200 + ".jpg"
    quoted = "it's \\ 'q'.jpg"
    batch = Batch({"coffee": evil, "rocket": quoted})
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)

    upload_snapshot(drive.service, PARENT, SNAPSHOT, files)
    upload_snapshot(drive.service, PARENT, SNAPSHOT, files)  # and the retry finds them all

    names = set(drive.named(the_snapshot(drive)))
    assert len(names) == len(files) == 10
    evil_names = sorted(n for n in names if n.startswith("_.._.._ev'il"))
    assert len(evil_names) == 2
    query_name, winner_name = evil_names if "_winner_" in evil_names[1] else evil_names[::-1]
    for name in evil_names:
        assert name.isprintable() and "/" not in name and "\\" not in name
        assert len(name.encode()) <= 255
        assert "\u202e" not in name and "\x00" not in name and "\n" not in name
        assert "e\u0301" not in name and "é" in name  # NFC
    assert query_name.startswith('_.._.._ev\'il "q"___é') and query_name.endswith("é.jpg")
    assert winner_name.endswith("é_winner_0.67.jpg")
    assert "it's _ 'q'.jpg" in names and "it's _ 'q'_winner_1.00.png" in names


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("a/b.jpg", "a_b.jpg"),
        ("..\\x.jpg", "_.._x.jpg"),
        (".hidden.jpg", "_.hidden.jpg"),
        ("tab\there.jpg", "tab_here.jpg"),
        ("nbsp\u00a0x.jpg", "nbsp_x.jpg"),
        ('l\'été "2024".jpg', 'l\'été "2024".jpg'),
        ("  padded.jpg  ", "padded.jpg"),
    ],
)
def test_drive_name(name, safe):
    assert drive_name(name) == safe


def test_drive_name_keeps_the_tail_and_cuts_the_stem():
    name = drive_name("東" * 200 + ".jpg", tail="_winner_0.50")

    assert name.endswith("東.jpg_winner_0.50") and len(name.encode()) <= 255
    with pytest.raises(ValueError, match="not usable"):
        drive_name("  ")


def test_two_queries_with_one_safe_name_both_get_a_file(tmp_path):
    batch = Batch({"coffee": "a/b.jpg", "rocket": "a_b.jpg"})

    files = query_image_files(batch.results, batch.plans, batch.image_bytes)

    by_name = {file.name: file.data for file in files}
    second = hashlib.sha256(batch.images["a_b.jpg"]).hexdigest()[:8]
    assert by_name["a_b.jpg"] == batch.images["a/b.jpg"]  # the results list a/b.jpg first
    assert by_name[f"a_b__{second}.jpg"] == batch.images["a_b.jpg"]


def test_one_image_asked_about_twice_is_uploaded_once(batch):
    again = replace(batch.plans[0], hit_id="HCOFFEE2", token="token-again")
    results = aggregate([*batch.plans, again], batch.reviews, computed_at=NOW)

    files = query_image_files(results, [*batch.plans, again], batch.image_bytes)

    assert [f.name for f in files].count("coffee_q.jpg") == 1


# --- missing and unusable images -----------------------------------------------------------------


def test_missing_or_unusable_images_are_logged_and_left_out(batch, caplog):
    def image_bytes(ref: ImageRef) -> bytes | None:
        if ref.name == "frame_01.jpg":
            return None  # the coffee winner: not found
        if ref.name == "rocket_q.jpg":
            raise FileNotFoundError(ref.name)
        if ref.name == "frame_11.png":
            return batch.images["frame_12.jpg"]  # another image's bytes
        if ref.name == "tie_q.jpg":
            return b"not an image"  # and not the bytes of the query either
        return batch.image_bytes(ref)

    with caplog.at_level(logging.WARNING, logger="include.crowd.drive_results"):
        files = query_image_files(batch.results, batch.plans, image_bytes)

    assert [file.name for file in files] == ["coffee_q.jpg", "none_q.png", "waiting_q.jpg"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("winner 'frame_01.jpg'" in m and "not found" in m for m in warnings)
    assert any("query 'rocket_q.jpg'" in m and "cannot read" in m for m in warnings)
    assert any("winner 'frame_11.png'" in m and "not the image" in m for m in warnings)
    assert any("query 'tie_q.jpg'" in m and "not the image" in m for m in warnings)


def test_a_file_that_is_not_an_image_is_left_out(caplog):
    batch = Batch(images={"tie_q.jpg": b"%PDF-1.4 not an image"})

    with caplog.at_level(logging.WARNING, logger="include.crowd.drive_results"):
        files = query_image_files(batch.results, batch.plans, batch.image_bytes)

    assert "tie_q.jpg" not in [file.name for file in files]
    assert any(
        "query 'tie_q.jpg'" in r.getMessage() and "not an image file" in r.getMessage()
        for r in caplog.records
    )


def test_a_query_without_a_plan_keeps_its_query_image(batch):
    files = query_image_files(batch.results, batch.plans[1:], batch.image_bytes)

    names = [file.name for file in files]
    assert "coffee_q.jpg" in names and not any(n.startswith("coffee_q_winner") for n in names)


# --- damaged results -----------------------------------------------------------------------------


def _set(path: tuple, value):
    def damage(results: dict) -> None:
        target = results
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return damage


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_set(("version",), 1), "version is 1"),
        (_set(("queries",), {"q": 1}), "queries is not a list"),
        (_set(("queries", 0), "coffee_q.jpg"), "queries[0] is not an object"),
        (_set(("queries", 0, "counted_votes"), "3"), "queries[0].counted_votes has the wrong type"),
        (_set(("queries", 0, "candidates", 0, "votes"), True), "votes has the wrong type (bool)"),
        (_set(("queries", 0, "candidates", 1, "votes"), -1), "votes is negative"),
        (_set(("queries", 0, "candidates", 0, "votes"), 99), "more votes for one option"),
        (_set(("queries", 0, "winner"), "frame_99.jpg"), "winner 'frame_99.jpg' is not among"),
        (_set(("queries", 0, "status"), "won"), "status is 'won'"),
        (_set(("queries", 3, "winner"), "frame_21.jpg"), "has status 'tie' and winner"),
        (_set(("queries", 0, "query_sha256"), "../x"), "query_sha256 is not a sha256"),
        (_set(("queries", 0, "query"), ["a"]), "queries[0].query has the wrong type (list)"),
        (lambda r: r["queries"][0].pop("none"), "missing field queries[0].none"),
    ],
)
def test_a_damaged_results_document_is_refused_before_any_upload(
    batch, drive, tmp_path, damage, problem
):
    results_dir = batch.write(tmp_path / "results")
    results = json.loads((results_dir / "results.json").read_text())
    damage(results)
    (results_dir / "results.json").write_text(json.dumps(results))

    with pytest.raises(ResultsDocumentError) as raised:
        snapshot_files(results_dir, batch.plans, batch.image_bytes)

    assert problem in str(raised.value)
    assert "nothing of it is copied to Drive" in str(raised.value)
    assert drive.request_sequence == []


def test_results_json_that_is_not_json_is_refused(batch, tmp_path):
    results_dir = batch.write(tmp_path / "results")
    (results_dir / "results.json").write_bytes(b'{"queries": [\xff')

    with pytest.raises(ResultsDocumentError, match="not valid JSON"):
        snapshot_files(results_dir, batch.plans, batch.image_bytes)


def test_a_missing_results_file_is_named(batch, tmp_path):
    results_dir = batch.write(tmp_path / "results")
    (results_dir / "report.html").unlink()

    with pytest.raises(ResultsDocumentError, match="report.html is missing"):
        snapshot_files(results_dir, batch.plans, batch.image_bytes)


def test_results_of_other_images_than_the_plans_are_refused(batch):
    results = copy.deepcopy(batch.results)
    results["queries"][0]["query_sha256"] = "0" * 64

    with pytest.raises(ResultsDocumentError, match="not this batch's"):
        query_image_files(results, batch.plans, batch.image_bytes)


# --- Drive's refusals ---------------------------------------------------------------------------


def test_insufficient_scope_names_the_scopes_and_the_connection(batch, drive, tmp_path):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    drive.fail("POST", "/drive/v3/files", insufficient_scope())

    with pytest.raises(DriveResultsError) as raised:
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files, gcp_conn_id="gcp_results")

    message = str(raised.value)
    assert "'gcp_results'" in message
    assert WRITE_SCOPE in message and FILE_SCOPE in message
    assert "shared with a service account" in message
    assert "Nothing was uploaded" in message
    assert not raised.value.retryable  # a setting must change first
    assert drive.children(PARENT) == []


def test_insufficient_scope_on_an_upload_says_what_is_kept(batch, drive, tmp_path):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    upload_snapshot(drive.service, PARENT, SNAPSHOT, files[:2])
    drive.fail("POST", "/upload/drive/v3/files", insufficient_scope())

    with pytest.raises(DriveResultsError) as raised:
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    message = str(raised.value)
    assert f"Drive refused to upload {files[2].name!r}" in message
    assert WRITE_SCOPE in message and "'google_cloud_default'" in message
    assert "Nothing is lost: 2 of the 10 files are in" in message


def test_an_unknown_folder_gives_a_clear_error(batch, tmp_path):
    drive = FakeDrive()  # the parent does not exist, or the scopes do not let us see it
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)

    with pytest.raises(DriveResultsError) as raised:
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    message = str(raised.value)
    assert f"Drive folder {PARENT} (Param results_drive_folder) was not found" in message
    assert "service account" in message and FILE_SCOPE in message
    assert writes(drive) == []


def test_a_folder_shared_read_only_is_refused_before_any_write(batch, tmp_path):
    drive = FakeDrive()
    drive.add_folder("results", file_id=PARENT, can_add_children=False)
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)

    with pytest.raises(DriveResultsError, match="share it as Editor"):
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files)

    assert writes(drive) == []


def test_a_file_id_is_not_a_folder(batch, drive, tmp_path):
    file_id = drive.add_file("notes.txt", PARENT, b"hello", "text/plain")
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)

    with pytest.raises(DriveResultsError, match="not a folder"):
        upload_snapshot(drive.service, file_id, SNAPSHOT, files)


def test_a_service_account_without_storage_is_told_to_use_a_shared_drive(batch, drive, tmp_path):
    files = snapshot_files(batch.write(tmp_path / "results"), batch.plans, batch.image_bytes)
    drive.fail(
        "POST",
        "/upload/drive/v3/files",
        error(403, "Service Accounts do not have storage quota.", "storageQuotaExceeded"),
    )

    with pytest.raises(DriveResultsError, match="shared drive where the service account"):
        upload_snapshot(drive.service, PARENT, SNAPSHOT, files)


# --- the Param, the snapshot name, shares ------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   "])
def test_parse_folder_empty_means_no_drive_copy(text):
    assert parse_folder(text) is None


@pytest.mark.parametrize(
    ("text", "folder_id"),
    [
        ("gdrive://1AbCdEfGhIjKlMnOpQrStUvWxYz_-0123", "1AbCdEfGhIjKlMnOpQrStUvWxYz_-0123"),
        ("  gdrive://0AsharedDriveRoot9PVA/ ", "0AsharedDriveRoot9PVA"),
    ],
)
def test_parse_folder(text, folder_id):
    assert parse_folder(text) == folder_id


@pytest.mark.parametrize(
    "text",
    [
        "1AbCdEfGhIjKlMnOpQrStUvWxYz",
        "https://drive.google.com/drive/folders/1AbCdEfGhIjKlMnOpQrStUvWxYz",
        "gdrive://",
        "gdrive://short",
        "gdrive://1AbCdEfGhIj KlMnOp",
        "gdrive://1AbCdEfGhIjKl'MnOp",
        "gdrive://1AbCdEfGhIjKl/MnOp",
        "gdrive://" + "x" * 129,
        "s3://bucket/results",
    ],
)
def test_parse_folder_refuses_anything_else_naming_the_param(text):
    with pytest.raises(ValueError, match="Param results_drive_folder .* gdrive://FOLDER_ID"):
        parse_folder(text)


def test_snapshot_name_is_utc():
    assert snapshot_name(datetime(2026, 12, 2, 10, 15, tzinfo=UTC)) == SNAPSHOT
    paris = timezone(timedelta(hours=1))
    assert snapshot_name(datetime(2026, 12, 2, 11, 15, tzinfo=paris)) == SNAPSHOT
    with pytest.raises(ValueError, match="UTC"):
        snapshot_name(datetime(2026, 12, 2, 10, 15))


@pytest.mark.parametrize(
    ("votes", "counted", "text"),
    [
        (2, 3, "0.67"),
        (1, 3, "0.33"),
        (1, 2, "0.50"),
        (3, 3, "1.00"),
        (1, 8, "0.13"),
        (0, 4, "0.00"),
    ],
)
def test_share_text_rounds_half_up_to_two_decimals(votes, counted, text):
    assert share_text(votes, counted) == text


@pytest.mark.parametrize(("votes", "counted"), [(1, 0), (4, 3), (-1, 3)])
def test_share_text_refuses_what_is_not_a_share(votes, counted):
    with pytest.raises(ValueError):
        share_text(votes, counted)


def test_escape_query_value_escapes_backslash_then_quote():
    assert escape_query_value("plain") == "plain"
    assert escape_query_value("it's") == "it\\'s"
    assert escape_query_value("a\\b") == "a\\\\b"
    assert escape_query_value("\\'") == "\\\\\\'"


@pytest.mark.parametrize(
    ("parent", "snapshot", "files", "problem"),
    [
        ("bad id", SNAPSHOT, [], "not a Drive folder id"),
        (PARENT, "it's", [], "not plain"),
        (PARENT, "../x", [], "not plain"),
        (PARENT, SNAPSHOT, [DriveFile("a.jpg", b"1", "image/jpeg")] * 2, "two files"),
        (PARENT, SNAPSHOT, [DriveFile("a/b.jpg", b"1", "image/jpeg")], "drive_name"),
        (PARENT, SNAPSHOT, [DriveFile("x" * 300, b"1", "image/jpeg")], "longer than 255"),
    ],
)
def test_upload_refuses_bad_arguments_before_any_request(drive, parent, snapshot, files, problem):
    with pytest.raises(ValueError, match=problem):
        upload_snapshot(drive.service, parent, snapshot, files)

    assert drive.request_sequence == []


def test_a_winner_image_named_like_the_notebook_did_is_a_real_jpeg(batch):
    files = {f.name: f for f in query_image_files(batch.results, batch.plans, batch.image_bytes)}

    with Image.open(io.BytesIO(files["coffee_q_winner_0.67.jpg"].data)) as image:
        assert image.format == "JPEG"
