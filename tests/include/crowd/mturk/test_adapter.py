"""``MTurkPlatform``: the crowd platform seam on MTurk, through the production ``MTurkHook``,
against the crowd sandbox on 127.0.0.1 (and, for MTurk's failure answers, a client that gives
them)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from include.crowd.mturk import FEES, MTurkPlatform
from include.crowd.mturk.adapter import refuse_blind_retry
from include.crowd.mturk.answers import submission
from include.crowd.platform import (
    DuplicateRequest,
    InsufficientFunds,
    OutcomeUnknown,
    PlatformError,
    TaskSpec,
    Throttled,
    WorkerRequirements,
)
from testsupport.crowd_plans import SETTINGS
from testsupport.platforms import mturk_platform
from testsupport.sandbox_process import html_page

SPEC = replace(SETTINGS, assignments=2)


def test_a_task_is_created_once_per_token_and_found_again_by_it(crowd):
    platform = mturk_platform(crowd.client())
    task = platform.create_task(SPEC, html_page(), batch_id="batch-1", token="tok-1")
    assert (task.batch_id, task.reward, task.max_assignments, task.masters) == (
        "batch-1",
        "0.05",
        2,
        False,
    )
    assert task.open and not task.disposed and task.created_at
    with pytest.raises(DuplicateRequest):
        platform.create_task(SPEC, html_page(), batch_id="batch-1", token="tok-1")
    assert platform.find_task("batch-1", "tok-1").id == task.id
    assert platform.find_task("batch-2", "tok-1") is None  # another batch's token
    assert platform.find_task("batch-1", "tok-") is None  # a prefix is not the token
    assert [t.id for t in platform.batch_tasks("batch-1")] == [task.id]
    hit = crowd.client().get_hit(HITId=task.id)["HIT"]
    assert "request-token:tok-1 " in hit["Question"] and hit["RequesterAnnotation"] == "batch-1"


def test_submissions_approve_bonus_and_exclusion(crowd):
    platform = mturk_platform(crowd.client())
    task = platform.create_task(SPEC, html_page(), batch_id="batch-1", token="tok-1")
    first = crowd.work(task.id, "AWORKER1", {"choice": "1"})
    (found,) = platform.submissions(task.id)
    assert (found.id, found.task_id, found.worker_id, found.status) == (
        first,
        task.id,
        "AWORKER1",
        "submitted",
    )
    assert found.answers["choice"] == "1" and found.submitted_at
    assert platform.approve(first) is True
    assert platform.approve(first) is False  # approved already: not an error
    assert platform.submissions(task.id)[0].status == "approved"

    assert platform.bonuses_paid(first) == []
    paid = platform.pay_bonus(
        worker_id="AWORKER1", submission_id=first, amount_cents=7, reason="Right", token="b-1"
    )
    again = platform.pay_bonus(
        worker_id="AWORKER1", submission_id=first, amount_cents=7, reason="Right", token="b-1"
    )
    assert (paid, again) == (True, False)
    assert platform.bonuses_paid(first) == [7]

    exclusion = platform.exclusion("Excluded", "Failed a known answer")
    assert platform.exclusion("Excluded", "ignored") == exclusion
    platform.grant_exclusion(exclusion, "AWORKER1")
    platform.revoke_exclusion(exclusion, "AWORKER1")
    assert platform.notify("Subject", "Text", ["AWORKER1"]) == {}
    failed = platform.notify("Subject", "Text", ["ANEVERWORKED"])
    assert list(failed) == ["ANEVERWORKED"] and failed["ANEVERWORKED"]


def test_expire_and_delete_and_a_refused_delete_is_a_platform_error(crowd):
    platform = mturk_platform(crowd.client())
    task = platform.create_task(SPEC, html_page(), batch_id="batch-1", token="tok-1")
    crowd.accept(task.id, "ABUSY")
    platform.expire(task.id)
    expiry = crowd.client().get_hit(HITId=task.id)["HIT"]["Expiration"]
    assert expiry < datetime.now(UTC)
    with pytest.raises(PlatformError) as refused:
        platform.delete(task.id)  # a worker is still on it
    assert refused.value.reason and refused.value.operation == "DeleteHIT"


def test_worker_requirements_are_checked_before_any_call():
    class NoCalls:
        environment = "sandbox"

        def __getattr__(self, name):
            raise AssertionError(f"MTurk was called: {name}")

    platform = MTurkPlatform(NoCalls())
    platform.check_spec(SPEC)
    with pytest.raises(ValueError, match="'USA'"):
        platform.check_spec(
            TaskSpec(**{**SPEC.__dict__, "requirements": WorkerRequirements(locales=("USA",))})
        )
    assert platform.fees is FEES and platform.notify_limit == 100


def _client_error(code: str, message: str = "refused") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Operation")


class Answers:
    """A boto3 client stand-in whose calls raise a given MTurk error."""

    meta = None

    def __init__(self, error: ClientError) -> None:
        self.error = error

    def __getattr__(self, name):
        def call(**_params):
            raise self.error

        return call


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("ThrottlingException", Throttled),
        ("Throttling", Throttled),
        ("ServiceUnavailable", PlatformError),
        ("RequestError", PlatformError),
    ],
)
def test_mturk_errors_become_platform_errors(code, kind):
    platform = mturk_platform(Answers(_client_error(code, "no")))
    with pytest.raises(kind) as raised:
        platform.notify("s", "t", ["AWORKER1"])
    assert raised.value.code == code and raised.value.reason == "no"
    assert isinstance(raised.value.__cause__, ClientError)
    with pytest.raises(kind):
        platform.balance_cents()


def test_a_refusal_for_want_of_funds_is_insufficient_funds():
    """CreateHIT's and CreateAdditionalAssignmentsForHIT's refusal when the available funds do
    not cover them (MTurk: "This Requester has insufficient funds in their account to complete
    this transaction"): a PlatformError the extension rounds can wait out."""
    refused = _client_error(
        "RequestError",
        "This Requester has insufficient funds in their account to complete this transaction.",
    )
    with pytest.raises(InsufficientFunds) as raised:
        mturk_platform(Answers(refused)).add_assignments("H", 1, token="t")
    assert isinstance(raised.value, PlatformError) and raised.value.code == "RequestError"
    with pytest.raises(InsufficientFunds):
        mturk_platform(Answers(refused)).create_task(SPEC, html_page(), batch_id="b", token="t")
    other = _client_error("RequestError", "Worker does not exist")
    with pytest.raises(PlatformError) as raised:
        mturk_platform(Answers(other)).add_assignments("H", 1, token="t")
    assert not isinstance(raised.value, InsufficientFunds)


def test_a_repeated_token_is_a_duplicate_request_and_a_repeated_bonus_is_no_error():
    duplicate = _client_error("RequestError", "The UniqueRequestToken was already used")
    with pytest.raises(DuplicateRequest):
        mturk_platform(Answers(duplicate)).create_task(SPEC, html_page(), batch_id="b", token="t")
    paid = mturk_platform(Answers(duplicate)).pay_bonus(
        worker_id="W", submission_id="A", amount_cents=5, reason="r", token="t"
    )
    assert paid is False


def test_notify_is_never_retried_blindly():
    """NotifyWorkers has no request token: a retry after a 5xx or a connection lost mid-call
    could mail twice, so the handler stops botocore; a refused connection or a throttle (HTTP
    400) leaves the retry to botocore."""
    assert refuse_blind_retry(caught_exception=EndpointConnectionError(endpoint_url="x")) is None
    assert refuse_blind_retry(caught_exception=ConnectTimeoutError(endpoint_url="x")) is None
    with pytest.raises(OutcomeUnknown):
        refuse_blind_retry(caught_exception=ReadTimeoutError(endpoint_url="x"))
    with pytest.raises(OutcomeUnknown, match="HTTP 503"):
        refuse_blind_retry(response=(SimpleNamespace(status_code=503), {}))
    assert refuse_blind_retry(response=(SimpleNamespace(status_code=400), {})) is None


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ({"HITId": "H", "WorkerId": "W", "AssignmentStatus": "Submitted"}, "AssignmentId"),
        ({"AssignmentId": "A", "HITId": "H", "WorkerId": "W"}, "unknown status"),
        (
            {"AssignmentId": "A", "HITId": "H", "WorkerId": "W", "AssignmentStatus": "Lost"},
            "unknown status 'Lost'",
        ),
    ],
)
def test_an_assignment_mturk_would_never_return_is_a_platform_error(assignment, message):
    with pytest.raises(PlatformError, match=message):
        submission(assignment)


def test_an_assignment_becomes_a_submission():
    read = submission(
        {
            "AssignmentId": "A",
            "HITId": "H",
            "WorkerId": "W",
            "AssignmentStatus": "Rejected",
            "SubmitTime": datetime(2026, 12, 1, 12, tzinfo=UTC),
            "Answer": "x" * 70_000,
        }
    )
    assert (read.status, read.submitted_at) == ("rejected", "2026-12-01T12:00:00+00:00")
    assert read.answers == {} and "larger than" in read.problems[0]
