"""The MTurk requester operations, and what workers do (accept, submit, return), on one state.

Rules follow the MTurk API reference (2017-01-17): the HIT lifecycle (Assignable →
Unassignable → Reviewable → Reviewing / Disposed, expiry), assignment states (Submitted →
Approved / Rejected, OverrideRejection, auto-approval), ``UniqueRequestToken`` (24 h) on
CreateHIT, CreateHITWithHITType, SendBonus and CreateAdditionalAssignmentsForHIT, qualification
requirements checked when a worker previews or accepts, worker blocks (a blocked worker cannot
accept), NotifyWorkers limits, the account balance charged with MTurk's fees (each HIT's
cost held from its creation, as MTurk holds funds for assignment liability), and HIT event
notifications sent to SQS queues on this machine. Every operation runs in one transaction of the
state file; its notifications are sent after it commits.

``Sandbox`` is that service: the core (``core.SandboxCore``: the state, clock, balance and
tokens) with one mixin per group of operations (``operations/``: HITs, assignments,
qualifications, worker blocks, notifications, worker actions). A request runs the
``op_<Operation>`` method of its name.
"""

from __future__ import annotations

from include.crowd_sandbox.operations.assignments import AssignmentOperations
from include.crowd_sandbox.operations.hits import HITOperations
from include.crowd_sandbox.operations.notifications import NotificationOperations
from include.crowd_sandbox.operations.qualifications import QualificationOperations
from include.crowd_sandbox.operations.worker_actions import WorkerActions
from include.crowd_sandbox.operations.worker_blocks import WorkerBlockOperations
from include.crowd_sandbox.question_xml import MAX_ANSWER_BYTES

# MAX_ANSWER_BYTES is the question_xml module's; the hostile-input tests import it from here.
__all__ = ["MAX_ANSWER_BYTES", "Sandbox"]


class Sandbox(
    HITOperations,
    AssignmentOperations,
    QualificationOperations,
    WorkerBlockOperations,
    NotificationOperations,
    WorkerActions,
):
    """MTurk's requester API and the worker actions, over a ``Store``."""
