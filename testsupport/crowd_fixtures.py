"""Fixtures of the crowd-stage tests (a plugin of tests/conftest.py): moto's S3 server, a
fresh bucket and ledger per test, and a crowd sandbox per test (all on 127.0.0.1)."""

from __future__ import annotations

import uuid

import pytest

from include.crowd.ledger import S3Ledger
from testsupport import sandbox_process as sandbox_fixtures
from testsupport.motokit import moto_s3, s3_client


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as url:
        yield url


@pytest.fixture
def ledger(s3_endpoint):
    """The ledger of batch ``batch-1`` in a bucket of its own."""
    s3 = s3_client(s3_endpoint)
    bucket = f"crowd-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=bucket)
    return S3Ledger(s3, bucket, "image-similarity", "batch-1")


@pytest.fixture
def crowd(tmp_path):
    running = sandbox_fixtures.start_sandbox(tmp_path / "sandbox.sqlite")
    yield running
    running.stop()
