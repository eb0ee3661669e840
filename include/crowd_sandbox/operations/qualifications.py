"""Qualification types and the qualifications workers hold: CreateQualificationType,
GetQualificationType, ListQualificationTypes, AssociateQualificationWithWorker,
DisassociateQualificationFromWorker, GetQualificationScore and
ListWorkersWithQualificationType. (What a requirement asks of a worker is in
``qualification_requirements``.)"""

from __future__ import annotations

import json
from typing import Any

from include.crowd_sandbox.core import SandboxCore, check_length, new_id
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.qualification_requirements import (
    SYSTEM_QUALIFICATIONS,
    held_qualification,
)


class QualificationOperations(SandboxCore):
    """Make qualification types, grant and revoke them, look them up."""

    def _qualification_type(self, type_id: str) -> dict[str, Any]:
        qtype = self.store.doc("SELECT doc FROM qualification_types WHERE id = ?", (type_id,))
        if qtype is None:
            raise RequestError(
                f"QualificationType {type_id} does not exist.",
                "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
            )
        return qtype

    def op_CreateQualificationType(self, params: dict[str, Any], request_id: str):
        check_length("Name", params["Name"], 1, 1000)
        check_length("Description", params["Description"], 1, 2000)
        if self.store.doc("SELECT doc FROM qualification_types WHERE name = ?", (params["Name"],)):
            raise RequestError(
                "You have already created a QualificationType with this name. A "
                "QualificationType's name must be unique among all of the QualificationTypes "
                "created by the same user.",
                "AWS.MechanicalTurk.QualificationTypeAlreadyExists",
            )
        if params.get("Test") or params.get("AnswerKey"):
            raise RequestError(
                "Qualification tests are not available in the crowd sandbox.",
                "AWS.MechanicalTurk.UnsupportedOperation",
            )
        qtype = {
            "QualificationTypeId": new_id(),
            "CreationTime": self._now(),
            "Name": params["Name"],
            "Description": params["Description"],
            "Keywords": params.get("Keywords"),
            "QualificationTypeStatus": params["QualificationTypeStatus"],
            "RetryDelayInSeconds": params.get("RetryDelayInSeconds"),
            "IsRequestable": bool(params.get("AutoGranted")),
            "AutoGranted": bool(params.get("AutoGranted", False)),
            "AutoGrantedValue": params.get("AutoGrantedValue", 1)
            if params.get("AutoGranted")
            else None,
        }
        self.store.execute(
            "INSERT INTO qualification_types (id, name, doc) VALUES (?, ?, ?)",
            (qtype["QualificationTypeId"], qtype["Name"], json.dumps(qtype, sort_keys=True)),
        )
        return {"QualificationType": qtype}

    def op_GetQualificationType(self, params: dict[str, Any], request_id: str):
        return {"QualificationType": self._qualification_type(params["QualificationTypeId"])}

    def op_ListQualificationTypes(self, params: dict[str, Any], request_id: str):
        query = (params.get("Query") or "").lower()
        found = [
            q
            for q in self.store.docs("SELECT doc FROM qualification_types ORDER BY seq")
            if (not params.get("MustBeRequestable") or q["IsRequestable"])
            and (not query or query in (q["Name"] + " " + (q.get("Keywords") or "")).lower())
        ]
        page, token = self._page(found, params, f"ListQualificationTypes:{query}")
        return {"QualificationTypes": page, "NextToken": token, "NumResults": len(page)}

    def op_AssociateQualificationWithWorker(self, params: dict[str, Any], request_id: str):
        type_id, worker_id = params["QualificationTypeId"], params["WorkerId"]
        if type_id in SYSTEM_QUALIFICATIONS:
            raise RequestError(
                "System qualifications cannot be assigned by a requester.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        qtype = self._qualification_type(type_id)
        qualification = {
            "QualificationTypeId": type_id,
            "WorkerId": worker_id,
            "GrantTime": self._now(),
            "IntegerValue": params.get("IntegerValue", 1),
            "Status": "Granted",
        }
        self.store.execute(
            "INSERT INTO qualifications (type_id, worker_id, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (type_id, worker_id) DO UPDATE SET doc = excluded.doc",
            (type_id, worker_id, json.dumps(qualification, sort_keys=True)),
        )
        if params.get("SendNotification"):
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": f"You have been granted the qualification {qtype['Name']}",
                    "MessageText": qtype["Description"],
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {}

    def op_DisassociateQualificationFromWorker(self, params: dict[str, Any], request_id: str):
        type_id, worker_id = params["QualificationTypeId"], params["WorkerId"]
        qtype = self._qualification_type(type_id)
        found = held_qualification(self.store, type_id, worker_id)
        if found is None or found["Status"] != "Granted":
            raise RequestError(
                f"You requested a Qualification that does not exist: worker {worker_id} does "
                f"not hold {type_id}.",
                "AWS.MechanicalTurk.QualificationDoesNotExist",
            )
        found["Status"] = "Revoked"
        self.store.execute(
            "UPDATE qualifications SET doc = ? WHERE type_id = ? AND worker_id = ?",
            (json.dumps(found, sort_keys=True), type_id, worker_id),
        )
        if params.get("Reason"):
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": f"Your qualification {qtype['Name']} was revoked",
                    "MessageText": params["Reason"],
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {}

    def op_GetQualificationScore(self, params: dict[str, Any], request_id: str):
        found = held_qualification(self.store, params["QualificationTypeId"], params["WorkerId"])
        if found is None:
            raise RequestError(
                f"You requested a Qualification that does not exist: worker "
                f"{params['WorkerId']} does not hold {params['QualificationTypeId']}.",
                "AWS.MechanicalTurk.QualificationDoesNotExist",
            )
        return {"Qualification": found}

    def op_ListWorkersWithQualificationType(self, params: dict[str, Any], request_id: str):
        type_id = params["QualificationTypeId"]
        self._qualification_type(type_id)
        status = params.get("Status", "Granted")
        found = [
            q
            for q in self.store.docs(
                "SELECT doc FROM qualifications WHERE type_id = ? ORDER BY seq", (type_id,)
            )
            if q["Status"] == status
        ]
        page, token = self._page(
            found, params, f"ListWorkersWithQualificationType:{type_id}:{status}"
        )
        return {"Qualifications": page, "NextToken": token, "NumResults": len(page)}
