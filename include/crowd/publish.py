"""Publish what workers must see: images to S3 under content-addressed keys, and their URLs.

A key is ``<prefix>/images/<sha256><ext>``: the bytes name the object, so no key reveals a file
name, a query or an answer, and an image shared by batches is stored once. Objects are uploaded
only when missing (a rerun uploads nothing). The bucket is never made public: workers get
presigned GET URLs valid for the HIT's lifetime plus the assignment duration plus the review
window, or, when the user says their bucket (or a CDN in front of it) is public, plain URLs
under a public base URL.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from include.crowd.records import ImageRef

log = logging.getLogger(__name__)

# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class PublishError(RuntimeError):
    """Publishing cannot work with these settings (bucket missing, URL lifetime too long)."""


@dataclass(frozen=True)
class LocalImage:
    name: str
    path: Path
    sha256: str


def image_key(prefix: str, image: LocalImage) -> str:
    ext = (
        image.path.suffix.lower() if image.path.suffix.lower() in {".jpg", ".jpeg", ".png"} else ""
    )
    return "/".join(p for p in (prefix.strip("/"), "images", image.sha256 + ext) if p)


def check_bucket(s3, bucket: str) -> None:
    if not bucket:
        raise PublishError("no S3 bucket is set (Param s3_bucket, section Storage)")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise PublishError(
            f"S3 bucket {bucket!r} cannot be used ({code}): create it, or check the AWS "
            "connection's credentials and region"
        ) from error


def publish_images(
    s3, bucket: str, prefix: str, images: Iterable[LocalImage], *, threads: int = 8
) -> dict[str, ImageRef]:
    """Upload missing images; return ``sha256 -> ImageRef`` (with its key) for all of them."""
    unique = {image.sha256: image for image in images}
    refs = {
        sha: ImageRef(image.name, sha, image_key(prefix, image)) for sha, image in unique.items()
    }

    def upload(image: LocalImage) -> bool:
        key = refs[image.sha256].key
        try:
            s3.head_object(Bucket=bucket, Key=key)
            return False
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        content_type = mimetypes.guess_type(image.path.name)[0] or "application/octet-stream"
        with image.path.open("rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        return True

    with ThreadPoolExecutor(max_workers=threads) as pool:
        uploaded = sum(pool.map(upload, unique.values()))
    log.info(
        "published %d images to s3://%s/%s/images/ (%d uploaded, %d already there)",
        len(unique),
        bucket,
        prefix.strip("/"),
        uploaded,
        len(unique) - uploaded,
    )
    return refs


class ImageUrls:
    """Turns an ``ImageRef`` into the URL a worker's browser loads.

    Give it an S3 client configured for SigV4 (``Config(signature_version="s3v4")``): SigV4
    URLs carry their expiry (``X-Amz-Expires``), at most 7 days.
    """

    def __init__(
        self, s3, bucket: str, *, expires_in: int, public_base_url: str | None = None
    ) -> None:
        if not public_base_url and expires_in > MAX_PRESIGN_SECONDS:
            raise PublishError(
                f"image URLs must stay valid for {expires_in / 86400:.1f} days (HIT lifetime + "
                "assignment duration + review window), but presigned S3 URLs last at most 7 "
                "days: shorten the HIT lifetime, or set a public base URL"
            )
        self.s3 = s3
        self.bucket = bucket
        self.expires_in = expires_in
        self.public_base_url = (public_base_url or "").rstrip("/")
        self._signed: dict[str, str] = {}  # one URL per key: gold images recur in every HIT

    def __call__(self, image: ImageRef) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{image.key}"
        url = self._signed.get(image.key)
        if url is None:
            url = self.s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": image.key},
                ExpiresIn=self.expires_in,
            )
            self._signed[image.key] = url
        return url
