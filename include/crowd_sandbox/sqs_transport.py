"""How the sandbox sends notification messages: to an Amazon SQS queue on this machine.

The sandbox's own rule, stricter than MTurk's: a queue URL must name 127.0.0.1 or localhost
(``local_queue_endpoint``), so a notification never leaves the machine; a real queue such as
``https://sqs.us-east-1.amazonaws.com/123456789012/q`` is refused when it is configured. The
queue URL's scheme, 127.0.0.1 and its port are the SQS endpoint (moto's server in the tests and
the demo), in region us-east-1 with throw-away credentials (moto takes any).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
REGION = "us-east-1"
# One attempt per send, and short timeouts: a send runs before the worker or requester who caused
# the event gets its answer, and a message that fails is kept and sent again later.
CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 5


def local_queue_endpoint(queue_url: str) -> str:
    """The SQS endpoint (``scheme://127.0.0.1:port``) of a queue URL on this machine.

    Raise ``ValueError`` naming the rule for any other URL.
    """
    try:
        parts = urlsplit(queue_url)
        port = parts.port
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        parts, port = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or parts.hostname not in LOCAL_HOSTS
        or parts.username is not None
        or not parts.path.strip("/")
    ):
        raise ValueError(
            f"The crowd sandbox sends SQS notifications only to a queue on this machine: "
            f"Destination must be a queue URL on 127.0.0.1 or localhost, such as "
            f"http://127.0.0.1:5000/123456789012/my-queue (moto's server), not {queue_url!r}"
        )
    netloc = "127.0.0.1" if port is None else f"127.0.0.1:{port}"
    return f"{parts.scheme}://{netloc}"


class SQSSender:
    """Send message bodies to local SQS queues with boto3, one client per endpoint."""

    def __init__(self) -> None:
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def _client(self, endpoint: str):
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                import boto3  # only a sandbox that sends notifications pays for importing it
                from botocore.config import Config

                client = boto3.client(
                    "sqs",
                    endpoint_url=endpoint,
                    region_name=REGION,
                    aws_access_key_id="crowd-sandbox",
                    aws_secret_access_key="crowd-sandbox",
                    config=Config(
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        connect_timeout=CONNECT_TIMEOUT_S,
                        read_timeout=READ_TIMEOUT_S,
                        proxies={},  # straight to 127.0.0.1, whatever HTTP(S)_PROXY says
                    ),
                )
                self._clients[endpoint] = client
            return client

    def send(self, queue_url: str, body: str) -> str:
        """Send one message; return its SQS MessageId. Raise botocore's errors on failure
        (``ValueError`` for a queue URL that is not on this machine)."""
        response = self._client(local_queue_endpoint(queue_url)).send_message(
            QueueUrl=queue_url, MessageBody=body
        )
        return response["MessageId"]
