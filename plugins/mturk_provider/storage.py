"""The S3 client the crowd stage uses, built once for both DAG files.

It signs with SigV4 (``X-Amz-Expires`` in every presigned URL, at most 7 days), which the
images workers see need; everything else (ledger, manifest, results) uses the same client.
Its connection pool holds ``POOL`` connections, as many as the crowd stage's threads use at once
(the ledger reads entries with 16): botocore's default of 10 made urllib3 discard connections,
with a warning each, on every review.
"""

from __future__ import annotations

POOL = 32


def sigv4_s3_client(aws_conn_id: str):
    """An S3 client from the AWS connection ``aws_conn_id``, signing presigned URLs with SigV4."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    return S3Hook(
        aws_conn_id=aws_conn_id, config=Config(signature_version="s3v4", max_pool_connections=POOL)
    ).conn
