"""Shared fixtures. Airflow gets a throw-away home so tests never touch the developer's .airflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))  # include/, testsupport/

# moto S3, a fresh bucket and ledger, a crowd sandbox: for the crowd-stage tests (a module's own
# fixture of the same name wins).
pytest_plugins = ["testsupport.crowd_fixtures"]

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="airflow-home-tests-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Where converted models are cached: the project's cache, shared across test runs.

    The conversion itself is tested separately in a fresh folder (test_efficientnet_lite.py).
    """
    path = PROJECT_ROOT / ".cache" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def embedder(model_dir):
    from include.image_similarity.embedding import Embedder

    instance = Embedder(model_dir=model_dir, batch_size=8)
    instance.warm_up()
    return instance


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get on a machine that does not have it yet."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            message = "needs Debian's chromium: run `apt-get install -y chromium` as root"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium"],
        ):
            subprocess.run(command, check=True, env=env, timeout=1200, stdout=subprocess.DEVNULL)
    assert CHROMIUM.exists()
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    """A headless Chromium driven by Playwright (no browser download: Debian's binary).

    Module-scoped: Playwright's sync API allows one instance at a time, so each test module
    gets its own and closes it before the next starts.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(chromium), headless=True)
        yield instance
        instance.close()
