"""The sandbox's state in one SQLite file: every HIT, assignment, answer, payment, hold of
funds, e-mail, qualification, worker block, notification setting, notification not yet sent and
request token, so a restart on the same file loses nothing.

Each kind of record is a JSON document in its own table, with the columns the queries filter on.
Every API call runs in one transaction (``Store.transaction``): its side effects and the
request token that guards them commit together or not at all.

The hot queries read columns and indexes, never documents, to decide which records they need:
a HIT's expiration, maximum assignments and flags (``_hit_columns``), an assignment's status and
``due``, the time the sandbox must act on it (``_assignment_columns``). So the work of a call
grows with what it returns, not with the whole state: the sandbox refreshes only the assignments
that are due, and lists a page or a worker's HITs without reading every HIT and assignment.
``put_hit`` and ``put_assignment`` write the columns with the document; a version 1 file gets
them from its documents when it is opened (``_migrate_from_1``). Tables added since
(``_ADDED_TABLES``) are created in the opening transaction, so any file of version 1 or 2 gets
them when it is opened; an older sandbox that opens the file does not read them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

log = logging.getLogger(__name__)

# SQLite's default limit on a statement's parameters (SQLITE_MAX_VARIABLE_NUMBER before 3.32).
_MAX_SQL_ARGS = 999

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hit_types (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, hit_type_id TEXT NOT NULL,
    doc TEXT NOT NULL, expiration REAL NOT NULL, max_assignments INTEGER NOT NULL,
    disposed INTEGER NOT NULL, reviewing INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, hit_id TEXT NOT NULL,
    worker_id TEXT NOT NULL, doc TEXT NOT NULL, status TEXT NOT NULL, due REAL);
CREATE INDEX IF NOT EXISTS assignments_worker ON assignments (worker_id);
CREATE TABLE IF NOT EXISTS bonuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, assignment_id TEXT NOT NULL, hit_id TEXT NOT NULL,
    worker_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, worker_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS qualification_types (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, name TEXT UNIQUE NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS qualifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, type_id TEXT NOT NULL, worker_id TEXT NOT NULL,
    doc TEXT NOT NULL, UNIQUE (type_id, worker_id));
CREATE TABLE IF NOT EXISTS tokens (
    operation TEXT NOT NULL, token TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (operation, token));
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, doc TEXT NOT NULL);
"""

# Tables added after version 2: created in the opening transaction (the script above commits on
# its own), so a file that fails to open stays as it was. worker_blocks: CreateWorkerBlock's
# blocks, one per worker, listed in the order they were first made. notification_settings: each
# HIT type's UpdateNotificationSettings (its Notification and Active). notification_outbox: the
# notification messages written with the changes they report and sent once those committed
# (``attempts``, ``next_attempt`` and ``error`` after a failed send; ``failed`` once given up).
# notification_hit_status: the status each HIT of a notified HIT type was last seen in, to tell
# when it becomes Reviewable.
_ADDED_TABLES = (
    "CREATE TABLE IF NOT EXISTS worker_blocks ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, worker_id TEXT UNIQUE NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notification_settings ("
    "hit_type_id TEXT PRIMARY KEY, active INTEGER NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notification_outbox ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, body TEXT NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, error TEXT, "
    "failed INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS notification_hit_status ("
    "hit_id TEXT PRIMARY KEY, status TEXT NOT NULL)",
    # The messages still to send, without the given-up ones: a call's look at the outbox does
    # not grow with the messages that could never be sent.
    "CREATE INDEX IF NOT EXISTS notification_outbox_pending ON notification_outbox (seq) "
    "WHERE failed = 0",
    # Workers' requests for qualifications (``operations/qualifications.py``): a test taken
    # (Started, then Granted, Submitted for review, Expired), then Approved or Rejected.
    "CREATE TABLE IF NOT EXISTS qualification_requests ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, type_id TEXT NOT NULL, "
    "worker_id TEXT NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS qualification_requests_worker ON qualification_requests "
    "(type_id, worker_id)",
    "CREATE INDEX IF NOT EXISTS qualification_requests_status ON qualification_requests "
    "(status, type_id)",
    # The funds held for each HIT's assignment liability (``core.SandboxCore._rehold``): what
    # one approved assignment costs (``slot_cost``) and what the HIT holds now (``cents``); the
    # sum of ``cents`` is kept in the meta row ``held_cents``.
    "CREATE TABLE IF NOT EXISTS holds ("
    "hit_id TEXT PRIMARY KEY, slot_cost INTEGER NOT NULL, cents INTEGER NOT NULL)",
)

# Created after any migration (a version 1 file has not got the columns before it).
# hits_state covers what a listing filters on, so a listing reads a HIT's document (with its
# large Question) only when the HIT is on the page; assignments_hit_status covers the
# per-HIT counts; assignments_due holds only the assignments time can still change.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS hits_state ON hits "
    "(disposed, seq, expiration, max_assignments, reviewing, hit_type_id, id)",
    "CREATE INDEX IF NOT EXISTS assignments_hit_status ON assignments (hit_id, status)",
    "CREATE INDEX IF NOT EXISTS assignments_due ON assignments (due) WHERE due IS NOT NULL",
    # HITs by expiration, for the HITExpired notifications: a range of it reads no document.
    "CREATE INDEX IF NOT EXISTS hits_expiration ON hits (expiration, disposed, hit_type_id, id)",
)

# Every HIT with its assignment counts, from indexes only: no document is read (a scan of the
# table itself would read every document, as the columns added by a migration follow it).
_HIT_STATES = """
SELECT h.seq, h.id, h.hit_type_id, h.expiration, h.max_assignments, h.disposed, h.reviewing,
       ifnull(c.assigned, 0), ifnull(c.pending, 0), ifnull(c.completed, 0)
FROM hits AS h INDEXED BY hits_state LEFT JOIN (
    SELECT hit_id, count(*) AS assigned, sum(status = 'Accepted') AS pending,
           sum(status IN ('Approved', 'Rejected')) AS completed
    FROM assignments GROUP BY hit_id) AS c ON c.hit_id = h.id
"""


@dataclass(frozen=True)
class AssignmentCounts:
    """A HIT's assignments: all of them (every status), accepted ones, approved or rejected."""

    assigned: int = 0
    pending: int = 0
    completed: int = 0


@dataclass(frozen=True)
class Hold:
    """A HIT's state as its held funds depend on it, what one approved assignment costs and
    what the HIT holds now (cents)."""

    expiration: float
    max_assignments: int
    disposed: bool
    counts: AssignmentCounts
    slot_cost: int
    cents: int


@dataclass(frozen=True)
class OutboxMessage:
    """A notification message waiting in ``notification_outbox`` to be sent."""

    seq: int
    destination: str
    body: str
    attempts: int


@dataclass(frozen=True)
class HITState:
    """What a HIT's status is derived from, read from columns instead of its document."""

    seq: int
    hit_id: str
    hit_type_id: str
    expiration: float
    max_assignments: int
    disposed: bool
    reviewing: bool
    counts: AssignmentCounts

    @classmethod
    def from_row(cls, row: tuple) -> HITState:
        seq, hit_id, hit_type_id, expiration, max_assignments, disposed, reviewing = row[:7]
        return cls(
            seq,
            hit_id,
            hit_type_id,
            expiration,
            max_assignments,
            bool(disposed),
            bool(reviewing),
            AssignmentCounts(*row[7:10]),
        )


class Store:
    """A thread-safe handle on the state file (one connection, one lock, WAL journal)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._depth = 0
        with self.transaction():
            found = self.meta("schema_version")
            if found == "1":
                self._migrate_from_1()
            elif found is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif found != str(SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path} holds crowd sandbox state version {found}; this sandbox "
                    f"reads versions 1 and {SCHEMA_VERSION}. Use a new --state file."
                )
            for statement in (*_ADDED_TABLES, *_INDEXES):
                self._db.execute(statement)

    def _migrate_from_1(self) -> None:
        """Give a version 1 file the columns of version 2, filled from its documents.

        Runs in the opening transaction: if anything fails the file stays as it was. The values
        come from the documents through the same functions the writes use (``_hit_columns``,
        ``_assignment_columns``), so a migrated file holds exactly what a new one would.
        """
        started = time.monotonic()
        db = self._db
        for column in (
            "expiration REAL NOT NULL DEFAULT 0",
            "max_assignments INTEGER NOT NULL DEFAULT 0",
            "disposed INTEGER NOT NULL DEFAULT 0",
            "reviewing INTEGER NOT NULL DEFAULT 0",
        ):
            db.execute(f"ALTER TABLE hits ADD COLUMN {column}")
        db.execute("ALTER TABLE assignments ADD COLUMN status TEXT NOT NULL DEFAULT ''")
        db.execute("ALTER TABLE assignments ADD COLUMN due REAL")
        db.execute("DROP INDEX IF EXISTS assignments_hit")  # assignments_hit_status covers it
        hits = db.execute("SELECT seq, doc FROM hits").fetchall()
        db.executemany(
            "UPDATE hits SET expiration = ?, max_assignments = ?, disposed = ?, reviewing = ? "
            "WHERE seq = ?",
            [(*_hit_columns(json.loads(doc)), seq) for seq, doc in hits],
        )
        assignments = db.execute("SELECT seq, doc FROM assignments").fetchall()
        db.executemany(
            "UPDATE assignments SET status = ?, due = ? WHERE seq = ?",
            [(*_assignment_columns(json.loads(doc)), seq) for seq, doc in assignments],
        )
        self.set_meta("schema_version", str(SCHEMA_VERSION))
        log.info(
            "%s: state version 1 -> %d: %d HITs, %d assignments in %.2f s",
            self.path,
            SCHEMA_VERSION,
            len(hits),
            len(assignments),
            time.monotonic() - started,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Generator[Store]:
        """Run a block atomically; nested blocks join the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    # --- generic documents ------------------------------------------------------------------

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def docs(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(row[0]) for row in self._db.execute(sql, args).fetchall()]

    def doc(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        found = self.docs(sql, args)
        return found[0] if found else None

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- typed helpers ----------------------------------------------------------------------

    def held(self) -> int:
        """The funds held for every HIT's assignment liability, in cents."""
        return int(self.meta("held_cents") or 0)

    def put_slot_cost(self, hit_id: str, slot_cost: int) -> None:
        """Record what one approved assignment of a HIT costs (its hold's unit)."""
        self.execute(
            "INSERT INTO holds (hit_id, slot_cost, cents) VALUES (?, ?, 0) "
            "ON CONFLICT (hit_id) DO UPDATE SET slot_cost = excluded.slot_cost",
            (hit_id, slot_cost),
        )

    def hold(self, hit_id: str) -> Hold:
        """What a HIT's hold is worked out from, read from columns (no document)."""
        with self._lock:
            row = self._db.execute(
                "SELECT h.expiration, h.max_assignments, h.disposed, d.slot_cost, d.cents "
                "FROM hits AS h JOIN holds AS d ON d.hit_id = h.id WHERE h.id = ?",
                (hit_id,),
            ).fetchone()
        expiration, max_assignments, disposed, slot_cost, cents = row
        return Hold(
            expiration,
            max_assignments,
            bool(disposed),
            self.assignment_counts(hit_id),
            slot_cost,
            cents,
        )

    def set_hold(self, hit_id: str, cents: int) -> int:
        """Hold ``cents`` for a HIT instead of what it held; keep the total; return the change."""
        with self._lock:
            (before,) = self._db.execute(
                "SELECT cents FROM holds WHERE hit_id = ?", (hit_id,)
            ).fetchone()
            if cents == before:
                return 0
            self.execute("UPDATE holds SET cents = ? WHERE hit_id = ?", (cents, hit_id))
            self.set_meta("held_cents", str(self.held() + cents - before))
            return cents - before

    def reset_holds(self) -> list[str]:
        """Hold nothing (to work every hold out again); return the HITs without a slot cost."""
        self.execute("DELETE FROM holds WHERE hit_id NOT IN (SELECT id FROM hits)")
        self.execute("UPDATE holds SET cents = 0")
        self.set_meta("held_cents", "0")
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM hits WHERE id NOT IN (SELECT hit_id FROM holds) ORDER BY seq"
            ).fetchall()
        return [hit_id for (hit_id,) in rows]

    def hit_ids(self) -> list[str]:
        with self._lock:
            return [hit_id for (hit_id,) in self._db.execute("SELECT id FROM hits ORDER BY seq")]

    def holds(self) -> dict[str, int]:
        """What each HIT holding funds holds, in cents."""
        with self._lock:
            return dict(self._db.execute("SELECT hit_id, cents FROM holds WHERE cents").fetchall())

    def put_hit(self, hit: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO hits (id, hit_type_id, doc, expiration, max_assignments, disposed, "
            "reviewing) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, expiration = excluded.expiration, "
            "max_assignments = excluded.max_assignments, disposed = excluded.disposed, "
            "reviewing = excluded.reviewing",
            (hit["HITId"], hit["HITTypeId"], _dump(hit), *_hit_columns(hit)),
        )

    def hit(self, hit_id: str) -> dict[str, Any] | None:
        return self.doc("SELECT doc FROM hits WHERE id = ?", (hit_id,))

    def hit_type(self, hit_type_id: str) -> dict[str, Any] | None:
        return self.doc("SELECT doc FROM hit_types WHERE id = ?", (hit_type_id,))

    def hits_expired(self, after: float, until: float) -> list[tuple[str, str, float]]:
        """The HITs not disposed of whose expiration is in (``after``, ``until``], as
        ``(HITId, HITTypeId, Expiration)``, by expiration (from an index: no document)."""
        with self._lock:
            return self._db.execute(
                "SELECT id, hit_type_id, expiration FROM hits INDEXED BY hits_expiration "
                "WHERE expiration > ? AND expiration <= ? AND disposed = 0 ORDER BY expiration",
                (after, until),
            ).fetchall()

    def hits(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM hits ORDER BY seq")

    def hits_by_seq(self, seqs: list[int]) -> list[dict[str, Any]]:
        """The documents of these HITs (``HITState.seq``), in the order given."""
        found: dict[int, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(seqs), _MAX_SQL_ARGS):
                chunk = seqs[start : start + _MAX_SQL_ARGS]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT seq, doc FROM hits WHERE seq IN ({marks})", tuple(chunk)
                ).fetchall()
                found.update((seq, json.loads(doc)) for seq, doc in rows)
        return [found[seq] for seq in seqs]

    def listed_hits(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """A page of the HITs not disposed of, oldest first; and whether more follow it."""
        docs = self.docs(
            "SELECT doc FROM hits WHERE seq IN (SELECT seq FROM hits WHERE disposed = 0 "
            "ORDER BY seq LIMIT ? OFFSET ?) ORDER BY seq",
            (limit + 1, offset),
        )
        return docs[:limit], len(docs) > limit

    def hit_states(self) -> list[HITState]:
        """Every HIT's state and assignment counts, oldest first (no document is read)."""
        with self._lock:
            rows = self._db.execute(_HIT_STATES + " ORDER BY h.seq").fetchall()
        return [HITState.from_row(row) for row in rows]

    def open_hit_states(self, now: float, worker_id: str | None = None) -> list[HITState]:
        """The HITs with a free assignment at ``now`` (not disposed of, not expired, fewer
        assignments than ``MaxAssignments``), oldest first; with ``worker_id``, only those the
        worker has no assignment of (in any status)."""
        sql = (
            _HIT_STATES + " WHERE h.disposed = 0 AND h.expiration > ? "
            "AND h.max_assignments > ifnull(c.assigned, 0)"
        )
        args: tuple = (now,)
        if worker_id is not None:
            sql += " AND h.id NOT IN (SELECT hit_id FROM assignments WHERE worker_id = ?)"
            args += (worker_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY h.seq", args).fetchall()
        return [HITState.from_row(row) for row in rows]

    def assignment_counts(self, hit_id: str) -> AssignmentCounts:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*), ifnull(sum(status = 'Accepted'), 0), "
                "ifnull(sum(status IN ('Approved', 'Rejected')), 0) "
                "FROM assignments WHERE hit_id = ?",
                (hit_id,),
            ).fetchone()
        return AssignmentCounts(*row)

    def put_assignment(self, assignment: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO assignments (id, hit_id, worker_id, doc, status, due) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, status = excluded.status, "
            "due = excluded.due",
            (
                assignment["AssignmentId"],
                assignment["HITId"],
                assignment["WorkerId"],
                _dump(assignment),
                *_assignment_columns(assignment),
            ),
        )

    def delete_assignment(self, assignment_id: str) -> None:
        self.execute("DELETE FROM assignments WHERE id = ?", (assignment_id,))

    def assignment(self, assignment_id: str) -> dict[str, Any] | None:
        return self.doc("SELECT doc FROM assignments WHERE id = ?", (assignment_id,))

    def assignments_for_hit(self, hit_id: str) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM assignments WHERE hit_id = ? ORDER BY seq", (hit_id,))

    def assignments_for_worker(self, worker_id: str) -> list[dict[str, Any]]:
        return self.docs(
            "SELECT doc FROM assignments WHERE worker_id = ? ORDER BY seq", (worker_id,)
        )

    def due_assignments(self, now: float) -> list[dict[str, Any]]:
        """The assignments time has acted on by ``now``: accepted ones past their deadline,
        submitted ones past their auto-approval time; oldest first."""
        return self.docs(
            "SELECT doc FROM assignments WHERE seq IN "
            "(SELECT seq FROM assignments INDEXED BY assignments_due WHERE due <= ?) ORDER BY seq",
            (now,),
        )

    def add_bonus(self, bonus: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO bonuses (assignment_id, hit_id, worker_id, doc) VALUES (?, ?, ?, ?)",
            (bonus["AssignmentId"], bonus["HITId"], bonus["WorkerId"], _dump(bonus)),
        )

    def bonuses(self, *, hit_id: str | None = None, assignment_id: str | None = None) -> list:
        if assignment_id is not None:
            sql, args = "SELECT doc FROM bonuses WHERE assignment_id = ?", (assignment_id,)
        elif hit_id is not None:
            sql, args = "SELECT doc FROM bonuses WHERE hit_id = ?", (hit_id,)
        else:
            sql, args = "SELECT doc FROM bonuses", ()
        return self.docs(sql + " ORDER BY seq", args)

    def add_message(self, message: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO messages (worker_id, doc) VALUES (?, ?)",
            (message["WorkerId"], _dump(message)),
        )

    def messages(self, worker_id: str | None = None) -> list[dict[str, Any]]:
        if worker_id is None:
            return self.docs("SELECT doc FROM messages ORDER BY seq")
        return self.docs("SELECT doc FROM messages WHERE worker_id = ? ORDER BY seq", (worker_id,))

    def put_token(self, operation: str, token: str, created: float, doc: dict) -> None:
        self.execute(
            "INSERT OR REPLACE INTO tokens (operation, token, created, doc) VALUES (?, ?, ?, ?)",
            (operation, token, created, _dump(doc)),
        )

    def token(self, operation: str, token: str, not_before: float) -> dict[str, Any] | None:
        return self.doc(
            "SELECT doc FROM tokens WHERE operation = ? AND token = ? AND created >= ?",
            (operation, token, not_before),
        )

    def put_worker(self, worker: dict[str, Any]) -> None:
        self.execute(
            "INSERT OR REPLACE INTO workers (id, doc) VALUES (?, ?)",
            (worker["WorkerId"], _dump(worker)),
        )

    def worker(self, worker_id: str) -> dict[str, Any] | None:
        return self.doc("SELECT doc FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM workers ORDER BY id")

    def put_worker_block(self, block: dict[str, Any]) -> None:
        """Block a worker (``WorkerId``, ``Reason``); a block made again keeps its place."""
        self.execute(
            "INSERT INTO worker_blocks (worker_id, doc) VALUES (?, ?) "
            "ON CONFLICT (worker_id) DO UPDATE SET doc = excluded.doc",
            (block["WorkerId"], _dump(block)),
        )

    def delete_worker_block(self, worker_id: str) -> None:
        self.execute("DELETE FROM worker_blocks WHERE worker_id = ?", (worker_id,))

    def worker_block(self, worker_id: str) -> dict[str, Any] | None:
        return self.doc("SELECT doc FROM worker_blocks WHERE worker_id = ?", (worker_id,))

    def worker_blocks(self) -> list[dict[str, Any]]:
        """Every block, in the order the workers were blocked."""
        return self.docs("SELECT doc FROM worker_blocks ORDER BY seq")

    def count_worker_blocks(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM worker_blocks").fetchone()[0]

    def put_notification_setting(self, setting: dict[str, Any]) -> None:
        """A HIT type's notification setting: ``HITTypeId``, ``Notification``, ``Active``."""
        self.execute(
            "INSERT OR REPLACE INTO notification_settings (hit_type_id, active, doc) "
            "VALUES (?, ?, ?)",
            (setting["HITTypeId"], int(setting["Active"]), _dump(setting)),
        )

    def notification_setting(self, hit_type_id: str) -> dict[str, Any] | None:
        return self.doc(
            "SELECT doc FROM notification_settings WHERE hit_type_id = ?", (hit_type_id,)
        )

    def active_notification_settings(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM notification_settings WHERE active = 1")

    def add_outbox(self, destination: str, body: str) -> None:
        self.execute(
            "INSERT INTO notification_outbox (destination, body) VALUES (?, ?)",
            (destination, body),
        )

    def due_outbox(self, now: float, after: int, limit: int) -> list[OutboxMessage]:
        """The oldest messages after ``after`` (a ``seq``), not given up, whose next attempt is
        due at ``now``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, destination, body, attempts FROM notification_outbox "
                "WHERE seq > ? AND failed = 0 AND next_attempt <= ? ORDER BY seq LIMIT ?",
                (after, now, limit),
            ).fetchall()
        return [OutboxMessage(*row) for row in rows]

    def outbox_waiting(self) -> bool:
        """Whether any message is still to be sent (now or after a failed attempt)."""
        with self._lock:
            row = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM notification_outbox WHERE failed = 0)"
            ).fetchone()
        return bool(row[0])

    def delete_outbox(self, seq: int) -> None:
        self.execute("DELETE FROM notification_outbox WHERE seq = ?", (seq,))

    def defer_outbox(
        self, seq: int, *, attempts: int, next_attempt: float, error: str, failed: bool
    ) -> None:
        """Record a failed attempt: try again at ``next_attempt``, or never (``failed``)."""
        self.execute(
            "UPDATE notification_outbox SET attempts = ?, next_attempt = ?, error = ?, "
            "failed = ? WHERE seq = ?",
            (attempts, next_attempt, error, int(failed), seq),
        )

    def outbox(self) -> list[dict[str, Any]]:
        """Every message still in the outbox (waiting or given up), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT destination, body, attempts, error, failed FROM notification_outbox "
                "ORDER BY seq"
            ).fetchall()
        keys = ("Destination", "Body", "Attempts", "Error", "Failed")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def notice_statuses(self, hit_ids: list[str]) -> dict[str, str]:
        """The status each of these HITs was last seen in for notifications (if it was)."""
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(hit_ids), _MAX_SQL_ARGS):
                chunk = hit_ids[start : start + _MAX_SQL_ARGS]
                marks = ",".join("?" * len(chunk))
                found.update(
                    self._db.execute(
                        "SELECT hit_id, status FROM notification_hit_status "
                        f"WHERE hit_id IN ({marks})",
                        tuple(chunk),
                    ).fetchall()
                )
        return found

    def put_notice_status(self, hit_id: str, status: str) -> None:
        self.execute(
            "INSERT OR REPLACE INTO notification_hit_status (hit_id, status) VALUES (?, ?)",
            (hit_id, status),
        )

    def add_ledger(self, kind: str, entry: dict[str, Any]) -> None:
        self.execute("INSERT INTO ledger (kind, doc) VALUES (?, ?)", (kind, _dump(entry)))

    def ledger(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM ledger ORDER BY seq")


def _hit_columns(hit: dict[str, Any]) -> tuple[float, int, int, int]:
    """The columns of ``hits`` that hold a HIT's document's fields."""
    return (
        hit["Expiration"],
        hit["MaxAssignments"],
        int(bool(hit.get("Disposed"))),
        int(bool(hit.get("Reviewing"))),
    )


def _assignment_columns(assignment: dict[str, Any]) -> tuple[str, float | None]:
    """An assignment's status and when time acts on it: an accepted assignment is abandoned at
    its Deadline, a submitted one approved at its AutoApprovalTime; others never change alone."""
    status = assignment["AssignmentStatus"]
    due = {"Accepted": "Deadline", "Submitted": "AutoApprovalTime"}.get(status)
    return status, assignment[due] if due else None


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
