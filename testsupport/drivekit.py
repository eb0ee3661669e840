"""Google Drive v3 for tests, behind googleapiclient's real request path (no network at all).

Both kinds of fake take the place of the ``http`` object a Drive service is built on
(``drive_service(http)``: the discovery document shipped with googleapiclient), so every request
is built, serialised and parsed by googleapiclient itself: query parameters, multipart uploads,
error bodies turned into ``HttpError``.

- ``HttpMockSequence(responses)`` (googleapiclient's) answers requests in order with canned
  responses, such as ``error(...)`` below. Good for a read whose exact requests matter.
- ``FakeDrive`` keeps files and folders in memory and answers ``files.get``, ``files.list``
  (``q`` is parsed, literals unescaped as Drive does; an unknown clause or escape is a 400),
  ``files.create`` (folders, and multipart uploads) and ``files.update`` (content) as Drive
  does, so a second run sees what the first one left. ``fail(...)`` makes one request fail,
  before or after it took effect (an answer lost on the way back).

Both record ``request_sequence`` as ``(uri, method, body, headers)``; ``requested(http)`` gives
each request's path and query parameters.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httplib2
from googleapiclient.discovery import build

FOLDER_MIME_TYPE = "application/vnd.google-apps.folder"
Response = tuple[dict[str, str], bytes | str]
_PUBLIC = ("id", "name", "mimeType", "parents", "trashed", "createdTime", "md5Checksum", "size")


def drive_service(http: Any) -> Any:
    """A Drive v3 service whose requests go to ``http`` (a fake; nothing leaves the process)."""
    return build("drive", "v3", http=http, static_discovery=True)


def error(status: int, message: str, reason: str = "notFound", *, detail: str = "") -> Response:
    """A Drive error response as Google sends it; ``detail``: the ``google.rpc.ErrorInfo``
    reason Google adds to some (``ACCESS_TOKEN_SCOPE_INSUFFICIENT``)."""
    body: dict[str, Any] = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}],
        }
    }
    if detail:
        body["error"]["status"] = "PERMISSION_DENIED"
        body["error"]["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": detail,
                "domain": "googleapis.com",
                "metadata": {"service": "drive.googleapis.com"},
            }
        ]
    return {"status": str(status)}, json.dumps(body)


def insufficient_scope() -> Response:
    """The 403 Drive answers a token without the scope a request needs."""
    return error(
        403,
        "Request had insufficient authentication scopes.",
        "insufficientPermissions",
        detail="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
    )


def query_of(uri: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(uri).query).items()}


def requested(http: Any) -> list[tuple[str, dict[str, str]]]:
    """Return ``(path, query parameters)`` of every request the fake answered."""
    return [(urlsplit(uri).path, query_of(uri)) for uri, *_ in http.request_sequence]


@dataclass
class _Fault:
    method: str
    path: str
    response: Response
    after_applying: bool


@dataclass
class Upload:
    """What one multipart upload carried: its metadata and its content."""

    metadata: dict[str, Any]
    data: bytes
    content_type: str


@dataclass
class FakeDrive:
    """An in-memory Drive v3 (see the module docstring); ``service`` is built on it."""

    request_sequence: list[tuple[str, str, Any, dict]] = field(default_factory=list)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    content: dict[str, bytes] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def service(self) -> Any:
        return drive_service(self)

    # --- set-up and inspection ----------------------------------------------------------------

    def add_folder(
        self,
        name: str,
        parent: str | None = None,
        *,
        file_id: str | None = None,
        can_add_children: bool = True,
        drive_id: str | None = None,
    ) -> str:
        item = self._new(name, FOLDER_MIME_TYPE, parent, file_id)
        item["capabilities"] = {"canAddChildren": can_add_children}
        if drive_id:
            item["driveId"] = drive_id
        return item["id"]

    def add_file(self, name: str, parent: str, data: bytes, mime_type: str = "image/jpeg") -> str:
        item = self._new(name, mime_type, parent, None)
        self._store(item, data)
        return item["id"]

    def children(self, folder_id: str) -> list[dict[str, Any]]:
        """The items directly in ``folder_id`` that are not trashed, in creation order."""
        return [i for i in self.items.values() if folder_id in i["parents"] and not i["trashed"]]

    def named(self, folder_id: str) -> dict[str, bytes]:
        """``name -> content`` of the files in ``folder_id`` (one entry per name)."""
        return {i["name"]: self.content.get(i["id"], b"") for i in self.children(folder_id)}

    def fail(
        self, method: str, path: str, response: Response, *, after_applying: bool = False
    ) -> None:
        """Answer the next ``method`` request whose path starts with ``path`` with ``response``;
        ``after_applying``: do what it asks first (the answer is lost, the change is not)."""
        self._faults.append(_Fault(method, path, response, after_applying))

    # --- the http object googleapiclient calls ------------------------------------------------

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: dict | None = None,
        redirections: int = 1,
        connection_type: Any = None,
    ) -> tuple[httplib2.Response, bytes]:
        headers = headers or {}
        self.request_sequence.append((uri, method, body, headers))
        path, params = urlsplit(uri).path, query_of(uri)
        fault = next(
            (f for f in self._faults if f.method == method and path.startswith(f.path)), None
        )
        if fault is not None:
            self._faults.remove(fault)
            if fault.after_applying:
                self._answer(method, path, params, body, headers)
            status, content = fault.response
            return httplib2.Response(status), _bytes(content)
        status, content = self._answer(method, path, params, body, headers)
        return httplib2.Response(status), _bytes(content)

    def _answer(self, method: str, path: str, params: dict, body: Any, headers: dict) -> Response:
        if params.get("supportsAllDrives") != "true":
            return error(400, "this fake only serves requests with supportsAllDrives=true")
        one = re.fullmatch(r"/(?:upload/)?drive/v3/files/([^/]+)", path)
        if method == "GET" and path == "/drive/v3/files":
            return self._list(params)
        if method == "GET" and one:
            item = self.items.get(one.group(1))
            if item is None:
                return error(404, f"File not found: {one.group(1)}.")
            return _ok(_public(item))
        if method == "POST" and path == "/drive/v3/files":
            return self._create(json.loads(_text(body)), None, None)
        if method == "POST" and path == "/upload/drive/v3/files":
            metadata, data, content_type = _parts(body, headers, params)
            return self._create(metadata, data, content_type)
        if method == "PATCH" and one and path.startswith("/upload/"):
            item = self.items.get(one.group(1))
            if item is None:
                return error(404, f"File not found: {one.group(1)}.")
            metadata, data, content_type = _parts(body, headers, params)
            self.uploads.append(Upload(metadata, data, content_type))
            item.update({k: v for k, v in metadata.items() if k in ("name", "mimeType")})
            self._store(item, data)
            return _ok(_public(item))
        return error(400, f"this fake does not serve {method} {path}", "badRequest")

    # --- Drive's operations -------------------------------------------------------------------

    def _list(self, params: dict) -> Response:
        try:
            test = _compile(params.get("q", ""))
        except ValueError as problem:
            return error(400, f"Invalid Value: {problem}", "invalid")
        if params.get("corpora") == "drive":
            if not params.get("driveId") or params.get("includeItemsFromAllDrives") != "true":
                return error(400, "corpora=drive needs driveId and includeItemsFromAllDrives")
        matching = [i for i in self.items.values() if test(i)]
        if params.get("corpora") == "drive":
            matching = [i for i in matching if i.get("driveId") == params["driveId"]]
        order = params.get("orderBy", "")
        if order in ("name", "createdTime"):
            matching.sort(key=lambda i: (i[order], i["createdTime"]))
        start = int(params.get("pageToken", "0"))
        size = int(params.get("pageSize", "100"))
        page: dict[str, Any] = {"files": [_public(i) for i in matching[start : start + size]]}
        if start + size < len(matching):
            page["nextPageToken"] = str(start + size)
        return _ok(page)

    def _create(
        self, metadata: dict[str, Any], data: bytes | None, content_type: str | None
    ) -> Response:
        parents = metadata.get("parents") or []
        for parent in parents:
            folder = self.items.get(parent)
            if folder is None:
                return error(404, f"File not found: {parent}.")
            if not folder.get("capabilities", {}).get("canAddChildren", True):
                return error(
                    403,
                    "The user does not have sufficient permissions for this file.",
                    "insufficientFilePermissions",
                )
        mime_type = metadata.get("mimeType") or content_type or "application/octet-stream"
        item = self._new(metadata.get("name", "Untitled"), mime_type, None, None)
        item["parents"] = list(parents)
        if parents and "driveId" in self.items[parents[0]]:
            item["driveId"] = self.items[parents[0]]["driveId"]
        if data is not None:
            self.uploads.append(Upload(metadata, data, content_type or ""))
            self._store(item, data)
        return _ok(_public(item))

    def _new(self, name: str, mime_type: str, parent: str | None, file_id: str | None) -> dict:
        number = next(self._ids)
        item = {
            "id": file_id or f"fake{number:06d}",
            "name": name,
            "mimeType": mime_type,
            "parents": [parent] if parent else [],
            "trashed": False,
            "createdTime": f"2026-01-01T00:00:{number:02d}.000Z",
        }
        if parent and "driveId" in self.items.get(parent, {}):
            item["driveId"] = self.items[parent]["driveId"]
        self.items[item["id"]] = item
        return item

    def _store(self, item: dict, data: bytes) -> None:
        self.content[item["id"]] = data
        item["md5Checksum"] = hashlib.md5(data).hexdigest()
        item["size"] = str(len(data))


# --- the q language, as far as these tests use it ------------------------------------------------


def _compile(q: str):
    """A predicate on an item for Drive query ``q`` (clauses joined by ``and``)."""
    tokens = _tokens(q)
    if not tokens:
        return lambda item: True
    clauses: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token == ("word", "and"):
            clauses.append([])
        else:
            clauses[-1].append(token)
    tests = [_clause(clause) for clause in clauses]
    return lambda item: all(test(item) for test in tests)


def _clause(tokens: list[tuple[str, str]]):
    kinds = [kind for kind, _ in tokens]
    values = [value for _, value in tokens]
    if kinds == ["str", "word", "word"] and values[1:] == ["in", "parents"]:
        return lambda item: values[0] in item["parents"]
    if kinds == ["word", "word", "str"] and values[0] in ("name", "mimeType") and values[1] == "=":
        return lambda item: item[values[0]] == values[2]
    if kinds == ["word", "word", "word"] and values[:2] == ["trashed", "="]:
        if values[2] not in ("true", "false"):
            raise ValueError(f"trashed = {values[2]}")
        return lambda item: item["trashed"] == (values[2] == "true")
    raise ValueError(f"unsupported clause {values}")


def _tokens(q: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(q):
        if q[i].isspace():
            i += 1
        elif q[i] == "'":
            i, literal = _literal(q, i + 1)
            tokens.append(("str", literal))
        else:
            j = i
            while j < len(q) and not q[j].isspace() and q[j] != "'":
                j += 1
            tokens.append(("word", q[i:j]))
            i = j
    return tokens


def _literal(q: str, i: int) -> tuple[int, str]:
    """Read a string literal starting after its quote; return the index after it and its value."""
    chars = []
    while i < len(q):
        char = q[i]
        if char == "\\":
            if i + 1 >= len(q) or q[i + 1] not in "\\'":
                raise ValueError(f"bad escape at {i} in {q!r}")
            chars.append(q[i + 1])
            i += 2
        elif char == "'":
            return i + 1, "".join(chars)
        else:
            chars.append(char)
            i += 1
    raise ValueError(f"unterminated string in {q!r}")


# --- wire formats ------------------------------------------------------------------------------


def _parts(body: Any, headers: dict, params: dict) -> tuple[dict[str, Any], bytes, str]:
    """Metadata, content and content type of an upload (``uploadType`` multipart or media)."""
    content_type = headers.get("content-type", "")
    raw = body if isinstance(body, bytes) else _text(body).encode()
    if params.get("uploadType") == "media":
        return {}, raw, content_type
    if params.get("uploadType") != "multipart":
        raise AssertionError(f"unexpected uploadType {params.get('uploadType')!r}")
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    pieces = raw.split(b"--" + boundary)
    assert pieces[0] == b"" and pieces[-1].strip() == b"--", "not a multipart body"
    parsed = []
    for piece in pieces[1:-1]:
        head, _, payload = piece.partition(b"\n\n")
        assert payload.endswith(b"\n"), "a part must end before its delimiter line"
        part_type = re.search(rb"Content-Type: ([^\n]+)", head).group(1).decode()
        parsed.append((part_type, payload[:-1]))
    (meta_type, meta), (media_type, data) = parsed
    assert meta_type == "application/json"
    return json.loads(meta), data, media_type


def _public(item: dict) -> dict:
    shown = {key: item[key] for key in _PUBLIC if key in item}
    for key in ("driveId", "capabilities"):
        if key in item:
            shown[key] = item[key]
    return shown


def _ok(body: dict) -> Response:
    return {"status": "200"}, json.dumps(body)


def _text(body: Any) -> str:
    return body.decode() if isinstance(body, bytes) else (body or "")


def _bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else content
