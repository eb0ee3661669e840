"""Publishing images to S3: content-addressed, uploaded once, private, presigned."""

from __future__ import annotations

import urllib.request

import pytest
from motokit import moto_s3, s3_client

from include.crowd.publish import (
    MAX_PRESIGN_SECONDS,
    ImageUrls,
    LocalImage,
    PublishError,
    check_bucket,
    publish_images,
)


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
