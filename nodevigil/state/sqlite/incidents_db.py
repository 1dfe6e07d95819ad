"""The incidents' SQLite file: its schema, its rows as the domain's objects, and its worker.

Shared by the parts of ``SqliteIncidentStore`` (incidents, outbox, windows), each a module.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from failover.incidents.model import Outgoing
from nodevigil.core.errors import StateError
from nodevigil.state.sqlite.worker import SqliteWorker

T = TypeVar("T")

_V1 = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    cause TEXT NOT NULL DEFAULT 'provider',
    cause_note TEXT NOT NULL DEFAULT '',
    maintenance INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    resolved_at REAL,
    openings INTEGER NOT NULL DEFAULT 1,
    opened_at REAL NOT NULL,
    first_notice_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open ON incidents (service)
    WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS incidents_resolved ON incidents (resolved_at);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    author TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_incident ON updates (incident, at);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    notifier TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    summary TEXT NOT NULL,
    text TEXT NOT NULL,
    incident INTEGER,
    customer TEXT,
    step TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    claimed INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, next_at);
CREATE INDEX IF NOT EXISTS outbox_incident ON outbox (incident);
CREATE TABLE IF NOT EXISTS notifiers (
    name TEXT PRIMARY KEY,
    disabled_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS maintenance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    start REAL NOT NULL,
    end REAL NOT NULL,
    services TEXT NOT NULL,
    note TEXT NOT NULL,
    source TEXT NOT NULL,
    who TEXT NOT NULL,
    config_key TEXT UNIQUE,
    exclusion_id INTEGER,
    cancelled INTEGER NOT NULL DEFAULT 0
);
"""

# Claims carry an owner and an expiry. The process-wide flag ``claimed`` of version 1 stays,
# unused (dropping a column needs SQLite 3.35): upgrading frees what it held, as a start did.
_V2 = """
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until REAL;
"""

# The SLA ledger's outbox: what the ledger must do because of an incident's cause or a window,
# written with it. Windows that began before this version and are not excluded yet get theirs.
_V3 = """
CREATE TABLE ledger_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    services TEXT NOT NULL,
    start_at REAL NOT NULL,
    end_at REAL,
    cause TEXT NOT NULL,
    note TEXT NOT NULL,
    who TEXT NOT NULL,
    not_before REAL NOT NULL,
    incident_id INTEGER,
    window_id INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ledger_outbox_pending ON ledger_outbox (state, not_before);
CREATE INDEX ledger_outbox_window ON ledger_outbox (window_id);
INSERT INTO ledger_outbox (id, kind, services, start_at, end_at, cause, note, who, not_before,
                            window_id)
SELECT lower(hex(randomblob(16))), 'exclusion', services, start, end, 'scheduled_maintenance',
       rtrim('maintenance window ' || id || ': ' || note), who, start, id
FROM maintenance WHERE exclusion_id IS NULL AND cancelled = 0 ORDER BY start, id;
"""

# Version 1 is the schema files had before versions were counted (``user_version`` 0): its
# ``IF NOT EXISTS`` makes it a no-op on them.
STEPS = (_V1, _V2, _V3)

WINDOW_COLUMNS = "id, start, end, services, note, source, who, exclusion_id, cancelled"


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` in one write transaction, taken at once (``BEGIN IMMEDIATE``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def enqueue(conn: sqlite3.Connection, items: Iterable[Outgoing]) -> int:
    """Insert outbox rows (an id already there is left alone); how many are new."""
    rows = [
        (
            o.message.id,
            o.message.notifier,
            o.message.kind,
            o.message.subject,
            o.message.created_at,
            json.dumps(dict(o.message.data), sort_keys=True, default=str),
            o.message.summary,
            o.message.text,
            o.incident,
            o.customer,
            o.step,
            o.not_before,
            o.not_before,
        )
        for o in items
    ]
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO outbox (id, notifier, kind, subject, created_at, data, summary, "
        "text, incident, customer, step, not_before, next_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return conn.total_changes - before


class IncidentsDb:
    """The file, its worker thread and the owner this store claims outbox rows for."""

    def __init__(self, path: Path, *, owner: str = "local") -> None:
        self._db = SqliteWorker(path, synchronous="FULL")
        self.path = path
        self.owner = owner

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.call(fn)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path.name}: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one transaction on the worker."""
        return await self._call(lambda c: transaction(c, fn))
