"""``make demo``: generate sample data offline, run the DAG on it, print matches and recall.

    python -m include.image_similarity.demo run --demo-dir .demo

The sample (video frames panning across photos shipped by scikit-image, altered queries, gold
sets) has a known answer per query, so the demo can say how often the model's first match, and
any of its 3 matches, is the frame a query was made from, or any frame showing all of the query
(neighbouring frames of a pan overlap, so several frames usually do).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from include.image_similarity.demo_data import (
    DemoData,
    generate_demo_data,
    recall_at_k,
    recall_at_k_any,
)

DAG_ID = "image_similarity_mturk"
DEMO_BATCH = "demo"


def _run_dag(demo_dir: Path, data_dir: Path, output_dir: Path) -> int:
    conf = {
        "dataset_source": str(data_dir / "dataset"),
        "queries_source": str(data_dir / "queries"),
        "known_answers_source": str(data_dir / "known_answers"),
        "output_dir": str(output_dir),
        "batch_id": DEMO_BATCH,
    }
    log_path = demo_dir / "dags-test.log"
    command = [
        sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "--conf", json.dumps(conf),
    ]  # fmt: skip
    print(f"running: airflow dags test {DAG_ID} (task logs: {log_path})", flush=True)
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
        )
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            shown = _progress_line(line)
            if shown:
                print("  " + shown, flush=True)
        return process.wait()


_STRUCTLOG_LINE = re.compile(
    r"^\S*T(?P<time>\d\d:\d\d:\d\d)\S*\s+\[(?P<level>\w+)\s*\]\s+(?P<message>.*?)\s+"
    r"\[(?P<logger>[^\]]+)\](?:\s+\S+=.*)?$"
)


def _progress_line(line: str) -> str | None:
    """Return the part of a task-log line a person follows, or None for Airflow's own chatter."""
    match = _STRUCTLOG_LINE.match(line.rstrip())
    if not match:
        return None
    logger, message = match["logger"], match["message"]
    if logger.startswith("include.") or "image_similarity_mturk" in logger:
        return f"{match['time']} {match['level']:<7} {message}"
    if "DagRun Finished" in message:
        state = re.search(r"state=(\w+)", line)
        return f"{match['time']} dag run finished: {state[1] if state else '?'}"
    return None


def _report(batch_dir: Path, data: DemoData) -> None:
    ground_truth, acceptable = data.ground_truth, data.acceptable
    matches = json.loads((batch_dir / "matches.json").read_text(encoding="utf-8"))
    print(f"\nmatches ({batch_dir / 'matches.json'}):")
    for query, found in matches.items():
        truth = ground_truth.get(query)
        also = set(acceptable.get(query, ()))
        cells = []
        for m in found:
            mark = "*" if m["name"] == truth else "+" if m["name"] in also else " "
            cells.append(f"{mark}{m['name']} {m['score']:.3f}")
        print(f"  {query:<12} -> " + "  ".join(cells))
    print("  (* = the frame the query was made from, + = another frame showing all of the query)")
    problems_path = batch_dir / "problems.json"
    problems = json.loads(problems_path.read_text()) if problems_path.exists() else []
    for problem in problems:
        print(f"  left out {problem['collection']}/{problem['name']}: {problem['reason']}")
    r1, r3 = recall_at_k(matches, ground_truth, 1), recall_at_k(matches, ground_truth, 3)
    a1, a3 = recall_at_k_any(matches, acceptable, 1), recall_at_k_any(matches, acceptable, 3)
    sizes = [len(frames) for frames in acceptable.values()]
    print(f"\n{len(ground_truth)} queries:")
    print(f"  exact source frame:                recall@1 = {r1:.2f}  recall@3 = {r3:.2f}")
    print(f"  a frame showing all of the query:  recall@1 = {a1:.2f}  recall@3 = {a3:.2f}")
    print(
        "  (neighbouring frames of a pan overlap, so several frames show all of a query: "
        f"{min(sizes)}-{max(sizes)} here, {sum(sizes) / len(sizes):.1f} on average)"
    )
    print(f"contact sheets: {batch_dir / 'contact_sheets'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.image_similarity.demo")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="generate the sample and run the DAG on it")
    run.add_argument("--demo-dir", type=Path, default=Path(".demo"))
    run.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    demo_dir = args.demo_dir.resolve()
    demo_dir.mkdir(parents=True, exist_ok=True)
    data = generate_demo_data(demo_dir / "data", seed=args.seed)
    print(f"sample data in {data.root}: dataset, queries, known_answers (ground truth known)")
    output_dir = demo_dir / "output"
    code = _run_dag(demo_dir, demo_dir / "data", output_dir)
    if code != 0:
        print(f"the DAG run failed (exit {code}); see {demo_dir / 'dags-test.log'}")
        return code
    _report(output_dir / DEMO_BATCH, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
