"""End to end: `airflow dags test` runs the whole workflow on generated data with bad files,
against moto's S3 server and the crowd sandbox with simulated workers (both on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from include.crowd.create import load_manifest
from include.crowd.ledger import S3Ledger
from include.crowd_sandbox.stack import DEMO_CREDENTIALS, LocalStack
from include.demo.audit import audit_batch
from include.demo.data import generate_demo_data, recall_at_k
from testsupport.imagekit import write_bad_files

pytestmark = pytest.mark.slow
DAG_ID = "image_similarity_mturk"


NO_BONUS = "The check question was answered wrongly, so no bonus this time."
ERROR_LINE = re.compile(r"\[error\s*\]")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(
        tmp_path_factory.mktemp("stack"),
        workers="diligent:3,careless:1",
        seconds_per_assignment=0.2,
        worker_seed=3,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, model_dir, stack):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        **stack.airflow_env(),
        "IMAGE_SIMILARITY_POLL_SECONDS": "2",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(PROJECT_ROOT),
        "IMAGE_SIMILARITY_MODEL_DIR": str(model_dir),
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    return env


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    data = generate_demo_data(root / "data", frames_per_scene=4, n_queries=4, n_known_sets=2)
    write_bad_files(data.dataset_dir)
    return data


def dags_test(env, conf, dag_id=DAG_ID) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)],
        env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600,
    )  # fmt: skip


def assert_no_error_logged(run: subprocess.CompletedProcess) -> None:
    """A successful run logs no error and no traceback (structlog pads the level: "[error    ]")."""
    lines = (run.stdout + run.stderr).splitlines()
    noisy = [line for line in lines if ERROR_LINE.search(line) or "Traceback" in line]
    assert noisy == [], "a successful run logged:\n" + "\n".join(noisy)


def conf_for(sample, tmp_path, known_answers=None, bucket="image-similarity-demo"):
    return {
        "s3_bucket": bucket,
        "assignments_per_hit": 3,
        "hit_lifetime_hours": 1,
        "wait_timeout_hours": 0.2,
        "no_bonus_message": NO_BONUS,
        "dataset_source": str(sample.dataset_dir),
        "queries_source": str(sample.queries_dir),
        "known_answers_source": str(known_answers or sample.known_answers_dir),
        "output_dir": str(tmp_path / "output"),
        "embedding_cache": str(tmp_path / "cache"),
        "batch_id": "e2e",
    }


def test_whole_run_then_a_rerun_embeds_and_creates_nothing(airflow_env, sample, tmp_path, stack):
    conf = conf_for(sample, tmp_path)
    first = dags_test(airflow_env, conf)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-4000:]
    assert "state=success" in log or "success" in log.split("DagRun Finished")[-1]
    assert_no_error_logged(first)

    batch = tmp_path / "output" / "e2e"
    matches = json.loads((batch / "matches.json").read_text())
    assert set(matches) == set(sample.ground_truth)
    assert all(len(found) == 3 for found in matches.values())
    assert recall_at_k(matches, sample.ground_truth, 3) > 0  # the model does find frames
    problems = {p["name"]: p for p in json.loads((batch / "problems.json").read_text())}
    assert {"corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"} <= set(problems)
    assert "zero-byte" in problems["empty.jpg"]["reason"]
    for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"):
        assert name in log  # named in the task logs too
    sheets = {path.name for path in (batch / "contact_sheets").iterdir()}
    assert sheets == {f"{Path(query).stem}.sheet.jpg" for query in sample.ground_truth}

    # The crowd stage: one HIT per query, reviewed and reported; the sandbox agrees.
    mturk = stack.mturk_client()
    hits = mturk.list_hits(MaxResults=100)["HITs"]
    assert len(hits) == len(sample.ground_truth)
    results = json.loads((batch / "results" / "results.json").read_text())
    assert results["summary"]["assignments"] == 3 * len(hits)
    assert (batch / "results" / "report.html").stat().st_size > 10_000
    ledger = S3Ledger(stack.s3_client(), stack.bucket, "image-similarity", "e2e")
    plans = load_manifest(ledger)
    audit = audit_batch(mturk, stack.sandbox_state, plans, results, no_bonus_message=NO_BONUS)
    assert audit.ok, audit.problems
    assert audit.approved == 3 * len(hits)
    assert "HITs created 4/4" in log and "assignments submitted" in log
    balance = mturk.get_account_balance()["AvailableBalance"]

    # The rerun fans the embedding and the search out over mapped shards (a different plan than
    # the first run's single shard): every vector comes from the cache, and the matches merged
    # from the dataset shards' searches are the same as those of one search.
    fanned = {"fan_out_above_images": 5, "shard_size": 7}
    searched = {"match_fan_out_above_images": 5, "match_shard_size": 9}
    reranked = {"rerank_fan_out_above_queries": 1, "rerank_shard_size": 2}
    second = dags_test(airflow_env, {**conf, **fanned, **searched, **reranked})
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert_no_error_logged(second)
    rerun_log = second.stdout + second.stderr
    embedded = [int(n) for n in re.findall(r"embedded (\d+) (?:dataset|query) images", rerun_log)]
    assert len(embedded) >= 3 and set(embedded) == {0}  # only the bad files are retried
    shards = json.loads((batch / "shards.json").read_text())
    assert (
        shards["shards"] >= 3 and f"(shard {shards['shards']} of {shards['shards']})" in rerun_log
    )
    searches = sorted(p.name for p in (batch / "matching").glob("search-*.npz"))
    assert len(searches) >= 3 and re.search(
        r"\d+ distinct dataset images to search: \d+ shards", rerun_log
    )
    assert len(list((batch / "matching").glob("rerank-*.npz"))) == 2
    assert "4 queries to re-rank: 2 shards of about 2" in rerun_log
    assert json.loads((batch / "matches.json").read_text()) == matches
    assert "all 4 HITs of batch e2e already exist" in rerun_log
    assert len(mturk.list_hits(MaxResults=100)["HITs"]) == len(hits)
    assert mturk.get_account_balance()["AvailableBalance"] == balance  # nobody paid twice
    results = json.loads((batch / "results" / "results.json").read_text())
    assert audit_batch(mturk, stack.sandbox_state, plans, results, no_bonus_message=NO_BONUS).ok

    # A rerun of the batch with other money settings is refused before any call.
    raised = dags_test(airflow_env, {**conf, "bonus_usd": "0.50"})
    raised_log = raised.stdout + raised.stderr
    assert raised.returncode != 0
    assert "other money settings (bonus $0.05 -> $0.50)" in raised_log
    assert "new batch id" in raised_log
    assert len(mturk.list_hits(MaxResults=100)["HITs"]) == len(hits)
    assert mturk.get_account_balance()["AvailableBalance"] == balance

    # Collect (any time) pays nobody twice; cleanup deletes this batch's finished HITs only.
    batch_conf = {
        "batch_id": "e2e",
        "s3_bucket": stack.bucket,
        "output_dir": str(tmp_path / "output"),
    }
    collect = dags_test(airflow_env, batch_conf, dag_id="image_similarity_mturk_collect")
    assert collect.returncode == 0, (collect.stdout + collect.stderr)[-4000:]
    assert_no_error_logged(collect)
    assert mturk.get_account_balance()["AvailableBalance"] == balance
    cleanup = dags_test(airflow_env, batch_conf, dag_id="image_similarity_mturk_cleanup")
    assert cleanup.returncode == 0, (cleanup.stdout + cleanup.stderr)[-4000:]
    assert_no_error_logged(cleanup)
    assert {mturk.get_hit(HITId=p.hit_id)["HIT"]["HITStatus"] for p in plans} == {"Disposed"}
    assert mturk.get_account_balance()["AvailableBalance"] == balance

    # A settings file crafted in S3 cannot raise what collect pays: its caps are its Params.
    stored = ledger.get_json("settings.json")
    payment = {**stored["payment"], "bonus": "100.00", "max_bonus": "100.00"}
    ledger.put_json("settings.json", {**stored, "payment": payment})
    crafted = dags_test(airflow_env, batch_conf, dag_id="image_similarity_mturk_collect")
    assert crafted.returncode != 0
    assert "above this run's per-bonus cap of $5.00" in crafted.stdout + crafted.stderr
    assert mturk.get_account_balance()["AvailableBalance"] == balance
    ledger.put_json("settings.json", stored)

    # No credential anywhere a run leaves text: its output, task logs, XCom and rendered
    # templates in the metadata database, the batch folder, every object in the bucket.
    leaks = find_secret(
        DEMO_CREDENTIALS["password"],
        outputs=[first, second, raised, collect, cleanup, crafted],
        folders=[Path(airflow_env["AIRFLOW_HOME"]) / "logs", tmp_path / "output"],
        database=Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db",
        s3=stack.s3_client(),
        bucket=stack.bucket,
    )
    assert leaks == [], leaks


def find_secret(secret, *, outputs, folders, database, s3, bucket) -> list[str]:
    """Every place ``secret`` appears in (where it was looked for, to show the scan ran)."""
    found, scanned = [], Counter()
    for n, run in enumerate(outputs):
        scanned["outputs"] += 1
        if secret in run.stdout + run.stderr:
            found.append(f"output of run {n}")
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                scanned["files"] += 1
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
    with sqlite3.connect(database) as db:
        for table in ("xcom", "rendered_task_instance_fields", "task_instance", "dag_run"):
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 (fixed names)
                scanned["rows"] += 1
                if secret in repr(row):
                    found.append(f"{table}: {repr(row)[:200]}")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            scanned["objects"] += 1
            if secret.encode() in s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read():
                found.append(f"s3://{bucket}/{item['Key']}")
    assert scanned["files"] > 10 and scanned["rows"] > 10 and scanned["objects"] > 10, scanned
    return found


def test_a_budget_below_the_cost_stops_before_any_hit(airflow_env, sample, tmp_path, stack):
    conf = {**conf_for(sample, tmp_path), "batch_id": "e2e-budget", "budget_usd": "0.10"}
    run = dags_test(airflow_env, conf)
    log = run.stdout + run.stderr
    assert run.returncode != 0
    assert "over the budget cap of $0.10" in log and "no HIT was created" in log
    annotations = {h["RequesterAnnotation"] for h in stack.mturk_client().list_hits()["HITs"]}
    assert "e2e-budget" not in annotations


def test_without_the_crowd_the_run_ends_after_the_matches_and_needs_no_bucket(
    airflow_env, sample, tmp_path, stack
):
    """Param ask_crowd off: a rehearsal, in its own folder. The matches and contact sheets are
    written; nothing is uploaded, no HIT is created, and a run without a bucket, whose S3 and
    MTurk are a dead address, is not refused for it."""
    conf = {**conf_for(sample, tmp_path, bucket=""), "batch_id": "e2e-dry", "ask_crowd": False}
    dead = {**stack.connection()}
    dead["extra"] = {
        "region_name": "us-east-1",
        "service_config": {
            "s3": {"endpoint_url": "http://127.0.0.1:9"},
            "mturk": {"endpoint_url": "http://127.0.0.1:9"},
        },
    }
    run = dags_test({**airflow_env, "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(dead)}, conf)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert_no_error_logged(run)
    assert "Param ask_crowd is off: the run ends before the crowd stage" in log
    assert not (tmp_path / "output" / "e2e-dry").exists()  # a batch's folder is not touched
    batch = tmp_path / "output" / "e2e-dry@rehearsal"
    matches = json.loads((batch / "matches.json").read_text())
    assert len(matches) == len(list(sample.queries_dir.iterdir()))
    assert len(list((batch / "contact_sheets").iterdir())) == len(matches)
    annotations = {h["RequesterAnnotation"] for h in stack.mturk_client().list_hits()["HITs"]}
    assert "e2e-dry" not in annotations
    s3 = stack.s3_client()
    for bucket in s3.list_buckets()["Buckets"]:
        keys = s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", [])
        assert not [k["Key"] for k in keys if "e2e-dry" in k["Key"]]


def test_misnamed_known_answer_set_stops_before_embedding(airflow_env, sample, tmp_path):
    broken = tmp_path / "known"
    shutil.copytree(sample.known_answers_dir, broken)
    (broken / "known2_1st_match.jpg").rename(broken / "known2_first_match.jpg")
    run = dags_test(airflow_env, conf_for(sample, tmp_path, known_answers=broken))
    log = run.stdout + run.stderr
    assert "known2_first_match.jpg" in log and "set 'known2' has no known2_1st_match" in log
    assert not (tmp_path / "output" / "e2e" / "vectors.npy").exists()
    assert not (tmp_path / "cache").exists()


HOSTILE_QUERY = "<img src=x onerror=alert(1)>.jpg"


def test_hostile_names_and_broken_files_run_through_escaped_and_named(
    airflow_env, sample, tmp_path, stack
):
    """Markup, quotes, Unicode and a backslash in file and folder names, a decompression bomb, a
    PNG named .jpg, duplicates and broken files: the run goes on without the bad files, names
    each one, and no name reaches a page unescaped or an S3 key at all."""
    import struct
    import zlib

    root = tmp_path / 'data "<b>set</b>" ü\\x'
    dataset, queries = root / "dataset", root / "queries"
    shutil.copytree(sample.dataset_dir, dataset)  # with the corrupt/truncated/empty/text files
    shutil.copytree(sample.queries_dir, queries)
    frames = sorted(p for p in dataset.glob("scene*.jpg"))
    # (A "/" cannot be in a Linux file name; a backslash can.)
    shutil.copy(frames[0], dataset / "<svg onload=alert(1)> back\\slash.jpg")  # a duplicate too
    shutil.copy(frames[1], dataset / 'q\'uote "dq" ü 日本.jpg')
    from PIL import Image

    Image.open(frames[2]).save(dataset / "really-a-png.jpg", format="PNG")  # wrong extension
    # A PNG whose header claims 20000 x 20000 pixels (400 MP): refused before decoding.
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    ihdr = b"IHDR" + header
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
    bomb += struct.pack(">I", zlib.crc32(ihdr)) + struct.pack(">I", 0) + b"IEND"
    (dataset / "bomb.png").write_bytes(bomb + struct.pack(">I", zlib.crc32(b"IEND")))
    first_query = sorted(queries.iterdir())[0]
    first_query.rename(queries / HOSTILE_QUERY)
    # Entries that are not regular files or leave the folder: reported, never read or shown.
    os.mkfifo(dataset / "pipe.jpg")
    (dataset / "zero.jpg").symlink_to("/dev/zero")
    outside = tmp_path / "outside.jpg"
    shutil.copy(frames[3], outside)
    (dataset / "elsewhere.jpg").symlink_to(outside)
    shutil.copy(frames[4], dataset / ".hidden.jpg")

    conf = {
        **conf_for(sample, tmp_path),
        "batch_id": "e2e-hostile",
        "dataset_source": str(dataset),
        "queries_source": str(queries),
    }
    run = dags_test(airflow_env, conf)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert_no_error_logged(run)  # bad files are warnings, not errors

    batch = tmp_path / "output" / "e2e-hostile"
    problems = {p["name"]: p["reason"] for p in json.loads((batch / "problems.json").read_text())}
    assert "decompression bomb" in problems["bomb.png"] and "bomb.png" in log
    for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"):
        assert name in problems and name in log
    assert "really-a-png.jpg" not in problems  # content decides, not the extension
    for name in ("pipe.jpg", "zero.jpg", "elsewhere.jpg", ".hidden.jpg"):
        assert name in problems and name in log, name
    matches = json.loads((batch / "matches.json").read_text())
    assert HOSTILE_QUERY in matches and len(matches[HOSTILE_QUERY]) == 3

    # Pages: the report and every HIT's HTML carry the names escaped, never as markup.
    report = (batch / "results" / "report.html").read_text()
    assert HOSTILE_QUERY not in report and "&lt;img src=x onerror=alert(1)&gt;.jpg" in report
    assert "<svg onload" not in report
    mturk = stack.mturk_client()
    questions = [
        mturk.get_hit(HITId=h["HITId"])["HIT"]["Question"]
        for h in mturk.list_hits(MaxResults=100)["HITs"]
        if h["RequesterAnnotation"] == "e2e-hostile"
    ]
    assert len(questions) == len(matches)
    for question in questions:
        assert "<svg onload" not in question and "onerror=alert" not in question
    # Image keys are content hashes: no key carries a file name or markup.
    s3 = stack.s3_client()
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=stack.bucket, Prefix="image-similarity/"
        )
        for item in page.get("Contents", [])
    ]
    image_keys = [k for k in keys if "/images/" in k]
    assert image_keys and all(re.fullmatch(r".*/images/[0-9a-f]{64}\.\w+", k) for k in image_keys)
    assert not any(c in k for k in keys for c in "<>\"'ü日")
