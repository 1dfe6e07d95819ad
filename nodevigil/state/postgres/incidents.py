"""The incidents' store (``failover.incidents.ports.IncidentStore``) in PostgreSQL.

The same facts and guarantees as SQLite's (``nodevigil.state.sqlite.incidents``), in the
shared database: an incident's change and the notifications it causes commit in one
transaction. The outbox (``incidents_outbox``), where several hosts claim rows under their own
name, maintenance windows (``incidents_windows``) and the SLA ledger's outbox
(``incidents_ledger``: a cause or a window commits with the ledger change it calls for) are the
store's other parts; the schema and row mapping are in ``incidents_db``. A psycopg error
becomes a StateError at this edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from failover.incidents.model import Incident, IncidentState, Outgoing, Update
from failover.incidents.ports import LedgerChange
from nodevigil.core.errors import StateError
from nodevigil.state.incident_rows import INCIDENT_COLUMNS, incident_of
from nodevigil.state.postgres.incidents_db import COMPONENT, STEPS, Conn, enqueue
from nodevigil.state.postgres.incidents_ledger import PostgresLedgerChanges, put_ledger_change
from nodevigil.state.postgres.incidents_outbox import PostgresOutbox
from nodevigil.state.postgres.incidents_windows import PostgresWindows
from nodevigil.state.postgres.schema import migrate


async def _add_update(
    conn: Conn, incident: int, at: float, state: str, *, message: str, author: str
) -> None:
    await conn.execute(
        "INSERT INTO incident_updates (incident, at, state, message, author) "
        "VALUES (%s, %s, %s, %s, %s)",
        (incident, at, state, message, author),
    )


async def _get(conn: Conn, incident: int) -> Incident:
    row = await (
        await conn.execute(f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = %s", (incident,))
    ).fetchone()
    if row is None:
        raise LookupError(f"no incident {incident}")
    return incident_of(row)


class PostgresIncidentStore(PostgresOutbox, PostgresWindows, PostgresLedgerChanges):
    """Incidents, their updates, maintenance windows and the outbox, in the shared database.

    ``owner`` (this host's name) is who claims outbox rows: hosts sharing the database never
    hand out the same row while a claim lives.
    """

    async def open(self) -> None:
        """Apply the schema's migrations (a newer schema than this code knows is refused)."""
        try:
            async with self._pool.connection() as conn:
                await migrate(conn, COMPONENT, STEPS)
        except psycopg.Error as exc:
            raise StateError(f"incident store (PostgreSQL): cannot migrate: {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: the backend closes the pool."""

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

        async def run(conn: Conn) -> Incident:
            row = await (
                await conn.execute(
                    "INSERT INTO incidents (service, state, cause, maintenance, started_at, "
                    f"opened_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {INCIDENT_COLUMNS}",
                    (
                        service,
                        IncidentState.INVESTIGATING.value,
                        cause,
                        maintenance,
                        started_at,
                        at,
                    ),
                )
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING
            incident = incident_of(row)
            await _add_update(
                conn, incident.id, at, incident.state.value, message=message, author="nodevigil"
            )
            await enqueue(conn, outgoing(incident))
            return incident

        return await self._run("open an incident", run, leader=True)

    async def reopen_incident(
        self,
        incident: int,
        *,
        at: float,
        message: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """Reopen a recently resolved incident (the service failed again soon after)."""

        async def run(conn: Conn) -> Incident:
            await conn.execute(
                "UPDATE incidents SET state = %s, resolved_at = NULL, openings = openings + 1, "
                "opened_at = %s WHERE id = %s",
                (IncidentState.INVESTIGATING.value, at, incident),
            )
            current = await _get(conn, incident)
            await _add_update(
                conn, incident, at, current.state.value, message=message, author="nodevigil"
            )
            await enqueue(conn, outgoing(current))
            return current

        return await self._run("reopen an incident", run, leader=True)

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

        async def run(conn: Conn) -> tuple[Incident, int]:
            await conn.execute(
                "UPDATE incidents SET state = %s, resolved_at = %s WHERE id = %s",
                (IncidentState.RESOLVED.value, resolved_at, incident),
            )
            # Only steps due after the resolution, and never one due by the incident's own
            # (re)opening: a resolution stamped earlier than the opening (a clock stepped back
            # under a process that does not keep a timeline) must not cancel the first notice.
            cancelled = await conn.execute(
                "UPDATE outbox SET state = 'cancelled', last_error = 'incident resolved first' "
                "WHERE incident = %s AND state = 'pending' AND step LIKE 's%%' AND not_before > "
                "GREATEST(%s, (SELECT opened_at FROM incidents WHERE id = %s))",
                (incident, at, incident),
            )
            current = await _get(conn, incident)
            await _add_update(
                conn, incident, at, current.state.value, message=message, author=author
            )
            await enqueue(conn, outgoing(current))
            return current, max(cancelled.rowcount, 0)

        return await self._run("resolve an incident", run, leader=True)

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

        async def run(conn: Conn) -> Incident:
            if state is not None:
                await conn.execute(
                    "UPDATE incidents SET state = %s WHERE id = %s", (state.value, incident)
                )
            current = await _get(conn, incident)
            await _add_update(
                conn, incident, at, current.state.value, message=message, author=author
            )
            await enqueue(conn, outgoing(current))
            return current

        return await self._run("add an update", run)

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

        async def run(conn: Conn) -> Incident:
            await conn.execute(
                "UPDATE incidents SET cause = %s, cause_note = %s WHERE id = %s",
                (cause, note, incident),
            )
            current = await _get(conn, incident)
            text = f"cause set to {cause}" + (f": {note}" if note else "")
            await _add_update(conn, incident, at, current.state.value, message=text, author=author)
            if ledger is not None:
                await put_ledger_change(conn, ledger(current))
            return current

        return await self._run("set an incident's cause", run)

    async def get(self, incident: int) -> Incident | None:
        """One incident, or None."""
        row = await self._one(
            "read an incident",
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = %s",
            (incident,),
        )
        return None if row is None else incident_of(row)

    async def incidents(
        self,
        *,
        open_only: bool = False,
        services: Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents, newest first; ``since`` keeps those open or resolved after it."""
        clauses, args = ["true"], list[Any]()
        if open_only:
            clauses.append("resolved_at IS NULL")
        if services is not None:
            clauses.append("service = ANY(%s)")
            args.append(list(services))
        if since is not None:
            clauses.append("(resolved_at IS NULL OR resolved_at >= %s)")
            args.append(since)
        args.append(limit)
        rows = await self._all(
            "list incidents",
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE {' AND '.join(clauses)} "
            "ORDER BY started_at DESC, id DESC LIMIT %s",
            args,
        )
        return [incident_of(r) for r in rows]

    async def last_resolved(self, service: str) -> Incident | None:
        """The service's most recently resolved incident."""
        row = await self._one(
            "read the last resolved incident",
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE service = %s "
            "AND resolved_at IS NOT NULL ORDER BY resolved_at DESC, id DESC LIMIT 1",
            (service,),
        )
        return None if row is None else incident_of(row)

    async def updates(self, incident: int) -> list[Update]:
        """The incident's timeline of updates, oldest first."""
        rows = await self._all(
            "read an incident's updates",
            "SELECT id, incident, at, state, message, author FROM incident_updates "
            "WHERE incident = %s ORDER BY at, id",
            (incident,),
        )
        return [Update(r[0], r[1], r[2], IncidentState(r[3]), r[4], r[5]) for r in rows]

    async def record_first_notice(self, incident: int, at: float) -> Incident | None:
        """Note the first customer notice delivered; the incident when this was the first."""
        row = await self._one(
            "record the first notice",
            f"UPDATE incidents SET first_notice_at = %s WHERE id = %s "
            f"AND first_notice_at IS NULL RETURNING {INCIDENT_COLUMNS}",
            (at, incident),
            leader=True,
        )
        return None if row is None else incident_of(row)
