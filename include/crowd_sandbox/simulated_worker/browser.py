"""HTTP like a browser, on this machine only: pages and images from the sandbox and other
local servers, ``data:`` URLs, no proxies, no redirect off the machine."""

from __future__ import annotations

import base64
import binascii
import logging
import urllib.request
from collections.abc import Callable, Sequence
from urllib.parse import unquote_to_bytes, urlencode, urlsplit

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 5.0
MAX_PAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_BYTES = 20 * 1024 * 1024
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class NotLocal(Exception):
    """A URL that is not on this machine (never fetched)."""


class _LocalRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed: Callable[[str], bool]) -> None:
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        if not self.allowed(newurl):
            raise NotLocal(f"refusing to follow a redirect off this machine: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Browser:
    """GET and POST to the sandbox and other local servers (no proxies, no remote hosts)."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._own_host = (urlsplit(self.base_url).hostname or "").lower()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _LocalRedirects(self.is_local)
        )

    def is_local(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return parts.scheme in ("http", "https") and (host in LOCAL_HOSTS or host == self._own_host)

    def _open(self, url: str, data: bytes | None, limit: int) -> tuple[str, str]:
        if not self.is_local(url):
            raise NotLocal(url)
        request = urllib.request.Request(url, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with self._opener.open(request, timeout=self.timeout) as response:
            body = response.read(limit + 1)
            if len(body) > limit:
                raise ValueError(f"{url} is larger than {limit} bytes")
            charset = response.headers.get_content_charset() or "utf-8"
            return response.geturl(), body.decode(charset, "replace")

    def get(self, url: str) -> tuple[str, str]:
        """GET a page: ``(final URL, text)``; raises for non-2xx answers."""
        return self._open(url, None, MAX_PAGE_BYTES)

    def post(self, url: str, fields: Sequence[tuple[str, str]]) -> tuple[str, str]:
        return self._open(url, urlencode(list(fields)).encode("utf-8"), MAX_PAGE_BYTES)

    def image(self, url: str) -> bytes | None:
        """An image's bytes, or None when it is not local or fails to load."""
        if url.startswith("data:"):
            return _data_url(url)
        if not self.is_local(url):
            return None
        try:
            with self._opener.open(url, timeout=self.timeout) as response:
                body = response.read(MAX_IMAGE_BYTES + 1)
        except (OSError, ValueError, NotLocal) as error:
            log.debug("image %s did not load: %s", url, error)
            return None
        return body if len(body) <= MAX_IMAGE_BYTES else None


def _data_url(url: str) -> bytes | None:
    header, sep, payload = url.partition(",")
    if not sep:
        return None
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None
