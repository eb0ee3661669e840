"""Publishing images to S3: originals content-addressed and uploaded once, per-HIT copies that
look alike and link to nothing, private, presigned at one instant per HIT."""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from include.crowd.layout import plan_hits
from include.crowd.ledger import S3Ledger
from include.crowd.publish import (
    MAX_PRESIGN_SECONDS,
    HitCopies,
    ImageUrls,
    LocalImage,
    PublishError,
    PublishNotNow,
    batch_secret,
    check_bucket,
    display_jpeg,
    hit_images,
    pad_jpeg,
    publish_images,
)
from testsupport.imagekit import textured
from testsupport.motokit import moto_s3, s3_client


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as url:
        client = s3_client(url, signature_version="s3v4")  # what the DAG's S3 client uses
        client.create_bucket(Bucket="private")
        yield client


def local(tmp_path, name: str, data: bytes, sha: str) -> LocalImage:
    path = tmp_path / name
    path.write_bytes(data)
    return LocalImage(name, path, sha)


def test_keys_are_content_hashes_and_uploads_happen_once(s3, tmp_path, caplog):
    images = [
        local(tmp_path, "known1_1st_match.JPG", b"jpeg-1", "a" * 64),
        local(tmp_path, "query <script>.png", b"png-2", "b" * 64),
        local(tmp_path, "same-bytes-other-name.jpg", b"jpeg-1", "a" * 64),
    ]
    refs = publish_images(s3, "private", "image-similarity", images)
    assert {r.key for r in refs.values()} == {
        "image-similarity/images/" + "a" * 64 + ".jpg",
        "image-similarity/images/" + "b" * 64 + ".png",
    }
    assert not any("known" in r.key or "query" in r.key for r in refs.values())
    head = s3.head_object(Bucket="private", Key=refs["b" * 64].key)
    assert head["ContentType"] == "image/png"
    caplog.clear()
    with caplog.at_level("INFO"):
        publish_images(s3, "private", "image-similarity", images)
    assert "0 uploaded, 2 already there" in caplog.text


def test_workers_get_expiring_presigned_urls_and_the_bucket_stays_private(s3, tmp_path):
    (ref,) = publish_images(
        s3, "private", "p", [local(tmp_path, "x.jpg", b"bytes", "c" * 64)]
    ).values()
    url = ImageUrls(s3, "private", expires_in=600)(ref)
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"bytes"
    plain = url.split("?", 1)[0]
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(plain, timeout=10)  # no anonymous read
    grants = s3.get_bucket_acl(Bucket="private")["Grants"]
    assert all("AllUsers" not in str(g["Grantee"]) for g in grants)
    public = ImageUrls(s3, "private", expires_in=10**9, public_base_url="https://cdn.example/")
    assert public(ref) == "https://cdn.example/p/images/" + "c" * 64 + ".jpg"


def test_settings_that_cannot_work_are_refused_up_front(s3):
    with pytest.raises(PublishError, match="at most 7 days"):
        ImageUrls(s3, "private", expires_in=MAX_PRESIGN_SECONDS + 1)
    with pytest.raises(PublishError, match="no S3 bucket"):
        check_bucket(s3, "")
    with pytest.raises(PublishError, match="'missing' cannot be used"):
        check_bucket(s3, "missing")
    check_bucket(s3, "private")


# --- per-HIT copies -----------------------------------------------------------------------


def jpeg_of(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def batch(s3, tmp_path):
    """Two HITs of one batch, sharing the gold set and a dataset picture; originals published."""
    files = {
        "query_a.jpg": jpeg_of(textured(480, 360, seed=1)),
        "query_b.jpg": jpeg_of(textured(480, 360, seed=2)),
        "frame_1.png": png_of(textured(800, 600, seed=3)),
        "frame_2.jpg": jpeg_of(textured(960, 720, seed=4)),
        "known1.jpg": jpeg_of(textured(640, 480, seed=5)),
        "known1_1st_match.jpg": jpeg_of(textured(640, 480, seed=6)),
        "known1_2nd_match.png": png_of(textured(640, 480, seed=7)),
        "known1_3rd_match.jpg": jpeg_of(textured(640, 480, seed=8)),
    }
    images = [
        local(tmp_path, name, data, hashlib.sha256(data).hexdigest())
        for name, data in files.items()
    ]
    refs = publish_images(s3, "private", "copies", images)
    by_name = {ref.name: ref for ref in refs.values()}
    matches = [(by_name["frame_1.png"], 1, 0.9), (by_name["frame_2.jpg"], 2, 0.8)]
    gold = (
        "known1",
        by_name["known1.jpg"],
        by_name["known1_1st_match.jpg"],
        (by_name["known1_2nd_match.png"], by_name["known1_3rd_match.jpg"]),
    )
    plans = plan_hits(
        "batch-1", [(by_name["query_a.jpg"], matches), (by_name["query_b.jpg"], matches)], [gold]
    )
    local_paths = {image.sha256: image.path for image in images}
    return plans, local_paths


def test_each_hit_gets_its_own_copies_put_once_with_the_same_bytes(s3, batch, caplog):
    plans, local_paths = batch
    secret = b"s" * 32
    copies = HitCopies(s3, "private", "copies", secret, local_paths=local_paths)
    made = {plan.token: copies.copies(plan) for plan in plans}
    assert made == {plan.token: copies.copies(plan) for plan in plans}  # deterministic
    # Another machine (no local files: the originals come from S3) makes the same bytes.
    elsewhere = HitCopies(s3, "private", "copies", secret)
    assert {plan.token: elsewhere.copies(plan) for plan in plans} == made

    with caplog.at_level("INFO"):
        assert copies.publish(plans) == 12  # 6 pictures per HIT (the model has 2 matches)
    assert "(12 uploaded, 0 already there)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert copies.publish(plans) == 0
    assert "(0 uploaded, 12 already there)" in caplog.text

    etags = {}
    for plan in plans:
        keys = copies.keys(plan)
        assert set(keys) == {image.sha256 for image in hit_images(plan)}
        lengths, sides = set(), set()
        for sha, key in keys.items():
            assert re.fullmatch(r"copies/hit-images/[0-9a-f]{64}\.jpg", key) and sha not in key
            stored = s3.get_object(Bucket="private", Key=key)
            body = stored["Body"].read()
            assert body == made[plan.token][key]
            assert stored["ContentType"] == "image/jpeg"
            etags.setdefault(sha, set()).add(stored["ETag"])
            lengths.add(len(body))
            sides.add(max(Image.open(io.BytesIO(body)).size))
        assert len(lengths) == 1 and lengths.pop() % 4096 == 0  # one length per HIT
        assert len(sides) == 1
    # Pictures both HITs show (the gold set's, the two matches): one ETag per HIT.
    both = {i.sha256 for i in hit_images(plans[0])} & {i.sha256 for i in hit_images(plans[1])}
    assert len(both) >= 4 and all(len(etags[sha]) == 2 for sha in both)
    assert set(copies.keys(plans[0]).values()).isdisjoint(copies.keys(plans[1]).values())

    other = HitCopies(s3, "private", "copies", b"t" * 32)
    assert set(other.keys(plans[0]).values()).isdisjoint(copies.keys(plans[0]).values())
    assert secret.hex() not in repr(copies) and "s" * 32 not in repr(copies)


def test_the_batch_secret_is_made_once_even_by_concurrent_callers(s3):
    ledger = S3Ledger(s3, "private", "copies", "batch-secret")
    barrier = threading.Barrier(6)

    def get(_n: int) -> bytes:
        barrier.wait()
        return batch_secret(ledger)

    with ThreadPoolExecutor(6) as pool:
        secrets = set(pool.map(get, range(6)))
    assert len(secrets) == 1
    (secret,) = secrets
    assert len(secret) == 32 and batch_secret(ledger) == secret
    assert s3.head_object(Bucket="private", Key=ledger.key("secrets/hit-images.json"))
    assert batch_secret(S3Ledger(s3, "private", "copies", "batch-other")) != secret


def test_copies_are_bounded_upright_without_metadata_and_look_like_the_original(
    monkeypatch, tmp_path
):
    def file(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    picture = textured(400, 300, seed=11).resize((4000, 3000), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: shown rotated by 90 degrees
    exif[0x010F] = "Known-answer camera"
    photo = file("photo.jpg", jpeg_of(picture, exif=exif.tobytes()))
    decoded = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    mac = hashlib.sha256(b"copy").digest()
    copy = Image.open(io.BytesIO(display_jpeg(photo, 1000, mac)))
    assert decoded == [(1000, 750)]  # libjpeg decoded at 1/4 scale, never the 12 MP
    assert copy.format == "JPEG" and copy.size == (750, 1000)  # upright, longest side 1000
    assert not copy.getexif() and "icc_profile" not in copy.info

    expected = picture.rotate(-90, expand=True).resize(copy.size, Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(copy, np.int16) - np.asarray(expected, np.int16))
    assert difference.mean() < 3  # the same picture to the eye

    transparent = Image.new("RGBA", (900, 600), (255, 0, 0, 0))
    transparent.paste((0, 0, 255, 255), (0, 0, 450, 600))
    copy = Image.open(io.BytesIO(display_jpeg(file("alpha.png", png_of(transparent)), 600, mac)))
    assert copy.size == (600, 400)
    left, right = copy.getpixel((100, 200)), copy.getpixel((500, 200))
    assert left[2] > 230 and left[0] < 25 and min(right) > 230  # transparent shows white

    tiny = file("tiny.png", png_of(textured(200, 150, seed=12)))
    small = display_jpeg(tiny, 320, mac)
    assert Image.open(io.BytesIO(small)).size == (320, 240)
    assert display_jpeg(tiny, 320, hashlib.sha256(b"2").digest()) != small  # another draw
    broken = file("broken.png", b"\x89PNG not really")
    with pytest.raises(PublishError, match="'broken.png' cannot be shown to workers: it is not"):
        display_jpeg(broken, 320, mac, name="broken.png")


def test_padding_reaches_the_length_and_keeps_the_picture(tmp_path):
    (tmp_path / "p.jpg").write_bytes(jpeg_of(textured(640, 480, seed=13)))
    data = display_jpeg(tmp_path / "p.jpg", 600, hashlib.sha256(b"p").digest())
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    for grow in (0, 4, 5, 4096, 65537, 65538, 65541, 200_000):
        padded = pad_jpeg(data, len(data) + grow)
        assert len(padded) == len(data) + grow
        image = Image.open(io.BytesIO(padded))
        assert image.info.get("jfif") and np.array_equal(np.asarray(image), pixels)
    for grow in (1, 2, 3):
        with pytest.raises(ValueError, match="at least 4 bytes"):
            pad_jpeg(data, len(data) + grow)


def fast_clock(step: float):
    """botocore's clock, moved on by ``step`` seconds at every reading."""
    readings = itertools.count(1)
    start = datetime.now(UTC)

    def now(remove_tzinfo: bool = True) -> datetime:
        value = start + timedelta(seconds=next(readings) * step)
        return value.replace(tzinfo=None) if remove_tzinfo else value

    return now


def test_a_hits_urls_are_signed_at_one_instant_even_while_the_clock_moves(s3, batch, monkeypatch):
    plans, local_paths = batch
    copies = HitCopies(s3, "private", "copies", b"s" * 32, local_paths=local_paths)
    urls = ImageUrls(s3, "private", expires_in=600, copies=copies)
    monkeypatch.setattr("botocore.auth.get_current_datetime", fast_clock(0.1))
    for plan in plans * 5:
        url_of = urls.for_hit(plan)
        signed = [url_of(image) for image in hit_images(plan)]
        dates = {parse_qs(urlsplit(url).query)["X-Amz-Date"][0] for url in signed}
        assert len(dates) == 1
        assert {urlsplit(url).path.split("/", 2)[2] for url in signed} == set(
            copies.keys(plan).values()
        )
    monkeypatch.setattr("botocore.auth.get_current_datetime", fast_clock(0.5))
    with pytest.raises(PublishNotNow, match="within one second in 5 attempts"):
        urls.for_hit(plans[0])

    public = ImageUrls(
        s3, "private", expires_in=10**9, public_base_url="https://cdn.example/", copies=copies
    )
    url_of = public.for_hit(plans[0])
    assert {url_of(image) for image in hit_images(plans[0])} == {
        f"https://cdn.example/{key}" for key in copies.keys(plans[0]).values()
    }
