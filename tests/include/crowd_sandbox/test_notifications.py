"""Notifications (UpdateNotificationSettings, SendTestEventNotification) driven with plain boto3,
and the messages the sandbox sends to an SQS queue of moto's server on 127.0.0.1, read back with
boto3's ``receive_message``.

Sources (each test names the rule it checks):

- UPDATE: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_UpdateNotificationSettingsOperation.html
- TEST: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_SendTestEventNotificationOperation.html
- NOTIFICATION: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_NotificationDataStructureArticle.html
- ELEMENTS: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_NotificationAPI_ElementsOfANotification.html
- MANAGING: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_NotificationReceptorAPIArticle.html
- SQS: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_NotificationReceptorAPI_SQSTransportArticle.html
- PAYLOAD: the SQS message payload as MTurk documented it (legacy SQS article,
  https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI-legacy/ApiReference_NotificationReceptorAPI_SQSTransportArticle.html,
  quoted in https://github.com/chbrown/turk#sqs-message-payload): EventDocVersion, EventDocId,
  CustomerId, Events of EventType, EventTimestamp, HITTypeId, HITId, AssignmentId
- CAPTURED: a message MTurk sent, kept in Dallinger's tests
  (https://github.com/Dallinger/Dallinger/blob/master/tests/test_recruiters.py,
  ``test_routes_worker_event_notifications``): ``{"Events":[{"EventType":..., "EventTimestamp":
  "2019-08-09T21:17:16Z","HITId":...,"AssignmentId":...,"HITTypeId":...}],"EventDocId":...,
  "SourceAccount":...,"CustomerId":...,"EventDocVersion":"2014-08-15"}``
- LEGACY_TEST: https://docs.aws.amazon.com/AWSMechTurk/2006-10-31/AWSMechanicalTurkRequester/ApiReference_SendTestEventNotificationOperation.html
  (older API: "the service sends the test notification immediately")
- MODEL: botocore/data/mturk/2017-01-17/service-2.json (UpdateNotificationSettingsRequest,
  SendTestEventNotificationRequest, NotificationSpecification, NotificationTransport, EventType;
  Version: "Valid value is 2006-05-05"; EventTypes: "The Ping event is only valid for the
  SendTestEventNotification operation")
- SANDBOX: the sandbox's own rule (README): an SQS Destination must be on 127.0.0.1 or localhost.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError

from include.crowd_sandbox.operations import notifications
from include.crowd_sandbox.requester import Sandbox
from include.crowd_sandbox.sqs_transport import local_queue_endpoint
from include.crowd_sandbox.store import Store
from testsupport.motokit import moto_s3
from testsupport.sandbox_process import html_question, http, raw

ALL_EVENTS = [
    "AssignmentAccepted",
    "AssignmentAbandoned",
    "AssignmentReturned",
    "AssignmentSubmitted",
    "AssignmentRejected",
    "AssignmentApproved",
    "HITCreated",
    "HITExpired",
    "HITReviewable",
    "HITExtended",
    "HITDisposed",
]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
DAY = 24 * 3600
# A HIT type and a HIT, for a sandbox driven in this process (``Sandbox.call``).
HIT_TYPE = {
    "AssignmentDurationInSeconds": 600,
    "Reward": "0.50",
    "Title": "Pick one",
    "Description": "Pick the matching image",
}
HIT = {"LifetimeInSeconds": 3600, "MaxAssignments": 1, "Question": html_question()}
PAST = datetime(2015, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def sqs_endpoint():
    """moto's server on 127.0.0.1 (it serves SQS on the port it serves S3 on)."""
    with moto_s3() as url:
        yield url


@pytest.fixture
def sqs(sqs_endpoint):
    return boto3.client(
        "sqs",
        endpoint_url=sqs_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def queue(sqs) -> str:
    return sqs.create_queue(QueueName=f"mturk-{uuid.uuid4().hex[:12]}")["QueueUrl"]


def specification(queue_url: str, event_types: list[str], version: str = "2006-05-05") -> dict:
    return {
        "Destination": queue_url,
        "Transport": "SQS",
        "Version": version,
        "EventTypes": event_types,
    }


def hit_type(mturk, **overrides) -> str:
    params = {
        "AssignmentDurationInSeconds": 600,
        "AutoApprovalDelayInSeconds": DAY,
        "Reward": "0.50",
        "Title": "Pick one",
        "Description": "Pick the matching image",
    } | overrides
    return mturk.create_hit_type(**params)["HITTypeId"]


def create_hit(mturk, hit_type_id: str, max_assignments: int = 1) -> str:
    return mturk.create_hit_with_hit_type(
        HITTypeId=hit_type_id,
        MaxAssignments=max_assignments,
        LifetimeInSeconds=3600,
        Question=html_question(),
    )["HIT"]["HITId"]


def received(sqs, queue_url: str) -> list[dict]:
    """Every message in the queue (bodies parsed), deleted as they are read."""
    bodies = []
    while True:
        found = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages")
        if not found:
            return bodies
        for message in found:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def events(messages: list[dict]) -> list[tuple]:
    """(EventType, HITId, AssignmentId) of every event of these messages, in order."""
    return [
        (e["EventType"], e["HITId"], e.get("AssignmentId"))
        for message in messages
        for e in message["Events"]
    ]


def error_of(call, **params) -> dict:
    with pytest.raises(ClientError) as raised:
        call(**params)
    return raised.value.response["Error"]


def test_update_notification_settings_checks_what_it_is_given(sandbox, mturk, queue):
    """UPDATE: "You must specify either the Notification parameter or the Active parameter";
    "To change the Active status ..., the HIT type must already have a notification
    specification, or one must be provided in the same call". MODEL: Destination, Transport,
    Version and EventTypes are required (boto3 refuses to send without them, the sandbox answers
    a raw request RequestError); Transport is Email | SQS | SNS. NOTIFICATION: Transport "Valid
    Values: SQS | SNS" (Email is refused), EventTypes "one or more events", "The Ping event is only
    valid for the SendTestEventNotification operation"; Version 2014-08-15 (NOTIFICATION) or
    2006-05-05 (MODEL), nothing else. A refused call changes nothing."""
    type_id = hit_type(mturk)
    update = mturk.update_notification_settings

    missing = error_of(update, HITTypeId="3NOSUCHHITTYPE", Active=True)
    assert "does not exist" in missing["Message"]
    assert "either the Notification" in error_of(update, HITTypeId=type_id)["Message"]
    assert (
        "no notification specification"
        in error_of(update, HITTypeId=type_id, Active=True)["Message"]
    )
    refusals = {
        "'notification.transport' failed to satisfy constraint": {"Transport": "Fax"},
        "Transport Email is not available": {"Transport": "Email"},
        "is not a notification API version": {"Version": "2017-01-17"},
        "one or more events": {"EventTypes": []},
        "only valid for the SendTestEventNotification": {"EventTypes": ["HITCreated", "Ping"]},
        "'notification.eventTypes.1' failed": {"EventTypes": ["HITDeleted"]},
        "ARN of your topic": {"Transport": "SNS", "Destination": queue},
    }
    for expected, change in refusals.items():
        error = error_of(
            update,
            HITTypeId=type_id,
            Notification={**specification(queue, ["HITCreated"]), **change},
        )
        assert error["Code"] == "RequestError" and expected in error["Message"], (change, error)

    with pytest.raises(ParamValidationError):
        update(HITTypeId=type_id, Notification={"Transport": "SQS", "Version": "2006-05-05"})
    status, body = raw(
        sandbox,
        "UpdateNotificationSettings",
        {"HITTypeId": type_id, "Notification": {"Transport": "SQS", "EventTypes": ["HITCreated"]}},
    )
    assert status == 400 and body["__type"] == "RequestError"
    assert "'notification.destination'" in body["Message"]
    assert "'notification.version'" in body["Message"]

    # Nothing was set by any of these: Active alone is still refused.
    assert (
        "no notification specification"
        in error_of(update, HITTypeId=type_id, Active=False)["Message"]
    )
    for version in ("2006-05-05", "2014-08-15"):
        update(HITTypeId=type_id, Notification=specification(queue, ["HITCreated"], version))
    update(
        HITTypeId=type_id,
        Notification={
            **specification("arn:aws:sns:us-east-1:123456789012:my-topic", ["HITCreated"]),
            "Transport": "SNS",
        },
        Active=True,
    )


@pytest.mark.parametrize(
    "destination",
    [
        "https://sqs.us-east-1.amazonaws.com/123456789012/my-queue",
        "http://10.0.0.5:9324/123456789012/q",
        "http://127.0.0.1.example.com:9324/123456789012/q",
        "http://[::1]:9324/123456789012/q",
        "http://user@127.0.0.1:9324/123456789012/q",
        "http://127.0.0.1:9324/",
        "ftp://127.0.0.1/123456789012/q",
        "my-queue",
    ],
)
def test_a_destination_off_this_machine_is_refused(sandbox, mturk, destination):
    """SANDBOX: the sandbox sends only to 127.0.0.1 (or localhost), so a real MTurk queue URL
    (SQS: "the Destination is your queue URL", MODEL) is refused when it is set or tested,
    before anything is sent; nothing is stored."""
    type_id = hit_type(mturk)
    notification = specification(destination, ["HITCreated"])
    for call, params in (
        (mturk.update_notification_settings, {"HITTypeId": type_id, "Notification": notification}),
        (
            mturk.send_test_event_notification,
            {"Notification": notification, "TestEventType": "Ping"},
        ),
    ):
        error = error_of(call, **params)
        assert error["Code"] == "RequestError"
        assert "only to a queue on this machine" in error["Message"]
    assert (
        "no notification specification"
        in error_of(mturk.update_notification_settings, HITTypeId=type_id, Active=True)["Message"]
    )


def test_the_queue_endpoint_is_always_127_0_0_1():
    """SANDBOX: the queue URL's scheme and port with 127.0.0.1 are the SQS endpoint."""
    assert local_queue_endpoint("http://127.0.0.1:5000/123456789012/q") == "http://127.0.0.1:5000"
    assert local_queue_endpoint("http://localhost:5000/123456789012/q") == "http://127.0.0.1:5000"
    assert local_queue_endpoint("https://LOCALHOST/123456789012/q") == "https://127.0.0.1"
    for refused in ("http://127.0.0.1:notaport/q", "http://[::1/q", "http://0.0.0.0:1/q"):
        with pytest.raises(ValueError, match="127.0.0.1 or localhost"):
            local_queue_endpoint(refused)


def test_a_test_event_is_sent_at_once_in_mturks_message_format(mturk, sqs, queue):
    """TEST: SendTestEventNotification sends "a notification message as if a HIT event
    occurred, according to the provided notification specification" (no HIT type needs one),
    and the TestEventType "is included in the test message even if the notification
    specification does not include the event type"; LEGACY_TEST: it is sent immediately (here:
    before the call answers). PAYLOAD / CAPTURED: the body is JSON with exactly Events,
    EventDocId, SourceAccount, CustomerId and EventDocVersion; each event has EventType,
    EventTimestamp (UTC to the second, "such as 2005-01-31T23:59:59Z"), HITId, HITTypeId and
    AssignmentId "if applicable". ELEMENTS: the version "is identical to the version that is
    included in the notification specification". MODEL: Ping is valid here."""
    response = mturk.send_test_event_notification(
        Notification=specification(queue, ["AssignmentAccepted"], "2014-08-15"),
        TestEventType="AssignmentSubmitted",
    )
    assert set(response) == {"ResponseMetadata"}
    (message,) = received(sqs, queue)
    assert list(message) == [
        "Events",
        "EventDocId",
        "SourceAccount",
        "CustomerId",
        "EventDocVersion",
    ]
    assert message["EventDocVersion"] == "2014-08-15"
    assert re.fullmatch(r"[0-9a-f]{40}", message["EventDocId"])
    assert re.fullmatch(r"\d{12}", message["SourceAccount"])
    assert re.fullmatch(r"A[A-Z0-9]{12}", message["CustomerId"])
    (event,) = message["Events"]
    assert list(event) == ["EventType", "EventTimestamp", "HITId", "AssignmentId", "HITTypeId"]
    assert event["EventType"] == "AssignmentSubmitted"
    assert TIMESTAMP.fullmatch(event["EventTimestamp"])
    sent_at = datetime.strptime(event["EventTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(sent_at - datetime.now(UTC)) < timedelta(minutes=1)

    mturk.send_test_event_notification(
        Notification=specification(queue, ["Ping"]), TestEventType="Ping"
    )
    (ping,) = received(sqs, queue)
    assert ping["EventDocVersion"] == "2006-05-05"
    assert ping["CustomerId"] == message["CustomerId"]  # the same requester
    assert ping["EventDocId"] != message["EventDocId"]
    assert [e["EventType"] for e in ping["Events"]] == ["Ping"]
    assert "AssignmentId" not in ping["Events"][0]  # not an assignment's event


def test_a_hit_type_gets_exactly_its_configured_events_once_each(sandbox, mturk, sqs, queue):
    """UPDATE: the specification is set for a HIT type; MANAGING: MTurk sends a message "when a
    Worker ... submits an assignment, when a HIT becomes "reviewable" ... for any HIT of a given
    HIT type"; NOTIFICATION: EventTypes are "events that should cause notifications to be sent"
    (no others: no AssignmentAccepted, no HITCreated, no AssignmentApproved here). A HIT of
    another HIT type sends nothing. Each event is sent once, with its own EventDocId
    (PAYLOAD); the messages are in the queue when the worker's submit has been answered."""
    notified = hit_type(mturk)
    other = hit_type(mturk, Title="Another kind of task")
    mturk.update_notification_settings(
        HITTypeId=notified,
        Notification=specification(queue, ["AssignmentSubmitted", "HITReviewable"]),
        Active=True,
    )
    hit_id = create_hit(mturk, notified, max_assignments=2)
    quiet_hit = create_hit(mturk, other)
    sandbox.work(quiet_hit, "AWORKERONE")
    first = sandbox.work(hit_id, "AWORKERONE")
    assert events(received(sqs, queue)) == [("AssignmentSubmitted", hit_id, first)]
    second = sandbox.work(hit_id, "AWORKERTWO")
    assert mturk.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Reviewable"
    mturk.approve_assignment(AssignmentId=first)
    mturk.approve_assignment(AssignmentId=second)
    mturk.list_reviewable_hits()

    messages = received(sqs, queue)
    assert events(messages) == [
        ("AssignmentSubmitted", hit_id, second),
        ("HITReviewable", hit_id, None),
    ]
    assert {e["HITTypeId"] for m in messages for e in m["Events"]} == {notified}
    assert len({m["EventDocId"] for m in messages}) == 2
    assert received(sqs, queue) == []  # and nothing more, later


def test_every_event_type_is_sent_when_it_happens(sandbox, mturk, sqs, queue):
    """MODEL / NOTIFICATION: the event types AssignmentAccepted, AssignmentAbandoned,
    AssignmentReturned, AssignmentSubmitted, AssignmentRejected, AssignmentApproved, HITCreated,
    HITExpired, HITReviewable, HITExtended, HITDisposed; MANAGING: "when a Worker accepts,
    abandons, returns, or submits an assignment, when a HIT becomes "reviewable", or when a HIT
    expires". Those that time causes (abandonment, expiry, auto-approval) are sent when the
    sandbox sees the time pass, with the time they happened. HITExtended: a later expiration
    (UpdateExpirationForHIT) or more assignments (CreateAdditionalAssignmentsForHIT), as the
    legacy ExtendHIT did both; HITDisposed: DeleteHIT."""
    type_id = hit_type(mturk, AssignmentDurationInSeconds=60, AutoApprovalDelayInSeconds=3600)
    mturk.update_notification_settings(
        HITTypeId=type_id, Notification=specification(queue, ALL_EVENTS), Active=True
    )
    hit_id = create_hit(mturk, type_id, max_assignments=2)
    assert events(received(sqs, queue)) == [("HITCreated", hit_id, None)]

    returned = sandbox.accept(hit_id, "AWORKERONE")
    status, _, _ = http(
        f"{sandbox.url}/hit/{hit_id}/return", {"assignmentId": returned, "workerId": "AWORKERONE"}
    )
    assert status == 303
    abandoned = sandbox.accept(hit_id, "AWORKERTWO")
    sandbox.admin("clock", {"advance": 61})
    assert events(received(sqs, queue)) == [
        ("AssignmentAccepted", hit_id, returned),
        ("AssignmentReturned", hit_id, returned),
        ("AssignmentAccepted", hit_id, abandoned),
        ("AssignmentAbandoned", hit_id, abandoned),
    ]

    rejected = sandbox.work(hit_id, "AWORKERTHREE")
    approved = sandbox.work(hit_id, "AWORKERFOUR")
    mturk.reject_assignment(AssignmentId=rejected, RequesterFeedback="Wrong gold answer")
    assert events(received(sqs, queue)) == [
        ("AssignmentAccepted", hit_id, rejected),
        ("AssignmentSubmitted", hit_id, rejected),
        ("AssignmentAccepted", hit_id, approved),
        ("AssignmentSubmitted", hit_id, approved),
        ("HITReviewable", hit_id, None),
        ("AssignmentRejected", hit_id, rejected),
    ]
    before = sandbox.admin("clock")["now"]
    sandbox.admin("clock", {"advance": 3601})  # auto-approval, and the HIT's lifetime
    messages = received(sqs, queue)
    assert events(messages) == [
        ("HITExpired", hit_id, None),
        ("AssignmentApproved", hit_id, approved),
    ]
    expired_at = datetime.strptime(messages[0]["Events"][0]["EventTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert expired_at.replace(tzinfo=UTC).timestamp() < before + 3600  # when it expired

    mturk.update_expiration_for_hit(HITId=hit_id, ExpireAt=datetime.now(UTC) + timedelta(days=2))
    mturk.create_additional_assignments_for_hit(HITId=hit_id, NumberOfAdditionalAssignments=1)
    assert events(received(sqs, queue)) == [
        ("HITExtended", hit_id, None),
        ("HITExtended", hit_id, None),
    ]
    mturk.update_expiration_for_hit(HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    mturk.delete_hit(HITId=hit_id)
    assert events(received(sqs, queue)) == [
        ("HITExpired", hit_id, None),
        ("HITReviewable", hit_id, None),
        ("HITDisposed", hit_id, None),
    ]


def test_active_false_stops_the_messages_and_active_true_resumes_them(sandbox, mturk, sqs, queue):
    """UPDATE: the operation "creates, updates, disables or re-enables notifications for a HIT
    type"; Active alone turns them off and on "without having to modify the notification
    specification itself"; a new specification "replaces the old specification with a new one".
    Active "Specifies whether notifications are sent for HITs of this HIT type" and has no
    documented default: the sandbox makes a Notification given without Active active."""
    type_id = hit_type(mturk)
    mturk.update_notification_settings(
        HITTypeId=type_id, Notification=specification(queue, ["AssignmentSubmitted"])
    )  # no Active: active
    first = create_hit(mturk, type_id)
    sandbox.work(first, "AWORKERONE")
    assert [e[0] for e in events(received(sqs, queue))] == ["AssignmentSubmitted"]

    mturk.update_notification_settings(HITTypeId=type_id, Active=False)
    second = create_hit(mturk, type_id)
    sandbox.work(second, "AWORKERONE")
    assert received(sqs, queue) == []

    mturk.update_notification_settings(HITTypeId=type_id, Active=True)
    third = create_hit(mturk, type_id)
    assignment = sandbox.work(third, "AWORKERONE")
    assert events(received(sqs, queue)) == [("AssignmentSubmitted", third, assignment)]

    replacement = sqs.create_queue(QueueName=f"replacement-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    mturk.update_notification_settings(
        HITTypeId=type_id, Notification=specification(replacement, ["HITCreated"]), Active=True
    )
    fourth = create_hit(mturk, type_id)
    sandbox.work(fourth, "AWORKERONE")
    assert received(sqs, queue) == []
    assert events(received(sqs, replacement)) == [("HITCreated", fourth, None)]


def test_a_failed_send_is_logged_kept_and_sent_later(sandbox, mturk, sqs, queue):
    """SQS: "your notifications are guaranteed to be delivered at least once". The sandbox
    sends after the change has committed: a send that fails (here the queue was deleted) does
    not fail the worker's submit or the requester's call; it is logged, kept in the state file,
    and sent again once the queue is back (after a second, by the sends that follow later
    calls), once."""
    type_id = hit_type(mturk)
    mturk.update_notification_settings(
        HITTypeId=type_id, Notification=specification(queue, ["AssignmentSubmitted"]), Active=True
    )
    hit_id = create_hit(mturk, type_id)
    sqs.delete_queue(QueueUrl=queue)

    assignment = sandbox.work(hit_id, "AWORKERONE")  # answered 200
    assert mturk.get_assignment(AssignmentId=assignment)["Assignment"]["AssignmentStatus"] == (
        "Submitted"
    )
    log = "".join(sandbox.log)
    assert re.search(
        rf"notification AssignmentSubmitted/{hit_id} to {re.escape(queue)} not sent "
        r"\(attempt 1 of 5; next in 1 s\)",
        log,
    ), log

    assert sqs.create_queue(QueueName=queue.rsplit("/", 1)[1])["QueueUrl"] == queue
    time.sleep(1.2)
    mturk.get_account_balance()  # any call: the messages due are sent after it
    assert events(received(sqs, queue)) == [("AssignmentSubmitted", hit_id, assignment)]
    time.sleep(1.2)
    mturk.get_account_balance()
    assert received(sqs, queue) == []
    assert "sent to" in "".join(sandbox.log)


def test_notification_settings_survive_a_restart(sandbox_factory, sqs, queue, tmp_path):
    """The settings are part of the state file, as every other record is (README: "a restart on
    the same file keeps every ... notification setting"): Active alone works after a restart,
    and the specification still applies."""
    state = tmp_path / "kept.sqlite"
    first = sandbox_factory(state=state)
    mturk = first.client()
    type_id = hit_type(mturk)
    mturk.update_notification_settings(
        HITTypeId=type_id, Notification=specification(queue, ["HITCreated"]), Active=False
    )
    assert first.stop() == 0

    second = sandbox_factory(state=state)
    mturk = second.client()
    mturk.update_notification_settings(HITTypeId=type_id, Active=True)
    hit_id = create_hit(mturk, type_id)
    assert events(received(sqs, queue)) == [("HITCreated", hit_id, None)]


def test_a_message_that_cannot_be_sent_is_given_up_after_five_attempts_and_logged(
    tmp_path, monkeypatch, caplog, sqs, queue
):
    """SQS ("guaranteed to be delivered at least once") asks that no message be lost quietly:
    each failed attempt is logged as a warning, the fifth as an error, and the message stays in
    the state file's outbox, marked failed, with the error. A message still waiting when the
    sandbox stops is sent by the next sandbox on the same state file. (The wait between attempts
    is set to 0 here so the test need not wait 15 s.)"""
    monkeypatch.setattr(notifications, "FIRST_RETRY_S", 0.0)
    caplog.set_level(logging.INFO, logger=notifications.__name__)
    sandbox = Sandbox(Store(tmp_path / "state.sqlite"))
    type_id = sandbox.call("CreateHITType", HIT_TYPE, "request")["HITTypeId"]
    gone = f"{queue}-deleted"
    sandbox.call(
        "UpdateNotificationSettings",
        {"HITTypeId": type_id, "Notification": specification(gone, ["HITCreated"])},
        "request",
    )
    hit_id = sandbox.call("CreateHITWithHITType", {**HIT, "HITTypeId": type_id}, "request")["HIT"]
    for _ in range(6):
        sandbox.call("GetAccountBalance", {}, "request")
    failures = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING] * 4 + [logging.ERROR]
    assert "given up" in failures[-1].getMessage() and hit_id["HITId"] in failures[-1].getMessage()
    (kept,) = sandbox.store.outbox()
    assert (kept["Destination"], kept["Attempts"], kept["Failed"]) == (gone, 5, 1)
    assert "does not exist" in kept["Error"]
    assert json.loads(kept["Body"])["Events"][0]["EventType"] == "HITCreated"

    # A message waiting when the sandbox stops is sent by the next one.
    sandbox.call(
        "UpdateNotificationSettings",
        {"HITTypeId": type_id, "Notification": specification(gone, ["HITDisposed"])},
        "request",
    )
    sandbox.call("UpdateExpirationForHIT", {"HITId": hit_id["HITId"], "ExpireAt": PAST}, "request")
    sandbox.call("DeleteHIT", {"HITId": hit_id["HITId"]}, "request")
    sandbox.store.close()
    assert sqs.create_queue(QueueName=gone.rsplit("/", 1)[1])["QueueUrl"] == gone
    again = Sandbox(Store(tmp_path / "state.sqlite"))
    again.call("GetAccountBalance", {}, "request")
    assert events(received(sqs, gone)) == [("HITDisposed", hit_id["HITId"], None)]
    assert [m["Failed"] for m in again.store.outbox()] == [1]  # the given-up one stays


def test_a_hanging_queue_holds_up_only_the_call_that_is_sending(tmp_path, monkeypatch, caplog):
    """A queue that takes its time (here: a send that waits until released) delays the call
    that is sending, never the others: they find a sender at work and leave their messages to
    it, and it goes round again for the messages queued meanwhile. An unexpected error while
    sending is logged and never fails the call, whose change has committed."""
    import threading

    sandbox = Sandbox(Store(tmp_path / "state.sqlite"))
    type_id = sandbox.call("CreateHITType", HIT_TYPE, "request")["HITTypeId"]
    sandbox.call(
        "UpdateNotificationSettings",
        {
            "HITTypeId": type_id,
            "Notification": specification("http://127.0.0.1:9/1/q", ["HITCreated"]),
        },
        "request",
    )
    release, sending, sent = threading.Event(), threading.Event(), []

    def slow_send(queue_url: str, body: str) -> str:
        sending.set()
        assert release.wait(30)
        sent.append(json.loads(body)["Events"][0]["HITId"])
        return "message-id"

    monkeypatch.setattr(sandbox._sender, "send", slow_send)
    create = {**HIT, "HITTypeId": type_id}
    first: list[str] = []
    worker = threading.Thread(
        target=lambda: first.append(
            sandbox.call("CreateHITWithHITType", create, "request")["HIT"]["HITId"]
        )
    )
    worker.start()
    assert sending.wait(30)
    started = time.monotonic()
    second = sandbox.call("CreateHITWithHITType", create, "request")["HIT"]["HITId"]
    sandbox.call("GetAccountBalance", {}, "request")
    assert time.monotonic() - started < 5  # not held up by the hanging send
    release.set()
    worker.join(30)
    assert sent == [first[0], second]  # the sender went round again for the second HIT
    assert sandbox.store.outbox() == []

    def broken(queue_url: str, body: str) -> str:
        raise RuntimeError("a bug in sending")

    monkeypatch.setattr(sandbox._sender, "send", broken)
    caplog.set_level(logging.INFO, logger=notifications.__name__)
    third = sandbox.call("CreateHITWithHITType", create, "request")["HIT"]["HITId"]
    assert sandbox.call("GetHIT", {"HITId": third}, "request")["HIT"]["HITId"] == third
    assert any("sending notifications failed" in r.getMessage() for r in caplog.records)
    assert len(sandbox.store.outbox()) == 1  # kept for a later round
