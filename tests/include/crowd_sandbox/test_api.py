"""Conformance: the crowd sandbox driven with plain boto3, as scripts written for MTurk drive it.

Sources in the tests' docstrings: ``REF X.html`` is MTurk's API reference (2017-01-17),
https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_X.html (its text is
botocore's service model's); ``LEGACY X.html`` the 2014-08-15 reference,
https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI-legacy/ApiReference_X.html, where
the limits the 2017 one leaves out are stated."""

from __future__ import annotations

import json
import signal
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from urllib.request import Request, urlopen

import boto3
from botocore.exceptions import ClientError

from testsupport.motokit import moto_s3
from testsupport.sandbox_process import DAY, error_of, html_question, raw
from testsupport.sandbox_process import create_hit as create

ANSWERS_NS = (
    "{http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/"
    "QuestionFormAnswers.xsd}"
)


def answers(assignment: dict) -> dict[str, str]:
    root = ET.fromstring(assignment["Answer"])
    return {
        a.find(f"{ANSWERS_NS}QuestionIdentifier").text: a.find(f"{ANSWERS_NS}FreeText").text
        for a in root.findall(f"{ANSWERS_NS}Answer")
    }


def balance(mturk) -> str:
    return mturk.get_account_balance()["AvailableBalance"]


def funds(mturk) -> tuple[str, str]:
    """GetAccountBalance's AvailableBalance and OnHoldBalance (the assignment liability)."""
    found = mturk.get_account_balance()
    return found["AvailableBalance"], found["OnHoldBalance"]


# --- protocol -----------------------------------------------------------------------------


def test_any_credentials_work_and_the_hit_comes_back_as_mturk_shapes_it(sandbox, mturk):
    hit = create(mturk)
    assert hit["HITStatus"] == "Assignable"
    assert hit["MaxAssignments"] == 2
    assert hit["NumberOfAssignmentsAvailable"] == 2
    assert hit["NumberOfAssignmentsPending"] == 0
    assert hit["Reward"] == "0.50"
    assert hit["RequesterAnnotation"] == "batch-1"
    assert isinstance(hit["Expiration"], datetime)
    assert hit["Expiration"] - hit["CreationTime"] == timedelta(seconds=3600)
    got = mturk.get_hit(HITId=hit["HITId"])["HIT"]
    assert got["Question"] == html_question()
    assert sandbox.url.startswith("http://127.0.0.1:")


def test_server_side_validation_reports_every_violation_as_a_request_error(sandbox, mturk):
    status, body = raw(sandbox, "CreateHIT", {"Reward": "1.00", "LifetimeInSeconds": "soon"})
    assert status == 400
    assert body["__type"] == "RequestError"
    for member in ("title", "description", "assignmentDurationInSeconds", "lifetimeInSeconds"):
        assert f"'{member}'" in body["Message"]
    status, body = raw(sandbox, "ListReviewableHITs", {"Status": "Done"})
    assert status == 400 and "enum value set: [Reviewable, Reviewing]" in body["Message"]
    # Patterns are not checked by botocore on the client: the sandbox checks them.
    error = error_of(create, mturk, Reward="$1")
    assert error["Code"] == "RequestError" and "regular expression" in error["Message"]
    error = error_of(mturk.get_hit, HITId="lowercase")
    assert error["Code"] == "RequestError"
    status, body = raw(sandbox, "NoSuchOperation", {})
    assert status == 400 and "Unknown operation" in body["Message"]


def test_mturk_rules_beyond_the_model(mturk):
    """Limits the 2017 reference leaves out and the legacy one states: LifetimeInSeconds "any
    integer between 30 (30 seconds) and 31536000 (365 days)", Title "up to 128 characters"
    (LEGACY CreateHITOperation.html). The Question is "an HTMLQuestion, ExternalQuestion or
    QuestionForm data structure" (REF CreateHITOperation.html). The $0.01 minimum reward is the
    sandbox's reading (MTurk's pricing charges "a minimum fee of $0.01 per assignment"; free
    HITs are refused on MTurk in published reports, e.g. SurveyMan/SurveyMan#83)."""
    assert "at least $0.01" in error_of(create, mturk, Reward="0.00")["Message"]
    assert "between 30 and" in error_of(create, mturk, LifetimeInSeconds=10)["Message"]
    assert "128" in error_of(create, mturk, Title="x" * 129)["Message"]
    assert "XML" in error_of(create, mturk, Question="<HTMLQuestion><oops")["Message"]
    assert "HTMLQuestion, ExternalQuestion" in error_of(create, mturk, Question="<a/>")["Message"]


# --- idempotency ------------------------------------------------------------------------------


def test_a_repeated_create_hit_token_creates_nothing_and_names_the_hit(sandbox, mturk):
    """CreateHIT's UniqueRequestToken: "subsequent calls will return a
    AWS.MechanicalTurk.HitAlreadyExists error with a message containing the HITId" and "The
    unique token expires after 24 hours" (REF CreateHITOperation.html)."""
    first = create(mturk, UniqueRequestToken="batch-1-query-abc")
    error = error_of(create, mturk, UniqueRequestToken="batch-1-query-abc")
    assert error["Code"] == "RequestError"
    assert first["HITId"] in error["Message"]
    assert mturk.list_hits()["NumResults"] == 1
    # Tokens expire after 24 hours, as MTurk's do.
    sandbox.admin("clock", {"advance": DAY + 60})
    second = create(mturk, UniqueRequestToken="batch-1-query-abc")
    assert second["HITId"] != first["HITId"]


def test_hit_types_are_reused_for_identical_properties(mturk):
    """CreateHITType: "If you register a HIT type with values that match an existing HIT
    type, the HIT type ID of the existing type will be returned"
    (REF CreateHITTypeOperation.html)."""
    properties = {
        "AssignmentDurationInSeconds": 600,
        "Reward": "0.25",
        "Title": "Similar images",
        "Description": "Pick one",
    }
    type_id = mturk.create_hit_type(**properties)["HITTypeId"]
    assert mturk.create_hit_type(**properties)["HITTypeId"] == type_id
    assert mturk.create_hit_type(**{**properties, "Reward": "0.30"})["HITTypeId"] != type_id
    hit = mturk.create_hit_with_hit_type(
        HITTypeId=type_id,
        LifetimeInSeconds=600,
        Question=html_question(),
        UniqueRequestToken="typed-1",
    )["HIT"]
    assert hit["HITTypeId"] == type_id and hit["Reward"] == "0.25"
    error = error_of(
        mturk.create_hit_with_hit_type,
        HITTypeId=type_id,
        LifetimeInSeconds=600,
        Question=html_question(),
        UniqueRequestToken="typed-1",
    )
    assert hit["HITId"] in error["Message"]
    error = error_of(
        mturk.create_hit_with_hit_type,
        HITTypeId="NOSUCHTYPE",
        LifetimeInSeconds=600,
        Question=html_question(),
    )
    assert "does not exist" in error["Message"]


# --- listing and pagination -------------------------------------------------------------------


def test_list_hits_pages_with_next_token_and_the_paginator(mturk):
    created = [create(mturk, Title=f"HIT {i}")["HITId"] for i in range(7)]
    page = mturk.list_hits(MaxResults=3)
    assert page["NumResults"] == 3 and "NextToken" in page
    seen = [
        h["HITId"]
        for p in mturk.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 3})
        for h in p["HITs"]
    ]
    assert seen == created
    assert "NextToken" in error_of(mturk.list_hits, NextToken="garbage")["Message"]


def test_lifecycle_from_assignable_to_disposed(sandbox, mturk):
    """The HIT's HITStatus values (Assignable, Unassignable, Reviewable, Reviewing, Disposed;
    REF HITDataStructureArticle.html); UpdateHITReviewStatus moves Reviewable and Reviewing
    (REF UpdateHITReviewStatusOperation.html; that another status is an error is the
    sandbox's reading); DeleteHIT "with all of their submitted assignments already either
    approved or rejected" (REF DeleteHITOperation.html); ListHITs returns HITs "except for HITs
    that have been deleted" (REF ListHITsOperation.html)."""
    hit = create(mturk, MaxAssignments=2)
    hit_id = hit["HITId"]
    first = sandbox.accept(hit_id, "AWORKERONE")
    view = mturk.get_hit(HITId=hit_id)["HIT"]
    assert (view["HITStatus"], view["NumberOfAssignmentsPending"]) == ("Assignable", 1)
    second = sandbox.accept(hit_id, "AWORKERTWO")
    view = mturk.get_hit(HITId=hit_id)["HIT"]
    assert (view["HITStatus"], view["NumberOfAssignmentsAvailable"]) == ("Unassignable", 0)
    assert mturk.list_assignments_for_hit(HITId=hit_id)["NumResults"] == 0  # none submitted
    assert sandbox.submit(first, {"choice": "1", "comment": "sure"}) == 200
    assert sandbox.submit(second, {"choice": "2"}) == 200
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Reviewable"
    assert [h["HITId"] for h in mturk.list_reviewable_hits()["HITs"]] == [hit_id]

    mturk.update_hit_review_status(HITId=hit_id, Revert=False)
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Reviewing"
    assert mturk.list_reviewable_hits()["NumResults"] == 0
    assert mturk.list_reviewable_hits(Status="Reviewing")["NumResults"] == 1
    assert "Reviewable" in error_of(mturk.update_hit_review_status, HITId=hit_id)["Message"]
    mturk.update_hit_review_status(HITId=hit_id, Revert=True)
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Reviewable"

    # DeleteHIT needs every submitted assignment approved or rejected.
    assert "approved nor rejected" in error_of(mturk.delete_hit, HITId=hit_id)["Message"]
    mturk.approve_assignment(AssignmentId=first)
    mturk.reject_assignment(AssignmentId=second, RequesterFeedback="Wrong gold answer")
    assert mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsCompleted"] == 2
    mturk.delete_hit(HITId=hit_id)
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Disposed"
    assert mturk.list_hits()["NumResults"] == 0


def test_expiry_ends_a_hit_and_an_extension_reopens_it(sandbox, mturk):
    """UpdateExpirationForHIT: "If you update it to a time in the past, the HIT will be
    immediately expired"; a later time extends it (REF UpdateExpirationForHITOperation.html).
    That an expired HIT can be reopened so is the sandbox's reading (the legacy ExtendHIT did
    so)."""
    hit_id = create(mturk, MaxAssignments=3)["HITId"]
    assert "Assignable" in error_of(mturk.delete_hit, HITId=hit_id)["Message"]
    sandbox.work(hit_id, "AWORKERONE")
    mturk.update_expiration_for_hit(HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    view = mturk.get_hit(HITId=hit_id)["HIT"]
    assert (view["HITStatus"], view["NumberOfAssignmentsAvailable"]) == ("Reviewable", 0)
    assert sandbox.accept_status(hit_id, "AWORKERTWO") >= 400
    mturk.update_expiration_for_hit(HITId=hit_id, ExpireAt=datetime.now(UTC) + timedelta(days=2))
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Assignable"
    # An expired HIT whose submitted work is reviewed can be deleted.
    mturk.update_expiration_for_hit(HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    mturk.approve_assignment(AssignmentId=assignment["AssignmentId"])
    mturk.delete_hit(HITId=hit_id)


def test_an_accepted_assignment_that_runs_out_of_time_frees_its_slot(sandbox, mturk):
    """CreateHIT's AssignmentDurationInSeconds: "If the Worker does not submit results
    within this duration, the assignment is considered abandoned. If the HIT is still active
    (that is, its lifetime has not elapsed), the assignment becomes available for other users
    to find and accept" (REF CreateHITOperation.html)."""
    hit_id = create(mturk, MaxAssignments=1, AssignmentDurationInSeconds=60)["HITId"]
    late = sandbox.accept(hit_id, "AWORKERONE")
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Unassignable"
    sandbox.admin("clock", {"advance": 61})
    view = mturk.get_hit(HITId=hit_id)["HIT"]
    assert (view["HITStatus"], view["NumberOfAssignmentsPending"]) == ("Assignable", 0)
    assert sandbox.submit(late, {"choice": "1"}) == 400


def test_assignments_list_with_filters_and_pages_and_carry_mturk_answer_xml(sandbox, mturk):
    hit_id = create(mturk, MaxAssignments=5)["HITId"]
    ids = [
        sandbox.work(hit_id, f"AWORKER{i}", {"choice": str(i % 2 + 1), "comment": f"c{i}"})
        for i in range(5)
    ]
    mturk.approve_assignment(AssignmentId=ids[0])
    mturk.reject_assignment(AssignmentId=ids[1], RequesterFeedback="No")
    listed = mturk.list_assignments_for_hit(HITId=hit_id, MaxResults=2)
    assert listed["NumResults"] == 2 and listed["NextToken"]
    paged = [
        a["AssignmentId"]
        for page in mturk.get_paginator("list_assignments_for_hit").paginate(
            HITId=hit_id, PaginationConfig={"PageSize": 2}
        )
        for a in page["Assignments"]
    ]
    assert paged == ids
    submitted = mturk.list_assignments_for_hit(HITId=hit_id, AssignmentStatuses=["Submitted"])
    assert [a["AssignmentId"] for a in submitted["Assignments"]] == ids[2:]
    got = mturk.get_assignment(AssignmentId=ids[2])
    assert got["HIT"]["HITId"] == hit_id
    assignment = got["Assignment"]
    assert assignment["WorkerId"] == "AWORKER2"
    assert answers(assignment) == {"choice": "1", "comment": "c2"}  # no assignmentId answer
    assert assignment["SubmitTime"] >= assignment["AcceptTime"]


def test_approve_reject_and_override_follow_mturk_states(sandbox, mturk):
    """ApproveAssignment: "Only the Requester who created the HIT can approve ... a
    Submitted assignment", and "assignments that were previous rejected" only "by explicitly
    overriding the previous rejection" (REF ApproveAssignmentOperation.html); RejectAssignment
    "Only the Requester who created the HIT can reject the assignment" of a Submitted one
    (REF RejectAssignmentOperation.html). GetAssignment of an unknown id is an error."""
    hit_id = create(mturk, MaxAssignments=2)["HITId"]
    one = sandbox.work(hit_id, "AWORKERONE")
    two = sandbox.work(hit_id, "AWORKERTWO")
    mturk.approve_assignment(AssignmentId=one, RequesterFeedback="Thanks")
    assert "Submitted" in error_of(mturk.approve_assignment, AssignmentId=one)["Message"]
    error = error_of(mturk.reject_assignment, AssignmentId=one, RequesterFeedback="late")
    assert "Submitted" in error["Message"]
    mturk.reject_assignment(AssignmentId=two, RequesterFeedback="Failed the known answer")
    assert "OverrideRejection" in error_of(mturk.approve_assignment, AssignmentId=two)["Message"]
    mturk.approve_assignment(AssignmentId=two, OverrideRejection=True)
    assert mturk.get_assignment(AssignmentId=two)["Assignment"]["AssignmentStatus"] == "Approved"
    assert "does not exist" in error_of(mturk.get_assignment, AssignmentId="NOSUCH")["Message"]


def test_auto_approval_happens_after_the_delay_and_is_charged(sandbox, mturk):
    """CreateHIT's AutoApprovalDelayInSeconds: "After the assignment is submitted, the
    assignment is automatically approved after this amount of time, unless the Requester
    explicitly approves or rejects" (REF CreateHITOperation.html); the Assignment's
    AutoApprovalTime (REF AssignmentDataStructureArticle.html). The charge is the reward and
    MTurk's fee (https://www.mturk.com/pricing)."""
    hit_id = create(mturk, MaxAssignments=1, AutoApprovalDelayInSeconds=3600)["HITId"]
    assignment_id = sandbox.work(hit_id, "AWORKERONE")
    assert funds(mturk) == ("9999.40", "0.60")  # 0.50 + 20 %, held since CreateHIT
    sandbox.admin("clock", {"advance": 3601})
    got = mturk.get_assignment(AssignmentId=assignment_id)["Assignment"]
    assert got["AssignmentStatus"] == "Approved"
    assert funds(mturk) == ("9999.40", "0.00")  # paid from the hold


# --- money ------------------------------------------------------------------------------------


def test_balance_falls_by_reward_bonus_and_mturk_fees(sandbox, mturk):
    """The fees of https://www.mturk.com/pricing; the reward and its fee are held from
    CreateHIT and paid from the hold on approval, a bonus is paid from the available funds.
    AvailableBalance + OnHoldBalance is the account's balance, which approvals lower."""
    small = create(mturk, MaxAssignments=1, Reward="0.04")["HITId"]
    large = create(mturk, MaxAssignments=10, Reward="1.00")["HITId"]
    assert funds(mturk) == ("9985.95", "14.05")  # 1 x 0.05 and 10 x 1.40 held
    a = sandbox.work(small, "AWORKERONE")
    b = sandbox.work(large, "AWORKERONE")
    mturk.approve_assignment(AssignmentId=a)
    assert funds(mturk) == ("9985.95", "14.00")  # 0.04 + minimum fee 0.01: balance 9999.95
    mturk.approve_assignment(AssignmentId=b)
    assert funds(mturk) == ("9985.95", "12.60")  # 1.00 + 40 % for 10 or more: 9998.55
    mturk.send_bonus(
        WorkerId="AWORKERONE", BonusAmount="0.25", AssignmentId=b, Reason="Right gold answer"
    )
    assert funds(mturk) == ("9985.65", "12.60")  # 0.25 + 0.05: 9998.25
    (payment,) = mturk.list_bonus_payments(AssignmentId=b)["BonusPayments"]
    assert (payment["BonusAmount"], payment["Reason"]) == ("0.25", "Right gold answer")
    assert mturk.list_bonus_payments(HITId=large)["NumResults"] == 1


def test_a_bonus_before_approval_is_paid_as_on_mturk(sandbox, mturk):
    """MTurk's SendBonus API reference states no assignment-status rule ("This payment happens
    separately from the reward you pay to the Worker when you approve the Worker's
    assignment"; it fails for insufficient funds or a Worker with no assignment for you in six
    months: REF SendBonusOperation.html),
    so the sandbox pays a Submitted assignment too. Nothing is paid for work not submitted."""
    hit_id = create(mturk, MaxAssignments=2, Reward="0.50")["HITId"]
    assignment_id = sandbox.work(hit_id, "AWORKERONE")
    before = balance(mturk)
    mturk.send_bonus(
        WorkerId="AWORKERONE", BonusAmount="0.10", AssignmentId=assignment_id, Reason="early"
    )
    assert balance(mturk) == f"{float(before) - 0.12:.2f}"  # 0.10 + the 20 % fee
    (payment,) = mturk.list_bonus_payments(AssignmentId=assignment_id)["BonusPayments"]
    assert payment["BonusAmount"] == "0.10"
    held = funds(mturk)[1]
    mturk.approve_assignment(AssignmentId=assignment_id)  # the reward is still paid on approval
    assert funds(mturk) == (f"{float(before) - 0.12:.2f}", f"{float(held) - 0.60:.2f}")

    def bonus_error(worker: str, assignment: str) -> str:
        return error_of(
            mturk.send_bonus, WorkerId=worker, BonusAmount="0.10", AssignmentId=assignment,
            Reason="refused",
        )["Message"]  # fmt: skip

    assert "was not done by worker" in bonus_error("AWORKERTWO", assignment_id)  # not theirs
    working = sandbox.accept(hit_id, "AWORKERTWO")  # accepted, nothing submitted yet
    assert "does not exist" in bonus_error("AWORKERTWO", working)
    assert mturk.list_bonus_payments(HITId=hit_id)["NumResults"] == 1


def test_a_repeated_send_bonus_token_pays_once(sandbox, mturk):
    """SendBonus's UniqueRequestToken: "subsequent calls will return an error with a message
    containing the request ID" and nothing is paid twice (REF SendBonusOperation.html)."""
    hit_id = create(mturk, MaxAssignments=1)["HITId"]
    assignment_id = sandbox.work(hit_id, "AWORKERONE")
    mturk.approve_assignment(AssignmentId=assignment_id)
    bonus = {
        "WorkerId": "AWORKERONE",
        "BonusAmount": "0.10",
        "AssignmentId": assignment_id,
        "Reason": "Right gold answer",
        "UniqueRequestToken": f"bonus-{assignment_id}",
    }
    mturk.send_bonus(**bonus)
    after_first = balance(mturk)
    error = error_of(mturk.send_bonus, **bonus)
    assert error["Code"] == "RequestError" and "already" in error["Message"]
    assert balance(mturk) == after_first
    assert mturk.list_bonus_payments(AssignmentId=assignment_id)["NumResults"] == 1
    wrong = {**bonus, "WorkerId": "AOTHERWORKER", "UniqueRequestToken": "other"}
    assert "not done by worker" in error_of(mturk.send_bonus, **wrong)["Message"]


def test_insufficient_funds_is_mturks_error(sandbox_factory):
    running = sandbox_factory("--balance", "1.00")
    mturk = running.client()
    assert balance(mturk) == "1.00"
    error = error_of(create, mturk, MaxAssignments=2, Reward="0.50")  # needs 1.20
    assert "insufficient funds" in error["Message"]
    hit_id = create(mturk, MaxAssignments=1, Reward="0.50")["HITId"]
    assignment_id = running.work(hit_id, "AWORKERONE")
    mturk.approve_assignment(AssignmentId=assignment_id)
    assert balance(mturk) == "0.40"
    error = error_of(
        mturk.send_bonus,
        WorkerId="AWORKERONE",
        BonusAmount="0.50",
        AssignmentId=assignment_id,
        Reason="Right gold answer",
    )
    assert "insufficient funds" in error["Message"]
    assert mturk.list_bonus_payments(AssignmentId=assignment_id)["NumResults"] == 0


def test_additional_assignments_are_idempotent_and_respect_the_fee_tier(sandbox, mturk):
    """CreateAdditionalAssignmentsForHIT: its UniqueRequestToken makes a repeated call "return
    an error with a message containing the request ID"; "HITs that were created before July
    22, 2015 cannot be extended" does not apply offline; "HITs created with fewer than 10
    assignments cannot be extended to have 10 or more assignments. Attempting to add
    assignments in a way that brings the total number of assignments for a HIT from fewer
    than 10 assignments to 10 or more assignments will result in an
    AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease exception"
    (REF CreateAdditionalAssignmentsForHITOperation.html)."""
    hit_id = create(mturk, MaxAssignments=3)["HITId"]
    params = {"HITId": hit_id, "NumberOfAdditionalAssignments": 2, "UniqueRequestToken": "more"}
    mturk.create_additional_assignments_for_hit(**params)
    assert "already" in error_of(mturk.create_additional_assignments_for_hit, **params)["Message"]
    assert mturk.get_hit(HITId=hit_id)["HIT"]["MaxAssignments"] == 5
    error = error_of(
        mturk.create_additional_assignments_for_hit, HITId=hit_id, NumberOfAdditionalAssignments=5
    )
    assert "10 or more" in error["Message"]


# --- messages ---------------------------------------------------------------------------------


def test_notify_workers_limits_and_failure_statuses(sandbox, mturk):
    """NotifyWorkers: "You can send a notification email to up to 100 Workers at once";
    Subject "can be up to 200 characters", MessageText "can be up to 4,096 characters"; it
    "will send a notification email to a Worker only if you have previously approved or
    rejected work from the Worker", reported in NotifyWorkersFailureStatuses
    (REF NotifyWorkersOperation.html). The HardFailure code is the sandbox's pick of the
    model's two."""
    hit_id = create(mturk, MaxAssignments=1)["HITId"]
    assignment_id = sandbox.work(hit_id, "AWORKERONE")
    message = {"Subject": "About your answer", "MessageText": "The known answer was B."}
    result = mturk.notify_workers(WorkerIds=["AWORKERONE"], **message)
    assert result["NotifyWorkersFailureStatuses"][0]["WorkerId"] == "AWORKERONE"  # not reviewed
    mturk.reject_assignment(AssignmentId=assignment_id, RequesterFeedback="Wrong")
    result = mturk.notify_workers(WorkerIds=["AWORKERONE", "ASTRANGER"], **message)
    failures = result["NotifyWorkersFailureStatuses"]
    assert [(f["WorkerId"], f["NotifyWorkersFailureCode"]) for f in failures] == [
        ("ASTRANGER", "HardFailure")
    ]
    too_many = [f"AWORKER{i}" for i in range(101)]
    assert "100" in error_of(mturk.notify_workers, WorkerIds=too_many, **message)["Message"]
    assert (
        "200"
        in error_of(
            mturk.notify_workers, WorkerIds=["AWORKERONE"], Subject="x" * 201, MessageText="y"
        )["Message"]
    )


# --- notifications ----------------------------------------------------------------------------


def test_notifications_reach_a_local_sqs_queue_in_mturks_message_format(sandbox, mturk):
    """UpdateNotificationSettings and SendTestEventNotification through boto3; the messages are
    read back from moto's SQS on 127.0.0.1 (each rule and its source: test_notifications.py)."""
    with moto_s3() as endpoint:  # moto's server: SQS on the same port
        sqs = boto3.client(
            "sqs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        queue = sqs.create_queue(QueueName="conformance")["QueueUrl"]
        notification = {
            "Destination": queue,
            "Transport": "SQS",
            "Version": "2006-05-05",
            "EventTypes": ["AssignmentSubmitted", "HITReviewable"],
        }
        mturk.send_test_event_notification(Notification=notification, TestEventType="Ping")
        hit = create(mturk, MaxAssignments=1)
        mturk.update_notification_settings(
            HITTypeId=hit["HITTypeId"], Notification=notification, Active=True
        )
        assignment_id = sandbox.work(hit["HITId"], "AWORKERONE")
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    bodies = [json.loads(message["Body"]) for message in messages]
    assert [set(body) for body in bodies] == [
        {"Events", "EventDocId", "SourceAccount", "CustomerId", "EventDocVersion"}
    ] * 3
    assert [
        (e["EventType"], e.get("AssignmentId"), e["HITTypeId"] == hit["HITTypeId"])
        for body in bodies
        for e in body["Events"]
    ] == [
        ("Ping", None, False),
        ("AssignmentSubmitted", assignment_id, True),
        ("HITReviewable", None, True),
    ]
    real_queue = {**notification, "Destination": "https://sqs.us-east-1.amazonaws.com/1/q"}
    error = error_of(
        mturk.update_notification_settings, HITTypeId=hit["HITTypeId"], Notification=real_queue
    )
    assert "only to a queue on this machine" in error["Message"]


# --- qualifications ---------------------------------------------------------------------------


def test_qualification_types_grants_and_listing(mturk):
    """CreateQualificationType: the Name "must be unique across all of your Qualification
    types" (REF CreateQualificationTypeOperation.html); AssociateQualificationWithWorker grants
    with IntegerValue (REF AssociateQualificationWithWorkerOperation.html);
    GetQualificationScore "returns the value of a Worker's Qualification for a given
    Qualification type" (REF GetQualificationScoreOperation.html)."""
    qtype = mturk.create_qualification_type(
        Name="Failed a known answer",
        Description="Workers who answered a gold question wrongly",
        QualificationTypeStatus="Active",
    )["QualificationType"]
    type_id = qtype["QualificationTypeId"]
    error = error_of(
        mturk.create_qualification_type,
        Name="Failed a known answer",
        Description="again",
        QualificationTypeStatus="Active",
    )
    assert "already created" in error["Message"]
    for i in range(5):
        mturk.associate_qualification_with_worker(
            QualificationTypeId=type_id,
            WorkerId=f"AWORKER{i}",
            IntegerValue=i,
            SendNotification=False,
        )
    pages = list(
        mturk.get_paginator("list_workers_with_qualification_type").paginate(
            QualificationTypeId=type_id, PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(p["Qualifications"]) for p in pages] == [2, 2, 1]
    mturk.disassociate_qualification_from_worker(
        QualificationTypeId=type_id, WorkerId="AWORKER0", Reason="Cleared"
    )
    granted = mturk.list_workers_with_qualification_type(QualificationTypeId=type_id)
    assert {q["WorkerId"] for q in granted["Qualifications"]} == {
        f"AWORKER{i}" for i in (1, 2, 3, 4)
    }
    revoked = mturk.list_workers_with_qualification_type(
        QualificationTypeId=type_id, Status="Revoked"
    )
    assert [q["WorkerId"] for q in revoked["Qualifications"]] == ["AWORKER0"]
    score = mturk.get_qualification_score(QualificationTypeId=type_id, WorkerId="AWORKER3")
    assert score["Qualification"]["IntegerValue"] == 3
    error = error_of(
        mturk.disassociate_qualification_from_worker,
        QualificationTypeId=type_id,
        WorkerId="AWORKER0",
    )
    assert "does not exist" in error["Message"]


def test_qualification_requirements_guard_accepting(sandbox, mturk):
    """QualificationRequirement: a Worker who does not meet it cannot do the guarded action
    (ActionsGuarded: "Accept", "PreviewAndAccept", "DiscoverPreviewAndAccept"); Comparator
    "EqualTo ... take one value", In and NotIn a set
    (REF QualificationRequirementDataStructureArticle.html)."""
    failed = mturk.create_qualification_type(
        Name="Failed gold", Description="excluded", QualificationTypeStatus="Active"
    )["QualificationType"]["QualificationTypeId"]
    mturk.associate_qualification_with_worker(QualificationTypeId=failed, WorkerId="ABADWORKER")
    hit_id = create(
        mturk,
        MaxAssignments=3,
        QualificationRequirements=[
            {"QualificationTypeId": failed, "Comparator": "DoesNotExist"},
            {
                "QualificationTypeId": "000000000000000000L0",
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [95],
            },
            {
                "QualificationTypeId": "00000000000000000071",
                "Comparator": "In",
                "LocaleValues": [{"Country": "US"}, {"Country": "GB"}],
            },
        ],
    )["HITId"]
    assert sandbox.accept_status(hit_id, "ABADWORKER") == 403
    sandbox.work(hit_id, "AGOODWORKER")
    error = error_of(
        create,
        mturk,
        QualificationRequirements=[{"QualificationTypeId": "NOSUCHQUAL", "Comparator": "Exists"}],
    )
    assert "does not exist" in error["Message"]
    error = error_of(
        create,
        mturk,
        QualificationRequirements=[
            {"QualificationTypeId": failed, "Comparator": "EqualTo", "IntegerValues": [1, 2]}
        ],
    )
    assert "exactly one value" in error["Message"]


# --- state and process --------------------------------------------------------------------


def test_a_restart_on_the_same_state_file_keeps_everything(sandbox_factory, tmp_path):
    state = tmp_path / "kept.sqlite"
    first = sandbox_factory(state=state)
    mturk = first.client()
    hit_id = create(mturk, MaxAssignments=2, UniqueRequestToken="kept")["HITId"]
    approved = first.work(hit_id, "AWORKERONE", {"choice": "2", "comment": "é ✓"})
    pending = first.work(hit_id, "AWORKERTWO")
    mturk.approve_assignment(AssignmentId=approved)
    mturk.send_bonus(
        WorkerId="AWORKERONE",
        BonusAmount="0.20",
        AssignmentId=approved,
        Reason="Right gold answer",
        UniqueRequestToken="kept-bonus",
    )
    mturk.notify_workers(WorkerIds=["AWORKERONE"], Subject="Thanks", MessageText="Well done")
    qtype = mturk.create_qualification_type(
        Name="Kept", Description="kept", QualificationTypeStatus="Active"
    )["QualificationType"]["QualificationTypeId"]
    mturk.associate_qualification_with_worker(QualificationTypeId=qtype, WorkerId="AWORKERTWO")
    before = {
        "hit": mturk.get_hit(HITId=hit_id)["HIT"],
        "assignments": mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"],
        "bonuses": mturk.list_bonus_payments(HITId=hit_id)["BonusPayments"],
        "balance": balance(mturk),
        "qualified": mturk.list_workers_with_qualification_type(QualificationTypeId=qtype)[
            "Qualifications"
        ],
    }
    assert first.stop() == 0

    second = sandbox_factory(state=state)
    mturk = second.client()
    after = {
        "hit": mturk.get_hit(HITId=hit_id)["HIT"],
        "assignments": mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"],
        "bonuses": mturk.list_bonus_payments(HITId=hit_id)["BonusPayments"],
        "balance": balance(mturk),
        "qualified": mturk.list_workers_with_qualification_type(QualificationTypeId=qtype)[
            "Qualifications"
        ],
    }
    assert after == before
    assert answers(after["assignments"][0])["comment"] == "é ✓"
    assert "kept" not in str(error_of(create, mturk, UniqueRequestToken="kept"))  # still known
    assert hit_id in error_of(create, mturk, UniqueRequestToken="kept")["Message"]
    mturk.approve_assignment(AssignmentId=pending)
    status, _, outbox = second.page("/outbox")
    assert status == 200 and "Well done" in outbox and "Right gold answer" in outbox


def test_sigint_stops_the_service_cleanly(sandbox_factory):
    running = sandbox_factory()
    running.client().get_account_balance()
    assert running.stop(signal.SIGINT) == 0


# --- faults -----------------------------------------------------------------------------------


def test_fault_injection_throttles_and_fails_as_aws_does(sandbox_factory):
    running = sandbox_factory("--throttle-rate", "1.0")
    mturk = running.client()
    error = error_of(mturk.get_account_balance)
    assert (error["Code"], error["Message"].split(" (")[0]) == (
        "ThrottlingException",
        "Rate exceeded",
    )
    running.admin("faults", {"throttle_rate": 0.0, "error_rate": 1.0, "seed": 3})
    codes = {error_of(mturk.get_account_balance)["Code"] for _ in range(12)}
    assert codes <= {"ServiceFault", "ServiceUnavailable"} and codes
    snapshot = running.admin("faults", {"error_rate": 0.0})
    assert snapshot["config"]["error_rate"] == 0.0
    assert snapshot["injected"]["throttle"] == 1
    assert balance(mturk) == "10000.00"


def test_retried_calls_with_tokens_survive_faults_exactly_once(sandbox_factory):
    running = sandbox_factory("--throttle-rate", "0.3", "--error-rate", "0.3", "--fault-seed", "7")
    mturk = running.client(retries={"total_max_attempts": 20, "mode": "adaptive"})
    created = []
    for i in range(8):
        token = f"batch-q{i}"
        try:
            created.append(create(mturk, UniqueRequestToken=token, Title=f"q{i}")["HITId"])
        except ClientError as error:  # the answer to a committed call was lost: token says so
            assert "already a HIT" in error.response["Error"]["Message"]
    running.admin("faults", {"throttle_rate": 0.0, "error_rate": 0.0})
    titles = sorted(h["Title"] for h in mturk.list_hits(MaxResults=100)["HITs"])
    assert titles == sorted(f"q{i}" for i in range(8))
    injected = running.admin("faults")["injected"]
    assert injected.get("throttle", 0) + injected.get("error-before", 0) > 0


def test_a_multipart_form_submits_like_an_urlencoded_one(sandbox, mturk):
    hit_id = create(mturk, MaxAssignments=1)["HITId"]
    assignment_id = sandbox.accept(hit_id, "AWORKERONE")
    parts = [("assignmentId", assignment_id), ("choice", "2"), ("comment", "café <b>")]
    body = b"".join(
        f'--XX\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in parts
    )
    body += b'--XX\r\nContent-Disposition: form-data; name="f"; filename="x.txt"\r\n\r\nx\r\n'
    request = Request(
        f"{sandbox.url}/mturk/externalSubmit",
        data=body + b"--XX--\r\n",
        method="POST",
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
    )
    with urlopen(request, timeout=10) as response:
        assert response.status == 200
    (assignment,) = mturk.list_assignments_for_hit(HITId=hit_id)["Assignments"]
    assert answers(assignment) == {"choice": "2", "comment": "café <b>"}
    assert "caf&#233;" in assignment["Answer"]  # ASCII with character references
