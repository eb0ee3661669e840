"""What workers do, as the worker site (and through it the simulated workers) asks for it:
register, find the HITs they may do, accept, submit (MTurk's externalSubmit), return, and read
their outbox. Qualification requirements are checked when a worker discovers, previews or
accepts a HIT. A worker the requester blocked (CreateWorkerBlock) still finds and previews the
HITs but cannot accept one ("A blocked Worker can view your HITs", legacy BlockWorker
reference); an assignment accepted before the block can still be submitted ("it does not
prevent the Worker from submitting assignments that they accepted before you blocked them",
RequesterUI/BlockingaWorker.html). Accepting, submitting and returning report the
AssignmentAccepted, AssignmentSubmitted and AssignmentReturned events of MTurk's notifications."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from include.crowd_sandbox.core import SandboxCore, new_id
from include.crowd_sandbox.operations.worker_blocks import BLOCKED_MESSAGE
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_requirements import unmet_requirements
from include.crowd_sandbox.question_form import submitted_answers

# What a worker profile holds when nobody says otherwise.
DEFAULT_WORKER = {
    "PercentAssignmentsApproved": 99,
    "NumberHITsApproved": 5000,
    "Locale": {"Country": "US"},
    "Adult": 1,
    "Masters": False,
}


class NotTheWorkersAssignment(RequestError):
    """A worker submitted an assignment that another worker accepted."""


class WorkerBlocked(RequestError):
    """A worker the requester blocked tried to accept one of the requester's HITs."""


class WorkerActions(SandboxCore):
    """The worker side of the sandbox: a worker's profile, HITs and assignments."""

    def register_worker(self, worker_id: str, **profile: Any) -> dict[str, Any]:
        """Create or update a worker's profile (what system qualifications are checked against)."""
        if not re.fullmatch(r"A[A-Z0-9]+", worker_id):
            raise ValueError(
                f"a worker id is 'A' then upper-case letters and digits: {worker_id!r}"
            )
        with self.store.transaction():
            worker = self.store.worker(worker_id) or {"WorkerId": worker_id, **DEFAULT_WORKER}
            worker.update(profile)
            self.store.put_worker(worker)
            return worker

    def worker(self, worker_id: str) -> dict[str, Any]:
        return self.store.worker(worker_id) or self.register_worker(worker_id)

    def blocked(self, worker_id: str) -> bool:
        """Whether the requester blocked this worker (CreateWorkerBlock)."""
        with self.store.transaction():
            return self.store.worker_block(worker_id) is not None

    def qualifies(self, worker: dict[str, Any], hit: dict[str, Any], action: str) -> list[str]:
        """Return the unmet requirements that guard ``action`` (Discover, Preview, Accept)."""
        return unmet_requirements(self.store, worker, hit, action)

    def assignable_hits(self, worker_id: str | None = None) -> list[dict[str, Any]]:
        """HITs a worker can find now (all assignable HITs when no worker is given).

        The store picks the HITs with a free slot that the worker has not done from its
        columns, so only the documents of HITs on the list are read."""
        with self._operation():
            self._refresh()
            worker = self.worker(worker_id) if worker_id else None
            now = self._now()
            states = [
                state
                for state in self.store.open_hit_states(now, worker_id if worker else None)
                if self.hit_state_status(state, now) == "Assignable"
            ]
            hits = self.store.hits_by_seq([state.seq for state in states])
            return [
                self.hit_view(hit, state.counts, now)
                for hit, state in zip(hits, states, strict=True)
                if worker is None or not self.qualifies(worker, hit, "Discover")
            ]

    def hit_for_worker(self, hit_id: str) -> dict[str, Any]:
        with self._operation():
            self._refresh()
            return self.hit_view(self._hit(hit_id))

    def accept(self, hit_id: str, worker_id: str) -> dict[str, Any]:
        """A worker accepts a HIT: return the new assignment, or raise ``RequestError``."""
        with self._operation():
            self._refresh()
            hit = self._hit(hit_id)
            worker = self.worker(worker_id)
            for existing in self.store.assignments_for_hit(hit_id):
                if existing["WorkerId"] == worker_id:
                    if existing["AssignmentStatus"] == "Accepted":
                        return existing
                    raise RequestError(f"Worker {worker_id} has already done HIT {hit_id}.")
            if self.store.worker_block(worker_id) is not None:
                raise WorkerBlocked(BLOCKED_MESSAGE)
            view = self.hit_view(hit)
            if view["HITStatus"] != "Assignable":
                raise RequestError(f"HIT {hit_id} is {view['HITStatus']}, not Assignable.")
            unmet = self.qualifies(worker, hit, "Accept")
            if unmet:
                raise RequestError(
                    f"Worker {worker_id} does not meet the HIT's qualification requirements: "
                    + "; ".join(unmet),
                    "AWS.MechanicalTurk.QualificationRequirementNotMet",
                )
            now = self._now()
            assignment = {
                "AssignmentId": new_id(),
                "WorkerId": worker_id,
                "HITId": hit_id,
                "AssignmentStatus": "Accepted",
                "AcceptTime": now,
                "Deadline": now + hit["AssignmentDurationInSeconds"],
            }
            self.store.put_assignment(assignment)
            self._event("AssignmentAccepted", hit_id, assignment["AssignmentId"], now)
            return assignment

    def submit(
        self,
        assignment_id: str,
        fields: Sequence[tuple[str, str]],
        *,
        worker_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A worker submits the form of an accepted assignment (MTurk's externalSubmit).

        ``worker_ids`` are the workers the request says it comes from: each must be the one
        who accepted the assignment. A refusal (``RequestError``) changes nothing.
        """
        with self._operation():
            self._refresh()
            assignment = self.store.assignment(assignment_id)
            if assignment is None:
                raise RequestError(
                    f"Assignment {assignment_id} does not exist or was abandoned "
                    "(its time ran out).",
                    "AWS.MechanicalTurk.AssignmentDoesNotExist",
                )
            for worker_id in worker_ids:
                if worker_id != assignment["WorkerId"]:
                    raise NotTheWorkersAssignment(
                        f"Assignment {assignment_id} was accepted by another worker, not "
                        f"{worker_id}: a HIT's form must post the assignmentId it was given "
                        "in its URL."
                    )
            if assignment["AssignmentStatus"] != "Accepted":
                raise RequestError(f"Assignment {assignment_id} was already submitted.")
            hit = self._hit(assignment["HITId"])
            now = self._now()
            assignment.update(
                AssignmentStatus="Submitted",
                SubmitTime=now,
                AutoApprovalTime=now + hit["AutoApprovalDelayInSeconds"],
                Answer=submitted_answers(hit["Question"], fields),
            )
            self.store.put_assignment(assignment)
            self._event("AssignmentSubmitted", hit["HITId"], assignment_id, now)
            return assignment

    def return_assignment(self, assignment_id: str) -> None:
        """A worker returns an accepted assignment; its slot becomes available again."""
        with self._operation():
            assignment = self.store.assignment(assignment_id)
            if assignment is None or assignment["AssignmentStatus"] != "Accepted":
                raise RequestError(f"Assignment {assignment_id} cannot be returned.")
            self.store.delete_assignment(assignment_id)
            self._rehold(assignment["HITId"])  # a slot of an expired HIT frees
            self.store.add_ledger("returned", {"AssignmentId": assignment_id})
            self._event("AssignmentReturned", assignment["HITId"], assignment_id)

    def outbox(self) -> dict[str, dict[str, list]]:
        """Per worker: the e-mails sent to them and the bonuses paid to them."""
        with self.store.transaction():
            result: dict[str, dict[str, list]] = {}
            for message in self.store.messages():
                result.setdefault(message["WorkerId"], {"messages": [], "bonuses": []})[
                    "messages"
                ].append(message)
            for bonus in self.store.bonuses():
                result.setdefault(bonus["WorkerId"], {"messages": [], "bonuses": []})[
                    "bonuses"
                ].append(bonus)
            return result
