"""The incidents' tables in PostgreSQL: their schema, their rows as the domain's objects, and
the one way every part of ``PostgresIncidentStore`` runs a transaction.

Times are wall seconds (double precision), as in SQLite and the other PostgreSQL stores.
A message's payload is kept as the exact JSON text first written, so every retry's body is
byte-identical to the first attempt's on either backend.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from failover.incidents.model import Outgoing
from nodevigil.core.errors import StateError
from nodevigil.state.postgres.epoch import EpochFence

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

COMPONENT = "incidents"

STEPS = (
    """
    CREATE TABLE incidents (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        service TEXT NOT NULL,
        state TEXT NOT NULL,
        cause TEXT NOT NULL DEFAULT 'provider',
        cause_note TEXT NOT NULL DEFAULT '',
        maintenance BOOLEAN NOT NULL DEFAULT false,
        started_at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION,
        openings INTEGER NOT NULL DEFAULT 1,
        opened_at DOUBLE PRECISION NOT NULL,
        first_notice_at DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX incidents_one_open ON incidents (service) WHERE resolved_at IS NULL;
    CREATE INDEX incidents_resolved ON incidents (resolved_at);
    CREATE TABLE incident_updates (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        incident BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
        at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL,
        author TEXT NOT NULL
    );
    CREATE INDEX incident_updates_incident ON incident_updates (incident, at);
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY,
        notifier TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL,
        summary TEXT NOT NULL,
        text TEXT NOT NULL,
        incident BIGINT,
        customer TEXT,
        step TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION,
        not_before DOUBLE PRECISION NOT NULL,
        next_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        delivered_at DOUBLE PRECISION
    );
    CREATE INDEX outbox_pending ON outbox (next_at) WHERE state = 'pending';
    CREATE INDEX outbox_incident ON outbox (incident);
    CREATE INDEX outbox_created ON outbox (created_at);
    CREATE TABLE notifiers_disabled (
        name TEXT PRIMARY KEY,
        disabled_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE maintenance_windows (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        start_at DOUBLE PRECISION NOT NULL,
        end_at DOUBLE PRECISION NOT NULL,
        services TEXT[] NOT NULL,
        note TEXT NOT NULL,
        source TEXT NOT NULL,
        who TEXT NOT NULL,
        config_key TEXT UNIQUE,
        exclusion_id BIGINT,
        cancelled BOOLEAN NOT NULL DEFAULT false
    );
    """,
    # The SLA ledger's outbox: what the ledger must do because of an incident's cause or a
    # window, written with it. Windows not excluded yet when this step runs get theirs.
    """
    CREATE TABLE ledger_outbox (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        services TEXT[] NOT NULL,
        start_at DOUBLE PRECISION NOT NULL,
        end_at DOUBLE PRECISION,
        cause TEXT NOT NULL,
        note TEXT NOT NULL,
        who TEXT NOT NULL,
        not_before DOUBLE PRECISION NOT NULL,
        incident_id BIGINT,
        window_id BIGINT,
        state TEXT NOT NULL DEFAULT 'pending',
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX ledger_outbox_pending ON ledger_outbox (not_before) WHERE state = 'pending';
    CREATE INDEX ledger_outbox_window ON ledger_outbox (window_id);
    INSERT INTO ledger_outbox (id, kind, services, start_at, end_at, cause, note, who,
                                not_before, window_id)
    SELECT md5(random()::text || clock_timestamp()::text || id::text), 'exclusion', services,
           start_at, end_at, 'scheduled_maintenance',
           rtrim('maintenance window ' || id || ': ' || note), who, start_at, id
    FROM maintenance_windows WHERE exclusion_id IS NULL AND NOT cancelled ORDER BY start_at, id;
    """,
)

WINDOW_COLUMNS = "id, start_at, end_at, services, note, source, who, exclusion_id, cancelled"


# One statement for a whole batch: ``ON CONFLICT DO NOTHING`` leaves an id already written
# alone, and the statement's row count is how many were new.
_ENQUEUE = """
INSERT INTO outbox (id, notifier, kind, subject, created_at, data, summary, text, incident,
                    customer, step, not_before, next_at)
SELECT i, n, k, s, c, d, su, t, inc, cu, st, nb, nb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[],
            %s::text[], %s::text[], %s::int8[], %s::text[], %s::text[], %s::float8[])
     AS batch (i, n, k, s, c, d, su, t, inc, cu, st, nb)
ON CONFLICT (id) DO NOTHING
"""


async def enqueue(conn: Conn, items: Sequence[Outgoing]) -> int:
    """Insert outbox rows (an id already there is left alone); how many are new."""
    if not items:
        return 0
    m = [o.message for o in items]
    columns = (
        [x.id for x in m],
        [x.notifier for x in m],
        [x.kind for x in m],
        [x.subject for x in m],
        [x.created_at for x in m],
        [json.dumps(dict(x.data), sort_keys=True, default=str) for x in m],
        [x.summary for x in m],
        [x.text for x in m],
        [o.incident for o in items],
        [o.customer for o in items],
        [o.step for o in items],
        [o.not_before for o in items],
    )
    cursor = await conn.execute(_ENQUEUE, columns)
    return max(cursor.rowcount, 0)


class IncidentsDb:
    """The backend's pool and the owner this store claims outbox rows for."""

    def __init__(
        self, pool: AsyncConnectionPool, *, owner: str, fence: EpochFence | None = None
    ) -> None:
        if not owner:
            raise ValueError("an incident store needs an owner (this host's name)")
        self._pool = pool  # the backend's: it closes it
        self.owner = owner
        # The leader's writes (incidents opened and resolved, outbox claims and results) are
        # refused once a newer epoch holds the database; operators' writes are not fenced.
        self._fence = fence or EpochFence(holder=owner)

    async def _run(
        self, what: str, fn: Callable[[Conn], Awaitable[T]], *, leader: bool = False
    ) -> T:
        """``fn`` in one transaction; a psycopg error becomes a StateError saying what failed.

        A ``leader`` write is fenced by the epoch (``nodevigil.state.postgres.epoch``)."""
        try:
            async with (
                self._pool.connection() as conn,
                self._fence.transaction(conn, what, leader=leader),
            ):
                return await fn(conn)
        except psycopg.Error as exc:
            raise StateError(f"incident store (PostgreSQL): cannot {what}: {exc}") from exc

    async def _one(
        self, what: str, sql: str, args: Sequence[Any] = (), *, leader: bool = False
    ) -> tuple[Any, ...] | None:
        """The first row of one statement."""

        async def run(conn: Conn) -> tuple[Any, ...] | None:
            return await (await conn.execute(sql, args)).fetchone()

        return await self._run(what, run, leader=leader)

    async def _all(
        self, what: str, sql: str, args: Sequence[Any] = (), *, leader: bool = False
    ) -> list[tuple[Any, ...]]:
        """Every row of one statement."""

        async def run(conn: Conn) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, args)).fetchall()

        return await self._run(what, run, leader=leader)

    async def _changed(
        self, what: str, sql: str, args: Sequence[Any] = (), *, leader: bool = False
    ) -> int:
        """How many rows one statement changed."""

        async def run(conn: Conn) -> int:
            return max((await conn.execute(sql, args)).rowcount, 0)

        return await self._run(what, run, leader=leader)
