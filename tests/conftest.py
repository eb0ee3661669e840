"""Shared fixtures. Airflow gets a throw-away home so tests never touch the developer's .airflow."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/imagekit.py

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
