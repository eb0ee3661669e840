"""HIT types and HITs: CreateHIT, CreateHITType, CreateHITWithHITType, GetHIT, ListHITs,
ListReviewableHITs, UpdateExpirationForHIT, UpdateHITReviewStatus, DeleteHIT and
CreateAdditionalAssignmentsForHIT. They report the HIT events of MTurk's notifications:
HITCreated, HITExtended (a later expiration, more assignments) and HITDisposed."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from include.crowd_sandbox import money, question_form
from include.crowd_sandbox.core import SandboxCore, check_length, check_range, new_id
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_requirements import checked_requirements
from include.crowd_sandbox.question_xml import question_kind

DEFAULT_AUTO_APPROVAL_S = 30 * 24 * 3600


class HITOperations(SandboxCore):
    """Create, list, change and delete HITs (and the HIT types they are made from)."""

    def _hit_type(self, params: dict[str, Any]) -> dict[str, Any]:
        reward = params["Reward"]
        money_cents = money.parse_amount(reward)
        if money_cents < 1:
            raise RequestError(
                "The reward must be at least $0.01.", "AWS.MechanicalTurk.InvalidReward"
            )
        check_range(
            "AssignmentDurationInSeconds", params["AssignmentDurationInSeconds"], 30, 31536000
        )
        auto = params.get("AutoApprovalDelayInSeconds", DEFAULT_AUTO_APPROVAL_S)
        check_range("AutoApprovalDelayInSeconds", auto, 0, 2592000)
        check_length("Title", params["Title"], 1, 128)
        check_length("Description", params["Description"], 1, 2000)
        if params.get("Keywords") is not None:
            check_length("Keywords", params["Keywords"], 0, 1000)
        requirements = checked_requirements(self.store, params.get("QualificationRequirements"))
        hit_type = {
            "Title": params["Title"],
            "Description": params["Description"],
            "Keywords": params.get("Keywords"),
            "Reward": money.format_amount(money_cents),
            "AssignmentDurationInSeconds": params["AssignmentDurationInSeconds"],
            "AutoApprovalDelayInSeconds": auto,
            "QualificationRequirements": requirements,
        }
        digest = hashlib.sha256(json.dumps(hit_type, sort_keys=True).encode()).digest()
        hit_type["HITTypeId"] = base64.b32encode(digest).decode()[:30]
        self.store.execute(
            "INSERT OR IGNORE INTO hit_types (id, doc) VALUES (?, ?)",
            (hit_type["HITTypeId"], json.dumps(hit_type, sort_keys=True)),
        )
        return hit_type

    def _create_hit(self, hit_type: dict[str, Any], params: dict[str, Any], request_id: str):
        token = params.get("UniqueRequestToken")
        lifetime = params["LifetimeInSeconds"]
        check_range("LifetimeInSeconds", lifetime, 30, 31536000)
        max_assignments = params.get("MaxAssignments", 1)
        check_range("MaxAssignments", max_assignments, 1, 1_000_000)
        if params.get("RequesterAnnotation") is not None:
            check_length("RequesterAnnotation", params["RequesterAnnotation"], 0, 255)
        if params.get("HITLayoutId") or params.get("HITLayoutParameters"):
            raise RequestError(
                "HIT layouts (HITLayoutId) are not available in the crowd sandbox; "
                "pass the Question instead.",
                "AWS.MechanicalTurk.HITLayoutDoesNotExist",
            )
        question = params.get("Question")
        if not question:
            raise RequestError("Either Question or HITLayoutId must be provided.")
        if question_kind(question) == "QuestionForm":
            question_form.parse(question)  # MTurk validates a QuestionForm against its schema
        now = self._now()
        hit = {
            "HITId": new_id(),
            "HITTypeId": hit_type["HITTypeId"],
            "HITGroupId": hit_type["HITTypeId"],
            "CreationTime": now,
            "Title": hit_type["Title"],
            "Description": hit_type["Description"],
            "Keywords": hit_type.get("Keywords"),
            "Question": question,
            "Reward": hit_type["Reward"],
            "MaxAssignments": max_assignments,
            "AutoApprovalDelayInSeconds": hit_type["AutoApprovalDelayInSeconds"],
            "AssignmentDurationInSeconds": hit_type["AssignmentDurationInSeconds"],
            "Expiration": now + lifetime,
            "RequesterAnnotation": params.get("RequesterAnnotation"),
            "QualificationRequirements": hit_type["QualificationRequirements"],
            "HITReviewStatus": "NotReviewed",
        }
        self.store.put_hit(hit)
        self.store.put_slot_cost(hit["HITId"], self._approval_cost(hit))
        self._rehold(hit["HITId"], check=True)  # MTurk holds the HIT's cost from its creation
        self._remember_token("CreateHIT", token, {"HITId": hit["HITId"], "RequestId": request_id})
        self.store.add_ledger("create-hit", {"HITId": hit["HITId"], "Time": now})
        self._event("HITCreated", hit["HITId"], at=now)
        return {"HIT": self.hit_view(hit)}

    def _check_hit_token(self, params: dict[str, Any]) -> None:
        seen = self._seen_token("CreateHIT", params.get("UniqueRequestToken"))
        if seen:
            raise RequestError(
                "There is already a HIT which exists with the same UniqueRequestToken as that "
                f"specified in the request. HIT ID: {seen['HITId']} "
                f"(original request {seen['RequestId']})",
                "AWS.MechanicalTurk.HitAlreadyExists",
            )

    def op_CreateHIT(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        self._check_hit_token(params)
        return self._create_hit(self._hit_type(params), params, request_id)

    def op_CreateHITType(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {"HITTypeId": self._hit_type(params)["HITTypeId"]}

    def op_CreateHITWithHITType(self, params: dict[str, Any], request_id: str):
        self._check_hit_token(params)
        hit_type = self.store.hit_type(params["HITTypeId"])
        if hit_type is None:
            raise RequestError(
                f"HITType {params['HITTypeId']} does not exist.",
                "AWS.MechanicalTurk.HITTypeDoesNotExist",
            )
        return self._create_hit(hit_type, params, request_id)

    def op_GetHIT(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        return {"HIT": self.hit_view(self._hit(params["HITId"]))}

    def op_ListHITs(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        start, size = self._page_window(params, "ListHITs")
        if start >= 0:
            page, more = self.store.listed_hits(start, size)  # only the page's documents
        else:  # no token the sandbox gives out; sliced as a Python list is, as it always was
            hits = [h for h in self.store.hits() if not h.get("Disposed")]
            page, more = hits[start : start + size], start + size < len(hits)
        now = self._now()
        return {
            "HITs": [self.hit_view(h, now=now) for h in page],
            "NextToken": self._next_token(start, size, "ListHITs", more),
            "NumResults": len(page),
        }

    def op_ListReviewableHITs(self, params: dict[str, Any], request_id: str):
        wanted = params.get("Status", "Reviewable")
        now = self._now()
        states = [
            state
            for state in self.store.hit_states()
            if self.hit_state_status(state, now) == wanted
            and (not params.get("HITTypeId") or state.hit_type_id == params["HITTypeId"])
        ]
        page, token = self._page(states, params, "ListReviewableHITs:" + wanted)
        hits = self.store.hits_by_seq([state.seq for state in page])
        views = [self.hit_view(h, state.counts, now) for h, state in zip(hits, page, strict=True)]
        return {"HITs": views, "NextToken": token, "NumResults": len(views)}

    def op_UpdateExpirationForHIT(self, params: dict[str, Any], request_id: str):
        hit = self._hit(params["HITId"])
        if hit.get("Disposed"):
            raise RequestError(
                f"Hit {hit['HITId']} has been deleted.", "AWS.MechanicalTurk.InvalidHITState"
            )
        expire_at: datetime = params["ExpireAt"]
        before = hit["Expiration"]
        hit["Expiration"] = max(self._now(), expire_at.timestamp())
        self.store.put_hit(hit)
        self._rehold(hit["HITId"], check=True)  # an expired HIT made assignable holds again
        if hit["Expiration"] > before:
            self._event("HITExtended", hit["HITId"])
        return {}

    def op_UpdateHITReviewStatus(self, params: dict[str, Any], request_id: str):
        hit = self._hit(params["HITId"])
        status = self.hit_view(hit)["HITStatus"]
        revert = params.get("Revert", False)
        expected = "Reviewing" if revert else "Reviewable"
        if status != expected:
            raise RequestError(
                f"This HIT is currently in the state '{status}'. This operation can be called "
                f"with a status of: {expected}",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        hit["Reviewing"] = not revert
        self.store.put_hit(hit)
        return {}

    def op_DeleteHIT(self, params: dict[str, Any], request_id: str) -> dict[str, Any]:
        hit = self._hit(params["HITId"])
        if hit.get("Disposed"):
            return {}
        view = self.hit_view(hit)
        unreviewed = [
            a
            for a in self.store.assignments_for_hit(hit["HITId"])
            if a["AssignmentStatus"] == "Submitted"
        ]
        # DeleteHIT's reference: "You can only dispose of HITs that are in the Reviewable
        # state, with all of their submitted assignments already either approved or rejected."
        if view["HITStatus"] != "Reviewable" or unreviewed:
            detail = (
                f"{len(unreviewed)} submitted assignment(s) are neither approved nor rejected"
                if unreviewed and view["HITStatus"] == "Reviewable"
                else f"This HIT is currently in the state '{view['HITStatus']}'"
            )
            raise RequestError(
                f"{detail}. This operation can be called with a status of: Reviewable, "
                "once every submitted assignment is approved or rejected.",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        hit["Disposed"] = True
        self.store.put_hit(hit)
        self._rehold(hit["HITId"])
        self._event("HITDisposed", hit["HITId"])
        return {}

    def op_CreateAdditionalAssignmentsForHIT(self, params: dict[str, Any], request_id: str):
        """Raise a HIT's MaxAssignments. ``UniqueRequestToken`` works as the MTurk API reference
        (CreateAdditionalAssignmentsForHIT) describes it: a retry with the token of a call that
        went through extends nothing and answers an error naming the original request; as for
        CreateHIT, tokens expire after 24 hours (``TOKEN_LIFETIME_S``), after which the same
        token extends the HIT again."""
        token = params.get("UniqueRequestToken")
        seen = self._seen_token("CreateAdditionalAssignmentsForHIT", token)
        if seen:
            raise RequestError(
                "The additional assignments for this UniqueRequestToken were already created "
                f"(original request {seen['RequestId']}).",
                "AWS.MechanicalTurk.DuplicateRequest",
            )
        hit = self._hit(params["HITId"])
        extra = params["NumberOfAdditionalAssignments"]
        check_range("NumberOfAdditionalAssignments", extra, 1, 1_000_000)
        if hit.get("Disposed"):
            raise RequestError(
                f"Hit {hit['HITId']} has been deleted.", "AWS.MechanicalTurk.InvalidHITState"
            )
        before = hit["MaxAssignments"]
        if before < money.LARGE_HIT_ASSIGNMENTS <= before + extra:
            raise RequestError(
                "HITs created with fewer than 10 assignments cannot be extended to have 10 or "
                "more assignments.",
                "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease",
            )
        hit["MaxAssignments"] = before + extra
        self.store.put_hit(hit)
        self._rehold(hit["HITId"], check=True)
        self._event("HITExtended", hit["HITId"])
        self._remember_token(
            "CreateAdditionalAssignmentsForHIT",
            token,
            {"HITId": hit["HITId"], "RequestId": request_id},
        )
        return {}
