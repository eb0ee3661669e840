"""One crowd step (``create``, ``review`` or ``round``) in its own process, killed with SIGKILL at
a chosen point; the crash tests (``test_crash.py``) run it, then run it again as Airflow's retry
would. ``round`` is one adaptive-overlap review round (what ``MTurkReviewRoundsOperator`` runs):
the review, then ``stage.extend`` with the batch's deadline ``open_until`` (ISO 8601) from
CONFIG_JSON; its summary also says at which event the extension began (``extension_from``).

    python crash_child.py STEP CONFIG_JSON

CONFIG_JSON holds the S3 endpoint and bucket, the sandbox URL, the batch id, the number of
queries and ``kill_at``: the process kills itself at the ``kill_at``-th AWS event (0: never).
Every AWS call (MTurk or S3) has two such events: just before its request is sent (the service
never sees it) and just after its answer arrived (the service has done it, our code has not
seen the answer yet). The last stdout line is a JSON summary with the number of events.

The plans come from ``testsupport/crowd_plans.py`` (built from the batch id alone), so the process
that crashes, the one that retries and the test itself agree on them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from include.crowd import stage  # noqa: E402
from include.crowd.create import create_hits, load_manifest  # noqa: E402
from include.crowd.ledger import S3Ledger  # noqa: E402
from include.crowd.review import review_batch  # noqa: E402
from testsupport.crowd_plans import (  # noqa: E402
    REVIEW,
    SETTINGS,
    crowd_settings,
    plans_for,
    render,
)
from testsupport.motokit import s3_client  # noqa: E402
from testsupport.platforms import mturk_platform  # noqa: E402

ROUND_BUDGET = "20.00"


def round_settings(config: dict):
    """The batch's crowd settings for ``round``: ``REVIEW``'s money, 3 to 5 assignments."""
    return crowd_settings(
        config["batch_id"],
        s3_bucket=config["bucket"],
        max_assignments_per_hit=5,
        budget_usd=ROUND_BUDGET,
    )


def clients(config: dict):
    import boto3
    from botocore.config import Config

    retries = {"mode": "standard", "total_max_attempts": 3}
    s3 = s3_client(config["s3"], retries=retries)
    mturk = boto3.client(
        "mturk", endpoint_url=config["sandbox"], region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test", config=Config(retries=retries),
    )  # fmt: skip
    return s3, mturk


def arm(kill_at: int, *clients_) -> dict[str, int]:
    """Count AWS events on ``clients_``; SIGKILL this process at the ``kill_at``-th one."""
    count = {"events": 0}

    def event(**_kwargs) -> None:
        count["events"] += 1
        if count["events"] == kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    for client in clients_:
        client.meta.events.register("before-send", event)
        client.meta.events.register("after-call", event)
    return count


def main() -> int:
    step, config = sys.argv[1], json.loads(sys.argv[2])
    s3, mturk = clients(config)
    ledger = S3Ledger(s3, config["bucket"], "image-similarity", config["batch_id"])
    plans = plans_for(config["batch_id"], config["queries"])
    count = arm(config.get("kill_at", 0), s3, mturk)
    if step == "create":
        created = create_hits(mturk_platform(mturk), plans, ledger, SETTINGS, render, concurrency=1)
        summary = {"hits": [p.hit_id for p in created]}
    elif step == "review":
        created = load_manifest(ledger)
        outcome = review_batch(mturk_platform(mturk), created, ledger, REVIEW)
        summary = {
            "approved": outcome.approved,
            "bonuses": outcome.bonuses_paid,
            "emails": outcome.emails_sent,
        }
    elif step == "round":
        platform = mturk_platform(mturk)
        reviewed = review_batch(platform, load_manifest(ledger), ledger, REVIEW)
        extension_from = count["events"]
        outcome = stage.extend(
            s3,
            platform,
            round_settings(config),
            reviewed.reviews,
            caps=stage.PaymentCaps(max_bonus="5.00", budget=ROUND_BUDGET),
            open_until=datetime.fromisoformat(config["open_until"]),
        )
        summary = {
            "extended": outcome.extended,
            "awaiting": outcome.awaiting,
            "added": outcome.added,
            "extension_from": extension_from,
        }
    else:
        raise SystemExit(f"unknown step {step!r}")
    print(json.dumps({**summary, "events": count["events"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
