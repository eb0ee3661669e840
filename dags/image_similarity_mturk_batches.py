"""
## Work on one crowd batch: collect its results now, or clean it up

Two small DAGs that take a **batch id** (the one `image_similarity_mturk` ran with) and read the
batch's state from S3 (`<prefix>/batches/<batch id>/`: manifest, settings, ledger):

- `image_similarity_mturk_collect`: review what has been submitted so far (approve, bonus,
  e-mail: each exactly once, the same code as the main DAG's review) and write the current
  `results.json`, `results.csv` and `report.html`. Run it any time, also while workers are
  still answering; running it again pays and mails nobody twice.
- `image_similarity_mturk_cleanup`: expire the batch's HITs, settle them (the same review), and
  delete the HITs MTurk lets us delete. Only HITs whose `RequesterAnnotation` is this batch id
  are touched; HITs with workers still inside their assignment time stay (run it again later).

What they may pay is capped by **their own Params** (*Per-bonus cap*, *Budget cap*, with the
main DAG's defaults), never by the settings file read back from S3: a batch whose stored bonus
or budget is above them is refused before anything is paid.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, Param, dag, get_current_context, task

from include.common.batch import BATCH_ID_PATTERN, batch_dir
from include.crowd.costs import DEFAULT_BUDGET, DEFAULT_MAX_BONUS
from mturk_provider.links import MTurkReportLink
from mturk_provider.operators.mturk import mturk_task

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ASSET = Asset("image_similarity_mturk_results")
BATCH = "Batch"

PARAMS = {
    "batch_id": Param(
        "", type="string", pattern=BATCH_ID_PATTERN, section=BATCH, title="Batch id",
        description="The batch id the image_similarity_mturk run used.",
    ),
    "max_bonus_usd": Param(
        DEFAULT_MAX_BONUS, type="string", pattern=r"^\d{1,3}\.\d{2}$", section=BATCH,
        title="Per-bonus cap (USD)",
        description="No bonus above this is paid; a batch whose bonus is higher is refused.",
    ),
    "budget_usd": Param(
        DEFAULT_BUDGET, type="string", pattern=r"^\d{1,6}\.\d{2}$", section=BATCH,
        title="Budget cap (USD)",
        description="A batch whose budget is higher is refused; no bonus that would bring "
        "the batch's committed money above the lower of both budgets is paid.",
    ),
    "s3_bucket": Param("", type="string", minLength=1, section=BATCH, title="S3 bucket"),
    "s3_prefix": Param("image-similarity", type="string", section=BATCH, title="S3 prefix"),
    "output_dir": Param(
        "output", type="string", minLength=1, section=BATCH, title="Local output folder",
    ),
    "aws_conn_id": Param("aws_default", type="string", section=BATCH, title="AWS connection"),
    "mturk_environment": Param(
        "sandbox", type="string", enum=["sandbox", "production"], section=BATCH,
        title="Mechanical Turk environment",
    ),
}  # fmt: skip


def _context():
    """Params, the batch's stored settings, this run's payment caps, the S3 client (SigV4) and
    the crowd platform (MTurk). A batch id, stored settings or caps that cannot work fail the
    task at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.common.batch import check_batch_id
    from include.crowd.costs import BudgetError
    from include.crowd.stage import PaymentCaps, batch_settings
    from mturk_provider.crowd import mturk_platform
    from mturk_provider.storage import sigv4_s3_client

    params = get_current_context()["params"]
    s3 = sigv4_s3_client(params["aws_conn_id"])
    caps = PaymentCaps.from_params(params)
    try:
        settings = batch_settings(
            s3, params["s3_bucket"], params["s3_prefix"], check_batch_id(params["batch_id"])
        )
        caps.check(settings)
    except (BudgetError, TypeError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from exc
    platform = mturk_platform(params["aws_conn_id"], params["mturk_environment"])
    return params, s3, settings, caps, platform


def _batch_dir(params: dict) -> Path:
    return batch_dir(params["output_dir"], params["batch_id"], PROJECT_ROOT)


def _exclusion(platform, settings) -> str | None:
    from include.crowd.stage import failed_gold_exclusion

    return failed_gold_exclusion(platform, settings.review.exclude_failed_workers)


# Both DAGs work on one batch at a time, by its id, with the main DAG's retry policy.
DAG_ARGS = {
    "schedule": None,
    "catchup": False,
    "max_active_runs": 1,
    "default_args": {
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(hours=6),
    },
    "tags": ["image-similarity", "mturk"],
    "params": PARAMS,
    "doc_md": __doc__,
}


@dag(dag_id="image_similarity_mturk_collect", **DAG_ARGS)
def image_similarity_mturk_collect():
    @task
    def review_submitted() -> str:
        """Approve, pay and mail for what was submitted so far (exactly once)."""
        from include.crowd import stage

        _, s3, settings, caps, platform = _context()
        stage.review(s3, platform, settings, caps=caps, exclusion_id=_exclusion(platform, settings))
        return settings.batch_id

    @mturk_task(links=[MTurkReportLink], outlets=[RESULTS_ASSET])
    def write_results(batch_id: str) -> dict:
        """Aggregate the counted votes and write results and the report, as of now."""
        from include.crowd import stage

        params, s3, settings, _, platform = _context()
        written = stage.results(_batch_dir(params), s3, settings, platform.fees)
        MTurkReportLink.persist(get_current_context()["ti"], stage.report_url(s3, settings))
        return written

    write_results(review_submitted())


@dag(dag_id="image_similarity_mturk_cleanup", **DAG_ARGS)
def image_similarity_mturk_cleanup():
    @task
    def clean_up_batch() -> dict:
        """Expire the batch's HITs, settle them (review), delete what may be deleted."""
        from include.crowd import stage
        from include.crowd.cleanup import cleanup_batch
        from include.crowd.create import load_manifest

        _, s3, settings, caps, platform = _context()
        plans = load_manifest(stage.ledger_for(s3, settings))
        outcome = cleanup_batch(
            platform,
            settings.batch_id,
            settle=lambda: stage.review(
                s3, platform, settings, caps=caps, exclusion_id=_exclusion(platform, settings)
            ),
            hit_ids={plan.hit_id for plan in plans if plan.hit_id},
        )
        return {"expired": len(outcome.expired), "deleted": len(outcome.deleted),
                "kept": outcome.kept}  # fmt: skip

    clean_up_batch()


image_similarity_mturk_collect()
image_similarity_mturk_cleanup()
