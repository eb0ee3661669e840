"""The sandbox's state in one SQLite file: every HIT, assignment, answer, payment, e-mail,
qualification and request token, so a restart on the same file loses nothing.

Each kind of record is a JSON document in its own table, with the columns the queries filter on.
Every API call runs in one transaction (``Store.transaction``): its side effects and the
request token that guards them commit together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hit_types (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, hit_type_id TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, hit_id TEXT NOT NULL,
    worker_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS assignments_hit ON assignments (hit_id);
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
            if found is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif found != str(SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path} holds crowd sandbox state version {found}; this sandbox "
                    f"reads version {SCHEMA_VERSION}. Use a new --state file."
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

    def put_hit(self, hit: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO hits (id, hit_type_id, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (hit["HITId"], hit["HITTypeId"], _dump(hit)),
        )

    def hit(self, hit_id: str) -> dict[str, Any] | None:
        return self.doc("SELECT doc FROM hits WHERE id = ?", (hit_id,))

    def hits(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM hits ORDER BY seq")

    def put_assignment(self, assignment: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO assignments (id, hit_id, worker_id, doc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (
                assignment["AssignmentId"],
                assignment["HITId"],
                assignment["WorkerId"],
                _dump(assignment),
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

    def all_assignments(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM assignments ORDER BY seq")

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

    def add_ledger(self, kind: str, entry: dict[str, Any]) -> None:
        self.execute("INSERT INTO ledger (kind, doc) VALUES (?, ?)", (kind, _dump(entry)))

    def ledger(self) -> list[dict[str, Any]]:
        return self.docs("SELECT doc FROM ledger ORDER BY seq")


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
