"""Amazon Mechanical Turk hook: a thin wrapper around boto3's ``mturk`` client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper
from airflow.utils.helpers import prune_dict
from botocore.config import Config

# MTurk exists in one region only.
MTURK_REGION = "us-east-1"
MTURK_ENDPOINTS = {
    "sandbox": "https://mturk-requester-sandbox.us-east-1.amazonaws.com",
    "production": "https://mturk-requester.us-east-1.amazonaws.com",
}
# Where workers see a HIT, per requester endpoint.
_WORKER_SITES = {
    MTURK_ENDPOINTS["sandbox"]: "https://workersandbox.mturk.com",
    MTURK_ENDPOINTS["production"]: "https://worker.mturk.com",
}
# NotifyWorkers takes at most this many worker ids per call.
MAX_NOTIFY_WORKERS = 100
DEFAULT_MAX_ATTEMPTS = 10


class MTurkHook(AwsBaseHook):
    """
    Interact with Amazon Mechanical Turk.

    Provide thin wrapper around :external+boto3:py:class:`boto3.client("mturk") <MTurk.Client>`.

    The endpoint is, in order: the connection's ``service_config.mturk.endpoint_url`` extra
    (or its global ``endpoint_url``, as for every AWS service), so a local MTurk-compatible
    service needs no code change; else the requester endpoint of ``environment``. Calls retry
    in botocore's adaptive mode (client-side rate limiting after throttling) unless the
    connection's or the hook's botocore config sets ``retries`` itself.

    Additional arguments (such as ``aws_conn_id``) may be specified and
    are passed down to the underlying AwsBaseHook.

    .. seealso::
        - :class:`airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`

    :param environment: ``sandbox`` (no money moves) or ``production``.
    :param max_attempts: total attempts per call, first one included, under adaptive retries.
    """

    def __init__(
        self,
        *args,
        environment: str = "sandbox",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        **kwargs,
    ) -> None:
        if environment not in MTURK_ENDPOINTS:
            raise ValueError(
                f"MTurk environment must be one of {sorted(MTURK_ENDPOINTS)}, got {environment!r}"
            )
        if kwargs.get("region_name") not in (None, MTURK_REGION):
            raise ValueError(
                f"MTurk only exists in {MTURK_REGION}; got region_name={kwargs['region_name']!r}"
            )
        kwargs["client_type"] = "mturk"
        kwargs["region_name"] = MTURK_REGION
        super().__init__(*args, **kwargs)
        self.environment = environment
        self.max_attempts = max_attempts

    @cached_property
    def conn_config(self) -> AwsConnectionWrapper:
        """The AWS connection, with the environment's endpoint unless the connection names one."""
        wrapper = super().conn_config
        if not wrapper.get_service_endpoint_url(self.service_name):
            wrapper.service_config = {
                **wrapper.service_config,
                self.service_name: {
                    **wrapper.get_service_config(self.service_name),
                    "endpoint_url": MTURK_ENDPOINTS[self.environment],
                },
            }
        return wrapper

    @property
    def config(self) -> Config:
        """Botocore config of the connection or the hook, with adaptive retries by default."""
        config = super().config
        retries = {"mode": "adaptive", **(config.retries or {})}
        if "max_attempts" not in retries and "total_max_attempts" not in retries:
            retries["total_max_attempts"] = self.max_attempts
        return config.merge(Config(retries=retries))

    @property
    def endpoint_url(self) -> str:
        """The requester endpoint the client calls."""
        return self.conn_config.get_service_endpoint_url(self.service_name)

    def preview_url(self, hit_id: str, hit_type_id: str) -> str:
        """
        Return the page where a worker previews the HIT.

        MTurk's worker sites preview by HIT type (``groupId``); a service behind an overridden
        endpoint (the crowd sandbox) serves its own page at ``<endpoint>/hit/<hit_id>``.

        :param hit_id: the HIT.
        :param hit_type_id: its HIT type (``HITTypeId`` in CreateHIT's or GetHIT's answer).
        """
        endpoint = self.endpoint_url.rstrip("/")
        worker_site = _WORKER_SITES.get(endpoint)
        if worker_site:
            return f"{worker_site}/mturk/preview?groupId={hit_type_id}"
        return f"{endpoint}/hit/{hit_id}"

    def get_account_balance(self) -> dict:
        """
        Get the requester's available balance.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.get_account_balance`
        """
        response = self.get_conn().get_account_balance()
        self.log.debug("MTurk balance: %s", response.get("AvailableBalance"))
        return response

    def create_hit(self, **params: Any) -> dict:
        """
        Create a HIT.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.create_hit`

        :param params: CreateHIT's parameters, as boto3 names them (``Title``, ``Reward``,
            ``MaxAssignments``, ``Question``, ``UniqueRequestToken``...); ``None`` values are
            left out.
        """
        params = prune_dict(params)
        self.log.debug(
            "Creating HIT %r with %s assignments", params.get("Title"), params.get("MaxAssignments")
        )
        response = self.get_conn().create_hit(**params)
        self.log.debug("Created HIT %s", response["HIT"]["HITId"])
        return response

    def get_hit(self, hit_id: str) -> dict:
        """
        Get a HIT: status, assignment counts, expiry.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.get_hit`

        :param hit_id: the HIT.
        """
        self.log.debug("Getting HIT %s", hit_id)
        return self.get_conn().get_hit(HITId=hit_id)

    def list_hits(self, page_size: int = 100) -> Iterator[dict]:
        """
        Yield every HIT of the requester, page after page.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.list_hits`

        :param page_size: HITs per request (MTurk allows at most 100).
        """
        paginator = self.get_conn().get_paginator("list_hits")
        for page in paginator.paginate(PaginationConfig={"PageSize": page_size}):
            yield from page.get("HITs", [])

    def list_assignments_for_hit(
        self, hit_id: str, statuses: list[str] | None = None, page_size: int = 100
    ) -> list[dict]:
        """
        List every assignment of a HIT, all pages.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.list_assignments_for_hit`

        :param hit_id: the HIT.
        :param statuses: ``Submitted``, ``Approved`` and/or ``Rejected`` (default: MTurk's, all).
        :param page_size: assignments per request (MTurk allows at most 100).
        """
        paginator = self.get_conn().get_paginator("list_assignments_for_hit")
        params = prune_dict({"HITId": hit_id, "AssignmentStatuses": statuses})
        assignments = [
            assignment
            for page in paginator.paginate(**params, PaginationConfig={"PageSize": page_size})
            for assignment in page.get("Assignments", [])
        ]
        self.log.debug("HIT %s has %d assignments (%s)", hit_id, len(assignments), statuses)
        return assignments

    def approve_assignment(
        self,
        assignment_id: str,
        requester_feedback: str | None = None,
        override_rejection: bool | None = None,
    ) -> dict:
        """
        Approve a submitted assignment: the worker is paid the reward.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.approve_assignment`

        :param assignment_id: the assignment.
        :param requester_feedback: message shown to the worker.
        :param override_rejection: approve an assignment rejected earlier.
        """
        self.log.debug("Approving assignment %s", assignment_id)
        return self.get_conn().approve_assignment(
            **prune_dict(
                {
                    "AssignmentId": assignment_id,
                    "RequesterFeedback": requester_feedback,
                    "OverrideRejection": override_rejection,
                }
            )
        )

    def get_assignment(self, assignment_id: str) -> dict:
        """
        Get an assignment: its status, worker and answer.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.get_assignment`

        :param assignment_id: the assignment.
        """
        self.log.debug("Getting assignment %s", assignment_id)
        return self.get_conn().get_assignment(AssignmentId=assignment_id)

    def reject_assignment(self, assignment_id: str, requester_feedback: str) -> dict:
        """
        Reject a submitted assignment: the worker is not paid.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.reject_assignment`

        :param assignment_id: the assignment.
        :param requester_feedback: why, shown to the worker (MTurk requires it).
        """
        self.log.debug("Rejecting assignment %s", assignment_id)
        return self.get_conn().reject_assignment(
            AssignmentId=assignment_id, RequesterFeedback=requester_feedback
        )

    def send_bonus(
        self,
        worker_id: str,
        assignment_id: str,
        bonus_amount: str,
        reason: str,
        unique_request_token: str | None = None,
    ) -> dict:
        """
        Pay a worker a bonus for an assignment.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.send_bonus`

        :param worker_id: the worker.
        :param assignment_id: the assignment the bonus is for.
        :param bonus_amount: US dollars as a string, e.g. ``"0.05"``.
        :param reason: message shown to the worker.
        :param unique_request_token: makes a repeated call pay nothing more (for 24 hours).
        """
        self.log.debug(
            "Sending bonus %s to worker %s for assignment %s",
            bonus_amount,
            worker_id,
            assignment_id,
        )
        return self.get_conn().send_bonus(
            **prune_dict(
                {
                    "WorkerId": worker_id,
                    "AssignmentId": assignment_id,
                    "BonusAmount": bonus_amount,
                    "Reason": reason,
                    "UniqueRequestToken": unique_request_token,
                }
            )
        )

    def list_bonus_payments(self, assignment_id: str, page_size: int = 100) -> list[dict]:
        """
        List the bonuses paid for an assignment, all pages.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.list_bonus_payments`

        :param assignment_id: the assignment.
        :param page_size: payments per request (MTurk allows at most 100).
        """
        payments: list[dict] = []
        params: dict[str, Any] = {"AssignmentId": assignment_id, "MaxResults": page_size}
        while True:
            page = self.get_conn().list_bonus_payments(**params)
            payments.extend(page.get("BonusPayments", []))
            if not page.get("NextToken") or not page.get("BonusPayments"):
                break
            params["NextToken"] = page["NextToken"]
        self.log.debug("Assignment %s has %d bonus payments", assignment_id, len(payments))
        return payments

    def notify_workers(self, subject: str, message_text: str, worker_ids: list[str]) -> dict:
        """
        E-mail workers (at most 100 per call); the answer lists the workers it failed for.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.notify_workers`

        :param subject: e-mail subject.
        :param message_text: e-mail body.
        :param worker_ids: up to 100 workers who worked for this requester.
        """
        if len(worker_ids) > MAX_NOTIFY_WORKERS:
            raise ValueError(
                f"NotifyWorkers takes at most {MAX_NOTIFY_WORKERS} workers per call, got "
                f"{len(worker_ids)}: send them in batches"
            )
        self.log.debug("Notifying %d workers: %s", len(worker_ids), subject)
        return self.get_conn().notify_workers(
            Subject=subject, MessageText=message_text, WorkerIds=worker_ids
        )

    def update_expiration_for_hit(self, hit_id: str, expire_at: datetime) -> dict:
        """
        Move a HIT's expiry (a time in the past expires it now).

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.update_expiration_for_hit`

        :param hit_id: the HIT.
        :param expire_at: the new expiry.
        """
        self.log.debug("Setting expiry of HIT %s to %s", hit_id, expire_at)
        return self.get_conn().update_expiration_for_hit(HITId=hit_id, ExpireAt=expire_at)

    def create_additional_assignments_for_hit(
        self, hit_id: str, number: int, unique_request_token: str
    ) -> dict:
        """
        Let more workers do a HIT (MTurk charges their rewards on approval).

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.create_additional_assignments_for_hit`

        :param hit_id: the HIT.
        :param number: assignments to add.
        :param unique_request_token: makes a repeated call add nothing more (for 24 hours).
        """
        self.log.debug("Adding %d assignments to HIT %s", number, hit_id)
        return self.get_conn().create_additional_assignments_for_hit(
            HITId=hit_id,
            NumberOfAdditionalAssignments=number,
            UniqueRequestToken=unique_request_token,
        )

    def delete_hit(self, hit_id: str) -> dict:
        """
        Delete a HIT (MTurk allows it once the HIT is reviewable with every assignment reviewed).

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.delete_hit`

        :param hit_id: the HIT.
        """
        self.log.debug("Deleting HIT %s", hit_id)
        return self.get_conn().delete_hit(HITId=hit_id)

    def create_qualification_type(
        self,
        name: str,
        description: str,
        qualification_type_status: str = "Active",
        keywords: str | None = None,
        auto_granted: bool | None = None,
        auto_granted_value: int | None = None,
    ) -> dict:
        """
        Create a qualification type owned by the requester.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.create_qualification_type`

        :param name: unique among the requester's qualification types.
        :param description: shown to workers.
        :param qualification_type_status: ``Active`` or ``Inactive``.
        :param keywords: comma-separated search words.
        :param auto_granted: grant it to any worker who asks.
        :param auto_granted_value: the value granted automatically.
        """
        self.log.debug("Creating qualification type %r", name)
        return self.get_conn().create_qualification_type(
            **prune_dict(
                {
                    "Name": name,
                    "Description": description,
                    "QualificationTypeStatus": qualification_type_status,
                    "Keywords": keywords,
                    "AutoGranted": auto_granted,
                    "AutoGrantedValue": auto_granted_value,
                }
            )
        )

    def get_or_create_qualification_type(self, name: str, description: str, **kwargs) -> dict:
        """
        Return the requester's qualification type called ``name``, creating it when missing.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.list_qualification_types`
            - :external+boto3:py:meth:`MTurk.Client.create_qualification_type`

        :param name: the exact name (MTurk's ``Query`` is a text search; the name is compared).
        :param description: used only when creating it.
        :param kwargs: further :meth:`create_qualification_type` arguments.
        :return: the ``QualificationType`` structure.
        """
        paginator = self.get_conn().get_paginator("list_qualification_types")
        pages = paginator.paginate(
            Query=name,
            MustBeRequestable=False,
            MustBeOwnedByCaller=True,
            PaginationConfig={"PageSize": 100},
        )
        for page in pages:
            for qualification_type in page.get("QualificationTypes", []):
                if qualification_type["Name"] == name:
                    self.log.debug(
                        "Found qualification type %r: %s",
                        name,
                        qualification_type["QualificationTypeId"],
                    )
                    return qualification_type
        return self.create_qualification_type(name, description, **kwargs)["QualificationType"]

    def associate_qualification_with_worker(
        self,
        qualification_type_id: str,
        worker_id: str,
        integer_value: int | None = None,
        send_notification: bool = False,
    ) -> dict:
        """
        Grant a worker a qualification.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.associate_qualification_with_worker`

        :param qualification_type_id: the qualification type.
        :param worker_id: the worker.
        :param integer_value: the qualification's value (MTurk's default: 1).
        :param send_notification: e-mail the worker about it.
        """
        self.log.debug(
            "Granting qualification %s (value %s) to worker %s",
            qualification_type_id,
            integer_value,
            worker_id,
        )
        return self.get_conn().associate_qualification_with_worker(
            **prune_dict(
                {
                    "QualificationTypeId": qualification_type_id,
                    "WorkerId": worker_id,
                    "IntegerValue": integer_value,
                    "SendNotification": send_notification,
                }
            )
        )

    def disassociate_qualification_from_worker(
        self, qualification_type_id: str, worker_id: str, reason: str | None = None
    ) -> dict:
        """
        Revoke a worker's qualification.

        .. seealso::
            - :external+boto3:py:meth:`MTurk.Client.disassociate_qualification_from_worker`

        :param qualification_type_id: the qualification type.
        :param worker_id: the worker.
        :param reason: why, sent to the worker.
        """
        self.log.debug("Revoking qualification %s of worker %s", qualification_type_id, worker_id)
        return self.get_conn().disassociate_qualification_from_worker(
            **prune_dict(
                {
                    "QualificationTypeId": qualification_type_id,
                    "WorkerId": worker_id,
                    "Reason": reason,
                }
            )
        )
