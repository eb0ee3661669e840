"""A batch's durable state in S3: one JSON object per fact, under ``batches/<batch_id>/``.

Every side effect that costs money or mails a person is recorded here, one object per entry
(``ledger/<kind>/<key>.json``), written with a single ``PutObject`` so an object is either whole
or absent: a half-written ledger cannot confuse the next attempt. Whole files (``hits.jsonl``,
``reviews.jsonl``, results) are also written with one ``PutObject`` each.

Kinds used by the crowd stage:

- ``hits/<token>``: a created HIT (its ``HitPlan`` with ``hit_id``), written right after
  ``CreateHIT`` returns;
- ``reviews/<assignment_id>``: the review decision for an assignment;
- ``approvals/<assignment_id>``, ``bonuses/<hit_id>.<worker_id>``: done;
- ``emails/<worker_id>``: ``{"status": "sending" | "sent" | "failed"}``; claimed as
  "sending" *before* NotifyWorkers with a conditional write (``claim``), so neither a crash
  mid-call nor a concurrent review can lead to a second e-mail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

log = logging.getLogger(__name__)


class LedgerUnavailable(RuntimeError):
    """S3 could not be reached (or kept failing) after the client's retries."""


@contextmanager
def _reaching(ledger: S3Ledger, action: str, key: str):
    """Turn "S3 is down" errors into one clear message; other errors pass unchanged."""
    try:
        yield
    except (HTTPClientError, BotoCoreError) as error:
        raise LedgerUnavailable(ledger.unavailable(action, key, error)) from error
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status < 500:
            raise
        raise LedgerUnavailable(ledger.unavailable(action, key, error)) from error


class S3Ledger:
    """JSON objects under ``<prefix>/batches/<batch_id>/`` in a private bucket."""

    def __init__(self, s3, bucket: str, prefix: str, batch_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.root = "/".join(p for p in (prefix.strip("/"), "batches", batch_id) if p)

    def key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def unavailable(self, action: str, key: str, error: Exception) -> str:
        return (
            f"S3 is unavailable: could not {action} s3://{self.bucket}/{key} ({error}). Nothing "
            "is lost: every step done so far is recorded, and a retry of this task continues "
            "from there without repeating any payment or e-mail"
        )

    # --- whole files ------------------------------------------------------------------------

    def put_bytes(self, name: str, data: bytes, content_type: str) -> str:
        key = self.key(name)
        with _reaching(self, "write", key):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return key

    def put_json(self, name: str, doc: Any) -> str:
        body = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")
        return self.put_bytes(name, body, "application/json")

    def get_bytes(self, name: str) -> bytes | None:
        try:
            with _reaching(self, "read", self.key(name)):
                response = self.s3.get_object(Bucket=self.bucket, Key=self.key(name))
                return response["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def get_json(self, name: str) -> Any | None:
        data = self.get_bytes(name)
        return None if data is None else json.loads(data)

    # --- ledger entries ---------------------------------------------------------------------

    def entry_name(self, kind: str, key: str) -> str:
        return f"ledger/{kind}/{key}.json"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.get_json(self.entry_name(kind, key))

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        self.put_json(self.entry_name(kind, key), doc)

    def claim(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Write an entry only if it does not exist yet (S3 conditional write); return whether
        this call wrote it. Two processes claiming the same entry: exactly one gets True."""
        return self.put_json_once(self.entry_name(kind, key), doc)

    def put_json_once(self, name: str, doc: Any) -> bool:
        """Write a JSON file only if it does not exist yet (``If-None-Match: *``); return
        whether this call wrote it (False: it was there, or another writer is writing it)."""
        key = self.key(name)
        body = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")
        try:
            with _reaching(self, "write", key):
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    IfNoneMatch="*",
                )
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status in (409, 412):  # exists, or another writer is writing it right now
                return False
            raise
        return True

    def delete(self, kind: str, key: str) -> None:
        name = self.key(self.entry_name(kind, key))
        with _reaching(self, "delete", name):
            self.s3.delete_object(Bucket=self.bucket, Key=name)

    def entries(self, kind: str, *, threads: int = 16) -> dict[str, dict[str, Any]]:
        """Every entry of a kind, by key (one ListObjectsV2 walk, then the GETs in parallel)."""
        keys = [
            key
            for key in self._keys(f"{self.root}/ledger/{kind}/")
            if key.rsplit("/", 1)[-1].endswith(".json")
        ]

        def read(key: str) -> tuple[str, dict[str, Any]]:
            with _reaching(self, "read", key):
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return key.rsplit("/", 1)[-1][: -len(".json")], json.loads(body)

        if len(keys) < 2:
            return dict(map(read, keys))
        with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
            return dict(pool.map(read, keys))

    def has_entries(self, kind: str) -> bool:
        """Whether the ledger holds at least one entry of a kind (one small listing)."""
        prefix = f"{self.root}/ledger/{kind}/"
        with _reaching(self, "list", prefix):
            page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def _keys(self, prefix: str) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        with _reaching(self, "list", prefix):
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]
