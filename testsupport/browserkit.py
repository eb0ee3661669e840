"""Pages of the tests' headless Chromium (the ``browser`` fixture) that may not leave the
machine: every request to an origin not allowed is aborted and noted."""

from __future__ import annotations


def local_page(browser, allowed: tuple[str, ...], foreign: list[str], **context):
    """A page that may only load from ``allowed`` origins (and ``data:``, ``about:``); anything
    else is aborted and its URL appended to ``foreign``. ``context``: Playwright's context
    options (a 1280x900 viewport unless given)."""
    context = browser.new_context(**({"viewport": {"width": 1280, "height": 900}} | context))

    def guard(route):
        url = route.request.url
        if url.startswith(tuple(origin + "/" for origin in allowed) + ("data:", "about:")):
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(20_000)
    return page
