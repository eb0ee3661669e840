"""Qualifying: a simulated worker whose HIT needs a qualification it lacks takes the
qualification test the HIT page offers (or requests the qualification), through the same pages
a person uses (``qualification_pages``), answering the test like any form (``answer_form``:
image questions by looking, as its profile does, other questions by its profile's guesses)."""

from __future__ import annotations

import random
import re
import urllib.error
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from include.crowd_sandbox.simulated_worker.answering import answer_form
from include.crowd_sandbox.simulated_worker.browser import Browser
from include.crowd_sandbox.simulated_worker.page import parse_html, understand
from include.crowd_sandbox.simulated_worker.profiles import Profile

_OFFER_PATH = re.compile(r"^/qualification/([A-Za-z0-9]+)/?$")


def qualification_offers(html: str, url: str) -> list[tuple[str, str]]:
    """The ``(QualificationTypeId, URL)`` of each "Take the qualification test" or "Request
    qualification" link of a HIT page (``a.qualification-offer``), in page order."""
    found: list[tuple[str, str]] = []
    for anchor in parse_html(html).iter("a"):
        if "qualification-offer" not in (anchor.get("class") or "").split():
            continue
        target = urljoin(url, anchor.get("href") or "")
        match = _OFFER_PATH.match(urlsplit(target).path)
        if match and all(type_id != match.group(1) for type_id, _ in found):
            found.append((match.group(1), target))
    return found


def qualify(
    browser: Browser,
    url: str,
    profile: Profile,
    rng: random.Random,
    fetch: Callable[[str], bytes | None],
    *,
    first_option: bool = False,
) -> str:
    """Take the test (or send the request) at ``url``; return the outcome: ``Granted``,
    ``Submitted`` (for the requester to review), or ``refused`` / ``failed``."""
    try:
        page_url, html = browser.get(url)
    except urllib.error.HTTPError:
        return "refused"  # e.g. 409: no retries, or a request under review
    root = parse_html(html)
    request = next((f for f in root.iter("form") if f.get("id") == "request-qualification"), None)
    if request is not None:
        action = urljoin(page_url, request.get("action") or page_url)
        fields = [
            (node.get("name") or "", node.get("value") or "")
            for node in request.iter("input")
            if node.get("name")
        ]
    else:
        form = understand(html, page_url)
        if not form.controls and not form.questions:
            return "refused"
        fields = answer_form(form, profile, rng, fetch, first_option=first_option).fields
        action = form.action or page_url
    try:
        _, outcome = browser.post(action, fields)
    except urllib.error.HTTPError:
        return "failed"  # answers the test refuses, or its time ran out
    match = re.search(r'id="outcome"[^>]*data-status="([A-Za-z]+)"', outcome)
    return match.group(1) if match else "failed"
