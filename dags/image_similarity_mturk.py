"""
## Image similarity, validated by a crowd

For every **query image**, find the 3 most similar images of a **dataset** with a pretrained CNN
(EfficientNet-Lite0 by default), then have Mechanical Turk workers validate the matches, with
**known-answer** (gold) questions deciding who earns a bonus and whose vote counts.

1. `list_sources`: list (or stage from Google Drive) the dataset, the queries and the
   known-answer sets; files that are not images are reported by name;
2. `validate_known_answers`: check the `knownN`, `knownN_1st_match`, `_2nd_match`, `_3rd_match`
   naming and that every gold image decodes; a misnamed set stops the run here;
3. `plan_embedding` → `embed_images` (mapped over shards: one, or several in parallel on the
   Celery workers above *Fan out above*) → `merge_embeddings`: embed dataset and queries
   (cached by content hash: a rerun on the same images embeds nothing); corrupt, truncated
   and empty files are reported and left out;
4. `plan_search` → `search_dataset` (mapped over dataset shards: one, or several in parallel
   above *Search fans out above*) → `match_queries` → `rerank_matches` (mapped over query
   shards above *Re-ranking fans out above*) → `write_matches`: the k nearest dataset images
   per query → `matches.json`: the nearest by
   cosine similarity (as many as *Images re-ranked per query*), re-ordered by spatial
   verification (the query lined up against each candidate on thumbnails, which tells
   neighbouring video frames apart); scores stay cosines;
5. `write_contact_sheets`: one picture per query beside its matches with their scores;
   `ask_crowd`: with the Param *Ask the crowd* off the run ends here, a rehearsal that
   uploads, creates and pays nothing;
6. `publish_images`: the originals of the images workers see → S3, content-addressed, private
   (`create_hits` then makes each HIT's own JPEG copies under keys no worker can link);
7. `create_hits`: one HIT per query (gold question + model question, shuffled), after a cost
   check against the balance and the budget cap; each HIT exactly once (retries and reruns
   create nothing twice; a new query gets one new HIT). Link: *HIT preview*;
8. `wait_for_assignments`: a deferrable sensor (the triggerer polls, no worker slot is held);
9. `review_assignments`: approve; gold right → bonus, the vote counts; gold wrong → e-mail, the
   vote is ignored; each payment and e-mail exactly once;
10. `write_results`: majority vote, Dawid-Skene and Wawa (crowd-kit), the primary one chosen by
   a Param → `results.json`, `results.csv`, `report.html` in S3 and locally. Link: *Report*.

Local results land in `<output folder>/<batch id>/`; the batch's state lives in S3 under
`<prefix>/batches/<batch id>/`. Sources are local folders (relative paths are relative to the
project folder) or `gdrive://FOLDER_ID` through the `google_cloud_default` connection. MTurk is
reached through the `aws_default` connection; its extra `service_config.mturk.endpoint_url`
points it at the local crowd sandbox.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, Param, dag, get_current_context, task

from include.common.batch import BATCH_PARAM_PATTERN, batch_dir_for_run, campaign_id
from include.crowd.aggregation import DEFAULT_PRIMARY, Method
from include.crowd.costs import DEFAULT_BUDGET, DEFAULT_MAX_BONUS
from include.crowd.settings import (
    DEFAULT_CONFIDENCE,
    DEFAULT_EMAIL_SUBJECT,
    DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS,
    DEFAULT_EXCLUDE_BELOW_GOLD_ACCURACY,
    DEFAULT_HIT_DESCRIPTION,
    DEFAULT_HIT_INSTRUCTIONS,
    DEFAULT_MAX_HITS_PER_WORKER,
    EMAIL_SUBJECT_MAX,
    INSTRUCTIONS_MAX,
    MAX_GOLD_ANSWERS_PARAM,
    MAX_HITS_PER_WORKER_PARAM,
)
from include.image_similarity.settings import (
    DEFAULTS,
    GOLD_SOURCES,
    Embedding,
    SettingsError,
    SimilaritySettings,
)
from mturk_provider.links import HITPreviewLink, MTurkReportLink
from mturk_provider.operators.mturk import mturk_task
from mturk_provider.operators.rounds import MTurkReviewRoundsOperator
from mturk_provider.sensors.mturk import MTurkHITsSensor

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MONEY = r"^(?!0+\.0+$)\d{1,3}\.\d{2}$"
MATCHES_ASSET = Asset("image_similarity_mturk_matches")
REHEARSAL = "@rehearsal"  # a rehearsal's folder suffix: no batch id holds an "@"

SOURCES, MODEL, HIT, WORKERS, PAYMENTS, MESSAGES, STORAGE = (
    "Sources", "Model", "HIT", "Workers", "Payments", "Messages", "Storage",
)  # fmt: skip
BUDGET = r"^\d{1,6}\.\d{2}$"
RESULTS_ASSET = Asset("image_similarity_mturk_results")
# How often the triggerer looks at the HITs (seconds); the demo sets a few seconds.
POLL_SECONDS = float(os.environ.get("IMAGE_SIMILARITY_POLL_SECONDS", "60"))
# No task may run for ever (a hung read, a stuck call): each is stopped after this and retried.
TASK_TIMEOUT = timedelta(hours=6)
MAX_WAIT_HOURS = 8760  # the longest wait_timeout_hours; the sensor's own deadline is that Param

# The trigger form submits an emptied field as null, and marks a field whose type does not allow
# null as required: a Param whose description says "Empty: ..." therefore allows null too.
PARAMS = {
    # Sources
    "dataset_source": Param(
        DEFAULTS.sources.dataset, type="string", minLength=1, section=SOURCES,
        title="Dataset images",
        description="Local folder (relative to the project) or gdrive://FOLDER_ID.",
    ),
    "queries_source": Param(
        DEFAULTS.sources.queries, type="string", minLength=1, section=SOURCES,
        title="Query images", description="Local folder or gdrive://FOLDER_ID.",
    ),
    "known_answers_source": Param(
        DEFAULTS.sources.known_answers, type="string", minLength=1, section=SOURCES,
        title="Known-answer (gold) sets",
        description="knownN.jpg, knownN_1st_match.jpg (correct), knownN_2nd_match.jpg, "
        "knownN_3rd_match.jpg. Local folder or gdrive://FOLDER_ID. Not read when gold_source is "
        "generated.",
    ),
    "gold_source": Param(
        DEFAULTS.sources.gold, type="string", enum=list(GOLD_SOURCES), section=SOURCES,
        title="Gold questions",
        description="generated: made from the dataset (an altered copy of a dataset image, its "
        "source and the model's own near neighbours of it), so the check looks like the work and "
        "cannot be told apart; each HIT gets its own. provided: the known-answer sets. both: "
        "generated while they last, then the provided sets.",
    ),
    "follow_external_symlinks": Param(
        DEFAULTS.sources.follow_external_symlinks, type="boolean", section=SOURCES,
        title="Follow links out of the folders",
        description="Off: a symbolic link in a local folder whose target lies outside that "
        "folder is reported and skipped (it could show workers any file on the machine).",
    ),
    "gcp_conn_id": Param(
        DEFAULTS.sources.gcp_conn_id, type="string", section=SOURCES,
        title="Google connection", description="Used for gdrive:// sources.",
    ),
    # Model
    "model": Param(
        DEFAULTS.embedding.model, type="string", section=MODEL, title="Model",
        description="efficientnet_lite0 (offline), keras:<Application> (downloads ImageNet "
        "weights), keras:<Application>:<weights file>, or a .keras file.",
    ),
    "embedding_runtime": Param(
        DEFAULTS.embedding.runtime, type="string", enum=["keras", "litert"], section=MODEL,
        title="Model runtime",
        description="keras: TensorFlow runs the Keras model. litert: the model converted once "
        "to TensorFlow Lite (float32, checked against Keras) and run by LiteRT; the same "
        "vectors, faster on CPUs.",
    ),
    "k": Param(DEFAULTS.matching.k, type="integer", minimum=1, maximum=10, section=MODEL,
               title="Matches per query"),
    "image_area": Param(
        DEFAULTS.embedding.image_area, type="integer", minimum=4096, maximum=1048576,
        section=MODEL,
        title="Pixels per image fed to the model",
        description="About this many pixels, aspect ratio kept (50176 = 224x224; a 16:9 frame "
        "becomes 288x160).",
    ),
    "batch_size": Param(DEFAULTS.embedding.batch_size, type="integer", minimum=1, maximum=512,
                        section=MODEL, title="Inference batch size"),
    "fan_out_above_images": Param(
        DEFAULTS.embedding.fan_out_above_images, type="integer", minimum=0, section=MODEL,
        title="Fan out above (images)",
        description="Up to this many images are embedded by one task; above, the images are "
        "cut into shards embedded in parallel by the Celery workers.",
    ),
    "shard_size": Param(
        DEFAULTS.embedding.shard_size, type="integer", minimum=1, section=MODEL,
        title="Images per shard",
    ),
    "rerank": Param(
        DEFAULTS.matching.rerank, type="boolean", section=MODEL,
        title="Re-rank by spatial verification",
        description="Re-order the nearest images by how well the query lines up with each "
        "(tells neighbouring video frames apart; about 20 ms per query). Off: cosine order.",
    ),
    "rerank_shortlist": Param(
        DEFAULTS.matching.rerank_shortlist, type="integer", minimum=1, maximum=200,
        section=MODEL,
        title="Images re-ranked per query",
        description="How many nearest images by cosine the re-ranker verifies (at least k).",
    ),
    "match_fan_out_above_images": Param(
        DEFAULTS.matching.fan_out_above_images, type="integer", minimum=0, section=MODEL,
        title="Search fans out above (dataset images)",
        description="Up to this many dataset images are searched by one task; above, the "
        "dataset is cut into shards searched in parallel, each task holding only its shard's "
        "vectors, and each query's nearest images of all shards are merged.",
    ),
    "match_shard_size": Param(
        DEFAULTS.matching.shard_size, type="integer", minimum=1, section=MODEL,
        title="Dataset images per search shard",
        description="100,000 vectors of 1280 floats take 512 MB in a search task.",
    ),
    "rerank_fan_out_above_queries": Param(
        DEFAULTS.matching.rerank_fan_out_above_queries, type="integer", minimum=0,
        section=MODEL,
        title="Re-ranking fans out above (queries)",
        description="Up to this many queries are re-ranked by one task; above, the queries are "
        "cut into shards re-ranked in parallel by the Celery workers.",
    ),
    "rerank_shard_size": Param(
        DEFAULTS.matching.rerank_shard_size, type="integer", minimum=1, section=MODEL,
        title="Queries per re-ranking shard",
    ),
    # HIT
    "ask_crowd": Param(
        True, type="boolean", section=HIT, title="Ask the crowd",
        description="Off: a rehearsal that ends before the crowd stage. Sources, embeddings, "
        "matches, gold and contact sheets are made locally as in a real run; nothing is "
        "uploaded, no HIT is created, nothing is paid, and S3 and MTurk are not checked.",
    ),
    "hit_title": Param(
        "Which picture is most similar?", type="string", minLength=1, maxLength=128,
        section=HIT, title="HIT title",
    ),
    "hit_description": Param(
        DEFAULT_HIT_DESCRIPTION,
        type="string", minLength=1, maxLength=2000, section=HIT, title="HIT description",
        description="What MTurk lists with the title. {bonus} stands for the bonus amount "
        "($0.10); write {{ and }} for a literal brace.",
    ),
    "hit_instructions": Param(
        DEFAULT_HIT_INSTRUCTIONS,
        type="string", minLength=1, maxLength=INSTRUCTIONS_MAX, section=HIT,
        title="HIT instructions",
        description="Shown above the questions; a blank line starts a paragraph. {bonus} "
        "stands for the bonus amount; write {{ and }} for a literal brace. Workers should "
        "learn here that one question checks their attention and decides their bonus.",
    ),
    "hit_keywords": Param(
        "image, similarity, comparison, photo", type="string", maxLength=1000,
        section=HIT, title="Keywords", description="Comma-separated.",
    ),
    "assignments_per_hit": Param(
        3, type="integer", minimum=1, maximum=100, section=HIT, title="Assignments per HIT",
        description="Workers per query. 10 or more moves the HIT to MTurk's 40% fee tier.",
    ),
    "max_assignments_per_hit": Param(
        0, type="integer", minimum=0, maximum=100, section=HIT,
        title="Most assignments per HIT (adaptive overlap)",
        description="0: every HIT gets exactly 'Assignments per HIT' (fixed overlap). Above it: "
        "a HIT whose winner is less sure than the confidence target gets one more assignment "
        "after each review round, up to this many. Under 10 when a HIT starts under 10 "
        "(MTurk cannot extend past it). The budget is checked at this many.",
    ),
    "confidence_target": Param(
        DEFAULT_CONFIDENCE, type="number", minimum=0.5, exclusiveMaximum=1, section=HIT,
        title="Confidence target (adaptive overlap)",
        description="A HIT is settled when its winner's posterior (each worker weighted by "
        "their gold answers) reaches this.",
    ),
    "hit_lifetime_hours": Param(
        72, type="number", exclusiveMinimum=0, maximum=8760, section=HIT,
        title="HIT lifetime (hours)",
    ),
    "assignment_duration_minutes": Param(
        10, type="number", minimum=0.5, maximum=1440, section=HIT,
        title="Time a worker has per assignment (minutes)",
    ),
    "auto_approval_delay_hours": Param(
        72, type="number", minimum=0, maximum=720, section=HIT,
        title="Auto-approval delay (hours)",
    ),
    "mturk_environment": Param(
        "sandbox", type="string", enum=["sandbox", "production"], section=HIT,
        title="Mechanical Turk environment",
        description="sandbox costs nothing; production pays real workers.",
    ),
    "wait_timeout_hours": Param(
        96, type="number", exclusiveMinimum=0, maximum=MAX_WAIT_HOURS, section=HIT,
        title="Stop waiting for assignments after (hours)",
        description="Usually longer than the HIT lifetime: expired HITs end the wait anyway.",
    ),
    "timeout_policy": Param(
        "partial", type="string", enum=["partial", "fail"], section=HIT,
        title="When the wait times out",
        description="partial: review and report what was submitted; fail: fail the run.",
    ),
    "review_window_hours": Param(
        24, type="number", minimum=1, maximum=168, section=HIT,
        title="Review window (hours)",
        description="Image URLs stay valid for HIT lifetime + assignment time + this.",
    ),
    "create_concurrency": Param(
        4, type="integer", minimum=1, maximum=32, section=HIT,
        title="HITs created in parallel",
    ),
    # Workers
    "min_approval_rate": Param(
        95, type=["null", "integer"], minimum=0, maximum=100, section=WORKERS,
        title="Minimum approval rate (%)", description="Empty: no requirement.",
    ),
    "min_approved_hits": Param(
        100, type=["null", "integer"], minimum=0, section=WORKERS,
        title="Minimum approved HITs", description="Empty: no requirement.",
    ),
    "worker_locales": Param(
        "", type=["null", "string"],
        pattern=r"^([A-Z]{2}(-[A-Z0-9]{1,3})?(, *[A-Z]{2}(-[A-Z0-9]{1,3})?)*)?$",
        section=WORKERS, title="Worker locales",
        description="Comma-separated countries (US, GB) or subdivisions (US-NY). Empty: any.",
    ),
    "exclude_failed_workers": Param(
        True, type="boolean", section=WORKERS,
        title="Exclude workers whose gold accuracy is too low",
        description="Through a custom qualification the review grants to them, judged on "
        "their gold record across every batch of the S3 prefix (the two Params below).",
    ),
    "exclude_after_gold_answers": Param(
        DEFAULT_EXCLUDE_AFTER_GOLD_ANSWERS, type="integer", minimum=1,
        maximum=MAX_GOLD_ANSWERS_PARAM, section=WORKERS,
        title="Judge a worker after this many gold answers",
        description="No worker is excluded before their record across batches holds this "
        "many valid gold answers (too-fast and malformed ones do not count).",
    ),
    "exclude_below_gold_accuracy": Param(
        DEFAULT_EXCLUDE_BELOW_GOLD_ACCURACY, type="number", minimum=0, maximum=1,
        section=WORKERS, title="Exclude below this gold accuracy",
        description="Share of their gold answers a worker must get right (0.6: 3 of 5 is "
        "enough). 1, with 1 answer above: excluded after one miss; 0: nobody is excluded.",
    ),
    "max_hits_per_worker": Param(
        DEFAULT_MAX_HITS_PER_WORKER, type="integer", minimum=0,
        maximum=MAX_HITS_PER_WORKER_PARAM, section=WORKERS,
        title="Most HITs of the batch per worker",
        description="A worker who has submitted this many HITs of the batch gets the batch's "
        "'HIT cap reached' qualification at the next review round and can no longer see or "
        "accept its HITs (work submitted before that round is paid and counted). Also limits "
        "how much of the gold one worker sees. 0: no cap.",
    ),
    "min_work_seconds": Param(
        0, type="number", minimum=0, maximum=3600, section=WORKERS,
        title="Minimum work time (seconds)",
        description="An assignment submitted sooner after its accept is approved but not "
        "counted and earns no bonus; the report names it. 0: no minimum. Two picture questions "
        "take a careful person about 10 s or more.",
    ),
    "show_worker_ids": Param(
        False, type="boolean", section=WORKERS, title="Show worker ids in the report",
        description="Off: workers appear as worker 1, worker 2, ... in results and report. On: "
        "their MTurk worker ids (personal data: share the report accordingly).",
    ),
    "require_masters": Param(
        False, type="boolean", section=WORKERS, title="Masters only",
        description="MTurk charges 5% more for Masters.",
    ),
    "aggregation_method": Param(
        DEFAULT_PRIMARY.value, type="string", enum=[m.value for m in Method], section=WORKERS,
        title="Primary aggregation method",
        description="Every method's verdict is in the results; this one's is the top-level "
        "winner: majority (counted votes), dawid_skene (worker confusion matrices), wawa "
        "(votes weighted by agreement with the majority).",
    ),
    # Payments
    "reward_usd": Param(
        "0.05", type="string", pattern=MONEY, section=PAYMENTS, title="Reward per assignment (USD)",
        description="A positive amount with cents, e.g. 0.05.",
    ),
    "bonus_usd": Param(
        "0.05", type="string", pattern=MONEY, section=PAYMENTS,
        title="Bonus for a correct gold answer (USD)",
    ),
    "max_bonus_usd": Param(
        DEFAULT_MAX_BONUS, type="string", pattern=MONEY, section=PAYMENTS,
        title="Per-bonus cap (USD)",
        description="No single bonus is paid above this; a bonus setting above it stops the "
        "run before any HIT is created.",
    ),
    "budget_usd": Param(
        DEFAULT_BUDGET, type="string", pattern=BUDGET, section=PAYMENTS, title="Budget cap (USD)",
        description="The run stops before creating any HIT if rewards + all bonuses + fees "
        "could exceed this; the review pays no bonus that would exceed it. Fixed for a batch "
        "once its first HIT exists, like reward, bonus, caps and assignments.",
    ),
    # Messages
    "bonus_message": Param(
        "Thank you! You answered the check question correctly, so here is a bonus.",
        type="string", minLength=1, maxLength=4096, section=MESSAGES, title="Bonus reason",
    ),
    "no_bonus_message": Param(
        "Thank you for your work. The check question in this task was answered incorrectly, "
        "so no bonus was paid this time.",
        type="string", minLength=1, maxLength=4096, section=MESSAGES, title="No-bonus e-mail",
        description="Sent once to a worker who answered a check question wrongly, followed "
        "by the HITs concerned and the bonus missed (and, when they answered every other "
        "check question of the batch right, a line saying so).",
    ),
    "email_subject": Param(
        DEFAULT_EMAIL_SUBJECT,
        type="string", minLength=1, maxLength=EMAIL_SUBJECT_MAX, section=MESSAGES,
        title="No-bonus e-mail subject", description="One line of plain text.",
    ),
    # Storage
    "batch_id": Param(
        "", type=["null", "string"], pattern=BATCH_PARAM_PATTERN, section=STORAGE,
        title="Batch id",
        description="Empty: this DAG's campaign over these sources (the same batch for every "
        "run, scheduled or manual: a rerun asks only about new queries). @run: a new batch "
        "for every run. Else letters, digits, . _ - only, not starting with a dot. A batch's "
        "money settings are fixed when its first HIT exists.",
    ),
    "reask_changed_matches": Param(
        False, type="boolean", section=STORAGE, title="New HIT when a query's matches change",
        description="Off: a query asked about in an earlier run of the batch is not asked "
        "again. On: a query whose matches changed (the dataset grew) gets a new HIT; the "
        "results then show the crowd's verdict on its newest matches.",
    ),
    "output_dir": Param(
        "output", type="string", minLength=1, section=STORAGE, title="Local output folder",
    ),
    "embedding_cache": Param(
        os.environ.get("IMAGE_SIMILARITY_EMBEDDING_CACHE", DEFAULTS.embedding.cache),
        type=["null", "string"], section=STORAGE, title="Embedding cache",
        description="Local folder or s3://bucket/prefix (an S3 prefix is shared by all workers; "
        "use one when workers run on several machines). Empty: no cache.",
    ),
    "s3_bucket": Param(
        os.environ.get("IMAGE_SIMILARITY_S3_BUCKET", ""), type="string", section=STORAGE,
        title="S3 bucket", description="Private bucket for images, HIT manifest, ledger, results.",
    ),
    "public_image_base_url": Param(
        "", type=["null", "string"], section=STORAGE, title="Public image base URL",
        description="Only if the bucket (or a CDN) is public: images are then linked as "
        "<base>/<key> instead of presigned URLs.",
    ),
    "s3_prefix": Param("image-similarity", type="string", section=STORAGE, title="S3 prefix"),
    "results_drive_folder": Param(
        "", type=["null", "string"], pattern=r"^$|^gdrive://[A-Za-z0-9_-]{1,200}/?$",
        section=STORAGE, title="Copy results to Google Drive",
        description="gdrive://FOLDER_ID of a folder in a shared drive: each results write "
        "copies results, report, queries and winners (<query>_winner_<share>.jpg) into a "
        "subfolder named after the run. The Google connection then needs the scope "
        "https://www.googleapis.com/auth/drive. Empty: no copy.",
    ),
    "aws_conn_id": Param("aws_default", type="string", section=STORAGE, title="AWS connection"),
}  # fmt: skip


def _batch_dir(params: dict, run_id: str, dag_id: str) -> Path:
    """The run's batch folder: the Param batch_id's, or the campaign of this DAG, its sources
    (normalised: a relative and an absolute path to one folder are one campaign) and its MTurk
    environment. A rehearsal (Param ask_crowd off) works in ``<batch id>@rehearsal`` beside it:
    it never rewrites the matches or gold a batch's HITs are made from (a failed real run's
    retry would otherwise create HITs from the rehearsal's)."""
    from include.image_similarity.sources import SourceSpec

    sources = {
        name: str(SourceSpec.parse(text, base_dir=PROJECT_ROOT))
        for name, text in _similarity_settings(params).sources.locations().items()
    }
    campaign = campaign_id(dag_id, params["mturk_environment"], sources)
    folder = batch_dir_for_run(
        params["output_dir"], params["batch_id"], run_id, PROJECT_ROOT, campaign
    )
    return folder if params["ask_crowd"] else folder.with_name(folder.name + REHEARSAL)


def _review_round(context, batch_dir: str, final: bool, deadline: float) -> list[str]:
    """One review round (``MTurkReviewRoundsOperator``): approve, pay gold passers, mail the
    others, each exactly once; unless ``final``, then give the unsure HITs more assignments
    (adaptive overlap) and return the ids of the HITs to wait for: those extended now and those
    an earlier round (or an earlier try of the task) extended whose new assignments are not all
    submitted."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.crowd import stage
    from include.crowd.costs import BudgetError
    from include.crowd.extend import DamagedEntry

    params = context["params"]
    platform = _platform(params)
    s3, settings = _s3(params), _settings(params, batch_dir)
    caps = stage.PaymentCaps.from_params(params)
    try:  # settings that cannot pay (changed, above the caps): a retry cannot help
        stage.check_money_settings(s3, settings)
        caps.check(settings)
    except (BudgetError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from exc
    try:  # a damaged extension entry: nothing is paid or extended until it is fixed
        outcome = stage.review(
            s3, platform, settings, caps=caps, exclusion_id=_exclusion(platform, params)
        )
        if final:
            return []
        until = datetime.fromtimestamp(deadline, UTC)
        extended = stage.extend(
            s3, platform, settings, outcome.reviews, caps=caps, open_until=until
        )
    except DamagedEntry as exc:
        raise AirflowFailException(str(exc)) from exc
    return extended.extended + extended.awaiting  # a retried task waits for earlier rounds' too


def _crowd_problems(params: dict, settings) -> list[str]:
    """What the crowd stage needs: the bucket (set, reachable, private), MTurk (reachable, its
    balance), the money settings and an existing batch's pinned ones."""
    from include.crowd import stage

    try:
        s3 = _s3(params)
    except Exception as exc:  # noqa: BLE001 - a missing or broken connection
        return [
            f"the AWS connection {params['aws_conn_id']!r} (Param aws_conn_id) cannot be used: "
            f"{exc}"
        ]
    return stage.preflight(s3, lambda: _platform(params), settings, params["aws_conn_id"])


def _output_root(params: dict) -> Path:
    folder = Path(params["output_dir"]).expanduser()
    return folder if folder.is_absolute() else PROJECT_ROOT / folder


def _drive_problems(similarity: SimilaritySettings, params: dict) -> list[str]:
    """The Drive source folders, each looked up through the Google connection."""
    from include.crowd.drive_results import parse_folder
    from include.image_similarity.checks import drive_folders

    folders = drive_folders(similarity)
    try:  # the results are copied by the crowd stage: a rehearsal needs no results folder
        results_folder = parse_folder(params["results_drive_folder"] if params["ask_crowd"] else "")
    except ValueError as exc:
        return [str(exc)]
    if results_folder:
        folders["results_drive_folder"] = results_folder
    if not folders:
        return []
    from airflow.providers.google.suite.hooks.drive import GoogleDriveHook

    from include.image_similarity.drive import check_folder

    conn_id = similarity.sources.gcp_conn_id
    found = []
    try:
        hook = GoogleDriveHook(gcp_conn_id=conn_id)
    except Exception as exc:  # noqa: BLE001 - a missing connection
        return [f"the Google connection {conn_id!r} (Param gcp_conn_id) cannot be used: {exc}"]
    for param, folder in folders.items():
        try:
            check_folder(hook, folder)
        except Exception as exc:  # noqa: BLE001 - each folder's problem is named
            found.append(f"Param {param}: {exc} (Google connection {conn_id!r}, Param gcp_conn_id)")
    return found


def _copy_to_drive(params: dict, batch_dir: str, s3, settings, context) -> dict:
    """Copy the results, each query and its winner into a subfolder of the Param
    results_drive_folder named after the run (the same on a retry: nothing is sent twice)."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.crowd import drive_results, stage
    from include.crowd.create import load_manifest

    try:
        folder_id = drive_results.parse_folder(params["results_drive_folder"])
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from exc
    if not folder_id:
        return {}
    from airflow.providers.google.suite.hooks.drive import GoogleDriveHook

    conn_id = params["gcp_conn_id"]
    hook = GoogleDriveHook(gcp_conn_id=conn_id)
    plans = load_manifest(stage.ledger_for(s3, settings))
    try:
        files = drive_results.snapshot_files(
            Path(batch_dir) / "results", plans, stage.image_source(Path(batch_dir), s3, settings)
        )
        summary = drive_results.upload_snapshot(
            hook.get_conn(),
            folder_id,
            drive_results.snapshot_name(_run_moment(context)),
            files,
            num_retries=hook.num_retries,
            gcp_conn_id=conn_id,
        )
    except (drive_results.ResultsDocumentError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from exc
    except drive_results.DriveResultsError as exc:
        if not exc.retryable:
            raise AirflowFailException(str(exc)) from exc
        raise
    log.info("results copied to Google Drive: %s", summary.url)
    return {"drive": summary.as_dict()}


def _run_moment(context) -> datetime:
    """When the run was due: the same for every attempt of its tasks."""
    run = context["dag_run"]
    moment = getattr(run, "run_after", None) or context.get("logical_date")
    return moment or getattr(run, "start_date", None) or datetime.now(UTC)


def _similarity_settings(params: dict) -> SimilaritySettings:
    """The similarity stage's settings of this run; a missing Param fails the task (no retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return SimilaritySettings.from_params(params)
    except SettingsError as exc:
        raise AirflowFailException(str(exc)) from exc


def _embedder(embedding: Embedding):
    from include.common.images import InputSize
    from include.image_similarity.embedding import Embedder

    model_dir = os.environ.get("IMAGE_SIMILARITY_MODEL_DIR", str(PROJECT_ROOT / ".cache/models"))
    return Embedder(
        embedding.model,
        model_dir=model_dir,
        input_size=InputSize(area=embedding.image_area),
        batch_size=embedding.batch_size,
        runtime=embedding.runtime,
    )


def _max_mapped_tasks() -> int:
    """How many mapped task instances Airflow creates at most ([core] max_map_length)."""
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length")


def _rerank_config(matching):
    """The re-ranker's settings, or None when the run ranks by cosine alone."""
    from include.image_similarity.rerank import RerankConfig

    return RerankConfig(shortlist=matching.rerank_shortlist) if matching.rerank else None


def _settings(params: dict, batch_dir: str):
    from include.crowd.settings import CrowdSettings

    return CrowdSettings.from_params(params, Path(batch_dir).name)


def _s3(params: dict):
    from mturk_provider.storage import sigv4_s3_client

    return sigv4_s3_client(params["aws_conn_id"])


def _platform(params: dict):
    from mturk_provider.crowd import mturk_platform

    return mturk_platform(params["aws_conn_id"], params["mturk_environment"])


def _exclusion(platform, params: dict) -> str | None:
    from include.crowd.stage import failed_gold_exclusion

    return failed_gold_exclusion(platform, params["exclude_failed_workers"])


@dag(
    dag_id="image_similarity_mturk",
    schedule=os.environ.get("IMAGE_SIMILARITY_SCHEDULE") or None,
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": TASK_TIMEOUT,
    },
    tags=["image-similarity", "mturk", "deep-learning"],
    params=PARAMS,
    doc_md=__doc__,
)
def image_similarity_mturk():
    @task
    def check_settings() -> str:
        """Check everything the run needs before anything is listed or embedded: the sources
        (local folders, Drive folders through the Google connection), the model, the output
        folder, the bucket (set, reachable, private), MTurk (reachable, its balance), the money
        settings and an existing batch's pinned ones (not these four when Param ask_crowd is
        off). Every problem is named at once."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import checks

        context = get_current_context()
        params = context["params"]
        similarity = _similarity_settings(params)
        found = checks.problems(similarity, PROJECT_ROOT)
        found += checks.output_problems(_output_root(params))
        found += _drive_problems(similarity, params)
        batch_id = None
        try:
            batch_id = _batch_dir(params, context["run_id"], context["dag"].dag_id).name
            settings = _settings(params, batch_id.removesuffix(REHEARSAL))  # also rehearsed
            if params["ask_crowd"]:
                found += _crowd_problems(params, settings)
        except (SettingsError, ValueError) as exc:
            found.append(str(exc))
        if found:
            raise AirflowFailException(
                f"this run cannot work; fix {'this' if len(found) == 1 else 'these'} and "
                "trigger again (nothing was listed, embedded, created or paid):\n- "
                + "\n- ".join(found)
            )
        if params["ask_crowd"]:
            log.info(
                "settings checked: batch %s; sources, bucket, MTurk and money are fine", batch_id
            )
        else:
            log.info(
                "settings checked: %s; sources and HIT settings are fine. Param ask_crowd is "
                "off: a rehearsal that ends before the crowd stage, in its own folder, so the "
                "bucket, MTurk and the balance are not checked",
                batch_id,
            )
        return batch_id

    @task
    def list_sources() -> str:
        """List the three collections (staging Drive folders locally) into sources.json."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline
        from include.image_similarity.sources import SourceSpec, list_local_images

        context = get_current_context()
        params = context["params"]
        settings = _similarity_settings(params)
        sources = settings.sources
        try:
            batch_dir = _batch_dir(params, context["run_id"], context["dag"].dag_id)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc

        def resolve(collection: str, text: str):
            spec = SourceSpec.parse(text, base_dir=PROJECT_ROOT)
            if spec.kind == "local":
                return list_local_images(
                    spec.location, follow_external_symlinks=sources.follow_external_symlinks
                )
            from airflow.providers.google.suite.hooks.drive import GoogleDriveHook

            from include.image_similarity.drive import stage_drive_folder

            hook = GoogleDriveHook(gcp_conn_id=sources.gcp_conn_id)
            staging = PROJECT_ROOT / ".cache" / "drive" / spec.location
            return stage_drive_folder(hook, spec.location, staging)

        try:
            pipeline.list_sources(batch_dir, sources.used(), resolve)
        except (FileNotFoundError, ValueError) as exc:  # wrong settings: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        settings.store(batch_dir)
        return str(batch_dir)

    @task
    def validate_known_answers(batch_dir: str) -> str:
        """Check gold-set names and images; a misnamed set fails here, before any spending."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        gold = _similarity_settings(get_current_context()["params"]).sources.gold
        try:
            if gold == "generated":
                pipeline.skip_known_answers(Path(batch_dir))
            else:  # with "both", generated gold may fill in for no usable provided set
                pipeline.check_known_answers(Path(batch_dir), required=gold == "provided")
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return batch_dir

    @task
    def plan_embedding(batch_dir: str) -> list[dict]:
        """Cut the images to embed into shards: one, or above the threshold, several in parallel."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        embedding = _similarity_settings(get_current_context()["params"]).embedding
        try:
            shards = pipeline.plan_shards(
                Path(batch_dir),
                embedding.shard_size,
                embedding.fan_out_above_images,
                max_shards=_max_mapped_tasks(),
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return [{"batch_dir": batch_dir, **shard} for shard in shards]

    @task(map_index_template="shard {{ shard_label }}")
    def embed_images(shard: dict) -> dict:
        """Embed one shard of dataset and queries, reusing cached vectors by content hash."""
        from include.image_similarity import pipeline
        from include.image_similarity.cache import EmbeddingCache, store_for_location

        context = get_current_context()
        context["shard_label"] = f"{shard['shard'] + 1} of {shard['shards']}"
        params = context["params"]
        embedding = _similarity_settings(params).embedding
        embedder = _embedder(embedding)
        cache = None
        if embedding.cache:
            location = embedding.cache
            if not location.startswith("s3://") and not Path(location).is_absolute():
                location = str(PROJECT_ROOT / location)

            def s3_client():
                from airflow.providers.amazon.aws.hooks.s3 import S3Hook

                return S3Hook(aws_conn_id=params["aws_conn_id"]).get_conn()

            store = store_for_location(location, embedder.model_id, s3_client)
            cache = EmbeddingCache(store, embedder.model_id)
        return pipeline.embed_shard(
            Path(shard["batch_dir"]), embedder, cache, shard["shard"], shard["shards"]
        )

    @task
    def merge_embeddings(batch_dir: str, shard_stats: list[dict]) -> str:
        """Merge the shards' vectors for the top-k search; log what was embedded or cached."""
        from include.image_similarity import pipeline

        merged = pipeline.merge_shards(Path(batch_dir))
        # One slice request: iterating the lazy sequence would ask for the item past its end.
        stats = shard_stats[:]
        log.info(
            "%d shard(s): %d images embedded, %d from the cache, %d left out; %d vectors",
            merged["shards"],
            sum(s["embedded"] for s in stats),
            sum(s["from_cache"] for s in stats),
            sum(s["failed"] for s in stats),
            merged["vectors"],
        )
        return batch_dir

    @task
    def plan_search(batch_dir: str) -> list[dict]:
        """Cut the top-k search into dataset shards: one, or above the threshold, several."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        matching = _similarity_settings(get_current_context()["params"]).matching
        try:
            shards = pipeline.plan_search(
                Path(batch_dir),
                matching.shard_size,
                matching.fan_out_above_images,
                max_shards=_max_mapped_tasks(),
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return [{"batch_dir": batch_dir, **shard} for shard in shards]

    @task(map_index_template="shard {{ shard_label }}")
    def search_dataset(shard: dict) -> dict:
        """Find every query's nearest images by cosine in one dataset shard."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        context = get_current_context()
        context["shard_label"] = f"{shard['shard'] + 1} of {shard['shards']}"
        matching = _similarity_settings(context["params"]).matching
        shortlist = pipeline.search_shortlist(matching.k, _rerank_config(matching))
        try:
            return pipeline.search_shard(
                Path(shard["batch_dir"]), shard["shard"], shard["shards"], shortlist
            )
        except ValueError as exc:  # a damaged plan or vectors: a retry would read the same
            raise AirflowFailException(str(exc)) from exc

    @task
    def match_queries(batch_dir: str, searched: list[dict]) -> list[dict]:
        """Merge the shards' nearest images into each query's shortlist; cut the queries into
        re-ranking shards: one, or above the threshold, several in parallel."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        matching = _similarity_settings(get_current_context()["params"]).matching
        try:
            shards = pipeline.plan_rerank(
                Path(batch_dir),
                matching.k,
                rerank_config=_rerank_config(matching),
                searched=len(searched[:]),  # one slice request, as in merge_embeddings
                shard_size=matching.rerank_shard_size,
                fan_out_above=matching.rerank_fan_out_above_queries,
                max_shards=_max_mapped_tasks(),
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return [{"batch_dir": batch_dir, **shard} for shard in shards]

    @task(map_index_template="shard {{ shard_label }}")
    def rerank_matches(shard: dict) -> dict:
        """Re-order one shard of queries' shortlists by spatial verification."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        context = get_current_context()
        context["shard_label"] = f"{shard['shard'] + 1} of {shard['shards']}"
        matching = _similarity_settings(context["params"]).matching
        try:
            return pipeline.rerank_shard(
                Path(shard["batch_dir"]),
                shard["shard"],
                shard["shards"],
                matching.k,
                rerank_config=_rerank_config(matching),
            )
        except ValueError as exc:  # a damaged shortlist or vectors: a retry would read the same
            raise AirflowFailException(str(exc)) from exc

    @task
    def write_matches(batch_dir: str, reranked: list[dict]) -> str:
        """Join the re-ranked shards; write matches.json and similarity.json."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline

        matching = _similarity_settings(get_current_context()["params"]).matching
        try:
            pipeline.write_matches(
                Path(batch_dir),
                matching.k,
                rerank_config=_rerank_config(matching),
                reranked=len(reranked[:]),
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return batch_dir

    @task
    def prepare_gold(batch_dir: str) -> str:
        """Make the gold questions: generated from the dataset so they look like the work (each
        HIT its own), the provided sets, or both (Param gold_source)."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.image_similarity import pipeline
        from include.image_similarity.rerank import RerankConfig

        settings = _similarity_settings(get_current_context()["params"])
        embedder = _embedder(settings.embedding) if settings.sources.gold != "provided" else None
        matching = settings.matching
        seed = int(hashlib.sha256(Path(batch_dir).name.encode()).hexdigest()[:8], 16)
        try:
            pipeline.prepare_gold(
                Path(batch_dir),
                embedder,
                settings.sources.gold,
                seed=seed,
                rerank_config=RerankConfig(shortlist=matching.rerank_shortlist),
            )
        except ValueError as exc:  # too few pictures for the gold asked for: settings or data
            raise AirflowFailException(str(exc)) from exc
        return batch_dir

    @task(outlets=[MATCHES_ASSET])
    def write_contact_sheets(batch_dir: str) -> str:
        """Draw each query beside its matches; log the files left out and where results are."""
        from include.image_similarity import pipeline

        pipeline.contact_sheets(Path(batch_dir))
        pipeline.log_summary(Path(batch_dir))
        return batch_dir

    @task.short_circuit
    def ask_crowd(batch_dir: str) -> str | None:
        """Go on to the crowd stage, or end the run here when Param ask_crowd is off (every
        later task is skipped: nothing is uploaded, created or paid)."""
        if get_current_context()["params"]["ask_crowd"]:
            return batch_dir
        log.info(
            "Param ask_crowd is off: the run ends before the crowd stage; the matches are in "
            "%s (matches.json, contact_sheets/). Nothing was uploaded, no HIT was created, "
            "nothing was paid",
            batch_dir,
        )
        return None

    @task
    def publish_images(batch_dir: str) -> str:
        """Upload the originals of the images workers see to S3 (content-addressed, private)."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.crowd import stage
        from include.crowd.publish import PublishError

        params = get_current_context()["params"]
        s3, settings = _s3(params), _settings(params, batch_dir)
        try:
            stage.check_money_settings(s3, settings)  # before anything is uploaded or called
            stage.publish(Path(batch_dir), s3, settings)
        except (PublishError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        return batch_dir

    @mturk_task(links=[HITPreviewLink])
    def create_hits(batch_dir: str) -> list[str]:
        """Check the cost, then create one HIT per query, each exactly once."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.crowd import stage
        from include.crowd.costs import BudgetError
        from include.crowd.publish import PublishError

        context = get_current_context()
        params = context["params"]
        platform = _platform(params)
        exclusion = _exclusion(platform, params)
        try:
            plans = stage.create(
                Path(batch_dir),
                _s3(params),
                platform,
                _settings(params, batch_dir),
                exclusion_id=exclusion,
                reask_changed=bool(params["reask_changed_matches"]),
            )
        except (BudgetError, PublishError, ValueError) as exc:  # settings: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        if plans:
            HITPreviewLink.persist(
                context["ti"], platform.hook.preview_url(plans[0].hit_id, plans[0].hit_type_id)
            )
        return [plan.hit_id for plan in plans]

    @mturk_task(links=[MTurkReportLink], outlets=[RESULTS_ASSET])
    def write_results(batch_dir: str) -> dict:
        """Aggregate the counted votes (crowd-kit) and write results and the HTML report."""
        from include.crowd import stage

        context = get_current_context()
        params = context["params"]
        s3 = _s3(params)
        settings = _settings(params, batch_dir)
        written = stage.results(Path(batch_dir), s3, settings, _platform(params).fees)
        MTurkReportLink.persist(context["ti"], stage.report_url(s3, settings))
        written = {**written, **_copy_to_drive(params, batch_dir, s3, settings, context)}
        return written

    listed = list_sources()
    check_settings() >> listed
    checked = validate_known_answers(listed)
    shard_stats = embed_images.expand(shard=plan_embedding(checked))
    merged = merge_embeddings(checked, shard_stats)
    shortlisted = match_queries(merged, search_dataset.expand(shard=plan_search(merged)))
    matched = write_matches(merged, rerank_matches.expand(shard=shortlisted))
    batch_dir = write_contact_sheets(prepare_gold(matched))
    published = publish_images(ask_crowd(batch_dir))
    hit_ids = create_hits(published)
    progress = MTurkHITsSensor(
        task_id="wait_for_assignments",
        hit_ids=hit_ids,
        aws_conn_id="{{ params.aws_conn_id }}",
        environment="{{ params.mturk_environment }}",
        poll_interval=POLL_SECONDS,
        timeout_policy="{{ params.timeout_policy }}",
        batch_timeout="{{ params.wait_timeout_hours * 3600 }}",
        # Its deadline is wait_timeout_hours; this only keeps it from outliving the longest.
        execution_timeout=timedelta(hours=MAX_WAIT_HOURS + 1),
    )
    hit_ids >> progress
    reviewed = MTurkReviewRoundsOperator(
        task_id="review_assignments",
        review_round=_review_round,
        batch_dir=published,
        wait_seconds="{{ params.wait_timeout_hours * 3600 }}",
        poll_interval=POLL_SECONDS,
        aws_conn_id="{{ params.aws_conn_id }}",
        environment="{{ params.mturk_environment }}",
        doc_md="Approve, pay gold passers, mail the others (each exactly once); with adaptive "
        "overlap, give unsure HITs more assignments and review again after waiting in the "
        "triggerer.",
    )
    progress >> reviewed
    write_results(reviewed.output)


image_similarity_mturk()
