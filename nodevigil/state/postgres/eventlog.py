"""The durable event log (clause IV.3) in PostgreSQL: the ``events`` table of the shared database.

It implements ``nodevigil.core.eventlog.EventLog`` with the buffering SQLite's has
(``nodevigil.state.eventbuffer``): while the server is away, events wait in memory (bounded,
the oldest given up and counted) and are written when it is back; the daemon never stops for it.

Each row is the event's ``as_dict()`` as JSON text with a ``schema`` number, so a later change
of the payload can tell old rows from new; id, time, kind and subject are columns as well, for
the filters and indexes. Times are wall seconds (double precision), as in SQLite.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from nodevigil.core.errors import StateError
from nodevigil.core.events import EVENT_SCHEMA, Event
from nodevigil.state.eventbuffer import MAX_WAITING, BatchedEventLog
from nodevigil.state.postgres.schema import migrate

COMPONENT = "events"

STEPS = (
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        schema INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    CREATE INDEX events_subject ON events (subject, at);
    """,
)

# One statement for a whole batch (one round trip however long the outage was); an id already
# stored is skipped, so a batch whose commit was lost with the connection can be written again.
_INSERT = """
INSERT INTO events (id, at, kind, subject, schema, body)
SELECT id, at, kind, subject, %s, body
FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[])
    AS batch (id, at, kind, subject, body)
ON CONFLICT (id) DO NOTHING
"""


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: one event must not make its whole batch unwritable."""
    return value.replace("\x00", "\ufffd")


class PostgresEventLog(BatchedEventLog):
    """Buffers published events and writes them in batches to PostgreSQL; lists and prunes them."""

    refusals = (psycopg.Error,)  # the server away, restarting, or the pool out of connections
    where = "event log (PostgreSQL)"

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        flush_every: float = 0.1,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        super().__init__(flush_every=flush_every, max_waiting=max_waiting)
        self._pool = pool  # the backend's: it closes it

    async def open(self) -> None:
        """Create or migrate the schema; a StateError when PostgreSQL cannot be reached."""
        try:
            async with self._pool.connection() as conn:
                await migrate(conn, COMPONENT, STEPS)
        except psycopg.Error as exc:
            raise StateError(f"cannot open the {self.where}: {exc}") from exc

    async def _write(self, batch: list[Event]) -> None:
        # json.dumps escapes control characters, so the body never holds a NUL.
        bodies = [json.dumps(e.as_dict(), default=str) for e in batch]
        async with self._pool.connection() as conn:
            await conn.execute(
                _INSERT,
                (
                    EVENT_SCHEMA,  # the version of body's form, Event.as_dict()
                    [_text(e.id) for e in batch],
                    [e.at for e in batch],
                    [_text(e.kind) for e in batch],
                    [_text(e.subject) for e in batch],
                    bodies,
                ),
            )

    async def _select(
        self,
        since: float | None,
        until: float | None,
        kind: str | None,
        subject: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = ["true"]
        args: list[object] = []
        if since is not None:
            clauses.append("at >= %s")
            args.append(since)
        if until is not None:
            clauses.append("at < %s")
            args.append(until)
        if kind:
            clauses.append("kind LIKE %s ESCAPE '\\'")
            args.append(kind.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if subject:
            clauses.append("subject = %s")
            args.append(subject)
        sql = f"SELECT body FROM events WHERE {' AND '.join(clauses)} ORDER BY at DESC LIMIT %s"
        args.append(max(0, limit))
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql.encode(), args)
            rows = await cursor.fetchall()
        return [_payload(body) for (body,) in rows]

    async def _delete(self, before: float) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute("DELETE FROM events WHERE at < %s", (before,))
            return cursor.rowcount

    async def _release(self) -> None:
        """Nothing to release: the pool belongs to the backend."""


def _payload(body: str) -> dict[str, Any]:
    """A stored row as the API lists it (whatever its ``schema``: the form is stable)."""
    payload: dict[str, Any] = json.loads(body)
    return payload
