"""The DAG imports cleanly, has the expected shape, and its Params form validates input."""

from __future__ import annotations

import copy

import pytest
from conftest import PROJECT_ROOT

DAG_ID = "image_similarity_mturk"
EXPECTED_GRAPH = {
    "check_settings": ["list_sources"],
    "list_sources": ["validate_known_answers"],
    "validate_known_answers": ["merge_embeddings", "plan_embedding"],
    "plan_embedding": ["embed_images"],
    "embed_images": ["merge_embeddings"],
    "merge_embeddings": ["match_queries", "plan_search", "write_matches"],
    "plan_search": ["search_dataset"],
    "search_dataset": ["match_queries"],
    "match_queries": ["rerank_matches"],
    "rerank_matches": ["write_matches"],
    "write_matches": ["prepare_gold"],
    "prepare_gold": ["write_contact_sheets"],
    "write_contact_sheets": ["ask_crowd"],
    "ask_crowd": ["publish_images"],
    "publish_images": ["create_hits", "review_assignments"],
    "create_hits": ["wait_for_assignments"],
    "wait_for_assignments": ["review_assignments"],
    "review_assignments": ["write_results"],
    "write_results": [],
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags


def test_dag_module_does_not_import_heavy_libraries_at_parse_time():
    # boto3 is not in the list: the sensor class must exist at parse time, and the Amazon
    # provider's sensor base (AwsBaseSensor) imports boto3 with it.
    import subprocess
    import sys

    code = (
        "import sys, runpy; runpy.run_path('dags/image_similarity_mturk.py'); "
        "print(','.join(m for m in ('tensorflow', 'keras', 'googleapiclient', 'crowdkit') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_tags_retries_and_graph(dag):
    assert dag.tags and "mturk" in dag.tags
    assert dag.default_args["retries"] >= 1
    assert all(task.retries >= 1 for task in dag.tasks)
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == EXPECTED_GRAPH
    assert dag.max_active_runs == 1 and not dag.catchup


def test_params_form_has_every_section_and_hit_setting(dag):
    sections = {name: dag.params.get_param(name).schema.get("section") for name in dag.params}
    assert set(sections.values()) == {
        "Sources",
        "Model",
        "HIT",
        "Workers",
        "Payments",
        "Messages",
        "Storage",
    }
    for name in (
        "hit_title", "hit_description", "hit_keywords", "reward_usd", "bonus_usd",
        "assignments_per_hit", "hit_lifetime_hours", "assignment_duration_minutes",
        "auto_approval_delay_hours", "mturk_environment", "bonus_message", "no_bonus_message",
        "k", "dataset_source", "queries_source", "known_answers_source", "s3_bucket",
        "s3_prefix", "aws_conn_id", "gcp_conn_id", "budget_usd", "min_approval_rate",
        "min_approved_hits", "worker_locales", "exclude_failed_workers", "timeout_policy",
        "wait_timeout_hours", "public_image_base_url", "hit_instructions", "email_subject",
        "exclude_after_gold_answers", "exclude_below_gold_accuracy", "max_hits_per_worker",
        "ask_crowd",
    ):  # fmt: skip
        assert name in dag.params, name
    dag.params.validate()  # the defaults are valid


@pytest.mark.parametrize(
    "name, value",
    [
        ("reward_usd", "0.00"),
        ("reward_usd", "-1.00"),
        ("bonus_usd", "0.5"),
        ("bonus_usd", "ten"),
        ("k", 0),
        ("assignments_per_hit", 0),
        ("mturk_environment", "prod"),
        ("batch_id", "../escape"),
        ("batch_id", ".."),
        ("batch_id", "."),
        ("batch_id", ".hidden"),
        ("batch_id", "a/b"),
        ("budget_usd", "lots"),
        ("timeout_policy", "wait forever"),
        ("worker_locales", "USA; Mars"),
        ("min_approval_rate", 101),
        ("email_subject", "s" * 201),
        ("hit_instructions", ""),
        ("exclude_after_gold_answers", 0),
        ("exclude_after_gold_answers", 2.5),
        ("exclude_below_gold_accuracy", 1.1),
        ("exclude_below_gold_accuracy", -0.1),
        ("max_hits_per_worker", -1),
        ("max_hits_per_worker", 10001),
        ("ask_crowd", "no"),
    ],
)
def test_params_reject_bad_values(dag, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError):
        params[name] = value
        params.validate()


@pytest.mark.parametrize(
    "dag_id", ["image_similarity_mturk_collect", "image_similarity_mturk_cleanup"]
)
def test_batch_tools_need_only_a_batch_and_its_storage(dagbag, dag_id):
    from airflow.sdk.exceptions import ParamValidationError

    tool = dagbag.dags[dag_id]
    assert tool.tags and all(task.retries >= 1 for task in tool.tasks)
    params = copy.deepcopy(tool.params)
    with pytest.raises(ParamValidationError):
        params.validate()  # no batch id given
    params["batch_id"] = "demo"
    params["s3_bucket"] = "bucket"
    params.validate()


def test_every_task_has_an_execution_timeout(dagbag):
    """A hung read (a FIFO in a source folder, a stuck call) must not hold a worker for ever."""
    for dag_id in (DAG_ID, "image_similarity_mturk_collect", "image_similarity_mturk_cleanup"):
        for task in dagbag.dags[dag_id].tasks:
            assert task.execution_timeout is not None, (dag_id, task.task_id)
            assert task.execution_timeout.total_seconds() > 0


@pytest.mark.parametrize("bad", ["..", ".", "../x", ".hidden"])
def test_batch_tools_refuse_unsafe_batch_ids(dagbag, bad):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["image_similarity_mturk_collect"].params)
    params["s3_bucket"] = "bucket"
    with pytest.raises(ParamValidationError):
        params["batch_id"] = bad
        params.validate()


def test_batch_tools_take_their_payment_caps_from_their_own_params(dagbag, dag):
    for dag_id in ("image_similarity_mturk_collect", "image_similarity_mturk_cleanup"):
        params = dagbag.dags[dag_id].params
        for name in ("max_bonus_usd", "budget_usd"):  # the main DAG's defaults
            assert params[name] == dag.params[name], (dag_id, name)


def test_optional_text_params_take_the_trigger_forms_empty_field(dag):
    """The UI's trigger form sends an emptied field as null and marks a Param whose type does not
    allow null as required (its defaults then block the form): every "Empty: ..." Param allows it,
    and the crowd settings read null as empty."""
    from include.crowd.settings import CrowdSettings

    optional = ("batch_id", "worker_locales", "embedding_cache", "public_image_base_url")
    params = copy.deepcopy(dag.params)
    for name in optional:
        assert "null" in params.get_param(name).schema["type"], name
        params[name] = None
    params.validate()
    settings = CrowdSettings.from_params({**params.dump(), "s3_bucket": "bucket"}, "batch-1")
    assert settings.workers.locales == () and settings.storage.public_image_base_url == ""


def test_worker_quality_params_sit_with_the_exclusion_and_reach_the_settings(dag):
    from include.crowd.settings import CrowdSettings

    for name in (
        "exclude_after_gold_answers",
        "exclude_below_gold_accuracy",
        "max_hits_per_worker",
    ):
        assert dag.params.get_param(name).schema["section"] == "Workers", name
    params = {**dag.params.dump(), "s3_bucket": "b", "max_hits_per_worker": 4}
    settings = CrowdSettings.from_params(params, "batch-1")
    assert settings.review.exclude_after_gold_answers == 3
    assert settings.review.exclude_below_gold_accuracy == 0.6
    assert settings.workers.max_hits_per_worker == 4
