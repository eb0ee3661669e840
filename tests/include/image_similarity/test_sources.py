"""Listing a local folder when its entries are hostile: FIFOs, devices, sockets, symbolic links
out of the folder, broken links and loops, hidden files, undecodable names, huge files."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from include.common.image_files import MAX_FILE_BYTES, NotARegularFile, open_regular_file
from include.common.images import DecodeError, InputSize, open_image
from include.image_similarity import pipeline
from include.image_similarity.__main__ import _parser
from include.image_similarity.settings import DEFAULTS
from include.image_similarity.sources import list_local_images, sha256_of_file
from testsupport.imagekit import save, textured

# Long enough for a listing of a few files on a busy machine; the old code never returned.
PATIENCE_SECONDS = 20


def _within_patience(function, *args, **kwargs):
    """Run ``function`` in a thread; fail (instead of hanging the suite) if it does not return."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(PATIENCE_SECONDS)
    assert not worker.is_alive(), f"{function.__name__} still running after {PATIENCE_SECONDS} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _reasons(listing) -> dict[str, str]:
    return {problem.name: problem.reason for problem in listing.problems}


@pytest.fixture
def folder(tmp_path) -> Path:
    """A dataset folder with one good image, ``good.png``."""
    save(textured(64, 48), tmp_path / "dataset" / "good.png")
    return tmp_path / "dataset"


def test_fifo_is_reported_by_name_and_never_opened(folder):
    os.mkfifo(folder / "stream.jpg")
    listing = _within_patience(list_local_images, folder)
    assert [image.name for image in listing.images] == ["good.png"]
    assert "named pipe (FIFO)" in _reasons(listing)["stream.jpg"]
    assert "not opened" in _reasons(listing)["stream.jpg"]


def test_socket_is_reported_by_name(folder):
    path = folder / "socket.png"
    if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
        pytest.skip("temporary folder path too long for a UNIX socket")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        listing = _within_patience(list_local_images, folder)
    assert "a socket, not a regular file" in _reasons(listing)["socket.png"]


def test_symlink_to_dev_zero_is_reported_and_never_read(folder):
    (folder / "zero.png").symlink_to("/dev/zero")
    listing = _within_patience(list_local_images, folder)
    assert "outside the folder" in _reasons(listing)["zero.png"]
    # Even when links out of the folder are allowed, a device is never opened.
    allowed = _within_patience(list_local_images, folder, follow_external_symlinks=True)
    assert [image.name for image in allowed.images] == ["good.png"]
    assert "symbolic link to a character device" in _reasons(allowed)["zero.png"]


def test_symlink_to_a_fifo_inside_the_folder_is_reported(folder):
    os.mkfifo(folder / "pipe")
    (folder / "pipe.jpg").symlink_to("pipe")
    listing = _within_patience(list_local_images, folder)
    reason = _reasons(listing)["pipe.jpg"]
    assert "symbolic link to a named pipe (FIFO)" in reason and "not opened" in reason


def test_symlink_out_of_the_folder_is_skipped_unless_allowed(folder, tmp_path):
    secret = save(textured(32, 32, seed=5), tmp_path / "elsewhere" / "secret.png")
    (folder / "linked.png").symlink_to(secret)
    listing = list_local_images(folder)
    assert [image.name for image in listing.images] == ["good.png"]
    reason = _reasons(listing)["linked.png"]
    assert str(secret) in reason and "--follow-external-symlinks" in reason

    allowed = list_local_images(folder, follow_external_symlinks=True)
    linked = {image.name: image for image in allowed.images}["linked.png"]
    assert linked.path == folder / "linked.png"
    assert linked.sha256 == hashlib.sha256(secret.read_bytes()).hexdigest()
    assert allowed.problems == []


def test_symlink_inside_the_folder_is_listed_under_its_own_name(folder):
    (folder / "alias.png").symlink_to("good.png")
    (folder / "sub").mkdir()
    save(textured(16, 16, seed=2), folder / "sub" / "deep.png")
    (folder / "deep-link.png").symlink_to(folder / "sub" / "deep.png")
    listing = list_local_images(folder)
    images = {image.name: image for image in listing.images}
    assert sorted(images) == ["alias.png", "deep-link.png", "good.png"]
    assert images["alias.png"].sha256 == images["good.png"].sha256
    assert images["alias.png"].path == folder / "alias.png"
    assert (
        images["deep-link.png"].sha256
        == hashlib.sha256((folder / "sub" / "deep.png").read_bytes()).hexdigest()
    )
    assert set(_reasons(listing)) == {"sub"}  # the sub-folder itself is still not read


def test_broken_symlinks_and_loops_are_reported(folder):
    (folder / "gone.png").symlink_to("missing.png")
    (folder / "self.png").symlink_to("self.png")
    (folder / "ping.png").symlink_to("pong.png")
    (folder / "pong.png").symlink_to("ping.png")
    (folder / "dir-link").symlink_to(folder.parent)
    listing = _within_patience(list_local_images, folder)
    reasons = _reasons(listing)
    assert "broken symbolic link" in reasons["gone.png"]
    for name in ("self.png", "ping.png", "pong.png"):
        assert "symbolic link loop" in reasons[name], name
    assert "outside the folder" in reasons["dir-link"]
    assert [image.name for image in listing.images] == ["good.png"]


def test_hidden_files_and_folders_are_named_not_silently_dropped(folder, tmp_path):
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save(textured(16, 16), folder / ".hidden.png")
    (folder / ".thumbnails").mkdir()
    listing = list_local_images(folder)
    assert [image.name for image in listing.images] == ["good.png"]
    assert {p.name: p.reason for p in listing.hidden} == {
        ".DS_Store": "hidden file: skipped",
        ".hidden.png": "hidden file: skipped",
        ".thumbnails": "hidden folder: skipped",
    }
    assert listing.problems == []

    # A run records them with the other left-out files.
    empty = tmp_path / "known"
    empty.mkdir()
    batch = tmp_path / "batch"
    pipeline.list_sources(batch, {"dataset": folder, "queries": folder, "known_answers": empty})
    recorded = {(p["collection"], p["name"]): p["reason"] for p in pipeline.problems_of(batch)}
    assert recorded[("dataset", ".thumbnails")] == "hidden folder: skipped"
    assert recorded[("queries", ".DS_Store")] == "hidden file: skipped"


def test_a_name_that_is_not_utf8_is_reported_and_the_run_goes_on(folder, tmp_path):
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1, not UTF-8
    with open(raw, "wb") as handle:
        handle.write((folder / "good.png").read_bytes())
    listing = list_local_images(folder)
    assert [image.name for image in listing.images] == ["good.png"]
    assert "not valid UTF-8" in _reasons(listing)["caf\\xe9.png"]
    empty = tmp_path / "known"
    empty.mkdir()
    batch = tmp_path / "batch"
    pipeline.list_sources(batch, {"dataset": folder, "queries": folder, "known_answers": empty})
    json.loads((batch / "sources.json").read_text(encoding="utf-8"))  # written, and valid


def test_a_huge_file_is_refused_without_being_read(folder):
    with open(folder / "sparse.jpg", "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing on disk, but hashing would read it
    listing = _within_patience(list_local_images, folder)
    reason = _reasons(listing)["sparse.jpg"]
    assert "larger than any image" in reason and "not read" in reason


def test_open_regular_file_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotARegularFile, match="named pipe"):
        _within_patience(open_regular_file, tmp_path / "fifo")
    with pytest.raises(NotARegularFile):
        _within_patience(sha256_of_file, tmp_path / "fifo")


def test_open_regular_file_without_following_refuses_a_link(tmp_path):
    target = save(textured(8, 8), tmp_path / "target.png")
    (tmp_path / "link.png").symlink_to(target)
    with open_regular_file(tmp_path / "link.png") as handle:
        assert handle.read() == target.read_bytes()
    with pytest.raises(OSError):
        open_regular_file(tmp_path / "link.png", follow_symlinks=False)


def test_list_sources_and_the_command_line_pass_follow_external_symlinks(folder, tmp_path):
    outside = save(textured(32, 32, seed=8), tmp_path / "elsewhere" / "out.png")
    (folder / "out.png").symlink_to(outside)
    empty = tmp_path / "known"
    empty.mkdir()
    sources = {"dataset": folder, "queries": folder, "known_answers": empty}
    assert pipeline.list_sources(tmp_path / "refused", sources)["dataset"] == 1
    allowed = pipeline.list_sources(tmp_path / "allowed", sources, follow_external_symlinks=True)
    assert allowed["dataset"] == 2

    base = ["match", "--dataset", "d", "--queries", "q", "--out", "o.json"]
    assert _parser().parse_args(base).follow_external_symlinks is False
    assert _parser().parse_args([*base, "--follow-external-symlinks"]).follow_external_symlinks


def test_the_decoder_refuses_a_fifo_and_a_device_without_opening_them(tmp_path):
    os.mkfifo(tmp_path / "stream.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    for name, kind in (("stream.png", "a named pipe (FIFO)"), ("zero.png", "a character device")):
        with pytest.raises(DecodeError) as caught:
            _within_patience(
                open_image, tmp_path / name, fit=InputSize(DEFAULTS.embedding.image_area)
            )
        assert caught.value.reason == f"is {kind}, not a regular file; it was not opened"
