"""Worker blocks (CreateWorkerBlock, DeleteWorkerBlock, ListWorkerBlocks) driven with plain boto3,
and what a block does on the worker site and to the simulated workers.

Sources (each test names the rule it checks):

- CREATE: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_CreateWorkerBlockOperation.html
- DELETE: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_DeleteWorkerBlockOperation.html
- LIST: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMturkAPI/ApiReference_ListWorkerBlocksOperation.html
- LEGACY: https://docs.aws.amazon.com/AWSMechTurk/2008-04-01/AWSMechanicalTurkRequester/ApiReference_BlockWorkerOperation.html
- REQUESTER_UI: https://docs.aws.amazon.com/AWSMechTurk/latest/RequesterUI/BlockingaWorker.html
- GUIDE: https://docs.aws.amazon.com/AWSMechTurk/latest/AWSMechanicalTurkRequester/BlockingWorkers.html
- MODEL: botocore/data/mturk/2017-01-17/service-2.json (CreateWorkerBlockRequest,
  DeleteWorkerBlockRequest, ListWorkerBlocksRequest, CustomerId, ResultSize)
"""

from __future__ import annotations

import html
import re
import time

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from include.crowd_sandbox.operations import worker_blocks
from include.crowd_sandbox.protocol import RequestError
from include.crowd_sandbox.requester import Sandbox
from include.crowd_sandbox.simulated_worker.page import hits_on_list_page
from include.crowd_sandbox.store import Store
from testsupport.sandbox_process import html_question, raw

BLOCKED_TEXT = "has chosen to prevent you from working on any of this Requester's HITs"


def create_hit(mturk, max_assignments: int = 1) -> str:
    return mturk.create_hit(
        MaxAssignments=max_assignments,
        LifetimeInSeconds=3600,
        AssignmentDurationInSeconds=600,
        Reward="0.50",
        Title="Pick one",
        Description="Pick the matching image",
        Question=html_question(),
    )["HIT"]["HITId"]


def blocks(mturk, **params) -> list[dict]:
    return mturk.list_worker_blocks(**params)["WorkerBlocks"]


def listed_hits(sandbox, worker_id: str) -> tuple[str, list[str]]:
    """The worker's HIT list page and the HIT ids a simulated worker would pick from it."""
    status, _, page = sandbox.page(f"/?workerId={worker_id}")
    assert status == 200
    return html.unescape(page), hits_on_list_page(page, f"{sandbox.url}/?workerId={worker_id}")


def test_a_block_is_created_listed_and_deleted(mturk):
    """CreateWorkerBlock returns an empty body (CREATE: "returns with no errors and an empty
    body"); ListWorkerBlocks returns each block's WorkerId and Reason (LIST: "a paginated list of
    Workers that have been blocked along with the reason for the block"); DeleteWorkerBlock
    "reverses the effects of the CreateWorkerBlock operation" (DELETE)."""
    assert blocks(mturk) == []
    response = mturk.create_worker_block(WorkerId="ASPAMMER1", Reason="Random answers")
    assert set(response) == {"ResponseMetadata"}
    listed = mturk.list_worker_blocks()
    assert listed["WorkerBlocks"] == [{"WorkerId": "ASPAMMER1", "Reason": "Random answers"}]
    assert listed["NumResults"] == 1 and "NextToken" not in listed
    response = mturk.delete_worker_block(WorkerId="ASPAMMER1", Reason="Appealed")
    assert set(response) == {"ResponseMetadata"}
    assert blocks(mturk) == []


def test_blocking_a_blocked_worker_succeeds_and_keeps_one_block_with_the_new_reason(mturk):
    """LEGACY (BlockWorker): "If the Worker is already blocked, this operation returns
    successfully." Neither that page nor CREATE says what happens to the Reason: the sandbox
    keeps one block per worker, in its place in the listing, with the latest Reason, and
    notifies the worker once (GUIDE: "Workers are notified that they've been blocked from your
    tasks"; CREATE: of the Reason, "The Worker does not see this message")."""
    mturk.create_worker_block(WorkerId="AFIRST", Reason="first reason")
    mturk.create_worker_block(WorkerId="ASECOND", Reason="other")
    mturk.create_worker_block(WorkerId="AFIRST", Reason="second reason")
    assert blocks(mturk) == [
        {"WorkerId": "AFIRST", "Reason": "second reason"},
        {"WorkerId": "ASECOND", "Reason": "other"},
    ]


def test_deleting_the_block_of_a_worker_who_is_not_blocked_succeeds(mturk):
    """DELETE: "If the specified Worker is not blocked, this operation returns successfully."
    Its Reason is optional there and in MODEL."""
    mturk.delete_worker_block(WorkerId="ANEVERBLOCKED")
    mturk.delete_worker_block(WorkerId="ANEVERBLOCKED", Reason="just in case")
    mturk.create_worker_block(WorkerId="AONCE", Reason="spam")
    mturk.delete_worker_block(WorkerId="AONCE")
    mturk.delete_worker_block(WorkerId="AONCE")  # already lifted: still a success
    assert blocks(mturk) == []


def test_blocks_page_with_next_token_max_results_and_the_paginator(sandbox, mturk):
    """LIST: NextToken and MaxResults page the list; MODEL: MaxResults is a ResultSize (1 to
    100), NextToken a PaginationToken; a token of another listing is refused as the sandbox's
    other listings refuse it (InvalidPaginationToken)."""
    workers = [f"AWORKER{i:02d}" for i in range(7)]
    for worker in workers:
        mturk.create_worker_block(WorkerId=worker, Reason=f"reason {worker}")
    first = mturk.list_worker_blocks(MaxResults=3)
    assert first["NumResults"] == 3 and first["NextToken"]
    second = mturk.list_worker_blocks(MaxResults=3, NextToken=first["NextToken"])
    third = mturk.list_worker_blocks(MaxResults=3, NextToken=second["NextToken"])
    assert third["NumResults"] == 1 and "NextToken" not in third
    pages = first["WorkerBlocks"] + second["WorkerBlocks"] + third["WorkerBlocks"]
    assert [b["WorkerId"] for b in pages] == workers
    paginated = mturk.get_paginator("list_worker_blocks").paginate(PaginationConfig={"PageSize": 2})
    assert [b["WorkerId"] for page in paginated for b in page["WorkerBlocks"]] == workers

    create_hit(mturk)
    create_hit(mturk)
    hits_token = mturk.list_hits(MaxResults=1)["NextToken"]
    with pytest.raises(ClientError) as refused:
        mturk.list_worker_blocks(NextToken=hits_token)
    assert refused.value.response["Error"]["Code"] == "RequestError"
    assert "NextToken is not valid" in refused.value.response["Error"]["Message"]
    status, body = raw(sandbox, "ListWorkerBlocks", {"MaxResults": 101})
    assert status == 400 and "less than or equal to 100" in body["Message"]
    status, body = raw(sandbox, "ListWorkerBlocks", {"MaxResults": 0})
    assert status == 400 and "greater than or equal to 1" in body["Message"]


def test_bad_input_gets_the_apis_errors(sandbox, mturk):
    """MODEL: WorkerId is a CustomerId (1 to 64 characters, ``^A[A-Z0-9]+$``), checked by the
    sandbox as for every operation (RequestError); CreateWorkerBlock's Reason is required by
    MODEL, so boto3 refuses to send a call without it, but CREATE lists Reason as "Required:
    No", so the sandbox takes a raw request without one (the block then has no Reason).
    DELETE: "If the Worker ID is missing or invalid, this operation fails". Neither page
    documents a length for Reason: any string is kept."""
    with pytest.raises(ParamValidationError):
        mturk.create_worker_block(WorkerId="AWORKER")  # no Reason: boto3's own check
    for bad in ("lowercase", "BNOTANA", "A" + "B" * 64, ""):
        for operation in ("CreateWorkerBlock", "DeleteWorkerBlock"):
            status, body = raw(sandbox, operation, {"WorkerId": bad, "Reason": "r"})
            assert status == 400, (operation, bad)
            assert body["__type"] == "RequestError" and "'workerId'" in body["Message"]
    status, body = raw(sandbox, "DeleteWorkerBlock", {})
    assert status == 400 and "'workerId' failed to satisfy constraint" in body["Message"]
    status, body = raw(sandbox, "CreateWorkerBlock", {"Reason": "no worker"})
    assert status == 400 and "'workerId'" in body["Message"]
    status, body = raw(sandbox, "CreateWorkerBlock", {"WorkerId": "ANOREASON"})
    assert status == 200 and body == {}
    long_reason = "x" * 10_000
    mturk.create_worker_block(WorkerId="ALONG", Reason=long_reason)
    assert blocks(mturk) == [
        {"WorkerId": "ANOREASON"},
        {"WorkerId": "ALONG", "Reason": long_reason},
    ]
    status, body = raw(sandbox, "CreateWorkerBlock", {"WorkerId": "ANOREASON"})
    assert status == 200  # blocked again, still no Reason


def test_a_blocked_worker_sees_the_hits_but_cannot_accept_until_unblocked(sandbox, mturk):
    """LEGACY: "A blocked Worker can view your HITs, but sees the following message: The
    Requester (<Requester Name>) has chosen to prevent you from working on any of this
    Requester's HITs. ..."; REQUESTER_UI: "Blocking a Worker prevents the Worker from accepting
    more of your HITs"; DELETE: unblocking "allows you to reinstate a blocked Worker to work on
    your HITs". GUIDE: "Workers are notified that they've been blocked from your tasks" (an
    e-mail in the outbox), and CREATE says of the Reason "The Worker does not see this message".
    Other workers are not affected."""
    hit_id = create_hit(mturk, max_assignments=3)
    mturk.create_worker_block(WorkerId="ABLOCKED", Reason="secret requester note")

    page, picked = listed_hits(sandbox, "ABLOCKED")
    assert hit_id in page and 'id="blocked"' in page and BLOCKED_TEXT in page
    assert picked == []  # the row is marked blocked: a simulated worker passes it over
    status, _, preview = sandbox.page(f"/hit/{hit_id}?workerId=ABLOCKED")
    assert status == 200 and 'id="blocked"' in preview and BLOCKED_TEXT in html.unescape(preview)
    assert 'id="accept"' not in preview and 'id="question"' in preview  # viewable, not acceptable
    assert sandbox.page(f"/hit/{hit_id}/question?workerId=ABLOCKED")[0] == 200
    assert sandbox.accept_status(hit_id, "ABLOCKED") == 403
    assert mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsAvailable"] == 3

    status, _, outbox = sandbox.page("/outbox?workerId=ABLOCKED")
    assert status == 200 and "You have been blocked" in outbox
    assert "secret requester note" not in outbox and "secret requester note" not in page

    page, picked = listed_hits(sandbox, "AOTHER")  # another worker is not blocked
    assert picked == [hit_id] and 'id="blocked"' not in page
    sandbox.work(hit_id, "AOTHER")

    mturk.delete_worker_block(WorkerId="ABLOCKED", Reason="appeal accepted")
    page, picked = listed_hits(sandbox, "ABLOCKED")
    assert picked == [hit_id] and 'id="blocked"' not in page
    status, _, preview = sandbox.page(f"/hit/{hit_id}?workerId=ABLOCKED")
    assert 'id="accept"' in preview and 'id="blocked"' not in preview
    assignment_id = sandbox.work(hit_id, "ABLOCKED")
    assert mturk.get_assignment(AssignmentId=assignment_id)["Assignment"]["WorkerId"] == "ABLOCKED"


def test_an_assignment_accepted_before_the_block_can_still_be_submitted(sandbox, mturk):
    """REQUESTER_UI: blocking "does not prevent the Worker from submitting assignments that they
    accepted before you blocked them"; LEGACY: "If a Worker is working on a HIT when the block
    occurs, the Worker can submit the HIT but will not be able to work on any additional
    HITs.\""""
    first = create_hit(mturk)
    second = create_hit(mturk)
    assignment_id = sandbox.accept(first, "ALATE")
    mturk.create_worker_block(WorkerId="ALATE", Reason="blocked mid-task")

    status, _, page = sandbox.page(f"/hit/{first}?workerId=ALATE&assignmentId={assignment_id}")
    assert status == 200 and f"assignmentId={assignment_id}" in page  # still theirs to do
    status, _, listing = sandbox.page("/?workerId=ALATE")
    assert assignment_id in listing  # in progress, with its Continue link
    assert sandbox.accept(first, "ALATE") == assignment_id  # accepting again resumes it
    assert sandbox.submit(assignment_id, {"choice": "2"}) == 200
    submitted = mturk.get_assignment(AssignmentId=assignment_id)["Assignment"]
    assert submitted["AssignmentStatus"] == "Submitted"
    assert sandbox.accept_status(second, "ALATE") == 403  # but no additional HIT


def test_blocks_survive_a_restart(sandbox_factory, tmp_path):
    """Blocks are part of the sandbox's state file, as every other record is (README: "a
    restart on the same file keeps every HIT, assignment, ... and worker block")."""
    state = tmp_path / "kept.sqlite"
    first = sandbox_factory(state=state)
    first.client().create_worker_block(WorkerId="AKEPT", Reason="kept")
    first.client().create_worker_block(WorkerId="ALIFTED", Reason="lifted")
    first.client().delete_worker_block(WorkerId="ALIFTED")
    assert first.stop() == 0

    second = sandbox_factory(state=state)
    mturk = second.client()
    assert blocks(mturk) == [{"WorkerId": "AKEPT", "Reason": "kept"}]
    hit_id = create_hit(mturk, max_assignments=2)
    assert second.accept_status(hit_id, "AKEPT") == 403
    second.work(hit_id, "ALIFTED")


def test_at_most_100000_workers_can_be_blocked(tmp_path, monkeypatch):
    """CREATE: "You can block up to 100,000 Workers." (The limit is lowered here so the test
    does not write 100,000 blocks; the rule is the same.) Blocking an already-blocked worker
    again at the limit still succeeds (LEGACY), and a deleted block frees a place."""
    assert worker_blocks.MAX_WORKER_BLOCKS == 100_000
    monkeypatch.setattr(worker_blocks, "MAX_WORKER_BLOCKS", 3)
    sandbox = Sandbox(Store(tmp_path / "state.sqlite"))
    for worker in ("AONE", "ATWO", "ATHREE"):
        sandbox.call("CreateWorkerBlock", {"WorkerId": worker, "Reason": "r"}, "request")
    with pytest.raises(RequestError, match="block up to 3 Workers"):
        sandbox.call("CreateWorkerBlock", {"WorkerId": "AFOUR", "Reason": "r"}, "request")
    sandbox.call("CreateWorkerBlock", {"WorkerId": "ATWO", "Reason": "again"}, "request")
    sandbox.call("DeleteWorkerBlock", {"WorkerId": "AONE"}, "request")
    sandbox.call("CreateWorkerBlock", {"WorkerId": "AFOUR", "Reason": "r"}, "request")
    listed = sandbox.call("ListWorkerBlocks", {}, "request")["WorkerBlocks"]
    assert [b["WorkerId"] for b in listed] == ["ATWO", "ATHREE", "AFOUR"]


def test_a_blocked_simulated_worker_never_works_on_the_hits_until_unblocked(sandbox_factory):
    """LEGACY / REQUESTER_UI: a blocked worker cannot accept the requester's HITs, so a blocked
    simulated worker leaves them alone (it passes over rows the list marks blocked), while the
    others work; once the block is deleted (DELETE: "reinstate a blocked Worker to work on your
    HITs") it takes the free assignment."""
    running = sandbox_factory(
        "--workers", "diligent:2", "--seconds-per-assignment", "0.05", "--worker-seed", "1"
    )
    mturk = running.client()
    mturk.create_worker_block(WorkerId="ADILIGENT01", Reason="test")
    hit_id = create_hit(mturk, max_assignments=2)

    def workers_who_submitted() -> list[str]:
        found = mturk.list_assignments_for_hit(HITId=hit_id, AssignmentStatuses=["Submitted"])
        return sorted(a["WorkerId"] for a in found["Assignments"])

    wait_until(lambda: workers_who_submitted() == ["ADILIGENT02"])
    time.sleep(2.5)  # more than two looks at the list by the blocked worker (about 1 s apart)
    assert workers_who_submitted() == ["ADILIGENT02"]
    assert mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsAvailable"] == 1
    log = "".join(running.log)
    assert not re.search(r"worker ADILIGENT01 .*submitted", log)

    mturk.delete_worker_block(WorkerId="ADILIGENT01")
    wait_until(lambda: workers_who_submitted() == ["ADILIGENT01", "ADILIGENT02"])


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_the_list_page_parser_passes_over_blocked_rows():
    page = (
        '<table><tr class="hit-row" data-blocked><td><a href="/hit/3BLOCKED?workerId=W">b</a>'
        '</td></tr><tr class="hit-row"><td><a href="/hit/3OPEN?workerId=W">o</a></td></tr></table>'
    )
    assert hits_on_list_page(page, "http://127.0.0.1:8911/?workerId=W") == ["3OPEN"]
