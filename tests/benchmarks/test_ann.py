"""The approximate-search benchmark's smoke run (``--quick``: 20,000 vectors, 200 queries) and
its recall arithmetic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ann  # noqa: E402

pytestmark = pytest.mark.slow


def test_recall_counts_the_exact_rows_found_and_nothing_for_empty_slots():
    exact = [[1, 2, 3], [4, 5, 6]]
    assert ann.recall([[3, 2, 1], [4, 5, 6]], exact) == 1.0
    assert ann.recall([[1, 9, -1], [-1, -1, -1]], exact) == pytest.approx(1 / 6)
    assert ann.source_first([[1, 2, 3], [5, 4, 6]], [1, 4]) == 0.5


def test_quick_run_prints_every_method_with_its_recall_against_the_exact_search():
    run = subprocess.run(
        [sys.executable, "benchmarks/ann.py", "--quick"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(ann.HEADER) and cells[0] == "20,000":
            rows[cells[1]] = cells
    assert set(rows) == {
        "exact",
        "ivf-flat nprobe 8",
        "ivf-flat nprobe 32",
        "ivf-sq8 nprobe 8",
        "ivf-sq8 nprobe 32",
        "hnsw efSearch 32",
        "hnsw efSearch 128",
    }
    recall = {name: float(cells[4]) for name, cells in rows.items()}
    assert recall["exact"] == 1.0
    # Near duplicates over clustered vectors: every index finds nearly all exact matches.
    assert min(recall.values()) >= 0.9, recall
    assert all(re.fullmatch(r"\d+\.\d\d s", cells[3]) for cells in rows.values())
