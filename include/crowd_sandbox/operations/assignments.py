"""Assignments and what the requester pays and writes: ListAssignmentsForHIT,
GetAssignment, ApproveAssignment, RejectAssignment, SendBonus, ListBonusPayments, NotifyWorkers
and GetAccountBalance, charged with MTurk's fees. Approving and rejecting report the
AssignmentApproved and AssignmentRejected events of MTurk's notifications."""

from __future__ import annotations

from typing import Any

from include.crowd_sandbox import money
from include.crowd_sandbox.core import SandboxCore, check_length
from include.crowd_sandbox.protocol import RequestError

OVERRIDE_REJECTION_WINDOW_S = 30 * 24 * 3600
MAX_NOTIFY_WORKERS = 100
MAX_SUBJECT = 200
MAX_MESSAGE = 4096


class AssignmentOperations(SandboxCore):
    """Review assignments, pay bonuses, message workers, show the balance."""

    def op_ListAssignmentsForHIT(self, params: dict[str, Any], request_id: str):
        hit = self._hit(params["HITId"])
        statuses = params.get("AssignmentStatuses") or ["Submitted", "Approved", "Rejected"]
        found = [
            a
            for a in self.store.assignments_for_hit(hit["HITId"])
            if a["AssignmentStatus"] in statuses
        ]
        scope = "ListAssignmentsForHIT:" + hit["HITId"] + ":" + ",".join(sorted(statuses))
        page, token = self._page(found, params, scope)
        return {"Assignments": page, "NextToken": token, "NumResults": len(page)}

    def op_GetAssignment(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        assignment = self._assignment(params["AssignmentId"])
        return {"Assignment": assignment, "HIT": self.hit_view(self._hit(assignment["HITId"]))}

    def op_ApproveAssignment(self, params: dict[str, Any], request_id: str):
        assignment = self._assignment(params["AssignmentId"])
        status = assignment["AssignmentStatus"]
        now = self._now()
        if status == "Rejected" and params.get("OverrideRejection"):
            # ApproveAssignment's reference: overriding "only works on rejected assignments that
            # were submitted within the previous 30 days and only if the assignment's related
            # HIT has not been deleted".
            if now - assignment["SubmitTime"] > OVERRIDE_REJECTION_WINDOW_S:
                raise RequestError(
                    "A rejection can only be overridden for an assignment submitted within the "
                    "previous 30 days.",
                    "AWS.MechanicalTurk.InvalidAssignmentState",
                )
            if self._hit(assignment["HITId"]).get("Disposed"):
                raise RequestError(
                    "After a HIT is deleted, its rejected assignments can no longer be approved.",
                    "AWS.MechanicalTurk.InvalidAssignmentState",
                )
        elif status != "Submitted":
            allowed = (
                "Submitted"
                if status == "Approved"
                else "Submitted (or Rejected with OverrideRejection)"
            )
            raise RequestError(
                f"This operation can be called with a status of: {allowed}. Assignment "
                f"{assignment['AssignmentId']} is {status}.",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        if params.get("RequesterFeedback") is not None:
            check_length("RequesterFeedback", params["RequesterFeedback"], 0, 1024)
        hit = self._hit(assignment["HITId"])
        self._charge(
            self._approval_cost(hit),
            "approval",
            {"AssignmentId": assignment["AssignmentId"], "WorkerId": assignment["WorkerId"]},
            held=status == "Submitted",  # an overridden rejection gave its hold back
        )
        assignment.update(AssignmentStatus="Approved", ApprovalTime=now)
        assignment.pop("RejectionTime", None)
        if params.get("RequesterFeedback") is not None:
            assignment["RequesterFeedback"] = params["RequesterFeedback"]
        self.store.put_assignment(assignment)
        self._rehold(hit["HITId"])
        self._event("AssignmentApproved", assignment["HITId"], assignment["AssignmentId"], now)
        return {}

    def op_RejectAssignment(self, params: dict[str, Any], request_id: str):
        assignment = self._assignment(params["AssignmentId"])
        if params.get("RequesterFeedback") is None:
            raise RequestError("RejectAssignment needs RequesterFeedback.")
        check_length("RequesterFeedback", params["RequesterFeedback"], 1, 1024)
        if assignment["AssignmentStatus"] != "Submitted":
            raise RequestError(
                "This operation can be called with a status of: Submitted. Assignment "
                f"{assignment['AssignmentId']} is {assignment['AssignmentStatus']}.",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        assignment.update(
            AssignmentStatus="Rejected",
            RejectionTime=self._now(),
            RequesterFeedback=params["RequesterFeedback"],
        )
        self.store.put_assignment(assignment)
        self._rehold(assignment["HITId"])  # a rejected assignment is not paid
        self._event("AssignmentRejected", assignment["HITId"], assignment["AssignmentId"])
        return {}

    # --- money and messages -----------------------------------------------------------------

    def op_SendBonus(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        token = params.get("UniqueRequestToken")
        seen = self._seen_token("SendBonus", token)
        if seen:
            raise RequestError(
                "The bonus for this UniqueRequestToken was already granted "
                f"(original request {seen['RequestId']}).",
                "AWS.MechanicalTurk.DuplicateRequest",
            )
        assignment = self._assignment(params["AssignmentId"])
        if assignment["WorkerId"] != params["WorkerId"]:
            raise RequestError(
                f"Assignment {assignment['AssignmentId']} was not done by worker "
                f"{params['WorkerId']}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        # MTurk's SendBonus reference names no status rule: a bonus "happens separately from
        # the reward you pay to the Worker when you approve the Worker's assignment", and the
        # call fails only for want of funds or a Worker with no assignment for the requester
        # in six months. Any submitted assignment of the Worker's may be paid, before review
        # too; one still being worked on has no work to pay for (MTurk answers "does not exist"
        # then: facebookresearch/Mephisto#1081).
        if assignment["AssignmentStatus"] not in ("Submitted", "Approved", "Rejected"):
            raise RequestError(
                f"Assignment {assignment['AssignmentId']} does not exist.",
                "AWS.MechanicalTurk.AssignmentDoesNotExist",
            )
        try:
            cents = money.parse_amount(params["BonusAmount"])
        except ValueError:
            raise RequestError(f"Invalid BonusAmount {params['BonusAmount']!r}.") from None
        if cents < 1:
            raise RequestError(
                "The bonus must be at least $0.01.", "AWS.MechanicalTurk.InvalidBonus"
            )
        check_length("Reason", params["Reason"], 1, 4096)
        self._charge(
            cents + money.bonus_fee(cents),
            "bonus",
            {"AssignmentId": assignment["AssignmentId"], "WorkerId": assignment["WorkerId"]},
        )
        self.store.add_bonus(
            {
                "WorkerId": assignment["WorkerId"],
                "BonusAmount": money.format_amount(cents),
                "AssignmentId": assignment["AssignmentId"],
                "HITId": assignment["HITId"],
                "Reason": params["Reason"],
                "GrantTime": self._now(),
            }
        )
        self._remember_token(
            "SendBonus",
            token,
            {"AssignmentId": assignment["AssignmentId"], "RequestId": request_id},
        )
        return {}

    def op_ListBonusPayments(self, params: dict[str, Any], request_id: str):
        hit_id, assignment_id = params.get("HITId"), params.get("AssignmentId")
        # The reference: "Either the HITId parameter or the AssignmentId parameter must be
        # specified"; with AssignmentId "only bonus payments for the given assignment are
        # returned". Both together select the assignment's (it must be the HIT's: the
        # sandbox's reading).
        if not hit_id and not assignment_id:
            raise RequestError("Specify HITId or AssignmentId.")
        if assignment_id:
            assignment = self._assignment(assignment_id)
            if hit_id and assignment["HITId"] != hit_id:
                self._hit(hit_id)
                raise RequestError(
                    f"Assignment {assignment_id} does not belong to HIT {hit_id}.",
                    "AWS.MechanicalTurk.InvalidParameterValue",
                )
            found = self.store.bonuses(assignment_id=assignment_id)
        else:
            self._hit(hit_id)
            found = self.store.bonuses(hit_id=hit_id)
        page, token = self._page(found, params, f"ListBonusPayments:{hit_id}:{assignment_id}")
        return {"BonusPayments": page, "NextToken": token, "NumResults": len(page)}

    def op_NotifyWorkers(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        worker_ids = params["WorkerIds"]
        if not 1 <= len(worker_ids) <= MAX_NOTIFY_WORKERS:
            raise RequestError(
                f"WorkerIds must hold between 1 and {MAX_NOTIFY_WORKERS} worker ids, "
                f"got {len(worker_ids)}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        check_length("Subject", params["Subject"], 1, MAX_SUBJECT)
        check_length("MessageText", params["MessageText"], 1, MAX_MESSAGE)
        failures = []
        for worker_id in dict.fromkeys(worker_ids):
            worked = any(
                a["AssignmentStatus"] in ("Approved", "Rejected")
                for a in self.store.assignments_for_worker(worker_id)
            )
            if not worked:
                failures.append(
                    {
                        "NotifyWorkersFailureCode": "HardFailure",
                        "NotifyWorkersFailureMessage": (
                            f"Cannot send notification to {worker_id}: the worker has no "
                            "approved or rejected work for this requester."
                        ),
                        "WorkerId": worker_id,
                    }
                )
                continue
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": params["Subject"],
                    "MessageText": params["MessageText"],
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {"NotifyWorkersFailureStatuses": failures}

    def op_GetAccountBalance(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {
            "AvailableBalance": money.format_amount(self._available()),
            "OnHoldBalance": money.format_amount(self.store.held()),
        }
