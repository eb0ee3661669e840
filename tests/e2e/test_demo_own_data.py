"""End to end: `make demo DATASET=... QUERIES=... KNOWN_ANSWERS=...` on a folder laid out like the
original notebook's data (data/vframes, data/testimages, data/knownanswers with mixed .jpg/.jpeg
names), against the runner's own moto S3 and crowd sandbox on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from PIL import Image

from include.demo.data import generate_demo_data

pytestmark = pytest.mark.slow
ERROR_LINE = re.compile(r"\[error\s*\]")

# As in the notebook: one extension per file, not per set.
KNOWN_ANSWER_EXTENSIONS = {
    "known1": (".jpg", ".jpeg", ".jpeg", ".jpg"),
    "known2": (".jpeg", ".JPG", ".jpg", ".png"),
    "known3": (".jpg", ".JPEG", ".jpg", ".jpeg"),
}
ROLES = ("", "_1st_match", "_2nd_match", "_3rd_match")


@pytest.fixture(scope="module")
def notebook_data(tmp_path_factory) -> Path:
    """A notebook-like project folder: data/vframes (16 frames), data/testimages (2 queries),
    data/knownanswers (3 sets), made from the demo's generator and renamed."""
    generated = generate_demo_data(
        tmp_path_factory.mktemp("generated") / "data",
        frames_per_scene=2,
        frame_size=(480, 270),
        n_queries=2,
        n_known_sets=3,
    )
    project = tmp_path_factory.mktemp("notebook")
    data = project / "data"
    shutil.copytree(generated.dataset_dir, data / "vframes")
    shutil.copytree(generated.queries_dir, data / "testimages")
    known = data / "knownanswers"
    known.mkdir()
    for set_id, extensions in KNOWN_ANSWER_EXTENSIONS.items():
        for role, extension in zip(ROLES, extensions, strict=True):
            source = generated.known_answers_dir / f"{set_id}{role}.jpg"
            target = known / f"{set_id}{role}{extension}"
            if extension.lower() == ".png":
                Image.open(source).save(target, format="PNG")
            else:
                shutil.copy(source, target)
    assert len(list((data / "vframes").iterdir())) == 16
    return project


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory, model_dir) -> dict[str, str]:
    """What the Makefile exports, with a throw-away AIRFLOW_HOME (migrated) and embedding cache."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": str(PROJECT_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "IMAGE_SIMILARITY_MODEL_DIR": str(model_dir),
        "IMAGE_SIMILARITY_EMBEDDING_CACHE": str(tmp_path_factory.mktemp("embeddings")),
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    return env


def test_make_demo_runs_on_the_notebooks_folders(notebook_data, demo_env, tmp_path):
    demo_dir = tmp_path / ".demo"
    started = time.monotonic()
    # As `make demo DATASET=data/vframes QUERIES=data/testimages KNOWN_ANSWERS=data/knownanswers`
    # runs it; from the notebook's folder, so the relative paths are the caller's.
    run = subprocess.run(
        [
            sys.executable, "-m", "include.demo.runner", "run", "--demo-dir", str(demo_dir),
            "--dataset", "data/vframes", "--queries", "data/testimages",
            "--known-answers", "data/knownanswers",
        ],
        env=demo_env, cwd=notebook_data, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(f"the demo took {time.monotonic() - started:.0f} s")
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-4000:]

    data = notebook_data / "data"
    assert f"  dataset        {data / 'vframes'} (16 images)" in out
    assert f"  known-answers  {data / 'knownanswers'} (3 known-answer sets)" in out
    batch = demo_dir / "results" / "demo-own"
    matches = json.loads((batch / "matches.json").read_text())
    assert set(matches) == {p.name for p in (data / "testimages").iterdir()}
    for query in matches:
        assert f"  {query:<12} -> " in out
    assert "no ground truth for your own folders: recall is not computed" in out
    assert "recall@" not in out
    assert re.search(r"crowd \(2 HITs, \d+ assignments\):", out)
    assert re.search(r"assignments per HIT: \d\.\d on average \([3-7] to [3-7]\)", out)
    assert re.search(r"spent \$\d+\.\d\d \(rewards \$", out)
    report = batch / "results" / "report.html"
    assert f"report: {report}" in out and report.stat().st_size > 10_000
    assert "audit: OK (every rule holds)" in out

    # Every mixed-extension set is a gold question, by its own file names, published to S3.
    names = {p.name for p in (data / "knownanswers").iterdir()}
    both = json.loads((batch / "known_answers.json").read_text())
    # gold_source "both" (the default): the sets generated from the dataset come first.
    generated = [s for s in both if s.get("generated")]
    assert all(s["set_id"].startswith("gen") for s in generated)
    assert json.loads((batch / "gold.json").read_text())["generated"] == len(generated)
    sets = [s for s in both if not s.get("generated")]
    assert [s["set_id"] for s in sets] == ["known1", "known2", "known3"]
    assert {name for s in sets for name in (s["target"], s["correct"], *s["wrong"])} == names
    published = json.loads((batch / "published.json").read_text()).values()
    assert names <= {image["name"] for image in published}

    log = (demo_dir / "dags-test.log").read_text()
    errors = [line for line in log.splitlines() if ERROR_LINE.search(line)]
    assert errors == [], "the demo's task log has error lines:\n" + "\n".join(errors)
