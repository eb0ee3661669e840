"""Fixtures that start the crowd sandbox the way users do (``python -m include.crowd_sandbox``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from testsupport.browserkit import local_page
from testsupport.sandbox_process import (  # noqa: F401  (re-exported for the tests of this folder)
    HTML_QUESTION,
    PROJECT_ROOT,
    RunningSandbox,
    html_question,
    http,
    start_sandbox,
)


@pytest.fixture
def sandbox_factory(tmp_path) -> Iterator[Callable[..., RunningSandbox]]:
    started: list[RunningSandbox] = []

    def factory(*args: str, state: Path | None = None) -> RunningSandbox:
        running = start_sandbox(state or tmp_path / "sandbox.sqlite", *args)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def sandbox(sandbox_factory) -> RunningSandbox:
    return sandbox_factory()


@pytest.fixture
def mturk(sandbox):
    return sandbox.client()


@pytest.fixture
def foreign_requests() -> list[str]:
    """URLs the page tried to load from anywhere but the sandbox (each one aborted)."""
    return []


@pytest.fixture
def page(browser, sandbox, foreign_requests) -> Iterator[Page]:
    """A page that may only talk to the sandbox: any other request is aborted and recorded."""
    page = local_page(
        browser, (sandbox.url,), foreign_requests, viewport={"width": 1200, "height": 900}
    )
    yield page
    page.context.close()
