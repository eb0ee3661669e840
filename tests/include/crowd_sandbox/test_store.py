"""The state file's columns and indexes: a version 1 file migrated in place, refreshes that read
only what is due, and listings that equal what deriving every HIT's view from documents gives."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from include.crowd_sandbox import store as store_module
from include.crowd_sandbox.qualification_requirements import PERCENT_APPROVED
from include.crowd_sandbox.requester import Sandbox
from include.crowd_sandbox.store import Store
from testsupport.sandbox_process import html_question

DAY = 24 * 3600

# The tables of version 1, as that version created them (what an old state file holds).
VERSION_1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE hit_types (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE hits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, hit_type_id TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE assignments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, hit_id TEXT NOT NULL,
    worker_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX assignments_hit ON assignments (hit_id);
CREATE INDEX assignments_worker ON assignments (worker_id);
CREATE TABLE bonuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, assignment_id TEXT NOT NULL, hit_id TEXT NOT NULL,
    worker_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, worker_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE qualification_types (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, name TEXT UNIQUE NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE qualifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, type_id TEXT NOT NULL, worker_id TEXT NOT NULL,
    doc TEXT NOT NULL, UNIQUE (type_id, worker_id));
CREATE TABLE tokens (
    operation TEXT NOT NULL, token TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (operation, token));
CREATE TABLE workers (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, doc TEXT NOT NULL);
"""
VERSION_1_COLUMNS = {
    "meta": "key, value",
    "hit_types": "id, doc",
    "hits": "seq, id, hit_type_id, doc",
    "assignments": "seq, id, hit_id, worker_id, doc",
    "bonuses": "seq, assignment_id, hit_id, worker_id, doc",
    "messages": "seq, worker_id, doc",
    "qualification_types": "seq, id, name, doc",
    "qualifications": "seq, type_id, worker_id, doc",
    "tokens": "operation, token, created, doc",
    "workers": "id, doc",
    "ledger": "seq, kind, doc",
}


class Clock:
    """A clock the test moves (the sandbox adds its own offset on top)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.25

    def __call__(self) -> float:
        return self.now


def open_sandbox(path: Path, clock: Clock) -> Sandbox:
    return Sandbox(Store(path), initial_balance="1000.00", clock=clock)


def create(sandbox: Sandbox, **overrides: Any) -> str:
    params = {
        "MaxAssignments": 3,
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "AutoApprovalDelayInSeconds": DAY,
        "Reward": "0.10",
        "Title": "Pick one",
        "Description": "Pick the matching image",
        "Question": html_question(),
    }
    params.update(overrides)
    return sandbox.call("CreateHIT", params, "request")["HIT"]["HITId"]


def work(sandbox: Sandbox, hit_id: str, worker_id: str, *, submit: bool = True) -> str:
    assignment_id = sandbox.accept(hit_id, worker_id)["AssignmentId"]
    if submit:
        sandbox.submit(assignment_id, [("choice", "1")])
    return assignment_id


def mixed_state(sandbox: Sandbox, clock: Clock) -> dict[str, str]:
    """HITs in every status, assignments in every state, a HIT some workers may not discover."""
    sandbox.register_worker("AGOOD1")
    sandbox.register_worker("ALOW1", PercentAssignmentsApproved=80)
    hits = {
        "short": create(sandbox, LifetimeInSeconds=60),
        "short_pending": create(sandbox, LifetimeInSeconds=60),
        "full": create(sandbox, MaxAssignments=1),
        "open": create(sandbox),
        "partly": create(sandbox),
        "reviewable": create(sandbox, MaxAssignments=1, AutoApprovalDelayInSeconds=0),
        "reviewing": create(sandbox, MaxAssignments=1),
        "disposed": create(sandbox, MaxAssignments=1),
        "picky": create(
            sandbox,
            QualificationRequirements=[
                {
                    "QualificationTypeId": PERCENT_APPROVED,
                    "Comparator": "GreaterThanOrEqualTo",
                    "IntegerValues": [95],
                    "ActionsGuarded": "DiscoverPreviewAndAccept",
                }
            ],
        ),
        "accept_only": create(
            sandbox,
            QualificationRequirements=[
                {
                    "QualificationTypeId": PERCENT_APPROVED,
                    "Comparator": "GreaterThanOrEqualTo",
                    "IntegerValues": [95],
                }
            ],
        ),
        "other_type": create(sandbox, Title="Another kind of HIT", MaxAssignments=1),
    }
    work(sandbox, hits["short_pending"], "AGOOD1", submit=False)
    work(sandbox, hits["full"], "AW1", submit=False)
    rejected = work(sandbox, hits["partly"], "AW1")
    sandbox.call(
        "RejectAssignment", {"AssignmentId": rejected, "RequesterFeedback": "no"}, "request"
    )
    work(sandbox, hits["partly"], "AW2")
    work(sandbox, hits["reviewable"], "AW1")
    approved = work(sandbox, hits["reviewing"], "AW2")
    sandbox.call("ApproveAssignment", {"AssignmentId": approved}, "request")
    sandbox.call("UpdateHITReviewStatus", {"HITId": hits["reviewing"]}, "request")
    done = work(sandbox, hits["disposed"], "AW3")
    sandbox.call("ApproveAssignment", {"AssignmentId": done}, "request")
    sandbox.call("DeleteHIT", {"HITId": hits["disposed"]}, "request")
    work(sandbox, hits["other_type"], "AW3")
    clock.now += 120  # the two short HITs expire; one has an assignment still being worked on
    return hits


# --- what the sandbox showed when it derived every view from the documents ---------------------


def view_from_documents(sandbox: Sandbox, hit: dict[str, Any]) -> dict[str, Any]:
    """A HIT's view as version 1 built it: counted from every assignment document."""
    now = sandbox.now()
    assignments = sandbox.store.assignments_for_hit(hit["HITId"])
    pending = sum(a["AssignmentStatus"] == "Accepted" for a in assignments)
    completed = sum(a["AssignmentStatus"] in ("Approved", "Rejected") for a in assignments)
    remaining = max(0, hit["MaxAssignments"] - len(assignments))
    expired = now >= hit["Expiration"]
    if hit.get("Disposed"):
        status = "Disposed"
    elif not expired and remaining > 0:
        status = "Assignable"
    elif pending > 0:
        status = "Unassignable"
    else:
        status = "Reviewing" if hit.get("Reviewing") else "Reviewable"
    view = {k: v for k, v in hit.items() if k not in ("Disposed", "Reviewing")}
    view.update(
        HITStatus=status,
        NumberOfAssignmentsPending=pending,
        NumberOfAssignmentsAvailable=0 if expired or hit.get("Disposed") else remaining,
        NumberOfAssignmentsCompleted=completed,
    )
    return view


def assignable_from_documents(sandbox: Sandbox, worker_id: str | None) -> list[dict[str, Any]]:
    worker = sandbox.worker(worker_id) if worker_id else None
    found = []
    for hit in sandbox.store.hits():
        view = view_from_documents(sandbox, hit)
        if view["HITStatus"] != "Assignable":
            continue
        if worker is not None:
            if sandbox.qualifies(worker, hit, "Discover"):
                continue
            if any(
                a["WorkerId"] == worker["WorkerId"]
                for a in sandbox.store.assignments_for_hit(hit["HITId"])
            ):
                continue
        found.append(view)
    return found


def every_page(sandbox: Sandbox, operation: str, **params: Any) -> list[dict[str, Any]]:
    found, token = [], None
    while True:
        page = sandbox.call(
            operation, {**params, **({"NextToken": token} if token else {})}, "request"
        )
        assert page["NumResults"] == len(page["HITs"])
        found += page["HITs"]
        token = page["NextToken"]
        if not token:
            return found


def listings(sandbox: Sandbox) -> dict[str, Any]:
    """Everything the listings show, each way of asking once."""
    hit_type = sandbox.store.hits()[0]["HITTypeId"]
    return {
        "ListHITs": every_page(sandbox, "ListHITs", MaxResults=4),
        "ListHITs(100)": every_page(sandbox, "ListHITs", MaxResults=100),
        "Reviewable": every_page(sandbox, "ListReviewableHITs", MaxResults=2),
        "Reviewing": every_page(sandbox, "ListReviewableHITs", Status="Reviewing"),
        "Reviewable of a type": every_page(sandbox, "ListReviewableHITs", HITTypeId=hit_type),
        **{
            f"assignable to {worker}": sandbox.assignable_hits(worker)
            for worker in (None, "AGOOD1", "ALOW1", "AW1", "AW2", "ANEW1")
        },
        "GetHIT": [
            sandbox.call("GetHIT", {"HITId": h["HITId"]}, "request")["HIT"]
            for h in sandbox.store.hits()
        ],
    }


def test_listings_equal_the_views_derived_from_every_document(tmp_path):
    clock = Clock()
    sandbox = open_sandbox(tmp_path / "state.sqlite", clock)
    hits = mixed_state(sandbox, clock)

    listed = listings(sandbox)

    every_view = [view_from_documents(sandbox, h) for h in sandbox.store.hits()]
    assert listed["GetHIT"] == every_view
    assert listed["ListHITs"] == [v for v in every_view if v["HITStatus"] != "Disposed"]
    assert listed["ListHITs(100)"] == listed["ListHITs"]
    for wanted in ("Reviewable", "Reviewing"):
        assert listed[wanted] == [v for v in every_view if v["HITStatus"] == wanted]
    hit_type = every_view[0]["HITTypeId"]
    assert listed["Reviewable of a type"] == [
        v for v in every_view if v["HITStatus"] == "Reviewable" and v["HITTypeId"] == hit_type
    ]
    for worker in (None, "AGOOD1", "ALOW1", "AW1", "AW2", "ANEW1"):
        assert listed[f"assignable to {worker}"] == assignable_from_documents(sandbox, worker)
    # The mixed state has what the comparison needs to mean something.
    statuses = {v["HITId"]: v["HITStatus"] for v in every_view}
    assert statuses[hits["short"]] == "Reviewable"
    assert statuses[hits["short_pending"]] == "Unassignable"
    assert statuses[hits["full"]] == "Unassignable"
    assert statuses[hits["reviewable"]] == "Reviewable"
    assert statuses[hits["reviewing"]] == "Reviewing"
    assert statuses[hits["disposed"]] == "Disposed"
    assert statuses[hits["open"]] == "Assignable"
    to_low = {v["HITId"] for v in listed["assignable to ALOW1"]}
    assert hits["picky"] not in to_low and hits["accept_only"] in to_low
    to_aw1 = {v["HITId"] for v in listed["assignable to AW1"]}
    assert hits["partly"] not in to_aw1 and hits["partly"] in {
        v["HITId"] for v in listed["assignable to ANEW1"]
    }


def test_a_forged_negative_list_offset_pages_as_a_python_slice_as_before(tmp_path):
    sandbox = open_sandbox(tmp_path / "state.sqlite", Clock())
    created = [create(sandbox) for _ in range(5)]
    token = base64.urlsafe_b64encode(json.dumps({"o": -3, "s": "ListHITs"}).encode()).decode()

    page = sandbox.call("ListHITs", {"MaxResults": 10, "NextToken": token}, "request")

    assert [h["HITId"] for h in page["HITs"]] == created[-3 : 10 - 3]
    assert page["NextToken"] is None  # as the slice's end, -3 + 10, is past the 5 HITs


def counting_documents(monkeypatch) -> list[int]:
    """Count the documents the store parses, call by call."""
    parsed: list[int] = []
    docs = Store.docs

    def counted(self: Store, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        found = docs(self, sql, args)
        parsed.append(len(found))
        return found

    monkeypatch.setattr(Store, "docs", counted)
    return parsed


def test_time_acts_on_due_assignments_only_and_reads_no_other(tmp_path, monkeypatch):
    clock = Clock()
    sandbox = open_sandbox(tmp_path / "state.sqlite", clock)
    slow = create(sandbox, MaxAssignments=200, AssignmentDurationInSeconds=3600)
    fast = create(sandbox, MaxAssignments=200, AssignmentDurationInSeconds=60)
    quick = create(sandbox, MaxAssignments=200, AutoApprovalDelayInSeconds=30)
    kept = [work(sandbox, slow, f"AK{n}", submit=n % 2 == 0) for n in range(150)]
    abandoned = [work(sandbox, fast, f"AB{n}", submit=False) for n in range(7)]
    approved = [work(sandbox, quick, f"AQ{n}") for n in range(5)]
    balance = sandbox.call("GetAccountBalance", {}, "request")["AvailableBalance"]
    ledger = len(sandbox.store.ledger())
    clock.now += 120
    parsed = counting_documents(monkeypatch)

    with sandbox.store.transaction():
        sandbox._refresh()

    assert sum(parsed) == len(abandoned) + len(approved) + len(approved)  # + each one's HIT
    assert all(sandbox.store.assignment(a) is None for a in abandoned)
    assert [sandbox.store.assignment(a)["AssignmentStatus"] for a in approved] == ["Approved"] * 5
    assert [sandbox.store.assignment(a)["AssignmentStatus"] for a in kept] == [
        "Submitted" if n % 2 == 0 else "Accepted" for n in range(150)
    ]
    entries = sandbox.store.ledger()[ledger:]
    assert [e.get("AssignmentId") for e in entries] == abandoned + approved
    charged = sum(e.get("Charged", 0) for e in entries)
    after = sandbox.call("GetAccountBalance", {}, "request")
    assert charged == 5 * 14  # $0.10 reward, 20 % fee and 20 % more for 10+ assignments
    assert after["AvailableBalance"] == balance  # paid from the HIT's hold
    # 3 x 200 slots held at 0.14; an abandoned one is free again (its HIT has not expired)
    assert round(float(after["OnHoldBalance"]) * 100) == 3 * 200 * 14 - charged

    parsed.clear()
    with sandbox.store.transaction():
        sandbox._refresh()
    assert sum(parsed) == 0  # nothing left that time has changed


def downgrade_to_version_1(source: Path, target: Path) -> None:
    """Write ``target`` as version 1 would have: its tables, the same rows, no new column."""
    old = sqlite3.connect(target)
    old.executescript(VERSION_1_SCHEMA)
    old.execute("ATTACH DATABASE ? AS current", (str(source),))
    for table, columns in VERSION_1_COLUMNS.items():
        old.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM current.{table}")
    old.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    old.commit()
    old.close()


def table_rows(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(path)
    rows = {
        table: db.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
        for table, columns in VERSION_1_COLUMNS.items()
    }
    rows["hits columns"] = db.execute(
        "SELECT seq, expiration, max_assignments, disposed, reviewing FROM hits ORDER BY seq"
    ).fetchall()
    rows["assignments columns"] = db.execute(
        "SELECT seq, status, due FROM assignments ORDER BY seq"
    ).fetchall()
    db.close()
    return rows


def test_a_version_1_state_file_is_migrated_in_place_and_loses_nothing(tmp_path):
    clock = Clock()
    current_path, old_path = tmp_path / "current.sqlite", tmp_path / "old.sqlite"
    current = open_sandbox(current_path, clock)
    mixed_state(current, clock)
    current.advance_clock(5)  # a clock offset is part of the state, too
    current.store.close()
    downgrade_to_version_1(current_path, old_path)

    migrated = open_sandbox(old_path, clock)
    current = open_sandbox(current_path, clock)

    assert migrated.store.meta("schema_version") == str(store_module.SCHEMA_VERSION) == "2"
    assert table_rows(old_path) == table_rows(current_path)
    assert listings(migrated) == listings(current)
    # Time goes on acting on the migrated file as on the current one.
    for sandbox in (migrated, current):
        sandbox.advance_clock(DAY + 700)
    assert listings(migrated) == listings(current)
    assert migrated.store.ledger()[-4:] == current.store.ledger()[-4:]
    assert migrated.call("GetAccountBalance", {}, "request") == current.call(
        "GetAccountBalance", {}, "request"
    )
    migrated.store.close()
    assert Store(old_path).meta("schema_version") == "2"  # reopening migrates nothing again


def test_a_failed_migration_leaves_the_version_1_file_as_it_was(tmp_path, monkeypatch):
    clock = Clock()
    current_path, old_path = tmp_path / "current.sqlite", tmp_path / "old.sqlite"
    current = open_sandbox(current_path, clock)
    create(current)
    current.store.close()
    downgrade_to_version_1(current_path, old_path)
    before = sqlite3.connect(old_path).execute("SELECT sql FROM sqlite_master").fetchall()

    def broken(hit: dict[str, Any]) -> tuple:
        raise KeyError("Expiration")

    monkeypatch.setattr(store_module, "_hit_columns", broken)
    with pytest.raises(KeyError):
        Store(old_path)

    db = sqlite3.connect(old_path)
    assert db.execute("SELECT sql FROM sqlite_master").fetchall() == before
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)


def test_a_state_file_of_a_later_version_is_refused(tmp_path):
    path = tmp_path / "state.sqlite"
    Store(path).set_meta("schema_version", "3")

    with pytest.raises(RuntimeError, match="version 3.*Use a new --state file"):
        Store(path)
