"""Publish what workers must see: images to S3, and the URLs of each HIT's page.

Two kinds of objects, both in the private bucket:

- **Originals**, ``<prefix>/images/<sha256><ext>`` (``publish_images``): the bytes name the
  object, so an image shared by batches is stored once and a rerun uploads nothing. Workers
  never load them; the report and the copies below are made from them.
- **Per-HIT copies**, ``<prefix>/hit-images/<mac>.jpg`` (``HitCopies``, when the HITs are
  created): one object per (HIT, image). A worker's page loads only its own HIT's copies.

Why copies. A fixed pool of known answers recurs in every HIT that uses it: with one object per
image, a worker who does two HITs sees the same URL (and key, ETag, size) for the gold pictures,
knows which question is the gold one and, once paid, which answer is right. Inside one HIT, the
gold pictures also differed from the model's in format (.jpg against .png), in signing time (a
cached URL is older), in upload time (a campaign's next run reuses the old gold objects) and in
option count (k < 3; ``layout`` evens that out). Every copy therefore hides where it came from:

- *Key*: ``HMAC-SHA256(batch secret, request token, image sha256)``. The token is in the HIT's
  HTML (``mturk.question.mark_token``) and the image hash is no secret to whoever has the
  original, so the key is keyed: 32 random bytes per batch, written once with a conditional
  write to ``batches/<batch_id>/secrets/hit-images.json`` (``batch_secret``) and read back by
  every later attempt; never in the HTML, the plans or the logs. No two HITs share a key, and
  nothing a worker sees lets them compute one.
- *Bytes*: a copy is the original re-encoded as a baseline JPEG without its metadata (EXIF, ICC,
  comments), so every picture of a HIT has one format and one ``Content-Type``. All copies of a
  HIT have the same longest side: the HIT's smallest original's, within 320..1024 px, less a
  per-HIT draw of up to 1/8. Decoding is ``include.common.images.open_image``'s, bounded as
  everywhere: a JPEG decodes in draft mode at the smallest of 1/1..1/8 scale still covering that
  side, any other picture is shrunk with ``reduce`` by a whole factor right after decoding.
  Each copy gets its own quality (82..90) and a +-1 dither seeded from its own MAC, so no two
  copies of an image have the same bytes or ETag; then the HIT's copies are padded (JPEG comment
  segments of zeros) to one common length, a multiple of 4 KiB, so ``Content-Length`` is the
  same for every picture of a HIT.
- *Signature time*: every URL of a HIT carries the same ``X-Amz-Date``. botocore reads the clock
  inside each signature and takes no instant from the caller; fixing one would mean patching
  botocore's module clock (process-wide, racing the threads that create HITs and every other S3
  call) or writing SigV4 ourselves. So ``ImageUrls.for_hit`` signs the HIT's URLs together and
  signs them all again when a second boundary fell between the first and the last (eight
  signatures take about a millisecond, so a retry is rare; a few attempts are allowed).
- *Upload time*: a HIT's copies are uploaded together, when the HIT is created, so their
  ``Last-Modified`` dates the HIT, not the picture.
- *Exactly once*: a copy's key and bytes are functions of the secret, the token and the
  original's bytes (with the same Pillow and NumPy), so a retried task computes the same ones;
  a copy is put only when it is missing (HEAD first), and every copy of a HIT is in S3 before
  its ``CreateHIT``.

What still remains: the same picture can be recognised by eye across HITs, and so can its
aspect ratio (inside one HIT too, when the gold pool's pictures are shaped otherwise than the
dataset's); a fixed gold pool cannot hide that, and generating gold questions from the dataset
is a later issue. The JPEG data inside the padding still grows with a picture's detail, so a
worker who strips the padding learns about as much as looking tells them. The plan's draws
(field names, question and option order) come from the batch id, the query's content hash and
the seed: pages no longer show that hash, but whoever holds the original query file could
recompute them; seeding the plans from the batch secret would close that. Under a public base
URL, copies are public by design, and so is everything else in such a bucket, the batch folder
(and its secret) included.

The bucket is never made public by this module: workers get presigned GET URLs valid for the
HIT's lifetime plus the assignment duration plus the review window, or, when the user says
their bucket (or a CDN in front of it) is public, plain URLs under a public base URL.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import math
import mimetypes
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from botocore.exceptions import ClientError
from PIL import Image

from include.common.images import DecodeError, FitInside, open_image
from include.crowd.records import HitPlan, ImageRef

log = logging.getLogger(__name__)

# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
SIGN_ATTEMPTS = 5

COPIES_FOLDER = "hit-images"
SECRET = "secrets/hit-images.json"  # under the batch folder (S3Ledger)
MAX_DISPLAY_SIDE = 1024
MIN_DISPLAY_SIDE = 320
SIDE_DRAW = 8  # a HIT's display side is lowered by up to 1/SIDE_DRAW of it
QUALITIES = range(82, 91)
PAD_UNIT = 4096
_SEGMENT_MIN, _SEGMENT_MAX = 4, 2 + 65535  # a JPEG marker segment: FF xx, 2-byte length, data
_MISSING = ("404", "NoSuchKey", "NotFound")


class PublishError(RuntimeError):
    """Publishing cannot work with these settings (bucket missing, URL lifetime too long)."""


class PublishNotNow(RuntimeError):
    """Publishing failed for a passing reason (a busy clock, a concurrent writer): retry."""


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


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in _MISSING:
            raise
        return False


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
        if _exists(s3, bucket, key):
            return False
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


# --- per-HIT copies -----------------------------------------------------------------------


def batch_secret(ledger, *, attempts: int = 10) -> bytes:
    """The batch's key for naming and varying per-HIT copies: 32 random bytes, created once.

    The first caller writes it with a conditional write (``S3Ledger.put_json_once``); every
    other caller, concurrent or later, reads that one back. It is never logged.
    """
    for attempt in range(attempts):
        stored = ledger.get_json(SECRET)
        if stored is not None:
            return bytes.fromhex(stored["key"])
        key = secrets.token_bytes(32)
        purpose = "names and varies the per-HIT image copies workers load; keep it private"
        if ledger.put_json_once(SECRET, {"key": key.hex(), "purpose": purpose}):
            return key
        time.sleep(0.1 * (attempt + 1))  # another writer is writing it right now
    raise PublishNotNow(
        f"could not read or create the batch's image key {ledger.key(SECRET)} (another task "
        "kept writing it): retry the task"
    )


def hit_images(plan: HitPlan) -> list[ImageRef]:
    """Every image a HIT's page shows (targets and option pictures), each content once."""
    found: dict[str, ImageRef] = {}
    for question in plan.questions:
        for image in (question.target, *(o.image for o in question.options)):
            if image is not None:
                found.setdefault(image.sha256, image)
    return list(found.values())


class HitCopies:
    """Per-HIT copies of the images workers see (see the module docstring).

    :param secret: the batch's key (``batch_secret``).
    :param local_paths: original files by content hash; an original that is not there (another
        machine) is read from S3 under its content-addressed key.
    """

    def __init__(
        self,
        s3,
        bucket: str,
        prefix: str,
        secret: bytes,
        *,
        local_paths: Mapping[str, Path] | None = None,
        threads: int = 8,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the per-HIT copies' secret must be at least 16 bytes")
        self.s3 = s3
        self.bucket = bucket
        self.folder = "/".join(p for p in (prefix.strip("/"), COPIES_FOLDER) if p)
        self._secret = secret
        self.local_paths = dict(local_paths or {})
        self.threads = threads

    def __repr__(self) -> str:  # never show the secret
        return f"HitCopies(s3://{self.bucket}/{self.folder}/)"

    def _mac(self, *parts: str) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in parts:
            data = part.encode("utf-8")
            mac.update(b"%d:" % len(data))
            mac.update(data)
        return mac.digest()

    def key(self, token: str, image: ImageRef) -> str:
        return f"{self.folder}/{self._mac('key', token, image.sha256).hex()}.jpg"

    def keys(self, plan: HitPlan) -> dict[str, str]:
        """``sha256 -> key`` of the HIT's copies."""
        return {image.sha256: self.key(plan.token, image) for image in hit_images(plan)}

    def copies(self, plan: HitPlan) -> dict[str, bytes]:
        """``key -> bytes`` of the HIT's copies (the same on every call)."""
        images = sorted(hit_images(plan), key=lambda image: self.key(plan.token, image))
        with tempfile.TemporaryDirectory(prefix="hit-copies-") as downloads:
            files = {image.sha256: self._original(image, Path(downloads)) for image in images}
            smallest = min(_longest_side(files[image.sha256], image.name) for image in images)
            side = _display_side(smallest, self._mac("side", plan.token))
            encoded = {
                self.key(plan.token, image): display_jpeg(
                    files[image.sha256],
                    side,
                    self._mac("copy", plan.token, image.sha256),
                    name=image.name,
                )
                for image in images
            }
        length = PAD_UNIT * math.ceil((max(map(len, encoded.values())) + _SEGMENT_MIN) / PAD_UNIT)
        return {key: pad_jpeg(data, length) for key, data in encoded.items()}

    def publish(self, plans: Sequence[HitPlan]) -> int:
        """Upload the missing copies of every plan's HIT; return how many were uploaded."""
        started = time.monotonic()

        def upload(plan: HitPlan) -> tuple[int, int]:
            keys = sorted(set(self.keys(plan).values()))
            missing = [key for key in keys if not _exists(self.s3, self.bucket, key)]
            if missing:
                made = self.copies(plan)
                for key in missing:
                    self.s3.put_object(
                        Bucket=self.bucket, Key=key, Body=made[key], ContentType="image/jpeg"
                    )
            return len(missing), len(keys)

        if not plans:
            return 0
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            counts = list(pool.map(upload, plans))
        uploaded, total = (sum(c[i] for c in counts) for i in (0, 1))
        seconds = time.monotonic() - started
        log.info(
            "per-HIT image copies for %d HITs: %d in s3://%s/%s/ (%d uploaded, %d already "
            "there), %.0f copies/s",
            len(plans),
            total,
            self.bucket,
            self.folder,
            uploaded,
            total - uploaded,
            uploaded / seconds if seconds > 0 else 0.0,
        )
        return uploaded

    def _original(self, image: ImageRef, downloads: Path) -> Path:
        """The original's local file, or a download of its published object into
        ``downloads`` (the create task may run on another machine than the listing)."""
        path = self.local_paths.get(image.sha256)
        if path is not None and Path(path).is_file():
            return Path(path)
        if not image.key:
            raise PublishError(
                f"image {image.name!r} is neither at its local path nor published: run the "
                "publish step (publish_images) first"
            )
        target = downloads / image.sha256
        self.s3.download_file(self.bucket, image.key, str(target))
        return target


def _longest_side(path: Path, name: str) -> int:
    """From the header alone (the picture is decoded later, bounded)."""
    try:
        with Image.open(path) as image:
            return max(image.size)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PublishError(f"image {name!r} cannot be shown to workers ({error})") from error


def _display_side(smallest: int, mac: bytes) -> int:
    """A HIT's longest side: its smallest original's, within bounds, less a per-HIT draw."""
    base = min(max(smallest, MIN_DISPLAY_SIDE), MAX_DISPLAY_SIDE)
    return base - int.from_bytes(mac[:4], "big") % (base // SIDE_DRAW + 1)


def display_jpeg(path: Path, side: int, mac: bytes, *, name: str | None = None) -> bytes:
    """The picture as workers see it: RGB, upright, longest side ``side``, a +-1 dither and a
    quality drawn from ``mac``, baseline JPEG without metadata.

    It is decoded by ``include.common.images.open_image``, bounded as every decode is: a JPEG
    in draft mode at the smallest scale still covering ``side``, any other picture shrunk by a
    whole factor right after decoding, strip by strip.
    """
    try:
        image = open_image(path, name, fit=FitInside(side, side))
    except DecodeError as error:
        raise PublishError(
            f"image {error.name!r} cannot be shown to workers: it {error.reason}"
        ) from error
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    rng = np.random.default_rng(int.from_bytes(mac[4:12], "big"))
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.integers(-1, 2, pixels.shape, dtype=np.int16)
    dithered = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    dithered.save(
        buffer,
        "JPEG",
        quality=QUALITIES[mac[0] % len(QUALITIES)],
        subsampling="4:2:0",
        optimize=False,
        progressive=False,
    )
    return buffer.getvalue()


def pad_jpeg(data: bytes, length: int) -> bytes:
    """``data`` grown to ``length`` bytes with comment segments of zeros after its JFIF header
    (a decoder skips them: the picture is the same)."""
    missing = length - len(data)
    if missing == 0:
        return data
    if missing < _SEGMENT_MIN:
        raise ValueError(f"a JPEG can grow by 0 or at least {_SEGMENT_MIN} bytes, not {missing}")
    at = 2  # after SOI; the JFIF APP0 segment, when there, must stay first
    if data[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(data[4:6], "big")
    segments = []
    while missing:
        size = min(missing, _SEGMENT_MAX)
        if 0 < missing - size < _SEGMENT_MIN:
            size -= _SEGMENT_MIN  # leave enough for a last segment
        segments.append(b"\xff\xfe" + (size - 2).to_bytes(2, "big") + bytes(size - 4))
        missing -= size
    return data[:at] + b"".join(segments) + data[at:]


class ImageUrls:
    """Turns images into the URLs a worker's browser loads.

    Give it an S3 client configured for SigV4 (``Config(signature_version="s3v4")``): SigV4
    URLs carry their expiry (``X-Amz-Expires``), at most 7 days. With ``copies``, a HIT's page
    (``for_hit``) loads that HIT's own copies; calling the object with an image gives its
    original's URL (no page uses those since per-HIT copies exist).
    """

    def __init__(
        self,
        s3,
        bucket: str,
        *,
        expires_in: int,
        public_base_url: str | None = None,
        copies: HitCopies | None = None,
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
        self.copies = copies

    def __call__(self, image: ImageRef) -> str:
        return self.sign_together([image.key])[image.key]

    def for_hit(self, plan: HitPlan) -> Callable[[ImageRef], str]:
        """The URL function of one HIT's page: its copies' URLs, all signed at one instant."""
        keys = (
            self.copies.keys(plan)
            if self.copies is not None
            else {image.sha256: image.key for image in hit_images(plan)}
        )
        urls = self.sign_together(sorted(set(keys.values())))
        return lambda image: urls[keys[image.sha256]]

    def sign_together(self, keys: Sequence[str]) -> dict[str, str]:
        """Return ``key -> URL``; presigned URLs all carry the same signing time."""
        if self.public_base_url:
            return {key: f"{self.public_base_url}/{key}" for key in keys}
        for _ in range(SIGN_ATTEMPTS):
            urls = {
                key: self.s3.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": key},
                    ExpiresIn=self.expires_in,
                )
                for key in keys
            }
            if len({_signed_at(url) for url in urls.values()}) <= 1:
                return urls
        raise PublishNotNow(
            f"could not sign {len(keys)} image URLs within one second in {SIGN_ATTEMPTS} "
            "attempts (the clock kept moving on while signing): is the machine overloaded? "
            "Retry the task"
        )


def _signed_at(url: str) -> str:
    """A presigned URL's signing time: ``X-Amz-Date`` (SigV4) or ``Expires`` (SigV2)."""
    query = parse_qs(urlsplit(url).query)
    return (query.get("X-Amz-Date") or query.get("Expires") or [""])[0]
