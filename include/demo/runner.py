"""``make demo``: the whole workflow on the embedded default, offline.

    python -m include.demo.runner run --demo-dir .demo

1. generate the sample (video frames panning across photos shipped by scikit-image, altered
   queries, gold sets) into ``.demo/data/``; each query has a known answer;
2. start moto's S3 server and the crowd sandbox with simulated workers on 127.0.0.1
   (``include.crowd_sandbox.stack``); the sandbox's state is ``.demo/sandbox.sqlite``;
3. run ``airflow dags test image_similarity_mturk`` against them (an ``aws_default`` connection
   whose ``service_config`` points S3 at moto and MTurk at the sandbox);
4. print the model's matches and recall, the crowd's results, the report's path, and an audit
   of the sandbox's state (every assignment approved, each gold passer paid once, each failing
   worker mailed once, the report's votes equal to the sandbox's answers).

Everything stays under ``.demo/``: results in ``.demo/results/<batch id>/`` (``results/`` holds
``results.json``, ``results.csv`` and ``report.html``), the task log in ``.demo/dags-test.log``,
the services' logs beside the sandbox state. Each run starts a fresh sandbox and S3 (the
previous run's sandbox state stays on disk until then, for auditing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from include.demo.data import (
    DemoData,
    generate_demo_data,
    recall_at_k,
    recall_at_k_any,
)

DAG_ID = "image_similarity_mturk"
DEMO_BATCH = "demo"
DEMO_WORKERS = "diligent:6,careless:3,spammer:1"
NO_BONUS_MESSAGE = (
    "Thank you for your work. The check question in this task was answered incorrectly, "
    "so no bonus was paid this time."
)


def _run_dag(demo_dir: Path, data_dir: Path, output_dir: Path, stack) -> int:
    conf = {
        "dataset_source": str(data_dir / "dataset"),
        "queries_source": str(data_dir / "queries"),
        "known_answers_source": str(data_dir / "known_answers"),
        "output_dir": str(output_dir),
        "batch_id": DEMO_BATCH,
        "s3_bucket": stack.bucket,
        "assignments_per_hit": 5,
        "hit_lifetime_hours": 1,
        "assignment_duration_minutes": 5,
        "wait_timeout_hours": 0.25,
        "min_approval_rate": 95,
        "no_bonus_message": NO_BONUS_MESSAGE,
    }
    log_path = demo_dir / "dags-test.log"
    command = [
        sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "--conf", json.dumps(conf),
    ]  # fmt: skip
    print(f"running: airflow dags test {DAG_ID} (task logs: {log_path})", flush=True)
    with log_path.open("w", encoding="utf-8") as log_file:
        env = {**os.environ, **stack.airflow_env(), "IMAGE_SIMILARITY_POLL_SECONDS": "3"}
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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
    if logger.startswith(("include.", "mturk_provider")) or "image_similarity_mturk" in logger:
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


def crowd_lines(results: dict) -> list[str]:
    """The crowd's results as the demo prints them: a line per query with the primary method's
    winner (and any other method's that differs), a line per method, money and gold."""
    summary = results["summary"]
    lines = [f"\ncrowd ({summary['hits']} HITs, {summary['assignments']} assignments):"]
    for query in results["queries"]:
        votes = (
            "  ".join(f"{c['name']}:{c['votes']}" for c in query["candidates"])
            + f"  none:{query['none']['votes']}"
        )
        winner = _verdict(query)
        agree = {True: "agrees with model", False: "differs from model", None: ""}[
            query["agrees_with_model"]
        ]
        others = "".join(
            f"  {name}: {_verdict(verdict)}"
            for name, verdict in query["methods"].items()
            if _verdict(verdict) != winner
        )
        lines.append(f"  {query['query']:<12} winner {winner:<18} votes {votes}  {agree}{others}")
    for name, method in summary["methods"].items():
        lines.append(
            f"{name}{' (primary)' if name == results['primary'] else ''}: "
            f"{method['decided']} decided, {method['tied']} tied, agrees with the model's first "
            f"match on {method['agreement']['agree']}/{method['agreement']['decided']}"
        )
    rate = summary.get("gold_pass_rate")
    agreement = summary["agreement"]
    spent = summary.get("spent") or {}
    lines.append(
        f"gold pass rate {rate:.0%}; crowd agrees with the model's first match on "
        f"{agreement['agree']}/{agreement['decided']} decided queries; spent "
        f"{spent.get('total', '?')} (rewards {spent.get('rewards', '?')}, bonuses "
        f"{spent.get('bonuses', '?')}, fees {spent.get('fees', '?')})"
        if rate is not None
        else "no counted answers"
    )
    return lines


def _verdict(verdict: dict) -> str:
    """A method's verdict in a few characters: its winner, the tied options, or "-"."""
    return verdict["winner"] or ("tie " + "/".join(verdict["tie"]) if verdict["tie"] else "-")


def _crowd_report(batch_dir: Path, stack) -> bool:
    """Print the crowd's results and audit the sandbox; return whether the audit passed."""
    from include.crowd.create import load_manifest
    from include.crowd.ledger import S3Ledger
    from include.demo.audit import audit_batch

    results_path = batch_dir / "results" / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8"))
    for line in crowd_lines(results):
        print(line)
    print(f"report: {batch_dir / 'results' / 'report.html'}")
    print(f"sandbox state: {stack.sandbox_state} (worker page was {stack.sandbox_url})")
    ledger = S3Ledger(stack.s3_client(), stack.bucket, "image-similarity", DEMO_BATCH)
    audit = audit_batch(
        stack.mturk_client(),
        stack.sandbox_state,
        load_manifest(ledger),
        results,
        no_bonus_message=NO_BONUS_MESSAGE,
    )
    for line in audit.lines():
        print(line)
    return audit.ok


def main(argv: list[str] | None = None) -> int:
    from include.crowd_sandbox.stack import LocalStack

    parser = argparse.ArgumentParser(prog="python -m include.demo.runner")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="generate the sample and run the whole workflow on it")
    run.add_argument("--demo-dir", type=Path, default=Path(".demo"))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--workers", default=DEMO_WORKERS, help="simulated workers of the sandbox")
    args = parser.parse_args(argv)

    demo_dir = args.demo_dir.resolve()
    demo_dir.mkdir(parents=True, exist_ok=True)
    data = generate_demo_data(demo_dir / "data", seed=args.seed)
    print(f"sample data in {data.root}: dataset, queries, known_answers (ground truth known)")
    output_dir = demo_dir / "results"
    with LocalStack(
        demo_dir, workers=args.workers, seconds_per_assignment=0.5, worker_seed=args.seed
    ) as stack:
        print(f"S3 (moto) at {stack.s3_url}; crowd sandbox at {stack.sandbox_url}")
        code = _run_dag(demo_dir, demo_dir / "data", output_dir, stack)
        if code != 0:
            print(f"the DAG run failed (exit {code}); see {demo_dir / 'dags-test.log'}")
            return code
        _report(output_dir / DEMO_BATCH, data)
        ok = _crowd_report(output_dir / DEMO_BATCH, stack)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
