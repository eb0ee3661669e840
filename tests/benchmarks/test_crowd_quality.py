"""The crowd-quality benchmark's smoke run: ``--quick`` on few queries end to end (demo data,
the model's cosines, generated gold, two sandbox crowds, six batches each), then its table and
its last line, whose numbers must parse and make sense."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"^crowd-quality: adaptive accuracy=(?P<adaptive>[01]\.\d{3}) "
    r"assignments_per_hit=(?P<per_hit>\d+\.\d{2}) bad_share=0\.30 "
    r"fixed3=(?P<fixed3>[01]\.\d{3}) fixed5=(?P<fixed5>[01]\.\d{3})$"
)


def test_quick_run_prints_the_table_and_a_parsable_last_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "benchmarks/crowd_quality.py", "--quick", "--queries", "20"]
        + ["--workdir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    output = run.stdout
    assert run.returncode == 0, (output + run.stderr)[-6000:]
    lines = output.strip().splitlines()
    found = LAST_LINE.match(lines[-1])
    assert found, lines[-1]
    numbers = {name: float(value) for name, value in found.groupdict().items()}
    assert all(0 <= numbers[k] <= 1 for k in ("adaptive", "fixed3", "fixed5"))
    assert 3.0 <= numbers["per_hit"] <= 7.0  # adaptive starts at 3 and stops at 7
    rows = [line for line in lines if re.match(r"^0\.[35]0 \| (provided|generated) ", line)]
    assert len(rows) == 12, output[-4000:]  # 2 crowds x 2 gold kinds x 3 modes
    assert all("FAILED" not in row for row in rows), rows
    assert output.count("equal to the cent") == 2, output[-4000:]
