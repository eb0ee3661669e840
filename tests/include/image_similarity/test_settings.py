"""The similarity stage's settings: built strictly from the Params, stored with the batch and read
back strictly, and the one place its defaults are written (the DAG, the command line and the
library take theirs from it)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

from include.common.files import read_json
from include.image_similarity.settings import (
    DEFAULTS,
    PARAM_FIELDS,
    STORED_NAME,
    SettingsError,
    SimilaritySettings,
)

DAG_ID = "image_similarity_mturk"


def _settings() -> SimilaritySettings:
    """Settings unlike the defaults in every part, so a field read from the wrong place shows."""
    return dataclasses.replace(
        DEFAULTS,
        sources=dataclasses.replace(
            DEFAULTS.sources, dataset="gdrive://abc", follow_external_symlinks=True
        ),
        embedding=dataclasses.replace(DEFAULTS.embedding, model="keras:ResNet50", cache=None),
        matching=dataclasses.replace(DEFAULTS.matching, k=5, rerank=False, rerank_shortlist=40),
    )


def _refusal(stored) -> str:
    with pytest.raises(SettingsError) as caught:
        SimilaritySettings.from_stored(stored)
    return str(caught.value)


# --- from the Params --------------------------------------------------------------------------


def test_from_params_reads_every_param_into_its_part():
    settings = _settings()
    assert SimilaritySettings.from_params(settings.as_params()) == settings
    params = {**DEFAULTS.as_params(), "embedding_cache": "s3://bucket/vectors", "k": 7}
    built = SimilaritySettings.from_params(params)
    assert built.embedding.cache == "s3://bucket/vectors" and built.matching.k == 7
    assert built.sources == DEFAULTS.sources


@pytest.mark.parametrize("name", sorted(PARAM_FIELDS))
def test_from_params_names_a_missing_param(name):
    params = DEFAULTS.as_params()
    del params[name]
    with pytest.raises(SettingsError, match=f"the Param '{name}' is missing"):
        SimilaritySettings.from_params(params)


# --- stored with the batch --------------------------------------------------------------------


def test_stored_settings_read_back_equal(tmp_path):
    settings = _settings()
    assert SimilaritySettings.from_stored(json.loads(json.dumps(settings.to_stored()))) == settings
    path = settings.store(tmp_path)
    assert path == tmp_path / STORED_NAME
    assert SimilaritySettings.from_stored(read_json(path)) == settings
    assert not [p for p in tmp_path.iterdir() if p.name != STORED_NAME]  # no temporary left


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: d.update(extra=1), "unknown field extra"),
        (lambda d: d["matching"].update(top=3), "unknown field matching.top"),
        (lambda d: d["embedding"].pop("shard_size"), "missing field embedding.shard_size"),
        (lambda d: d.pop("sources"), "missing field sources"),
        (lambda d: d["matching"].update(k="3"), "matching.k has the wrong type (str)"),
        (lambda d: d["matching"].update(k=True), "matching.k has the wrong type (bool)"),
        (lambda d: d["matching"].update(rerank=1), "matching.rerank has the wrong type (int)"),
        (lambda d: d["embedding"].update(cache=5), "embedding.cache has the wrong type (int)"),
        (lambda d: d["sources"].update(dataset=None), "sources.dataset has the wrong type"),
        (lambda d: d.update(embedding=[]), "embedding is not an object"),
        (lambda d: d.update(format=3), "format is 3, not 4"),
        (lambda d: d.pop("format"), "format is None, not 4"),
        (lambda d: d["sources"].pop("gold"), "missing field sources.gold"),
    ],
)
def test_a_stored_field_unknown_missing_or_mistyped_is_refused_by_name(damage, named):
    stored = copy.deepcopy(DEFAULTS.to_stored())
    damage(stored)
    message = _refusal(stored)
    assert message.startswith(f"{STORED_NAME}: ") and named in message


def test_every_problem_of_a_stored_file_is_named_at_once():
    stored = copy.deepcopy(DEFAULTS.to_stored())
    stored["matching"]["k"] = "3"
    del stored["sources"]["gcp_conn_id"]
    message = _refusal(stored)
    assert "matching.k has the wrong type" in message
    assert "missing field sources.gcp_conn_id" in message


def test_a_stored_file_that_is_not_an_object_is_refused():
    assert _refusal([]) == f"{STORED_NAME} is not a JSON object"


def test_a_null_cache_is_stored_and_read_back():
    settings = dataclasses.replace(
        DEFAULTS, embedding=dataclasses.replace(DEFAULTS.embedding, cache=None)
    )
    assert SimilaritySettings.from_stored(settings.to_stored()).embedding.cache is None


# --- one place for the defaults ---------------------------------------------------------------


def test_the_dags_params_default_to_the_settings_defaults(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    # The Param's default may come from the environment; without it, the settings' default.
    monkeypatch.delenv("IMAGE_SIMILARITY_EMBEDDING_CACHE", raising=False)
    dagbag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "image_similarity_mturk.py"))
    assert dagbag.import_errors == {}
    params = dagbag.dags[DAG_ID].params
    assert {name: params[name] for name in PARAM_FIELDS} == DEFAULTS.as_params()
    assert SimilaritySettings.from_params(params.dump()) == DEFAULTS


def test_the_command_line_defaults_to_the_settings_defaults():
    from include.image_similarity.__main__ import _parser

    base = ["match", "--dataset", "d", "--queries", "q", "--out", "o"]
    args = _parser().parse_args(base)
    assert args.k == DEFAULTS.matching.k
    assert args.rerank is DEFAULTS.matching.rerank
    assert args.shortlist == DEFAULTS.matching.rerank_shortlist
    assert args.model == DEFAULTS.embedding.model
    assert args.batch_size == DEFAULTS.embedding.batch_size
    assert args.cache == DEFAULTS.embedding.cache
    assert args.follow_external_symlinks is DEFAULTS.sources.follow_external_symlinks
    assert _parser().parse_args([*base, "--no-rerank"]).rerank is False


def test_the_library_defaults_to_the_settings_defaults(tmp_path):
    from include.common.images import InputSize
    from include.image_similarity import pipeline
    from include.image_similarity.embedding import Embedder, ModelSpec
    from include.image_similarity.rerank import RerankConfig

    assert RerankConfig().shortlist == DEFAULTS.matching.rerank_shortlist
    embedder = Embedder(model_dir=tmp_path)  # the model is built on first use, not here
    assert embedder.batch_size == DEFAULTS.embedding.batch_size
    assert embedder.input_size == InputSize(DEFAULTS.embedding.image_area)
    assert embedder.spec == ModelSpec.parse(DEFAULTS.embedding.model) == ModelSpec.parse("")
    plan = inspect.signature(pipeline.plan_shards).parameters
    assert plan["shard_size"].default == DEFAULTS.embedding.shard_size
    assert plan["fan_out_above"].default == DEFAULTS.embedding.fan_out_above_images
    match = inspect.signature(pipeline.match_queries).parameters
    assert match["k"].default == DEFAULTS.matching.k
    assert (match["rerank_config"].default is not None) is DEFAULTS.matching.rerank


def test_the_settings_module_imports_nothing_heavy():
    """The DAG file imports it when it is parsed."""
    code = (
        "import sys; import include.image_similarity.settings; "
        "print(','.join(m for m in ('numpy', 'PIL', 'tensorflow', 'keras', 'airflow') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("gold", ["", "Generated", "provided ", "none", "generated,provided"])
def test_a_gold_source_other_than_the_three_is_refused(gold):
    params = DEFAULTS.as_params() | {"gold_source": gold}
    with pytest.raises(ValueError, match="gold source must be one of provided, generated, both"):
        SimilaritySettings.from_params(params)
