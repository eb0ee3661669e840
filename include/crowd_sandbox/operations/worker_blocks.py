"""Worker blocks: CreateWorkerBlock, DeleteWorkerBlock and ListWorkerBlocks. (What a block
stops a worker from doing is in ``worker_actions``: accepting the requester's HITs.)

MTurk's rules, from its API reference and guides:

- a block "prevent[s] a Worker from working on your HITs"; "You can block up to 100,000
  Workers" (CreateWorkerBlock); the Reason is for the requester: "The Worker does not see this
  message" (ApiReference_CreateWorkerBlockOperation.html);
- "If the Worker is already blocked, this operation returns successfully" (the legacy
  BlockWorker reference, AWSMechTurk/2008-04-01/AWSMechanicalTurkRequester/
  ApiReference_BlockWorkerOperation.html). Whether the Reason changes is not documented: the
  sandbox keeps one block per worker, in its place in the listing, with the latest Reason given;
- "If the specified Worker is not blocked, this operation returns successfully"
  (ApiReference_DeleteWorkerBlockOperation.html);
- "Workers are notified that they've been blocked from your tasks"
  (AWSMechanicalTurkRequester/BlockingWorkers.html): a new block puts a notice without the
  Reason in the worker's outbox.
"""

from __future__ import annotations

from typing import Any

from include.crowd_sandbox.core import SandboxCore
from include.crowd_sandbox.protocol import RequestError

MAX_WORKER_BLOCKS = 100_000
BLOCKED_MESSAGE = (
    "The Requester has chosen to prevent you from working on any of this Requester's HITs. "
    "There are a variety of reasons for Requesters to prevent particular Workers from "
    "completing their HITs."
)
"""What a blocked worker is told, in the words of MTurk's BlockWorker reference."""


class WorkerBlockOperations(SandboxCore):
    """Block workers from the requester's HITs, lift blocks, list them."""

    def op_CreateWorkerBlock(self, params: dict[str, Any], request_id: str):
        worker_id = params["WorkerId"]
        existing = self.store.worker_block(worker_id)
        if existing is None and self.store.count_worker_blocks() >= MAX_WORKER_BLOCKS:
            raise RequestError(
                f"You can block up to {MAX_WORKER_BLOCKS:,} Workers: delete a block "
                f"(DeleteWorkerBlock) before blocking {worker_id}."
            )
        block = {"WorkerId": worker_id, "Reason": params.get("Reason")}
        if existing is not None and block["Reason"] is None:
            block["Reason"] = existing.get("Reason")
        self.store.put_worker_block(block)
        if existing is None:
            self.store.add_message(
                {
                    "WorkerId": worker_id,
                    "Subject": "You have been blocked from a Requester's HITs",
                    "MessageText": BLOCKED_MESSAGE,
                    "SentTime": self._now(),
                    "RequestId": request_id,
                }
            )
        return {}

    def op_DeleteWorkerBlock(self, params: dict[str, Any], request_id: str):
        self.store.delete_worker_block(params["WorkerId"])
        return {}

    def op_ListWorkerBlocks(self, params: dict[str, Any], request_id: str):
        page, token = self._page(self.store.worker_blocks(), params, "ListWorkerBlocks")
        return {"WorkerBlocks": page, "NextToken": token, "NumResults": len(page)}
