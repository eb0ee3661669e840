"""What the crowd stage will need, checked before the run lists, embeds or matches anything.

A run that cannot end well should say so in its first minute, not after an hour of embedding:
``problems`` checks the bucket (set, reachable, private), the crowd platform (reachable, its
balance), the money (the bonus against its cap, one HIT against the budget and the balance, an
existing batch's pinned money settings) and returns every problem found, each naming the Param
or connection to fix. Nothing is created, paid or written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from include.crowd import costs
from include.crowd.platform import CrowdPlatform
from include.crowd.settings import CrowdSettings

log = logging.getLogger(__name__)

PUBLIC_GROUPS = (
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
)


def _reason(error: BaseException) -> str:
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    text = str(error) or type(error).__name__
    return f"{code}: {text}" if code and code not in text else text


def storage_problems(s3, settings: CrowdSettings, aws_conn_id: str) -> list[str]:
    """The bucket: set, reachable with the connection's credentials, and not public (unless
    the images are meant to be served publicly, Param public_image_base_url)."""
    bucket = settings.storage.bucket
    if not bucket:
        return [
            "no S3 bucket is set: fill in the Param s3_bucket (section Storage) or set "
            "IMAGE_SIMILARITY_S3_BUCKET in the scheduler's environment"
        ]
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as error:  # noqa: BLE001 - any failure here is the operator's to fix
        return [
            f"S3 bucket {bucket!r} (Param s3_bucket) cannot be reached through the connection "
            f"{aws_conn_id!r} (Param aws_conn_id): {_reason(error)}; create the bucket or fix "
            "the connection's credentials, region or endpoint"
        ]
    if settings.storage.public_image_base_url:
        return []
    public = _public_grants(s3, bucket)
    if public:
        return [
            f"S3 bucket {bucket!r} (Param s3_bucket) is public ({public}): the ledger, the "
            "manifest (with the right gold answers) and the images would be readable by anyone; "
            "make it private (S3 Block Public Access), or set the Param public_image_base_url "
            "if serving the images publicly is intended"
        ]
    return []


def _public_grants(s3, bucket: str) -> str:
    """What makes the bucket public, or '' (a check S3 cannot answer counts as private: the
    run's own writes are private objects whatever the bucket allows)."""
    found = []
    try:
        grants = s3.get_bucket_acl(Bucket=bucket).get("Grants", [])
        groups = {g.get("Grantee", {}).get("URI") for g in grants} & set(PUBLIC_GROUPS)
        found += [f"its ACL grants {uri.rsplit('/', 1)[-1]}" for uri in sorted(groups)]
    except Exception as error:  # noqa: BLE001
        log.info("the ACL of bucket %s cannot be read (%s)", bucket, _reason(error))
    try:
        status = s3.get_bucket_policy_status(Bucket=bucket).get("PolicyStatus", {})
        if status.get("IsPublic"):
            found.append("its bucket policy is public")
    except Exception as error:  # noqa: BLE001 - no policy at all is the usual case
        log.debug("no policy status for bucket %s (%s)", bucket, _reason(error))
    return "; ".join(found)


def _where(settings: CrowdSettings, aws_conn_id: str) -> str:
    return (
        f"Mechanical Turk ({settings.environment}, Param mturk_environment) cannot be reached "
        f"through the connection {aws_conn_id!r} (Param aws_conn_id)"
    )


def connect(
    make: Callable[[], CrowdPlatform], settings: CrowdSettings, aws_conn_id: str
) -> tuple[CrowdPlatform | None, list[str]]:
    """The platform, or None and the problem (a connection that does not exist, say)."""
    try:
        return make(), []
    except Exception as error:  # noqa: BLE001
        return None, [f"{_where(settings, aws_conn_id)}: {_reason(error)}"]


def balance(
    platform: CrowdPlatform, settings: CrowdSettings, aws_conn_id: str, found: list[str]
) -> int | None:
    """The account's balance in cents; None (and the problem added to ``found``) when the
    platform cannot be reached."""
    try:
        return platform.balance_cents()
    except Exception as error:  # noqa: BLE001
        found.append(
            f"{_where(settings, aws_conn_id)}: {_reason(error)}; check its credentials and, "
            "for the crowd sandbox, its extra service_config.mturk.endpoint_url"
        )
        return None


def money_problems(settings: CrowdSettings, fees, balance: int | None) -> list[str]:
    """The bonus against its cap; one HIT against the budget cap and the balance."""
    payment, problems = settings.payment, []
    try:
        costs.check_bonus(costs.cents(payment.bonus), costs.cents(payment.max_bonus))
    except costs.BudgetError as error:
        problems.append(f"{error} (Params bonus_usd, max_bonus_usd)")
    one = costs.estimate(
        1,
        settings.posting.max_assignments,  # adaptive overlap may go up to it
        costs.cents(payment.reward),
        costs.cents(payment.bonus),
        fees=fees,
        masters=settings.workers.masters,
    ).total
    if payment.budget is not None and one > costs.cents(payment.budget):
        problems.append(
            f"one HIT may cost {costs.usd(one)} ({settings.posting.max_assignments} assignments "
            f"with rewards, bonuses and fees), over the budget cap of "
            f"{costs.usd(costs.cents(payment.budget))}: raise the Param budget_usd or lower "
            "reward_usd, bonus_usd, assignments_per_hit or max_assignments_per_hit; no HIT was "
            "created"
        )
    if balance is not None and one > balance:
        problems.append(
            f"the account's balance is {costs.usd(balance)}, less than one HIT may cost "
            f"({costs.usd(one)}): add funds, or use the Param mturk_environment 'sandbox'"
        )
    return problems
