"""The first task's checks of the crowd stage: every problem a run would meet after an hour of
embedding is found before it lists anything, each naming the Param or connection to fix, and
nothing is created, paid or written (moto's S3 server and the crowd sandbox on 127.0.0.1)."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.config import Config

from include.crowd import stage
from include.image_similarity import checks
from include.image_similarity.settings import DEFAULTS
from testsupport.crowd_plans import crowd_settings
from testsupport.motokit import s3_client
from testsupport.platforms import mturk_platform


@pytest.fixture
def s3(s3_endpoint):
    return s3_client(s3_endpoint)


@pytest.fixture
def bucket(s3):
    name = f"pre-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


def settings_for(bucket: str, **params):
    return crowd_settings("batch-pre", s3_bucket=bucket, **params)


def unreachable_platform():
    client = boto3.client(
        "mturk",
        endpoint_url="http://127.0.0.1:9",  # discard: nothing listens
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1),
    )
    return mturk_platform(client)


def test_a_run_that_can_work_has_no_problem_and_leaves_nothing_behind(s3, bucket, crowd):
    found = stage.preflight(s3, lambda: mturk_platform(crowd.client()), settings_for(bucket), "aws")
    assert found == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert crowd.client().list_hits()["HITs"] == []


def test_a_missing_bucket_param_is_named(s3, crowd):
    found = stage.preflight(s3, lambda: mturk_platform(crowd.client()), settings_for(""), "aws")
    assert len(found) == 1 and "Param s3_bucket" in found[0]


def test_a_bucket_that_does_not_exist_names_the_bucket_and_connection(s3, crowd):
    found = stage.preflight(
        s3, lambda: mturk_platform(crowd.client()), settings_for("no-such-bucket-x"), "my_aws"
    )
    assert len(found) == 1
    assert "'no-such-bucket-x'" in found[0] and "'my_aws'" in found[0]
    assert "Param aws_conn_id" in found[0]


def test_a_public_bucket_is_refused_unless_images_are_meant_to_be_public(s3, bucket, crowd):
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    platform = lambda: mturk_platform(crowd.client())  # noqa: E731
    found = stage.preflight(s3, platform, settings_for(bucket), "aws")
    assert len(found) == 1 and "is public" in found[0] and "AllUsers" in found[0]
    public = settings_for(bucket, public_image_base_url="https://cdn.example.invalid/x")
    assert stage.preflight(s3, platform, public, "aws") == []


def test_an_unreachable_platform_names_the_environment_and_connection(s3, bucket):
    found = stage.preflight(s3, unreachable_platform, settings_for(bucket), "aws_x")
    assert len(found) == 1
    assert "Param mturk_environment" in found[0] and "'aws_x'" in found[0]


def test_a_platform_that_cannot_be_made_is_a_problem_not_a_crash(s3, bucket):
    def broken():
        raise RuntimeError("The conn_id `aws_x` isn't defined")

    found = stage.preflight(s3, broken, settings_for(bucket), "aws_x")
    assert len(found) == 1 and "isn't defined" in found[0]


def test_money_that_cannot_work_is_found_all_at_once(s3, bucket, crowd):
    settings = settings_for(bucket, bonus_usd="2.00", max_bonus_usd="1.00", budget_usd="0.10")
    found = stage.preflight(s3, lambda: mturk_platform(crowd.client()), settings, "aws")
    assert len(found) == 2
    assert "bonus_usd" in found[0] and "max_bonus_usd" in found[0]
    assert "over the budget cap of $0.10" in found[1] and "no HIT was created" in found[1]


def test_a_balance_below_one_hit_is_named(s3, bucket, tmp_path):
    from testsupport.sandbox_process import start_sandbox

    poor = start_sandbox(tmp_path / "poor.sqlite", "--balance", "0.20")
    try:
        found = stage.preflight(
            s3, lambda: mturk_platform(poor.client()), settings_for(bucket), "aws"
        )
    finally:
        poor.stop()
    assert len(found) == 1 and "balance is $0.20" in found[0]


def test_changed_money_settings_of_an_existing_batch_are_found_first(s3, bucket, crowd):
    platform = lambda: mturk_platform(crowd.client())  # noqa: E731
    stage.pin_settings(s3, settings_for(bucket))  # the batch's first run pinned them
    found = stage.preflight(s3, platform, settings_for(bucket, reward_usd="0.07"), "aws")
    assert len(found) == 1 and "reward $0.05 -> $0.07" in found[0]
    assert "Param batch_id" in found[0]


# --- the similarity stage's sources ---------------------------------------------------------


def similarity(**sources):
    from dataclasses import replace

    return replace(DEFAULTS, sources=replace(DEFAULTS.sources, **sources))


def test_missing_unreadable_and_non_folder_sources_each_name_their_param(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "file.jpg").write_bytes(b"x")
    settings = similarity(
        dataset=str(tmp_path / "ok"), queries="missing", known_answers=str(tmp_path / "file.jpg")
    )
    found = checks.problems(settings, tmp_path)
    assert len(found) == 2
    assert found[0].startswith("Param queries_source") and "does not exist" in found[0]
    assert found[1].startswith("Param known_answers_source") and "not a folder" in found[1]


def test_with_generated_gold_only_the_known_answers_folder_is_not_checked(tmp_path):
    (tmp_path / "ok").mkdir()
    for gold, named in (("generated", False), ("both", True), ("provided", True)):
        settings = similarity(
            dataset=str(tmp_path / "ok"), queries=str(tmp_path / "ok"), known_answers="missing",
            gold=gold,
        )  # fmt: skip
        found = checks.problems(settings, tmp_path)
        assert any(p.startswith("Param known_answers_source") for p in found) is named, gold
        assert ("known_answers" in settings.sources.used()) is named
        assert "known_answers" in settings.sources.locations()  # the campaign's identity
    drive = similarity(known_answers="gdrive://abc", gold="generated")
    assert "known_answers_source" not in checks.drive_folders(drive)


def test_drive_sources_are_left_to_the_google_connection_and_bad_ids_named(tmp_path):
    settings = similarity(dataset="gdrive://abc_DEF-1", queries="gdrive://a/b", known_answers=".")
    found = checks.problems(settings, tmp_path)
    assert len(found) == 1 and found[0].startswith("Param queries_source")
    assert checks.drive_folders(settings) == {"dataset_source": "abc_DEF-1"}


def test_a_model_that_cannot_be_named_is_found(tmp_path):
    from dataclasses import replace

    settings = replace(
        similarity(dataset=".", queries=".", known_answers="."),
        embedding=replace(DEFAULTS.embedding, model="/no/such/model.keras"),
    )
    found = checks.problems(settings, tmp_path)
    assert len(found) == 1 and found[0].startswith("Param model")


def test_an_unknown_model_runtime_is_found(tmp_path):
    from dataclasses import replace

    settings = replace(
        similarity(dataset=".", queries=".", known_answers="."),
        embedding=replace(DEFAULTS.embedding, runtime="onnx\n" * 30),
    )
    (found,) = checks.problems(settings, tmp_path)
    assert found.startswith("Param embedding_runtime: 'onnx\\nonnx")
    assert found.endswith("is not one of keras, litert") and len(found) < 120


def test_an_output_folder_that_cannot_be_written_is_found(tmp_path):
    assert checks.output_problems(tmp_path / "new" / "deeper") == []
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert checks.output_problems(tmp_path / "blocker" / "out")
