"""The crowd sandbox's HTTP server: MTurk's requester API, the worker page, admin endpoints.

``POST /`` with an ``X-Amz-Target: MTurkRequesterServiceV20170117.<Operation>`` header is the
requester API (any credentials are accepted; signatures are not checked). ``/admin/faults``
reads (GET) or sets (POST, JSON) fault injection; ``/admin/clock`` reads the sandbox's time or
moves it forward (POST ``{"advance": seconds}``); ``/admin/health`` answers ``ok``. Every other
path belongs to the worker site (``worker_site.WorkerSite``).

What cannot be read is refused before it is routed, with a plain-text 4xx, and the connection
is closed (what is left of the body would otherwise be read as the next request): a body sent
without a Content-Length (411), a Content-Length that is not one whole number (400) or is over
``MAX_BODY_BYTES`` (413), a form or query string of more than ``MAX_FORM_FIELDS`` fields
(413, 414) or a multipart body of more than ``MAX_MULTIPART_PARTS`` parts (413).
"""

from __future__ import annotations

import email.policy
import json
import logging
import threading
import time
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from include.crowd_sandbox.core import DEFAULT_BALANCE
from include.crowd_sandbox.faults import FaultConfig, Faults
from include.crowd_sandbox.messages import Request, Response
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
from include.crowd_sandbox.requester import Sandbox
from include.crowd_sandbox.store import Store
from include.crowd_sandbox.worker_site import WorkerSite

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
# Form fields parsed from one body or query string: far more than any HIT's form has, few enough
# that parsing them costs little. The e-mail parser spends some 0.3 ms on each part of a
# multipart body (80,000 parts fit in 4 MB: half a minute), so those have a lower bound.
MAX_FORM_FIELDS = 10_000
MAX_MULTIPART_PARTS = 1_000
# Connections the kernel holds until a thread accepts them (socketserver's default is 5, which
# resets most of a burst of 200 clients). Linux caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 1024


# How long a stop waits for the simulated workers, then for requests being answered: together
# well under the 2 s a stop may take (a worker's request is answered in milliseconds).
WORKERS_STOP_SECONDS = 1.0
REQUESTS_DRAIN_SECONDS = 0.5


class RequestGate:
    """Counts the requests being answered; once closed, lets no new one in.

    The state is closed only when no request is using it, and a request on a kept-alive
    connection that arrives after the stop is answered 503 instead of reaching a closed database.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._active = 0
        self._closed = False

    def enter(self) -> bool:
        """Let a request in (True), unless the sandbox is stopping."""
        with self._changed:
            if self._closed:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._changed:
            self._active -= 1
            self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Let no new request in; wait up to ``timeout`` s for those in; True if none is left."""
        with self._changed:
            self._closed = True
            return self._changed.wait_for(lambda: self._active == 0, timeout)


class SandboxHTTPServer(ThreadingHTTPServer):
    """One daemon thread per connection, and a backlog that holds a burst of clients."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True  # a client that keeps its connection open cannot hold up a stop


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

        if workers:
            from include.crowd_sandbox.simulated_worker.profiles import parse_spec

            parse_spec(workers)  # a bad --workers fails here, before the URL is printed
        self.store = Store(state)
        self.sandbox = Sandbox(self.store, initial_balance=balance)
        self.faults = Faults(faults or FaultConfig())
        self.requests = RequestGate()
        self.httpd = SandboxHTTPServer((host, port), _handler_class(self))
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
        self.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.stop_after_serving()

    def shutdown(self) -> None:
        """End ``serve_forever`` (call it from another thread): the simulated workers first,
        while the server still answers their requests (a worker waiting on a server that no
        longer answers would hang until its HTTP timeout), then the server."""
        self._stop_workers()
        self.httpd.shutdown()

    def stop_after_serving(self) -> None:
        """Close everything once ``serve_forever`` has returned (after ``shutdown``)."""
        self._stop_workers()
        if not self.requests.close(REQUESTS_DRAIN_SECONDS):
            log.warning("closing the state with requests still being answered")
        self.httpd.server_close()
        self.store.close()

    def _stop_workers(self) -> None:
        if self._workers is not None:
            self._workers.stop(timeout=WORKERS_STOP_SECONDS)
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
                except (RecursionError, TypeError, ValueError) as error:
                    return _json(400, {"error": f"{error!s:.200}"})
            return _json(200, self.faults.snapshot())
        if request.path == "/admin/clock":
            if request.method == "POST":
                try:
                    advance = float(json.loads(request.headers.get("_body", "") or "{}")["advance"])
                    self.sandbox.advance_clock(advance)
                except (KeyError, RecursionError, TypeError, ValueError) as error:
                    return _json(400, {"error": f'POST {{"advance": seconds}}: {error!s:.200}'})
            return _json(200, {"now": self.sandbox.now()})
        return _json(404, {"error": f"no admin endpoint {request.path}"})


class BadRequest(Exception):
    """A request refused before it is routed: ``status`` and a one-line plain-text reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The text fields of a ``multipart/form-data`` body (uploaded files are not answers).

    Raise ``BadRequest`` (413) for a body of more than ``MAX_MULTIPART_PARTS`` parts.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    parser = BytesParser(policy=email.policy.HTTP)
    boundary = parser.parsebytes(head, headersonly=True).get_boundary()
    delimiter = b"--" + (boundary or "").encode("utf-8", "surrogateescape")
    if boundary and body.count(delimiter) > MAX_MULTIPART_PARTS + 1:
        raise BadRequest(413, f"the form has more than {MAX_MULTIPART_PARTS} parts")
    message = parser.parsebytes(head + body)
    if not message.is_multipart():
        return []
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None or part.get_filename() is not None:
            continue
        payload = part.get_payload(decode=True) or b""
        try:
            text = payload.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            text = payload.decode("utf-8", "replace")
        fields.append((str(name), text))
    return fields


def _form(text: str, where: str, status: int) -> list[tuple[str, str]]:
    """The fields of a query string or urlencoded body, refused past ``MAX_FORM_FIELDS``."""
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise BadRequest(status, f"{where} has more than {MAX_FORM_FIELDS} fields") from None


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

        def _body(self) -> bytes:
            """Read the body its Content-Length announces, or raise ``BadRequest``."""
            if self.headers.get("Transfer-Encoding"):
                raise BadRequest(411, "send the body with a Content-Length, not chunked")
            lengths = set(self.headers.get_all("Content-Length") or ())
            if not lengths:
                return b""
            text = lengths.pop().strip()
            if lengths or not text.isdigit():  # also refuses "-5", "+5" and "1_000"
                raise BadRequest(400, "Content-Length must be one whole number of bytes")
            if len(text) > 12 or int(text) > MAX_BODY_BYTES:
                raise BadRequest(413, f"request too large (at most {MAX_BODY_BYTES} bytes)")
            length = int(text)
            body = self.rfile.read(length) if length else b""
            if len(body) < length:
                raise BadRequest(400, "the body is shorter than its Content-Length")
            return body

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def _request(self, body: bytes) -> Request:
            parts = urlsplit(self.path)
            form: list[tuple[str, str]] = []
            content_type = self.headers.get("Content-Type", "")
            if body and content_type.startswith("application/x-www-form-urlencoded"):
                form = _form(body.decode("utf-8", "replace"), "the form", 413)
            elif body and content_type.startswith("multipart/form-data"):
                form = multipart_fields(content_type, body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            if content_type.startswith("application/json"):
                headers["_body"] = body.decode("utf-8", "replace")
            query = _form(parts.query, "the query string", 414)
            return Request(self.command, parts.path, query, form, headers)

        def _dispatch(self) -> None:
            if not service.requests.enter():
                self.close_connection = True
                self._send(Response(503, b"the crowd sandbox is stopping", "text/plain"))
                return
            try:
                self._answer()
            finally:
                service.requests.leave()

        def _answer(self) -> None:
            try:
                body = self._body()
                target = self.headers.get("X-Amz-Target")
                if self.command == "POST" and target:
                    self._send(service.handle_api(target, body))
                    return
                request = self._request(body)
            except BadRequest as refused:
                # What is left of the body cannot be told from a next request: hang up after.
                self.close_connection = True
                self._send(Response(refused.status, refused.reason.encode(), "text/plain"))
                return
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
