"""``make demo``: the whole workflow offline, on the embedded default or on your own folders.

    python -m include.demo.runner run --demo-dir .demo
    python -m include.demo.runner run --demo-dir .demo --data DIR
    python -m include.demo.runner run --demo-dir .demo \
        --dataset data/vframes --queries data/testimages --known-answers data/knownanswers

1. generate the sample (video frames panning across photos shipped by scikit-image, altered
   queries, gold sets) into ``.demo/data/``; each query has a known answer. With ``--data DIR``
   (``DIR/dataset``, ``DIR/queries``, ``DIR/known_answers``) or the three folders named one by one,
   use those instead: they are checked before any service starts, and, as there is no ground
   truth, no recall is printed;
2. start moto's S3 server and the crowd sandbox with simulated workers on 127.0.0.1
   (``include.crowd_sandbox.stack``); the sandbox's state is ``.demo/sandbox.sqlite``;
3. run ``airflow dags test image_similarity_mturk`` against them (an ``aws_default`` connection
   whose ``service_config`` points S3 at moto and MTurk at the sandbox);
4. print the model's matches and recall, the crowd's results, the report's path, and an audit
   of the sandbox's state (every assignment approved, each gold passer paid once, each failing
   worker mailed once, the report's votes equal to the sandbox's answers).

Everything stays under ``.demo/``: results in ``.demo/results/<batch id>/`` (batch ``demo`` for the
sample, ``demo-own`` for your folders; ``results/`` holds ``results.json``, ``results.csv`` and
``report.html``), the task log in ``.demo/dags-test.log``,
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
from dataclasses import dataclass
from pathlib import Path

from include.common.image_files import IMAGE_EXTENSIONS, is_image_name
from include.demo.data import (
    DATASET_DIR,
    KNOWN_ANSWERS_DIR,
    QUERIES_DIR,
    DemoData,
    generate_demo_data,
    recall_at_k,
    recall_at_k_any,
)
from include.image_similarity.known_answers import KnownAnswerError, parse_known_answer_sets
from include.image_similarity.sources import list_local_images

DAG_ID = "image_similarity_mturk"
DEMO_BATCH = "demo"
OWN_DATA_BATCH = "demo-own"
DEMO_WORKERS = "diligent:6,careless:3,spammer:1"
NO_BONUS_MESSAGE = (
    "Thank you for your work. The check question in this task was answered incorrectly, "
    "so no bonus was paid this time."
)


OWN_DATA_HINT = (
    f"Give --data DIR (it expects DIR/{DATASET_DIR}, DIR/{QUERIES_DIR} and "
    f"DIR/{KNOWN_ANSWERS_DIR}) or all three of --dataset, --queries and --known-answers; "
    "with make: DATA=DIR, or DATASET=... QUERIES=... KNOWN_ANSWERS=..."
)


class OwnDataError(ValueError):
    """The folders given to the demo are missing, empty or hold no usable known-answer set."""


@dataclass(frozen=True)
class Folders:
    """The three folders a run reads: the images to search, the queries, the known answers."""

    dataset: Path
    queries: Path
    known_answers: Path


# (attribute, option, sub-folder of --data, what the folder holds)
_FOLDER_ROLES = (
    ("dataset", "--dataset", DATASET_DIR, "the images to search"),
    ("queries", "--queries", QUERIES_DIR, "the query images"),
    (
        "known_answers",
        "--known-answers",
        KNOWN_ANSWERS_DIR,
        "the known-answer sets (known1.jpg, known1_1st_match.jpg, known1_2nd_match.jpg, "
        "known1_3rd_match.jpg, known2.jpg...)",
    ),
)


def own_folders(
    *,
    data: str | None = None,
    dataset: str | None = None,
    queries: str | None = None,
    known_answers: str | None = None,
    base_dir: Path,
) -> Folders | None:
    """The folders named by ``--data`` and the explicit options, or None for the sample.

    An explicit option wins over ``--data``'s sub-folder. Relative paths are relative to
    ``base_dir`` (the caller's working directory); ``~`` is expanded.
    """
    given = {"dataset": dataset, "queries": queries, "known_answers": known_answers}
    if not data and not any(given.values()):
        return None
    paths, missing = {}, []
    for attribute, option, sub_folder, _ in _FOLDER_ROLES:
        if given[attribute]:
            paths[attribute] = _absolute(given[attribute], base_dir)
        elif data:
            paths[attribute] = _absolute(data, base_dir) / sub_folder
        else:
            missing.append(option)
    if missing:
        raise OwnDataError(f"missing {' and '.join(missing)}. {OWN_DATA_HINT}")
    return Folders(**paths)


def _absolute(path: str, base_dir: Path) -> Path:
    # abspath, not resolve(): the messages show the path as given, with its symlinks.
    return Path(os.path.abspath(base_dir / Path(path).expanduser()))


def check_own_folders(folders: Folders) -> list[str]:
    """Raise ``OwnDataError`` unless each folder exists and holds images and the known answers
    form at least one complete set (the similarity stage's own check); return a line per folder.
    """
    lines = []
    for attribute, option, _, holds in _FOLDER_ROLES:
        folder: Path = getattr(folders, attribute)
        label = f"{option[2:].replace('-', ' ')} folder {folder}"
        if not folder.is_dir():
            state = "is not a folder" if folder.exists() else "does not exist"
            raise OwnDataError(f"the {label} {state}: it should hold {holds}. {OWN_DATA_HINT}")
        try:
            entries = list(folder.iterdir())
        except OSError as error:
            raise OwnDataError(f"the {label} cannot be read: {error.strerror}") from None
        images = [
            entry.name
            for entry in entries
            if not entry.name.startswith(".") and is_image_name(entry.name) and entry.is_file()
        ]
        if not images:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            sub_folders = sorted(entry.name for entry in entries if entry.is_dir())
            inside = f" (it has the sub-folders {', '.join(sub_folders)})" if sub_folders else ""
            raise OwnDataError(
                f"the {label} holds no image ({extensions}){inside}: it should hold {holds}"
            )
        if attribute == "known_answers":
            try:
                sets = parse_known_answer_sets(list_local_images(folder))
            except KnownAnswerError as error:
                raise OwnDataError(f"the {label}: {error}") from None
            lines.append(f"  {option[2:]:<14} {folder} ({len(sets)} known-answer sets)")
        else:
            lines.append(f"  {option[2:]:<14} {folder} ({len(images)} images)")
    return lines


def _run_dag(demo_dir: Path, folders: Folders, batch_id: str, output_dir: Path, stack) -> int:
    conf = {
        "dataset_source": str(folders.dataset),
        "queries_source": str(folders.queries),
        "known_answers_source": str(folders.known_answers),
        "output_dir": str(output_dir),
        "batch_id": batch_id,
        "s3_bucket": stack.bucket,
        # Adaptive overlap: 3 workers per HIT, more (up to 7) where the winner is unsure, and
        # the winner the posterior that drives it (benchmarks/crowd_quality.py measured it).
        "assignments_per_hit": 3,
        "max_assignments_per_hit": 7,
        "confidence_target": 0.99,
        "aggregation_method": "gold_skill",
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


def _report(batch_dir: Path, data: DemoData | None) -> None:
    """Print the model's matches and the files left out; with the sample, its recall too."""
    ground_truth = data.ground_truth if data else {}
    acceptable = data.acceptable if data else {}
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
    if data:
        print(
            "  (* = the frame the query was made from, + = another frame showing all of the query)"
        )
    problems_path = batch_dir / "problems.json"
    problems = json.loads(problems_path.read_text()) if problems_path.exists() else []
    for problem in problems:
        print(f"  left out {problem['collection']}/{problem['name']}: {problem['reason']}")
    if data is None:
        print("no ground truth for your own folders: recall is not computed")
        print(f"contact sheets: {batch_dir / 'contact_sheets'}")
        return
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
    used = [q["assignments"]["submitted"] for q in results["queries"] if q["hit_id"]]
    if used:
        lines.append(
            f"assignments per HIT: {sum(used) / len(used):.1f} on average "
            f"({min(used)} to {max(used)})"
        )
    return lines


def _verdict(verdict: dict) -> str:
    """A method's verdict in a few characters: its winner, the tied options, or "-"."""
    return verdict["winner"] or ("tie " + "/".join(verdict["tie"]) if verdict["tie"] else "-")


def _crowd_report(batch_dir: Path, batch_id: str, stack) -> bool:
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
    ledger = S3Ledger(stack.s3_client(), stack.bucket, "image-similarity", batch_id)
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
    parser = argparse.ArgumentParser(prog="python -m include.demo.runner")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run the whole workflow on the generated sample or on your own folders"
    )
    run.add_argument("--demo-dir", type=Path, default=Path(".demo"))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--workers", default=DEMO_WORKERS, help="simulated workers of the sandbox")
    own = run.add_argument_group(
        "your own folders (none given: the generated sample; relative paths are relative to the "
        "working directory)"
    )
    own.add_argument(
        "--data",
        metavar="DIR",
        help=f"a folder holding {DATASET_DIR}/, {QUERIES_DIR}/ and {KNOWN_ANSWERS_DIR}/",
    )
    own.add_argument("--dataset", metavar="DIR", help="the images to search (wins over --data)")
    own.add_argument("--queries", metavar="DIR", help="the query images (wins over --data)")
    own.add_argument(
        "--known-answers",
        metavar="DIR",
        help="the known-answer sets, knownN.<ext> and knownN_1st_match.<ext>... (wins over --data)",
    )
    args = parser.parse_args(argv)

    try:
        folders = own_folders(
            data=args.data,
            dataset=args.dataset,
            queries=args.queries,
            known_answers=args.known_answers,
            base_dir=Path.cwd(),
        )
        folder_lines = check_own_folders(folders) if folders else []
    except OwnDataError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    return _run(args, folders, folder_lines)


def _run(args: argparse.Namespace, folders: Folders | None, folder_lines: list[str]) -> int:
    from include.crowd_sandbox.stack import LocalStack

    demo_dir = args.demo_dir.resolve()
    demo_dir.mkdir(parents=True, exist_ok=True)
    data: DemoData | None = None
    if folders is None:
        data = generate_demo_data(demo_dir / "data", seed=args.seed)
        print(f"sample data in {data.root}: dataset, queries, known_answers (ground truth known)")
        folders = Folders(data.dataset_dir, data.queries_dir, data.known_answers_dir)
        batch_id = DEMO_BATCH
    else:
        print("your own folders (no ground truth):")
        for line in folder_lines:
            print(line)
        batch_id = OWN_DATA_BATCH
    output_dir = demo_dir / "results"
    with LocalStack(
        demo_dir, workers=args.workers, seconds_per_assignment=0.5, worker_seed=args.seed
    ) as stack:
        print(f"S3 (moto) at {stack.s3_url}; crowd sandbox at {stack.sandbox_url}")
        code = _run_dag(demo_dir, folders, batch_id, output_dir, stack)
        if code != 0:
            print(f"the DAG run failed (exit {code}); see {demo_dir / 'dags-test.log'}")
            return code
        _report(output_dir / batch_id, data)
        ok = _crowd_report(output_dir / batch_id, batch_id, stack)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
