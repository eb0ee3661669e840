"""moto's S3 server on 127.0.0.1 (no AWS traffic) and boto3 clients for it, for every test that
needs a real S3 API: ``from testsupport.motokit import moto_s3, s3_client``."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import boto3
from botocore.config import Config


@contextmanager
def moto_s3(port: int = 0) -> Generator[str, None, None]:
    """Run moto's S3 server (on ``port``, 0: a free one); yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.stop()


def s3_client(endpoint_url: str, **config):
    """A boto3 S3 client for ``endpoint_url`` with throw-away keys; ``config``: botocore Config."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(**config) if config else None,
    )
