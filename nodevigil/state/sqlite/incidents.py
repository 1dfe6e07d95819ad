"""The incidents' store (``failover.incidents.ports.IncidentStore``) in one SQLite file.

An incident's change and the notifications it causes are written in one transaction, so a
crash can never leave an opened incident whose customers will not be told. Commits use
``synchronous=FULL``: a notification written here is on disk before any attempt to send it.
The outbox (``incidents_outbox``) and maintenance windows (``incidents_windows``) are the
store's other parts, with the SLA ledger's outbox (``incidents_ledger``): an incident's cause
and a window commit with the ledger change they call for. The schema and row mapping are in
``incidents_db``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from failover.incidents.model import Incident, IncidentState, Outgoing, Update
from failover.incidents.ports import LedgerChange
from nodevigil.core.errors import StateError
from nodevigil.state.incident_rows import INCIDENT_COLUMNS, incident_of
from nodevigil.state.sqlite.incidents_db import STEPS, enqueue
from nodevigil.state.sqlite.incidents_ledger import SqliteLedgerChanges, put_ledger_change
from nodevigil.state.sqlite.incidents_outbox import SqliteOutbox
from nodevigil.state.sqlite.incidents_windows import SqliteWindows
from nodevigil.state.sqlite.schema import migrate


def _add_update(
    conn: sqlite3.Connection, incident: int, at: float, state: str, *, message: str, author: str
) -> None:
    conn.execute(
        "INSERT INTO updates (incident, at, state, message, author) VALUES (?, ?, ?, ?, ?)",
        (incident, at, state, message, author),
    )


def _get(conn: sqlite3.Connection, incident: int) -> Incident:
    row = conn.execute(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident,)
    ).fetchone()
    if row is None:
        raise LookupError(f"no incident {incident}")
    return incident_of(row)


class SqliteIncidentStore(SqliteOutbox, SqliteWindows, SqliteLedgerChanges):
    """Incidents, their updates, maintenance windows and the outbox, on one worker thread.

    ``owner`` names who claims outbox rows; two stores on one file with different owners
    never hand out the same row while a claim lives.
    """

    async def open(self) -> None:
        """Apply the schema's migrations (a newer schema than this code knows is refused)."""
        try:
            await self._db.call(lambda c: migrate(c, STEPS, path=self.path))
            await self._db.call(lambda c: c.execute("PRAGMA foreign_keys=ON"))
        except sqlite3.Error as exc:
            raise StateError(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the database."""
        await asyncio.to_thread(self._db.close)

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
            enqueue(conn, outgoing(incident))
            return incident

        return await self._write(run)

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
            enqueue(conn, outgoing(current))
            return current

        return await self._write(run)

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
            enqueue(conn, outgoing(current))
            return current, cancelled

        return await self._write(run)

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
            enqueue(conn, outgoing(current))
            return current

        return await self._write(run)

    async def set_cause(
        self,
        incident: int,
        *,
        cause: str,
        note: str,
        at: float,
        author: str,
        ledger: Callable[[Incident], LedgerChange] | None = None,
    ) -> Incident:
        """Tag the incident's cause, with the ledger's change pending, in one transaction."""

        def run(conn: sqlite3.Connection) -> Incident:
            conn.execute(
                "UPDATE incidents SET cause = ?, cause_note = ? WHERE id = ?",
                (cause, note, incident),
            )
            current = _get(conn, incident)
            text = f"cause set to {cause}" + (f": {note}" if note else "")
            _add_update(conn, incident, at, current.state.value, message=text, author=author)
            if ledger is not None:
                put_ledger_change(conn, ledger(current))
            return current

        return await self._write(run)

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
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE {' AND '.join(clauses)} "
            "ORDER BY started_at DESC, id DESC LIMIT ?"
        )
        args.append(limit)
        rows = await self._call(lambda c: c.execute(sql, args).fetchall())
        return [incident_of(r) for r in rows]

    async def last_resolved(self, service: str) -> Incident | None:
        """The service's most recently resolved incident."""
        row = await self._call(
            lambda c: c.execute(
                f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE service = ? "
                "AND resolved_at IS NOT NULL ORDER BY resolved_at DESC LIMIT 1",
                (service,),
            ).fetchone()
        )
        return incident_of(row) if row else None

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

        return await self._write(run)
