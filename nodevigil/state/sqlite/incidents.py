"""The incidents' store (``failover.incidents.ports.IncidentStore``) in one SQLite file.

An incident's change and the notifications it causes are written in one transaction, so a
crash can never leave an opened incident whose customers will not be told. Commits use
``synchronous=FULL``: a notification written here is on disk before any attempt to send it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from failover.incidents.model import (
    Incident,
    IncidentState,
    OutboxRow,
    Outgoing,
    Update,
    Window,
)
from failover.notify.base import Message
from nodevigil.core.errors import StateError
from nodevigil.state.sqlite.worker import SqliteWorker

T = TypeVar("T")

_SCHEMA = """
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

_INCIDENT_COLUMNS = (
    "id, service, state, cause, cause_note, maintenance, started_at, resolved_at, openings, "
    "opened_at, first_notice_at"
)
_OUTBOX_COLUMNS = (
    "id, notifier, kind, subject, created_at, data, summary, text, state, not_before, next_at, "
    "attempts, last_error, delivered_at, incident, customer, step"
)
_WINDOW_COLUMNS = "id, start, end, services, note, source, who, exclusion_id, cancelled"


def _incident(row: Sequence[Any]) -> Incident:
    return Incident(
        id=row[0],
        service=row[1],
        state=IncidentState(row[2]),
        cause=row[3],
        cause_note=row[4],
        maintenance=bool(row[5]),
        started_at=row[6],
        resolved_at=row[7],
        openings=row[8],
        opened_at=row[9],
        first_notice_at=row[10],
    )


def _outbox_row(row: Sequence[Any]) -> OutboxRow:
    message = Message(
        id=row[0],
        notifier=row[1],
        kind=row[2],
        subject=row[3],
        created_at=row[4],
        data=json.loads(row[5]),
        summary=row[6],
        text=row[7],
    )
    return OutboxRow(
        message=message,
        state=row[8],
        not_before=row[9],
        next_at=row[10],
        attempts=row[11],
        last_error=row[12],
        delivered_at=row[13],
        incident=row[14],
        customer=row[15],
        step=row[16],
    )


def _window(row: Sequence[Any]) -> Window:
    return Window(
        id=row[0],
        start=row[1],
        end=row[2],
        services=tuple(json.loads(row[3])),
        note=row[4],
        source=row[5],
        who=row[6],
        exclusion_id=row[7],
        cancelled=bool(row[8]),
    )


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _enqueue(conn: sqlite3.Connection, items: Iterable[Outgoing]) -> int:
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


def _add_update(
    conn: sqlite3.Connection, incident: int, at: float, state: str, *, message: str, author: str
) -> None:
    conn.execute(
        "INSERT INTO updates (incident, at, state, message, author) VALUES (?, ?, ?, ?, ?)",
        (incident, at, state, message, author),
    )


def _get(conn: sqlite3.Connection, incident: int) -> Incident:
    row = conn.execute(
        f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident,)
    ).fetchone()
    if row is None:
        raise LookupError(f"no incident {incident}")
    return _incident(row)


class SqliteIncidentStore:
    """Incidents, their updates, maintenance windows and the outbox, on one worker thread."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteWorker(path, synchronous="FULL")
        self.path = path

    async def open(self) -> None:
        """Create the schema."""
        try:
            await self._db.call(lambda c: c.executescript(_SCHEMA))
            await self._db.call(lambda c: c.execute("PRAGMA foreign_keys=ON"))
        except sqlite3.Error as exc:
            raise StateError(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the database."""
        await asyncio.to_thread(self._db.close)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.call(fn)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path.name}: {exc}") from exc

    # --- incidents -------------------------------------------------------------------------

    async def open_incident(
        self,
        service: str,
        *,
        started_at: float,
        at: float,
        maintenance: bool,
        cause: str,
        message: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """Open a new incident, its first update and its notifications, atomically."""

        def run(conn: sqlite3.Connection) -> Incident:
            cursor = conn.execute(
                "INSERT INTO incidents (service, state, cause, maintenance, started_at, opened_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    service,
                    IncidentState.INVESTIGATING.value,
                    cause,
                    int(maintenance),
                    started_at,
                    at,
                ),
            )
            incident = _get(conn, int(cursor.lastrowid or 0))
            _add_update(
                conn, incident.id, at, incident.state.value, message=message, author="nodevigil"
            )
            _enqueue(conn, outgoing(incident))
            return incident

        return await self._call(lambda c: _transaction(c, run))

    async def reopen_incident(
        self,
        incident: int,
        *,
        at: float,
        message: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """Reopen a recently resolved incident (the service failed again soon after)."""

        def run(conn: sqlite3.Connection) -> Incident:
            conn.execute(
                "UPDATE incidents SET state = ?, resolved_at = NULL, openings = openings + 1, "
                "opened_at = ? WHERE id = ?",
                (IncidentState.INVESTIGATING.value, at, incident),
            )
            current = _get(conn, incident)
            _add_update(
                conn, incident, at, current.state.value, message=message, author="nodevigil"
            )
            _enqueue(conn, outgoing(current))
            return current

        return await self._call(lambda c: _transaction(c, run))

    async def resolve_incident(
        self,
        incident: int,
        *,
        resolved_at: float,
        at: float,
        message: str,
        author: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> tuple[Incident, int]:
        """Resolve, cancel plan steps not yet due, enqueue the resolution notices.

        Returns the incident and how many scheduled steps were cancelled.
        """

        def run(conn: sqlite3.Connection) -> tuple[Incident, int]:
            conn.execute(
                "UPDATE incidents SET state = ?, resolved_at = ? WHERE id = ?",
                (IncidentState.RESOLVED.value, resolved_at, incident),
            )
            # Only steps due after the resolution, and never one due by the incident's own
            # (re)opening: a resolution stamped earlier than the opening (a clock stepped back
            # under a process that does not keep a timeline) must not cancel the first notice.
            cancelled = conn.execute(
                "UPDATE outbox SET state = 'cancelled', last_error = 'incident resolved first' "
                "WHERE incident = ? AND state = 'pending' AND step LIKE 's%' AND not_before > "
                "MAX(?, (SELECT opened_at FROM incidents WHERE id = ?))",
                (incident, at, incident),
            ).rowcount
            current = _get(conn, incident)
            _add_update(conn, incident, at, current.state.value, message=message, author=author)
            _enqueue(conn, outgoing(current))
            return current, cancelled

        return await self._call(lambda c: _transaction(c, run))

    async def add_update(
        self,
        incident: int,
        *,
        at: float,
        state: IncidentState | None,
        message: str,
        author: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """An operator's update (and optionally a new state) with its notifications."""

        def run(conn: sqlite3.Connection) -> Incident:
            if state is not None:
                conn.execute("UPDATE incidents SET state = ? WHERE id = ?", (state.value, incident))
            current = _get(conn, incident)
            _add_update(conn, incident, at, current.state.value, message=message, author=author)
            _enqueue(conn, outgoing(current))
            return current

        return await self._call(lambda c: _transaction(c, run))

    async def set_cause(
        self, incident: int, *, cause: str, note: str, at: float, author: str
    ) -> Incident:
        """Tag the incident's cause (the ledger follows through an event)."""

        def run(conn: sqlite3.Connection) -> Incident:
            conn.execute(
                "UPDATE incidents SET cause = ?, cause_note = ? WHERE id = ?",
                (cause, note, incident),
            )
            current = _get(conn, incident)
            text = f"cause set to {cause}" + (f": {note}" if note else "")
            _add_update(conn, incident, at, current.state.value, message=text, author=author)
            return current

        return await self._call(lambda c: _transaction(c, run))

    async def get(self, incident: int) -> Incident | None:
        """One incident, or None."""

        def run(conn: sqlite3.Connection) -> Incident | None:
            try:
                return _get(conn, incident)
            except LookupError:
                return None

        return await self._call(run)

    async def incidents(
        self,
        *,
        open_only: bool = False,
        services: Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents, newest first; ``since`` keeps those open or resolved after it."""
        clauses, args = ["1=1"], list[Any]()
        if open_only:
            clauses.append("resolved_at IS NULL")
        if services is not None:
            clauses.append(f"service IN ({','.join('?' * len(services))})")
            args.extend(services)
        if since is not None:
            clauses.append("(resolved_at IS NULL OR resolved_at >= ?)")
            args.append(since)
        sql = (
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE {' AND '.join(clauses)} "
            "ORDER BY started_at DESC, id DESC LIMIT ?"
        )
        args.append(limit)
        rows = await self._call(lambda c: c.execute(sql, args).fetchall())
        return [_incident(r) for r in rows]

    async def last_resolved(self, service: str) -> Incident | None:
        """The service's most recently resolved incident."""
        row = await self._call(
            lambda c: c.execute(
                f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE service = ? "
                "AND resolved_at IS NOT NULL ORDER BY resolved_at DESC LIMIT 1",
                (service,),
            ).fetchone()
        )
        return _incident(row) if row else None

    async def updates(self, incident: int) -> list[Update]:
        """The incident's timeline of updates, oldest first."""
        rows = await self._call(
            lambda c: c.execute(
                "SELECT id, incident, at, state, message, author FROM updates "
                "WHERE incident = ? ORDER BY at, id",
                (incident,),
            ).fetchall()
        )
        return [Update(r[0], r[1], r[2], IncidentState(r[3]), r[4], r[5]) for r in rows]

    async def record_first_notice(self, incident: int, at: float) -> Incident | None:
        """Note the first customer notice delivered; the incident when this was the first."""

        def run(conn: sqlite3.Connection) -> Incident | None:
            changed = conn.execute(
                "UPDATE incidents SET first_notice_at = ? WHERE id = ? AND first_notice_at IS NULL",
                (at, incident),
            ).rowcount
            return _get(conn, incident) if changed else None

        return await self._call(lambda c: _transaction(c, run))

    # --- the outbox -------------------------------------------------------------------------

    async def enqueue(self, items: Sequence[Outgoing]) -> int:
        """Write notifications (an id already written is left alone); how many are new."""
        if not items:
            return 0
        return await self._call(lambda c: _transaction(c, lambda t: _enqueue(t, items)))

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Pending notifications whose time has come and that no sender holds, oldest first."""
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND claimed = 0 "
                "AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [_outbox_row(r) for r in rows]

    async def claim_due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Like ``due``, and mark them held, so no later pass reads them while they are sent.

        A claim lives only as long as the process: ``release_claims`` at start-up frees what a
        crash left held, so nothing waits for a lease to expire.
        """

        def run(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND claimed = 0 "
                "AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany("UPDATE outbox SET claimed = 1 WHERE id = ?", [(r[0],) for r in rows])
            return rows

        rows = await self._call(lambda c: _transaction(c, run))
        return [_outbox_row(r) for r in rows]

    async def release_claims(self, message_id: str | None = None) -> None:
        """Free one held notification, or (at start-up) every one."""
        if message_id is None:
            await self._call(lambda c: c.execute("UPDATE outbox SET claimed = 0 WHERE claimed = 1"))
        else:
            await self._call(
                lambda c: c.execute("UPDATE outbox SET claimed = 0 WHERE id = ?", (message_id,))
            )

    async def next_due_at(self) -> float | None:
        """When the next pending notification that no sender holds falls due."""
        row = await self._call(
            lambda c: c.execute(
                "SELECT MIN(next_at) FROM outbox WHERE state = 'pending' AND claimed = 0"
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def mark_delivered(self, message_id: str, at: float, attempts: int) -> None:
        """The receiver took it."""
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = ?, "
                "last_error = '', claimed = 0 WHERE id = ?",
                (at, attempts, message_id),
            )
        )

    async def mark_retry(self, message_id: str, attempts: int, next_at: float, error: str) -> None:
        """It failed; try again at ``next_at``."""
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ?, claimed = 0 "
                "WHERE id = ?",
                (attempts, next_at, error[:500], message_id),
            )
        )

    async def mark_dead(self, message_id: str, attempts: int, error: str) -> None:
        """Retries exhausted or the receiver is gone: dead-lettered, kept for the API."""
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET state = 'dead', attempts = ?, last_error = ?, claimed = 0 "
                "WHERE id = ?",
                (attempts, error[:500], message_id),
            )
        )

    async def requeue(self, message_id: str, now: float) -> bool:
        """Put a dead-lettered notification back in line (an operator's retry)."""
        changed = await self._call(
            lambda c: (
                c.execute(
                    "UPDATE outbox SET state = 'pending', next_at = ?, created_at = ? "
                    "WHERE id = ? AND state = 'dead'",
                    (now, now, message_id),
                ).rowcount
            )
        )
        return bool(changed)

    async def notifications(
        self,
        *,
        incident: int | None = None,
        state: str | None = None,
        limit: int = 200,
    ) -> list[OutboxRow]:
        """Outbox rows, newest first, by incident and/or state."""
        clauses, args = ["1=1"], list[Any]()
        if incident is not None:
            clauses.append("incident = ?")
            args.append(incident)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        sql = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at DESC, id LIMIT ?"
        )
        args.append(limit)
        rows = await self._call(lambda c: c.execute(sql, args).fetchall())
        return [_outbox_row(r) for r in rows]

    async def outbox_stats(self, now: float) -> tuple[int, int, float | None]:
        """(due now, scheduled for later, creation time of the oldest due one)."""

        def run(conn: sqlite3.Connection) -> tuple[int, int, float | None]:
            due, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox "
                "WHERE state = 'pending' AND not_before <= ?",
                (now,),
            ).fetchone()
            (scheduled,) = conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND not_before > ?", (now,)
            ).fetchone()
            return int(due), int(scheduled), oldest

        return await self._call(run)

    async def disable_notifier(self, name: str, at: float, reason: str) -> None:
        """Remember that a receiver answered 410 Gone (survives a restart)."""
        await self._call(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO notifiers (name, disabled_at, reason) VALUES (?, ?, ?)",
                (name, at, reason[:500]),
            )
        )

    async def enable_notifier(self, name: str) -> bool:
        """An operator re-enables a notifier; whether it was disabled."""
        changed = await self._call(
            lambda c: c.execute("DELETE FROM notifiers WHERE name = ?", (name,)).rowcount
        )
        return bool(changed)

    async def disabled_notifiers(self) -> dict[str, tuple[float, str]]:
        """Disabled notifiers: name -> (since, reason)."""
        rows = await self._call(
            lambda c: c.execute("SELECT name, disabled_at, reason FROM notifiers").fetchall()
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # --- maintenance windows ----------------------------------------------------------------

    async def windows(self, *, include_cancelled: bool = False) -> list[Window]:
        """Every maintenance window, by start."""
        where = "" if include_cancelled else "WHERE cancelled = 0"
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {_WINDOW_COLUMNS} FROM maintenance {where} ORDER BY start, id"
            ).fetchall()
        )
        return [_window(r) for r in rows]

    async def add_window(
        self,
        *,
        start: float,
        end: float,
        services: Sequence[str],
        note: str,
        source: str,
        who: str,
        config_key: str | None = None,
    ) -> Window:
        """Declare a window (a config window is written once, by its key)."""

        def run(conn: sqlite3.Connection) -> Window:
            if config_key is not None:
                row = conn.execute(
                    f"SELECT {_WINDOW_COLUMNS} FROM maintenance WHERE config_key = ?",
                    (config_key,),
                ).fetchone()
                if row is not None:
                    return _window(row)
            cursor = conn.execute(
                "INSERT INTO maintenance (start, end, services, note, source, who, config_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (start, end, json.dumps(list(services)), note, source, who, config_key),
            )
            row = conn.execute(
                f"SELECT {_WINDOW_COLUMNS} FROM maintenance WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
            return _window(row)

        return await self._call(lambda c: _transaction(c, run))

    async def cancel_window(self, window: int, now: float) -> Window | None:
        """Cancel a window that has not started; None when there is none such."""

        def run(conn: sqlite3.Connection) -> Window | None:
            changed = conn.execute(
                "UPDATE maintenance SET cancelled = 1 WHERE id = ? AND start > ? AND cancelled = 0",
                (window, now),
            ).rowcount
            if not changed:
                return None
            row = conn.execute(
                f"SELECT {_WINDOW_COLUMNS} FROM maintenance WHERE id = ?", (window,)
            ).fetchone()
            return _window(row)

        return await self._call(lambda c: _transaction(c, run))

    async def mark_window_excluded(self, window: int, exclusion_id: int) -> None:
        """The ledger holds the window's exclusion."""
        await self._call(
            lambda c: c.execute(
                "UPDATE maintenance SET exclusion_id = ? WHERE id = ?", (exclusion_id, window)
            )
        )

    # --- retention --------------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Delete incidents resolved, notifications finished and windows ended before ``before``."""

        def run(conn: sqlite3.Connection) -> int:
            removed = conn.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND created_at < ? AND "
                "(incident IS NULL OR incident IN (SELECT id FROM incidents "
                "WHERE resolved_at IS NOT NULL AND resolved_at < ?))",
                (before, before),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM updates WHERE incident IN (SELECT id FROM incidents "
                "WHERE resolved_at IS NOT NULL AND resolved_at < ?)",
                (before,),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM incidents WHERE resolved_at IS NOT NULL AND resolved_at < ? "
                "AND id NOT IN (SELECT incident FROM outbox WHERE incident IS NOT NULL)",
                (before,),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM maintenance WHERE end < ? AND config_key IS NULL", (before,)
            ).rowcount
            return removed

        return await self._call(lambda c: _transaction(c, run))
