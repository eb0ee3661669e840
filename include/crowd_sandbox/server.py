"""The crowd sandbox's HTTP server: MTurk's requester API, the worker page, admin endpoints.

``POST /`` with an ``X-Amz-Target: MTurkRequesterServiceV20170117.<Operation>`` header is the
requester API (any credentials are accepted; signatures are not checked). ``/admin/faults``
reads (GET) or sets (POST, JSON) fault injection; ``/admin/clock`` reads the sandbox's time or
moves it forward (POST ``{"advance": seconds}``); ``/admin/health`` answers ``ok``. Every other
path belongs to the worker site (``worker_site.WorkerSite``).
"""

from __future__ import annotations

import email.policy
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from include.crowd_sandbox.faults import FaultConfig, Faults
from include.crowd_sandbox.protocol import (
    CONTENT_TYPE,
    MTurkError,
    ServiceFault,
    ServiceUnavailable,
    Throttled,
    new_request_id,
    operation,
    parse_request,
    shape_response,
)
from include.crowd_sandbox.requester import DEFAULT_BALANCE, Sandbox
from include.crowd_sandbox.store import Store

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    headers: dict[str, str]

    def arg(self, name: str, default: str | None = None) -> str | None:
        for key, value in [*self.query, *self.form]:
            if key == name:
                return value
        return default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class CrowdSandbox:
    """The whole service: state, API, worker site and (optionally) simulated workers."""

    def __init__(
        self,
        state: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8911,
        balance: str = DEFAULT_BALANCE,
        faults: FaultConfig | None = None,
        workers: str | None = None,
        seconds_per_assignment: float = 2.0,
        worker_seed: int | None = None,
    ) -> None:
        from include.crowd_sandbox.worker_site import WorkerSite

        if workers:
            from include.crowd_sandbox.workers import parse_spec

            parse_spec(workers)  # a bad --workers fails here, before the URL is printed
        self.store = Store(state)
        self.sandbox = Sandbox(self.store, initial_balance=balance)
        self.faults = Faults(faults or FaultConfig())
        self.httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self.site = WorkerSite(self.sandbox, self.url)
        self._workers_spec = workers
        self._seconds_per_assignment = seconds_per_assignment
        self._worker_seed = worker_seed
        self._workers = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> CrowdSandbox:
        """Serve in a background thread (tests); ``serve_forever`` serves in this one."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="crowd-sandbox", daemon=True
        )
        self._thread.start()
        self._start_workers()
        return self

    def serve_forever(self) -> None:
        self._start_workers()
        self.httpd.serve_forever()

    def _start_workers(self) -> None:
        if self._workers_spec and self._workers is None:
            from include.crowd_sandbox.workers import SimulatedWorkers

            self._workers = SimulatedWorkers(
                self.url,
                self._workers_spec,
                seconds_per_assignment=self._seconds_per_assignment,
                seed=self._worker_seed,
                register=self.sandbox.register_worker,
            )
            self._workers.start()

    def stop(self) -> None:
        """Stop a sandbox started with ``start``: workers, then the server, then the state."""
        self._stop_workers()
        self.httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.stop_after_serving()

    def stop_after_serving(self) -> None:
        """Close everything once ``serve_forever`` has returned (after a signal)."""
        self._stop_workers()
        self.httpd.server_close()
        self.store.close()

    def _stop_workers(self) -> None:
        if self._workers is not None:
            self._workers.stop()
            self._workers = None

    # --- requests -------------------------------------------------------------------------

    def handle_api(self, target: str | None, body: bytes) -> Response:
        request_id = new_request_id()
        started = time.monotonic()
        name = (target or "").rsplit(".", 1)[-1]
        try:
            op = operation(target)
            decision = self.faults.decide()
            if decision.slow:
                time.sleep(decision.slow)
            if decision.fault == "throttle":
                raise Throttled()
            if decision.fault == "error-before":
                raise ServiceUnavailable() if decision.status == 503 else _service_fault()
            params = parse_request(op, body)
            result = self.sandbox.call(op.name, params, request_id)
            if decision.fault == "error-after":
                raise ServiceUnavailable() if decision.status == 503 else _service_fault()
            status, payload = 200, shape_response(op, result)
        except MTurkError as error:
            status, payload = error.status, error.body(request_id)
        except Exception:
            log.exception("internal error in %s", name)
            error = _service_fault()
            status, payload = error.status, error.body(request_id)
        log.info(
            "%s %d %s %.0f ms",
            name,
            status,
            payload.get("__type", "ok"),
            (time.monotonic() - started) * 1000,
        )
        return Response(
            status,
            json.dumps(payload).encode("utf-8"),
            CONTENT_TYPE,
            {"x-amzn-RequestId": request_id},
        )

    def handle_admin(self, request: Request) -> Response:
        if request.path == "/admin/health":
            return Response(200, b"ok", "text/plain")
        if request.path == "/admin/faults":
            if request.method == "POST":
                try:
                    settings = json.loads(request.headers.get("_body", "") or "{}")
                    self.faults.configure(**settings)
                except (TypeError, ValueError) as error:
                    return _json(400, {"error": str(error)})
            return _json(200, self.faults.snapshot())
        if request.path == "/admin/clock":
            if request.method == "POST":
                try:
                    advance = float(json.loads(request.headers.get("_body", "") or "{}")["advance"])
                    self.sandbox.advance_clock(advance)
                except (KeyError, TypeError, ValueError) as error:
                    return _json(400, {"error": f'POST {{"advance": seconds}}: {error}'})
            return _json(200, {"now": self.sandbox.now()})
        return _json(404, {"error": f"no admin endpoint {request.path}"})


def multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The text fields of a ``multipart/form-data`` body (uploaded files are not answers)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return []
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None or part.get_filename() is not None:
            continue
        payload = part.get_payload(decode=True) or b""
        fields.append((str(name), payload.decode(part.get_content_charset() or "utf-8", "replace")))
    return fields


def _service_fault() -> ServiceFault:
    return ServiceFault("We encountered an internal error. Please try the request again.")


def _json(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), "application/json")


def _handler_class(service: CrowdSandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "CrowdSandbox/1"
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms ACK stall

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s " + format, self.address_string(), *args)

        def _body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(Response(413, b"request too large", "text/plain"))
                return None
            return self.rfile.read(length) if length else b""

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def _request(self, body: bytes) -> Request:
            parts = urlsplit(self.path)
            form: list[tuple[str, str]] = []
            content_type = self.headers.get("Content-Type", "")
            if body and content_type.startswith("application/x-www-form-urlencoded"):
                form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            elif body and content_type.startswith("multipart/form-data"):
                form = multipart_fields(content_type, body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            if content_type.startswith("application/json"):
                headers["_body"] = body.decode("utf-8", "replace")
            return Request(
                self.command,
                parts.path,
                parse_qsl(parts.query, keep_blank_values=True),
                form,
                headers,
            )

        def _dispatch(self) -> None:
            body = self._body()
            if body is None:
                return
            target = self.headers.get("X-Amz-Target")
            if self.command == "POST" and target:
                self._send(service.handle_api(target, body))
                return
            request = self._request(body)
            try:
                if request.path.startswith("/admin/"):
                    response = service.handle_admin(request)
                else:
                    response = service.site.handle(request)
            except Exception:
                log.exception("worker site failed on %s %s", request.method, request.path)
                response = Response(500, b"internal error", "text/plain")
            self._send(response)

        do_GET = do_POST = do_HEAD = _dispatch  # noqa: N815

    return Handler
