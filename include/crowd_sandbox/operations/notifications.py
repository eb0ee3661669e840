"""Notifications: UpdateNotificationSettings and SendTestEventNotification, and the messages a HIT
type's notification specification asks for, sent to its Amazon SQS queue.

MTurk's rules, from its API reference (2017-01-17) and botocore's model (sources in the tests):

- UpdateNotificationSettings "creates, updates, disables or re-enables notifications for a HIT
  type"; a new specification "replaces the old specification"; "To change the Active status of
  a HIT type's notifications, the HIT type must already have a notification specification, or
  one must be provided in the same call"; "You must specify either the Notification parameter
  or the Active parameter". Neither page gives Active a default: the sandbox makes a
  specification given without Active active (it is set to be used).
- The Notification: Destination (for SQS "your queue URL"), Transport, Version, EventTypes ("one
  or more events"); "The Ping event is only valid for the SendTestEventNotification operation".
  Transport: the API reference lists SQS | SNS (the model's enum still has Email, which the
  sandbox refuses). Version: the API reference says 2014-08-15, the model 2006-05-05, and both
  are in use: the sandbox takes either and refuses any other.
- SendTestEventNotification sends "a notification message as if a HIT event occurred, according
  to the provided notification specification"; the TestEventType "is included in the test
  message even if the notification specification does not include the event type". The
  sandbox sends that one event, with made-up HIT and HIT type ids (the 2006 API also added a
  Ping event; the current reference does not say so). A test to a Destination that cannot be
  reached is answered with success, as other messages are, and logged.
- A message (SQS message body) is JSON: ``Events`` (each with EventType, EventTimestamp as
  2005-01-31T23:59:59Z, HITId, AssignmentId "if applicable", HITTypeId), ``EventDocId`` (one per
  message: "you may receive two different SQS messages for the same event, which can be detected
  by tracking the EventDocId values"), ``SourceAccount``, ``CustomerId`` and ``EventDocVersion``
  (the specification's Version). "Multiple events may be batched into a single notification
  message": the sandbox sends one event per message.

The sandbox's own rules: an SQS Destination must be a queue on 127.0.0.1 or localhost
(``sqs_transport``); SNS specifications are taken (an ARN is checked) but not sent, and their
events are not notified. Changes take effect at once (the legacy API allowed up to five minutes).

Delivery: the operations record events (``SandboxCore._event``); ``_queue_notifications`` turns
those of HIT types with an active specification into messages in the state file's outbox, in
the transaction of the change they report, so a message exists exactly when its change
committed. ``_send_notifications`` sends them after the commit, oldest first, one sender at a
time (a call that finds another sending does not wait for it), each message at most once per
round, and deletes each message it sent. A failed send is logged and the message kept: it is
tried again by the rounds after later operations, ``FIRST_RETRY_S`` later and twice as long
after each failure, and given up (logged as an error, left in the outbox marked failed) after
``MAX_SEND_ATTEMPTS``. A message can arrive twice, with the same EventDocId (which MTurk tells
consumers to track): when SQS took it but its answer was lost (a timeout), or when the sandbox
stopped between sending it and deleting it (it is sent again when the sandbox runs again).

Events of time (AssignmentAbandoned, auto-approval's AssignmentApproved, HITExpired and the
HITReviewable it may cause) are found where the sandbox applies what time did (``_refresh``).
HITReviewable is reported when a HIT of a notified type goes into the Reviewable status from
any other than Reviewing (an UpdateHITReviewStatus revert is the requester's own doing).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from include.crowd_sandbox.core import HITEvent, SandboxCore, new_id
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.sqs_transport import SQSSender, local_queue_endpoint

log = logging.getLogger(__name__)

INVALID = "AWS.MechanicalTurk.InvalidParameterValue"
NOTIFICATION_VERSIONS = ("2006-05-05", "2014-08-15")
SENT_TRANSPORT = "SQS"
SNS_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}")
# The AWS account a message names as its source: moto's default account, whose queues the tests
# and the demo use.
SOURCE_ACCOUNT = "123456789012"
MAX_SEND_ATTEMPTS = 5
FIRST_RETRY_S = 1.0
SEND_BATCH = 100
# Meta keys: the requester's customer id in messages, and the expiration up to which HITs of
# notified types have been looked at.
CUSTOMER_ID_KEY = "notification_customer_id"
EXPIRY_MARK_KEY = "notification_expiry_mark"


def checked_notification(notification: dict[str, Any], *, test: bool = False) -> dict[str, Any]:
    """The Notification, checked beyond the model (whose required members and enums the
    protocol checked); EventTypes without repeats. Raise ``RequestError`` naming the problem."""
    transport, version = notification["Transport"], notification["Version"]
    destination = notification["Destination"]
    if transport == "Email":
        raise RequestError(
            "Transport Email is not available: MTurk's API reference lists SQS and SNS "
            "(the Notification data structure). Use SQS with a queue on 127.0.0.1.",
            INVALID,
        )
    if version not in NOTIFICATION_VERSIONS:
        raise RequestError(
            f"Version {version!r} is not a notification API version: use "
            f"{' or '.join(NOTIFICATION_VERSIONS)}.",
            INVALID,
        )
    event_types = list(dict.fromkeys(notification["EventTypes"]))
    if not event_types:
        raise RequestError("EventTypes must name one or more events.", INVALID)
    if "Ping" in event_types and not test:
        raise RequestError(
            "The Ping event is only valid for the SendTestEventNotification operation.", INVALID
        )
    if transport == SENT_TRANSPORT:
        try:
            local_queue_endpoint(destination)
        except ValueError as error:
            raise RequestError(str(error), INVALID) from None
    elif not SNS_TOPIC_ARN.fullmatch(destination):
        raise RequestError(
            "When Transport is SNS, Destination is the ARN of your topic, such as "
            f"arn:aws:sns:us-east-1:123456789012:my-topic, not {destination!r}.",
            INVALID,
        )
    return {
        "Destination": destination,
        "Transport": transport,
        "Version": version,
        "EventTypes": event_types,
    }


def event_timestamp(epoch: float) -> str:
    """MTurk's EventTimestamp: UTC to the second, such as 2005-01-31T23:59:59Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class NotificationOperations(SandboxCore):
    """Set a HIT type's notifications, send test events, and send the messages they ask for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sender = SQSSender()
        self._sending = threading.Lock()
        self._queued = 0  # messages queued by this sandbox: a sender goes round again if it grew
        with self.store.transaction():
            self._outbox_waiting = self.store.outbox_waiting()  # left by an earlier run

    # --- operations ---------------------------------------------------------------------------

    def op_UpdateNotificationSettings(self, params: dict[str, Any], request_id: str):
        hit_type_id = params["HITTypeId"]
        if self.store.hit_type(hit_type_id) is None:
            raise RequestError(
                f"HITType {hit_type_id} does not exist.", "AWS.MechanicalTurk.HITTypeDoesNotExist"
            )
        notification, active = params.get("Notification"), params.get("Active")
        current = self.store.notification_setting(hit_type_id)
        if notification is None:
            if active is None:
                raise RequestError(
                    "You must specify either the Notification parameter or the Active "
                    "parameter (or both).",
                    INVALID,
                )
            if current is None:
                raise RequestError(
                    f"HIT type {hit_type_id} has no notification specification: pass the "
                    "Notification with Active to set one.",
                    INVALID,
                )
            notification = current["Notification"]
        else:
            notification = checked_notification(notification)
            if notification["Transport"] != SENT_TRANSPORT:
                log.warning(
                    "HIT type %s: %s notifications are kept but not sent (the crowd sandbox "
                    "sends SQS notifications only)",
                    hit_type_id,
                    notification["Transport"],
                )
        active = True if active is None else active
        self.store.put_notification_setting(
            {"HITTypeId": hit_type_id, "Notification": notification, "Active": active}
        )
        if active and not (current and current["Active"]):
            self._start_watching(hit_type_id)
        return {}

    def op_SendTestEventNotification(self, params: dict[str, Any], request_id: str):
        notification = checked_notification(params["Notification"], test=True)
        event_type = params["TestEventType"]
        assignment_id = new_id() if event_type.startswith("Assignment") else None
        event = HITEvent(event_type, new_id(), self._now(), assignment_id)
        if notification["Transport"] != SENT_TRANSPORT:
            log.warning(
                "test %s notification to %s not sent (the crowd sandbox sends SQS "
                "notifications only)",
                notification["Transport"],
                notification["Destination"],
            )
            return {}
        self._queue_message(notification, event, hit_type_id=new_id())
        return {}

    # --- events into messages, in the operation's transaction -------------------------------

    def _start_watching(self, hit_type_id: str) -> None:
        """A HIT type's notifications were turned on: note the status its HITs are in now (to
        tell when one becomes Reviewable), and count only expirations from now on."""
        now = self._now()
        for state in self.store.hit_states():
            if state.hit_type_id == hit_type_id:
                self.store.put_notice_status(state.hit_id, self.hit_state_status(state, now))
        self.store.set_meta(EXPIRY_MARK_KEY, repr(now))

    def _queue_notifications(self) -> None:
        events = list(self._events)
        self._events.clear()
        notified = {
            setting["HITTypeId"]: setting["Notification"]
            for setting in self.store.active_notification_settings()
        }
        if not notified:
            return
        now = self._now()
        events = sorted(self._expirations(notified, now) + events, key=lambda e: e.at)
        hits: dict[str, dict[str, Any]] = {}
        last_event_at: dict[str, float] = {}  # of each HIT of a notified type, in event order
        for event in events:
            hit = hits.get(event.hit_id) or self.store.hit(event.hit_id)
            if hit is None:
                continue
            hits[event.hit_id] = hit
            notification = notified.get(hit["HITTypeId"])
            if notification is None:
                continue
            last_event_at[event.hit_id] = event.at
            if event.event_type in notification["EventTypes"]:
                self._queue_message(notification, event, hit["HITTypeId"])
        seen = self.store.notice_statuses(list(last_event_at))
        for hit_id, at in last_event_at.items():
            hit = hits[hit_id]
            status = self.hit_view(hit, now=now)["HITStatus"]
            before = seen.get(hit_id)  # None: a HIT from before notifications were tracked
            if status == "Reviewable" and before not in (None, "Reviewable", "Reviewing"):
                notification = notified[hit["HITTypeId"]]
                if "HITReviewable" in notification["EventTypes"]:
                    reviewable = HITEvent("HITReviewable", hit_id, at)
                    self._queue_message(notification, reviewable, hit["HITTypeId"])
            if status != before:
                self.store.put_notice_status(hit_id, status)

    def _expirations(self, notified: dict[str, dict[str, Any]], now: float) -> list[HITEvent]:
        """HITExpired for the HITs of notified types that expired since the last look."""
        mark = self.store.meta(EXPIRY_MARK_KEY)
        if mark is None:  # notifications set by a sandbox that did not keep the mark
            self.store.set_meta(EXPIRY_MARK_KEY, repr(now))
            return []
        expired = self.store.hits_expired(float(mark), now)
        if not expired:
            return []  # the mark stays: no write for a call in which nothing expired
        self.store.set_meta(EXPIRY_MARK_KEY, repr(now))
        return [
            HITEvent("HITExpired", hit_id, expiration)
            for hit_id, hit_type_id, expiration in expired
            if hit_type_id in notified
        ]

    def _queue_message(
        self, notification: dict[str, Any], event: HITEvent, hit_type_id: str
    ) -> None:
        """Put MTurk's message for one event in the outbox (SQS specifications only)."""
        if notification["Transport"] != SENT_TRANSPORT:
            log.debug("%s of HIT %s not sent: SNS", event.event_type, event.hit_id)
            return
        described: dict[str, Any] = {
            "EventType": event.event_type,
            "EventTimestamp": event_timestamp(event.at),
            "HITId": event.hit_id,
        }
        if event.assignment_id is not None:
            described["AssignmentId"] = event.assignment_id
        described["HITTypeId"] = hit_type_id
        message = {
            "Events": [described],
            "EventDocId": secrets.token_hex(20),
            "SourceAccount": SOURCE_ACCOUNT,
            "CustomerId": self._customer_id(),
            "EventDocVersion": notification["Version"],
        }
        body = json.dumps(message, separators=(",", ":"))  # compact, as MTurk's messages are
        self.store.add_outbox(notification["Destination"], body)
        self._outbox_waiting = True
        self._queued += 1  # under the store's lock

    def _customer_id(self) -> str:
        """The requester's customer id (``A`` and 12 letters or digits), the same for the state
        file's lifetime."""
        customer_id = self.store.meta(CUSTOMER_ID_KEY)
        if customer_id is None:
            customer_id = new_id("A", 13)
            self.store.set_meta(CUSTOMER_ID_KEY, customer_id)
        return customer_id

    # --- sending, after the commit -----------------------------------------------------------

    def _send_notifications(self) -> None:
        """Send what is due. Never waits for another sender: a call that finds one at work
        leaves its messages to it (the sender goes round again when messages were queued
        during its round), so a slow queue delays the call that is sending, not every call.
        The call's change has committed: nothing here may fail it."""
        while self._outbox_waiting:
            if not self._sending.acquire(blocking=False):
                return
            queued = self._queued
            try:
                self._send_round()
            except Exception:  # noqa: BLE001 - logged; the messages stay in the outbox
                log.exception("sending notifications failed; the messages stay in the outbox")
                return
            finally:
                self._sending.release()
            if self._queued == queued:
                return

    def _send_round(self) -> None:
        after = 0  # each message is tried at most once per round
        while True:
            with self.store.transaction():  # the store's lock: no message is being queued
                due = self.store.due_outbox(time.time(), after, SEND_BATCH)
                if not due:
                    self._outbox_waiting = self.store.outbox_waiting()
                    return
            for message in due:
                self._send(message.seq, message.destination, message.body, message.attempts)
            after = due[-1].seq

    def _send(self, seq: int, destination: str, body: str, attempts: int) -> None:
        events = " ".join(
            f"{e['EventType']}/{e['HITId']}" for e in json.loads(body).get("Events", [])
        )
        try:
            message_id = self._sender.send(destination, body)
        except (BotoCoreError, ClientError, ValueError) as error:
            attempts += 1
            given_up = attempts >= MAX_SEND_ATTEMPTS
            retry_in = FIRST_RETRY_S * 2 ** (attempts - 1)
            with self.store.transaction():
                self.store.defer_outbox(
                    seq,
                    attempts=attempts,
                    next_attempt=time.time() + retry_in,
                    error=f"{error!s:.500}",
                    failed=given_up,
                )
            if given_up:
                log.error(
                    "notification %s to %s not sent after %d attempts, given up (kept in the "
                    "state file's notification_outbox): %s",
                    events,
                    destination,
                    attempts,
                    error,
                )
            else:
                log.warning(
                    "notification %s to %s not sent (attempt %d of %d; next in %.0f s): %s",
                    events,
                    destination,
                    attempts,
                    MAX_SEND_ATTEMPTS,
                    retry_in,
                    error,
                )
            return
        with self.store.transaction():
            self.store.delete_outbox(seq)
        log.info("notification %s sent to %s (SQS message %s)", events, destination, message_id)
