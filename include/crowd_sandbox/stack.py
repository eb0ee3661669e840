"""The embedded default's services on 127.0.0.1: moto's server (S3, and SQS for the crowd
sandbox's notifications: moto serves every service on its one port) and the crowd sandbox.

Used by ``make demo`` and the end-to-end tests::

    with LocalStack(state_dir, workers="diligent:6,careless:3,spammer:1") as stack:
        env = {**os.environ, **stack.airflow_env()}   # an aws_default connection pointing here
        subprocess.run(["airflow", "dags", "test", ...], env=env)

Both run as child processes started the way a user would start them (``moto_server``,
``python -m include.crowd_sandbox``) and are stopped on exit, also when the block fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_CREDENTIALS = {"login": "local-demo", "password": "local-demo-secret"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {seconds:.0f} s") from None
            time.sleep(0.2)


class LocalStack:
    """Start moto's S3 server and the crowd sandbox; give Airflow a connection to both."""

    def __init__(
        self,
        state_dir: Path,
        *,
        bucket: str = "image-similarity-demo",
        workers: str | None = "diligent:6,careless:3,spammer:1",
        seconds_per_assignment: float = 1.0,
        worker_seed: int | None = 0,
        balance: str = "10000.00",
        fresh: bool = True,
        extra_sandbox_args: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = Path(state_dir)
        self.bucket = bucket
        self.workers = workers
        self.seconds_per_assignment = seconds_per_assignment
        self.worker_seed = worker_seed
        self.balance = balance
        self.fresh = fresh
        self.extra_sandbox_args = extra_sandbox_args
        self.s3_url = ""
        self.sandbox_url = ""
        self._processes: list[subprocess.Popen] = []

    @property
    def sandbox_state(self) -> Path:
        return self.state_dir / "sandbox.sqlite"

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.sandbox_state}{suffix}").unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        port = _free_port()
        moto_log = (self.state_dir / "moto.log").open("w")
        self._processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=moto_log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        self.s3_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{self.s3_url}/moto-api/")
        command = [
            sys.executable, "-m", "include.crowd_sandbox", "--port", "0",
            "--state", str(self.sandbox_state), "--balance", self.balance,
            "--seconds-per-assignment", str(self.seconds_per_assignment),
            *self.extra_sandbox_args,
        ]  # fmt: skip
        if self.workers:
            command += ["--workers", self.workers]
        if self.worker_seed is not None:
            command += ["--worker-seed", str(self.worker_seed)]
        sandbox_log = (self.state_dir / "sandbox.log").open("w")
        sandbox = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=sandbox_log,
            text=True,
            env=env,
        )
        self._processes.append(sandbox)
        self.sandbox_url = (sandbox.stdout.readline() if sandbox.stdout else "").strip()
        if not self.sandbox_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(
                f"the crowd sandbox did not start; see {self.state_dir / 'sandbox.log'}"
            )
        self.s3_client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._processes.clear()

    def connection(self) -> dict[str, Any]:
        """The ``aws_default`` connection: S3 at moto, MTurk at the sandbox (service_config)."""
        return {
            "conn_type": "aws",
            **DEMO_CREDENTIALS,
            "extra": {
                "region_name": "us-east-1",
                "service_config": {
                    "s3": {"endpoint_url": self.s3_url},
                    "mturk": {"endpoint_url": self.sandbox_url},
                },
            },
        }

    def airflow_env(self, conn_id: str = "aws_default") -> dict[str, str]:
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.connection())}

    def _client(self, service: str, endpoint_url: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=DEMO_CREDENTIALS["login"],
            aws_secret_access_key=DEMO_CREDENTIALS["password"],
        )

    def s3_client(self):
        return self._client("s3", self.s3_url)

    def sqs_client(self):
        """SQS on moto's server (the S3 endpoint: moto serves every service on one port)."""
        return self._client("sqs", self.s3_url)

    def create_queue(self, name: str = "mturk-notifications") -> str:
        """Create an SQS queue for the sandbox's notifications (UpdateNotificationSettings'
        Destination, Transport SQS); return its URL, on 127.0.0.1 as the sandbox requires."""
        return self.sqs_client().create_queue(QueueName=name)["QueueUrl"]

    def mturk_client(self):
        return self._client("mturk", self.sandbox_url)
