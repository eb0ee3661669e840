"""Fixtures for the MTurk adapters: a crowd sandbox per test and an ``aws_default`` pointing at it.

``import airflow`` puts the plugins folder (set by tests/conftest.py) on ``sys.path``, as in every
Airflow process; that is how ``mturk_provider`` is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import airflow  # noqa: F401  (puts the plugins folder on sys.path)
import pytest

from plugins.mturk_testing import FakeTaskInstance, connection_json
from testsupport.sandbox_process import RunningSandbox, start_sandbox


@pytest.fixture
def crowd_factory(tmp_path, monkeypatch) -> Iterator[Callable[..., RunningSandbox]]:
    """Start a crowd sandbox (with CLI options) and point ``aws_default`` at it."""
    started: list[RunningSandbox] = []

    def factory(*args: str) -> RunningSandbox:
        running = start_sandbox(tmp_path / f"sandbox-{len(started)}.sqlite", *args)
        started.append(running)
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(running.url))
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def crowd(crowd_factory) -> RunningSandbox:
    return crowd_factory()


@pytest.fixture
def hook(crowd):
    from mturk_provider.hooks.mturk import MTurkHook

    return MTurkHook()


@pytest.fixture
def context() -> dict:
    return {"ti": FakeTaskInstance()}
