"""Crowd-quality benchmark: how often the crowd's reported winner is right, and what it costs.

What is measured, in one run (``make benchmark-crowd`` runs this file)::

    python benchmarks/crowd_quality.py [--queries N] [--seed S] [--workers W]
                                       [--seconds-per-assignment T] [--mode-timeout M]
                                       [--bad 0.30,0.50] [--workdir DIR] [--quick]
                                       [--confidence C] [--adaptive-max M]
                                       [--modes fixed-3,fixed-5,adaptive]
                                       [--golds provided,generated]

1. Data with known truth (cached under ``--workdir``, default ``.cache/bench-crowd``): the
   demo's image generator (``include/demo/data.py``: every scene a slow camera pan, queries
   altered views of random frames) makes ``8 x frames_per_scene(N)`` frames and N queries (default
   200; ``--quick`` 40). Each query gets three candidates built directly, not through the model,
   that look like the model's: its source frame and the two frames of the same pan nearest to
   it that lack at least ``MIN_MISSING`` (4 %) of the query's width or height (a frame that
   holds all of the query would be a second right answer), so exactly one candidate is right.
   About ``NONE_SHARE`` (10 %) of the queries instead get the candidates of a query of another
   scene: none shows the query, the truth is "none of these". The candidates are ranked and
   scored by the model's cosine (EfficientNet-Lite0, embedded once and cached), as the
   similarity stage would. The truth is kept here, never given to the sandbox or its workers.
2. Gold, two kinds: *provided*, the demo's known-answer sets (``PROVIDED_SETS``; an altered
   frame, another view of it and two frames of other scenes), and *generated*,
   ``include.image_similarity.gold.generate_gold`` over the dataset (altered dataset frames whose
   wrong answers are the model's near neighbours, at the model questions' cosine gaps, kept only
   when the re-ranker separates them). A pan's neighbouring frames are near-duplicates, so only
   some frames make a set; when there are fewer sets than HITs, HITs share sets in the
   layout's balanced rotation (the report says how many sets there were).
3. Crowds: per bad share (0.30 and 0.50) one ``LocalStack`` (moto S3 + crowd sandbox, fresh
   state) with W simulated workers (default 30, so every HIT can reach 5 distinct workers):
   diligent workers and, in equal shares, careless, spammer and strategic ones
   (``--workers "30:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"``), seeded.
4. Modes, each a fresh batch (own batch id and S3 prefix, so no worker record carries over
   from another mode) run by the product's crowd stage (``include.crowd.stage``: publish,
   create, then rounds of wait-for-all-assignments, review and, adaptive, ``extend``, then
   ``results``), as the DAG's tasks do, without the scheduler: *fixed-3* and *fixed-5*
   (primary method ``majority``, the default) and *adaptive* (start 3, at most 7, confidence
   target 0.99; primary ``gold_skill``, the posterior that drives the extensions), each with
   provided and with generated gold: the 6 batches of a crowd at once (threads; the workers
   pick among all their HITs, each HIT still gets distinct workers), which halves the wait.
5. Per mode and crowd: accuracy of the primary winner against the truth (a tie or no votes is
   wrong), the gold-anchored posterior's accuracy beside it, mean and max assignments per HIT,
   money per query (the batch's ledger; per crowd, the sandbox's balance change must equal the
   sum of its batches' ledgers to the cent: a mismatch fails the benchmark, exit code 1),
   share of queries whose gold-skill
   posterior stayed below the target, wall time from publish to results; and each worker
   kind's gold pass rate and mean skill (``quality.Skill.estimate``, its votes' weight).

The last line is ``crowd-quality: adaptive accuracy=A assignments_per_hit=N bad_share=0.30
fixed3=B fixed5=C`` (generated gold, 30 % bad workers). The exit code is 0 whatever the numbers
(this is a measurement, not a test), 1 only if money does not add up or a mode fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (benchmarks/_common.py, next to this script)

DEFAULT_WORKDIR = ROOT / ".cache" / "bench-crowd"
DATA_VERSION = 2  # bump when the prepared data (or how gold is generated) changes
FRAMES_PER_QUERY = 6.4  # 8 scenes x 160 frames for 200 queries: a gold set of its own per HIT
MAX_QUERIES = 1000

PROVIDED_SETS = 8
MIN_MISSING = 0.04
NONE_SHARE = 0.10
BUCKET = "bench-crowd"
CONFIDENCE = 0.99
ADAPTIVE_MAX = 7
REWARD, BONUS = "0.05", "0.05"
BAD_SHARES = (0.30, 0.50)
GOLDS = ("provided", "generated")
PROFILES = ("diligent", "careless", "spammer", "strategic")
NONE = "none"  # records.NONE_OF_THESE, the winner's name for "None of these"


def frames_per_scene(queries: int) -> int:
    """Frames of each of the 8 pans: model questions show up to 3 frames a query and every
    HIT's own generated gold set 3 more, none shown twice (at least 30 a pan)."""
    return max(30, math.ceil(queries * FRAMES_PER_QUERY / 8))


@dataclass(frozen=True)
class Mode:
    name: str
    start: int
    maximum: int
    primary: str


MODES = (
    Mode("fixed-3", 3, 3, "majority"),
    Mode("fixed-5", 5, 5, "majority"),
    Mode("adaptive", 3, ADAPTIVE_MAX, "gold_skill"),
)


def modes_of(args: argparse.Namespace) -> tuple[Mode, ...]:
    """The modes this run measures (``--modes``), adaptive with ``--adaptive-max``."""
    chosen = []
    for mode in MODES:
        if mode.name in args.modes:
            if mode.name == "adaptive":
                mode = replace(mode, maximum=args.adaptive_max)
            chosen.append(mode)
    return tuple(chosen)


def worker_spec(total: int, bad: float) -> str:
    """``total`` workers, ``bad`` of them careless, spammers and strategic in equal shares."""
    third = round(bad / 3, 7)
    return (
        f"{total}:diligent={1 - 3 * third:.7f},careless={third:.7f},spammer={third:.7f},"
        f"strategic={third:.7f}"
    )


# --- 1. and 2. data with known truth -----------------------------------------------------------


@dataclass
class Bench:
    """The prepared data: a batch folder's JSON files per gold kind, and the truth."""

    truth: dict[str, str]  # query name -> its source frame, or NONE
    files: dict[str, dict[str, Any]]  # gold kind -> {file name: JSON content}
    gold_sets: dict[str, int]
    gaps: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _image_dict(image) -> dict[str, Any]:
    return {"name": image.name, "path": str(image.path), "sha256": image.sha256, "size": image.size}


def _listing(source: Path, images) -> dict[str, Any]:
    return {"source": str(source), "images": [_image_dict(i) for i in images], "problems": []}


def _missing(query_box: Sequence[float], frame_box: Sequence[float]) -> float:
    """How much of the query (a share of its width or height) lies outside the frame."""
    width, height = query_box[2] - query_box[0], query_box[3] - query_box[1]
    return max(
        (frame_box[0] - query_box[0]) / width,
        (frame_box[1] - query_box[1]) / height,
        (query_box[2] - frame_box[2]) / width,
        (query_box[3] - frame_box[3]) / height,
        0.0,
    )


def _candidates(truth: dict, by_scene: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per query: its source frame and the two frames of its pan nearest to the source that
    lack at least ``MIN_MISSING`` of the query."""
    found = {}
    for query, source in truth["queries"].items():
        scene = by_scene[source.split("_")[0]]
        index = scene.index(source)
        others = [
            frame
            for frame in sorted(scene, key=lambda f: (abs(scene.index(f) - index), f))
            if _missing(truth["query_boxes"][query], truth["frame_boxes"][frame]) >= MIN_MISSING
        ][:2]
        found[query] = [source, *others]
    return found


def prepare(args: argparse.Namespace, embedder_factory) -> Bench:
    """Generate (or reuse) the demo data, embed it, build the queries and both kinds of gold."""
    import numpy as np

    from include.demo.data import generate_demo_data
    from include.image_similarity.gold import generate_gold, shown_pictures
    from include.image_similarity.sources import list_local_images

    started = time.perf_counter()
    data_dir = args.workdir / "data" / f"v{DATA_VERSION}-seed{args.seed}-q{args.queries}"
    demo = generate_demo_data(
        data_dir / "demo",
        seed=args.seed,
        frames_per_scene=frames_per_scene(args.queries),
        n_queries=args.queries,
        n_known_sets=PROVIDED_SETS,
    )
    truth_doc = json.loads(demo.ground_truth_path.read_text())
    dataset = list_local_images(demo.dataset_dir).images
    queries = list_local_images(demo.queries_dir).images
    provided = list_local_images(demo.known_answers_dir).images

    vectors_path = data_dir / "vectors.npz"
    vectors: dict[str, np.ndarray] = {}
    if vectors_path.exists():
        with np.load(vectors_path, allow_pickle=False) as archive:
            pairs = zip(archive["hashes"], archive["vectors"], strict=True)
            vectors = {str(h): v for h, v in pairs}
    embedder = None
    todo = [i for i in (*dataset, *queries) if i.sha256 not in vectors]
    if todo:
        embedder = embedder_factory()
        vectors.update(embedder.embed(todo, label="benchmark images").vectors)
        np.savez(
            vectors_path,
            hashes=np.array(list(vectors)),
            vectors=np.stack(list(vectors.values())),
        )

    by_scene: dict[str, list[str]] = defaultdict(list)
    for image in sorted(dataset, key=lambda i: i.name):
        by_scene[image.name.split("_")[0]].append(image.name)
    candidates = _candidates(truth_doc, by_scene)
    names = sorted(truth_doc["queries"])
    rng = np.random.default_rng(args.seed)
    none_count = max(1, round(NONE_SHARE * len(names)))
    none_queries = sorted(names[int(i)] for i in rng.choice(len(names), none_count, replace=False))
    truth = {name: truth_doc["queries"][name] for name in names}
    for query in none_queries:
        scene = truth[query].split("_")[0]
        donors = [q for q in names if truth_doc["queries"][q].split("_")[0] != scene]
        candidates[query] = list(candidates[donors[int(rng.integers(len(donors)))]])
        truth[query] = NONE

    frames = {image.name: image for image in dataset}

    def unit(sha: str) -> np.ndarray:
        vector = np.asarray(vectors[sha], dtype=np.float64).ravel()
        return vector / np.linalg.norm(vector)

    entries, model_scores = [], []
    for query in sorted(queries, key=lambda i: i.name):
        scored = sorted(
            (
                (float(unit(query.sha256) @ unit(frames[name].sha256)), name)
                for name in candidates[query.name]
            ),
            reverse=True,
        )
        model_scores.append([round(score, 6) for score, _ in scored])
        entries.append(
            {
                "query": {k: _image_dict(query)[k] for k in ("name", "sha256", "path")},
                "matches": [
                    {
                        "rank": rank,
                        "name": name,
                        "sha256": frames[name].sha256,
                        "path": str(frames[name].path),
                        "score": round(score, 6),
                        "alignment": None,
                    }
                    for rank, (score, name) in enumerate(scored, 1)
                ],
            }
        )
    similarity = {"model_id": "benchmark (built from the truth)", "k": 3, "queries": entries}

    provided_records = []
    hashes = {image.name: image.sha256 for image in provided}
    for number in range(1, PROVIDED_SETS + 1):
        names_of = [f"known{number}.jpg"] + [
            f"known{number}_{s}.jpg" for s in ("1st_match", "2nd_match", "3rd_match")
        ]
        provided_records.append(
            {
                "set_id": f"known{number}",
                "target": names_of[0],
                "correct": names_of[1],
                "wrong": names_of[2:],
                "hashes": {name: hashes[name] for name in names_of},
            }
        )

    gold_dir = data_dir / "gold"
    gold_cache = data_dir / "generated_gold.json"
    if gold_cache.exists():
        cached = json.loads(gold_cache.read_text())
        generated_records, generated_images, gaps = (
            cached["records"],
            cached["images"],
            cached["gaps"],
        )
    else:
        embedder = embedder or embedder_factory()
        # As the DAG's prepare_gold: no picture a model question shows, one set per HIT.
        result = generate_gold(
            dataset,
            vectors,
            embedder,
            gold_dir,
            len(queries),
            seed=args.seed,
            model_scores=model_scores,
            exclude=shown_pictures(similarity),
        )
        generated_records = result.records
        generated_images = [_image_dict(i) for i in result.listing.images]
        gaps = result.gaps.as_dict()
        gold_cache.write_text(
            json.dumps(
                {"records": generated_records, "images": generated_images, "gaps": gaps}, indent=1
            )
        )

    def sources(known_images: list[dict], known_source: Path) -> dict[str, Any]:
        return {
            "dataset": _listing(demo.dataset_dir, dataset),
            "queries": _listing(demo.queries_dir, queries),
            "known_answers": {"source": str(known_source), "images": known_images, "problems": []},
        }

    files = {
        "provided": {
            "sources.json": sources([_image_dict(i) for i in provided], demo.known_answers_dir),
            "similarity.json": similarity,
            "known_answers.json": provided_records,
        },
        "generated": {
            "sources.json": sources(generated_images, gold_dir),
            "similarity.json": similarity,
            "known_answers.json": generated_records,
        },
    }
    return Bench(
        truth=truth,
        files=files,
        gold_sets={"provided": len(provided_records), "generated": len(generated_records)},
        gaps=gaps,
        seconds=time.perf_counter() - started,
    )


# --- 3. and 4. a crowd, its modes --------------------------------------------------------------


@dataclass
class Row:
    bad: float
    gold: str
    mode: str
    primary: str
    queries: int = 0
    accuracy: float | None = None
    gold_skill_accuracy: float | None = None
    mean_assignments: float = 0.0
    max_assignments: int = 0
    ledger_cents: int = 0
    unsure: float | None = None
    seconds: float = 0.0
    rounds: int = 0
    timed_out: bool = False  # --mode-timeout passed before every assignment was in
    kinds: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    error: str | None = None


def _batch_hits(mturk, batch_id: str) -> list[dict]:
    hits, token = [], None
    while True:
        page = mturk.list_hits(MaxResults=100, **({"NextToken": token} if token else {}))
        hits += [h for h in page["HITs"] if h.get("RequesterAnnotation") == batch_id]
        token = page.get("NextToken")
        if not token or not page["HITs"]:
            return hits


def wait_submitted(mturk, batch_id: str, count: int, deadline: float) -> bool:
    """Wait until every HIT of the batch has all its assignments submitted (or the deadline)."""
    while True:
        hits = _batch_hits(mturk, batch_id)
        open_ = sum(
            1
            for h in hits
            if h.get("NumberOfAssignmentsAvailable", 0) or h.get("NumberOfAssignmentsPending", 0)
        )
        if len(hits) >= count and not open_:
            return True
        if time.time() >= deadline:
            return False
        time.sleep(1.0)


def _kinds(reviews) -> dict[str, dict[str, float | int | None]]:
    """Per worker kind (from the simulated workers' ids): gold pass rate and mean skill."""
    from include.crowd import quality

    skills = quality.skills(reviews)
    found = {}
    for kind in PROFILES:
        mine = [s for worker, s in skills.items() if worker.startswith(f"A{kind.upper()}")]
        answers = sum(s.answers for s in mine)
        found[kind] = {
            "workers": len(mine),
            "gold_answers": answers,
            "gold_pass_rate": sum(s.right for s in mine) / answers if answers else None,
            "mean_skill": statistics.fmean(s.estimate for s in mine) if mine else None,
        }
    return found


def run_mode(stack, bench: Bench, bad: float, gold: str, mode: Mode, args) -> Row:
    """One batch through the crowd stage; its accuracy against the truth and its cost."""
    from include.common.files import write_json
    from include.crowd import stage
    from testsupport.crowd_plans import crowd_settings
    from testsupport.platforms import mturk_platform

    row = Row(bad, gold, mode.name, mode.primary)
    batch_id = f"b{round(bad * 100)}-{gold}-{mode.name}-{args.tag}"
    batch_dir = args.workdir / "batches" / batch_id
    shutil.rmtree(batch_dir, ignore_errors=True)
    for name, content in bench.files[gold].items():
        write_json(batch_dir / name, content)
    settings = crowd_settings(
        batch_id,
        s3_bucket=stack.bucket,
        s3_prefix=f"bench/{batch_id}",
        assignments_per_hit=mode.start,
        max_assignments_per_hit=mode.maximum if mode.maximum > mode.start else 0,
        confidence_target=args.confidence,
        aggregation_method=mode.primary,
        reward_usd=REWARD,
        bonus_usd=BONUS,
        budget_usd="1000.00",
        hit_lifetime_hours=2,
        exclude_failed_workers=False,
    )
    s3 = stack.s3_client()
    mturk = stack.mturk_client()
    platform = mturk_platform(mturk)
    caps = stage.PaymentCaps(max_bonus=settings.payment.max_bonus, budget=settings.payment.budget)
    started = time.perf_counter()
    deadline = time.time() + args.mode_timeout
    stage.publish(batch_dir, s3, settings)
    plans = stage.create(batch_dir, s3, platform, settings, exclusion_id=None)
    while True:
        complete = wait_submitted(mturk, batch_id, len(plans), deadline)
        row.timed_out = not complete
        outcome = stage.review(s3, platform, settings, caps=caps)
        row.rounds += 1
        if outcome.failed_hits:
            raise RuntimeError(f"review failed on {len(outcome.failed_hits)} HITs")
        if not complete or mode.maximum == mode.start:
            break
        extended = stage.extend(
            s3,
            platform,
            settings,
            outcome.reviews,
            caps=caps,
            open_until=datetime.fromtimestamp(deadline + 3600, UTC),
        )
        print(
            f"  {batch_id} round {row.rounds}: {extended.summary()}",
            flush=True,
        )
        if not extended.extended:
            break
    stage.results(batch_dir, s3, settings, platform.fees)
    row.seconds = time.perf_counter() - started
    results = json.loads((batch_dir / "results" / "results.json").read_text())
    row.ledger_cents = int(results["summary"]["spent"]["total_cents"])
    queries = results["queries"]
    row.queries = len(queries)

    def right(winner: str | None, query: str) -> bool:
        return winner is not None and winner == bench.truth[query]

    row.accuracy = sum(right(q["winner"], q["query"]) for q in queries) / len(queries)
    skill = [q["methods"]["gold_skill"] for q in queries]
    row.gold_skill_accuracy = sum(
        right(m["winner"], q["query"]) for m, q in zip(skill, queries, strict=True)
    ) / len(queries)
    row.unsure = sum((m.get("confidence") or 0.0) < args.confidence for m in skill) / len(queries)
    submitted = [q["assignments"]["submitted"] for q in queries]
    row.mean_assignments = statistics.fmean(submitted)
    row.max_assignments = max(submitted)
    row.kinds = _kinds(stage.load_reviews(stage.ledger_for(s3, settings)))
    return row


@dataclass
class Crowd:
    bad: float
    spec: str
    rows: list[Row]
    balance_change_cents: int
    seconds: float

    @property
    def money_ok(self) -> bool:
        ledger = sum(r.ledger_cents for r in self.rows)
        return all(r.error is None for r in self.rows) and ledger == self.balance_change_cents


def run_crowd(bench: Bench, bad: float, args) -> Crowd:
    """Every mode of both gold kinds on one crowd: the 6 batches at once (the crowd works on
    all their HITs, as it would on a busy marketplace; each HIT still gets distinct workers).
    The sandbox's balance change over the crowd must equal the sum of the batches' ledgers."""
    from concurrent.futures import ThreadPoolExecutor

    from include.crowd_sandbox.stack import LocalStack
    from testsupport.sandbox_process import account_cents

    spec = worker_spec(args.workers, bad)
    jobs = [(gold, mode) for gold in args.golds for mode in modes_of(args)]
    with LocalStack(
        args.workdir / f"stack-{round(bad * 100)}",
        bucket=BUCKET,
        workers=spec,
        seconds_per_assignment=args.seconds_per_assignment,
        worker_seed=args.seed,
    ) as stack:
        mturk = stack.mturk_client()
        before = account_cents(mturk)  # available and held: what was charged is its fall
        started = time.perf_counter()
        print(f"crowd {bad:.0%} bad ({spec}): {len(jobs)} batches at once ...", flush=True)

        def one(job: tuple[str, Mode]) -> Row:
            gold, mode = job
            try:
                row = run_mode(stack, bench, bad, gold, mode, args)
            except Exception as error:  # noqa: BLE001 - reported in the table, exit code 1
                logging.getLogger(__name__).exception("%s gold, %s failed", gold, mode.name)
                row = Row(bad, gold, mode.name, mode.primary, error=f"{error}"[:200])
            print(f"  {bad:.0%} bad, {gold} gold, {mode.name}: {line_of(row)}", flush=True)
            return row

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            rows = list(pool.map(one, jobs))
        change = before - account_cents(mturk)
    return Crowd(bad, spec, rows, change, time.perf_counter() - started)


# --- 5. the report -----------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def line_of(row: Row) -> str:
    if row.error:
        return f"FAILED: {row.error}"
    return (
        f"accuracy {_f(row.accuracy)} ({row.primary}), gold_skill {_f(row.gold_skill_accuracy)}, "
        f"{row.mean_assignments:.2f} assignments/HIT (max {row.max_assignments}), "
        f"${row.ledger_cents / 100 / max(1, row.queries):.4f}/query, unsure {_f(row.unsure)}, "
        f"{row.seconds:.0f} s, {row.rounds} round(s)"
        + (
            " (TIMED OUT: --mode-timeout passed before every assignment was in)"
            if row.timed_out
            else ""
        )
    )


HEADER = (
    "bad",
    "gold",
    "mode",
    "primary",
    "accuracy",
    "gold_skill acc",
    "asg/HIT",
    "max",
    "$/query",
    "unsure",
    "wall s",
    "strategic pass",
    "strategic w",
    "diligent w",
)


def table(rows: list[Row]) -> str:
    lines = [HEADER]
    for r in rows:
        strategic, diligent = r.kinds.get("strategic", {}), r.kinds.get("diligent", {})
        lines.append(
            (
                f"{r.bad:.2f}",
                r.gold,
                r.mode + (" (timed out)" if r.timed_out else ""),
                r.primary,
                "FAILED" if r.error else _f(r.accuracy),
                _f(r.gold_skill_accuracy),
                f"{r.mean_assignments:.2f}",
                str(r.max_assignments),
                f"{r.ledger_cents / 100 / max(1, r.queries):.4f}",
                _f(r.unsure),
                f"{r.seconds:.0f}",
                _f(strategic.get("gold_pass_rate"), 2),
                _f(strategic.get("mean_skill"), 2),
                _f(diligent.get("mean_skill"), 2),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def kinds_lines(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        if r.error:
            continue
        parts = [
            f"{kind} {v['workers']}: pass {_f(v['gold_pass_rate'], 2)} over "
            f"{v['gold_answers']} gold answers, skill {_f(v['mean_skill'], 2)}"
            for kind, v in r.kinds.items()
            if v["workers"]
        ]
        lines.append(f"workers, {r.bad:.0%} bad, {r.gold} gold, {r.mode}: " + "; ".join(parts))
    return lines


def last_line(rows: list[Row]) -> str:
    bad = BAD_SHARES[0] if any(r.bad == BAD_SHARES[0] for r in rows) else rows[0].bad
    found = {r.mode: r for r in rows if r.bad == bad and r.gold == "generated"}
    adaptive = found.get("adaptive")
    return (
        f"crowd-quality: adaptive accuracy={_f(adaptive.accuracy if adaptive else None)} "
        f"assignments_per_hit={adaptive.mean_assignments if adaptive else 0:.2f} "
        f"bad_share={bad:.2f} "
        f"fixed3={_f(found['fixed-3'].accuracy if 'fixed-3' in found else None)} "
        f"fixed5={_f(found['fixed-5'].accuracy if 'fixed-5' in found else None)}"
    )


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, help="queries per batch (default 200; quick 40)")
    parser.add_argument("--seed", type=int, default=0, help="data, truth and workers (default 0)")
    parser.add_argument("--workers", type=int, default=30, help="simulated workers per crowd")
    parser.add_argument("--seconds-per-assignment", type=float, default=0.2)
    parser.add_argument(
        "--mode-timeout", type=float, default=3600.0, help="seconds per mode before it stops"
    )
    parser.add_argument(
        "--bad", default="0.30,0.50", help="bad shares of the crowds, comma-separated"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="40 queries: a smoke run")
    parser.add_argument(
        "--confidence", type=float, default=CONFIDENCE, help=f"adaptive target ({CONFIDENCE})"
    )
    parser.add_argument(
        "--adaptive-max",
        type=int,
        default=ADAPTIVE_MAX,
        help=f"adaptive: most assignments per HIT ({ADAPTIVE_MAX})",
    )
    parser.add_argument(
        "--modes", default=",".join(m.name for m in MODES), help="a subset, comma-separated"
    )
    parser.add_argument("--golds", default=",".join(GOLDS), help="a subset, comma-separated")
    args = parser.parse_args(argv)
    if args.queries is None:
        args.queries = 40 if args.quick else 200
    if not 10 <= args.queries <= MAX_QUERIES:
        parser.error(f"--queries must be 10 to {MAX_QUERIES}")
    if args.workers < max(5, args.adaptive_max):
        parser.error("--workers must be at least the most assignments a HIT can get")
    try:
        args.bad = [float(x) for x in str(args.bad).split(",") if x.strip()]
    except ValueError:
        parser.error("--bad takes comma-separated shares, e.g. 0.30,0.50")
    if not args.bad or not all(0 <= b < 1 for b in args.bad):
        parser.error("--bad shares must be 0 to below 1")
    args.modes = [m.strip() for m in str(args.modes).split(",") if m.strip()]
    args.golds = [g.strip() for g in str(args.golds).split(",") if g.strip()]
    if not args.modes or not set(args.modes) <= {m.name for m in MODES}:
        parser.error(f"--modes takes some of {', '.join(m.name for m in MODES)}")
    if not args.golds or not set(args.golds) <= set(GOLDS):
        parser.error(f"--golds takes some of {', '.join(GOLDS)}")
    if not 0.5 <= args.confidence < 1:
        parser.error("--confidence must be 0.5 to below 1")
    if not 3 <= args.adaptive_max < 10:
        parser.error("--adaptive-max must be 3 to 9 (a HIT starts with 3; MTurk keeps it under 10)")
    args.workdir = args.workdir.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The platform is the production one over MTurkHook (testsupport.platforms): Airflow puts
    # the plugins folder on sys.path from this setting; its home stays out of the user's.
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
    os.environ.setdefault("AIRFLOW_HOME", str(args.workdir / "airflow"))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    args.tag = time.strftime("%H%M%S")

    def embedder_factory():
        from include.image_similarity.embedding import Embedder

        embedder = Embedder(model_dir=ROOT / ".cache" / "models")
        embedder.warm_up()
        return embedder

    print(f"preparing {args.queries} queries with known truth in {args.workdir} ...", flush=True)
    bench = prepare(args, embedder_factory)
    nones = sum(t == NONE for t in bench.truth.values())
    print(
        f"data: {len(bench.truth)} queries ({nones} whose truth is 'none of these'), gold sets "
        f"{bench.gold_sets['provided']} provided, {bench.gold_sets['generated']} generated, "
        f"in {bench.seconds:.0f} s",
        flush=True,
    )
    import airflow  # noqa: F401  (configures logging: quieten the stage's per-HIT lines after)

    for name, level in (("include", logging.WARNING), ("urllib3", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    crowds = [run_crowd(bench, bad, args) for bad in args.bad]
    rows = [row for crowd in crowds for row in crowd.rows]

    print()
    print(table(rows))
    print()
    print(
        _common.machine_line(
            ("boto3", "boto3"), ("moto", "moto"), ("crowd-kit", "crowd-kit"), ("numpy", "numpy")
        )
    )
    print(
        f"parameters: {len(bench.truth)} queries ({nones} 'none of these'), candidates = source "
        f"+ the 2 nearest frames of its pan lacking >= {MIN_MISSING:.0%} of it; "
        f"{args.workers} workers per crowd (diligent + careless/spammer/strategic in equal "
        f"shares), {args.seconds_per_assignment:g} s per assignment, seed {args.seed}; reward "
        f"${REWARD}, bonus ${BONUS}; adaptive: start 3, max {args.adaptive_max}, confidence "
        f"{args.confidence}; gold: "
        f"{bench.gold_sets['provided']} provided sets, {bench.gold_sets['generated']} generated "
        f"(shared in rotation when fewer than the HITs); generated gold's cosine gaps "
        f"{json.dumps(bench.gaps)}"
    )
    print(
        "accuracy: the primary method's winner against the truth (tie or no votes: wrong); "
        "gold_skill acc: the gold-anchored posterior's; unsure: gold_skill confidence below "
        f"{args.confidence}; strategic pass / w, diligent w: gold pass rate and mean skill (the "
        "weight of their votes in gold_skill); money: sandbox balance change = ledger total"
    )
    for crowd in crowds:
        ledger = sum(r.ledger_cents for r in crowd.rows)
        print(
            f"money, {crowd.bad:.0%} bad: sandbox balance change "
            f"${crowd.balance_change_cents / 100:.2f}, ledgers' total ${ledger / 100:.2f}: "
            f"{'equal to the cent' if crowd.money_ok else 'MISMATCH (failed)'}; the crowd's "
            f"{len(crowd.rows)} batches ran at once in {crowd.seconds:.0f} s (wall s: each "
            "batch's own, with the others competing for the same workers)"
        )
    for text in kinds_lines(rows):
        print(text)
    print(_common.load_line(load_before))
    print(f"total {time.perf_counter() - started:.0f} s")
    (args.workdir / "results.json").write_text(
        json.dumps([r.__dict__ for r in rows], indent=2, default=str) + "\n"
    )
    ok = all(crowd.money_ok for crowd in crowds)
    print(last_line(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
