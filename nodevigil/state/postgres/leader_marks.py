"""Leader marks (``nodevigil.core.leader_marks``) in PostgreSQL: one row per epoch.

``nodevigil_leader_marks`` belongs to the cluster running on this database, like the fencing
epoch: it is not state to move to another database (a copy there would book a wrong gap).
Its component (``leader_marks``) is migrated by the store on first use.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from nodevigil.core.errors import StateError
from nodevigil.core.leader_marks import LeaderMark
from nodevigil.state.postgres.schema import migrate

COMPONENT = "leader_marks"
STEPS = (
    """
    CREATE TABLE nodevigil_leader_marks (
        epoch BIGINT PRIMARY KEY,
        holder TEXT NOT NULL,
        wall DOUBLE PRECISION NOT NULL,  -- seconds on the leader's timeline
        clean BOOLEAN NOT NULL,
        written_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
)

# A clean mark is final: a renewal written after the step-down must not make it unclean.
_WRITE = (
    "INSERT INTO nodevigil_leader_marks AS m (epoch, holder, wall, clean) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (epoch) DO UPDATE SET wall = excluded.wall, "
    "clean = excluded.clean, written_at = now() WHERE NOT m.clean"
)
_LATEST = (
    "SELECT holder, epoch, wall, clean FROM nodevigil_leader_marks WHERE epoch < %s "
    "ORDER BY epoch DESC LIMIT 1"
)
_PRUNE = "DELETE FROM nodevigil_leader_marks WHERE epoch < %s"


class PostgresLeaderMarks:
    """The ``LeaderMarks`` port on the daemon's pool; psycopg errors become StateError."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._ready = False  # migrated once per process

    async def _run(self, what: str, query: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            async with self._pool.connection() as conn:
                if not self._ready:
                    await migrate(conn, COMPONENT, STEPS)
                    self._ready = True
                async with conn.transaction():
                    cursor = await conn.execute(query, args)
                    return await cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            raise StateError(f"leader marks: cannot {what}: {exc}") from exc

    async def write(self, mark: LeaderMark) -> None:
        """Upsert the epoch's row; a clean row stays as it is."""
        await self._run("write", _WRITE, (mark.epoch, mark.who, mark.wall, mark.clean))

    async def latest(self, *, before: int) -> LeaderMark | None:
        """The newest epoch's row below ``before``."""
        row = await self._run("read", _LATEST, (before,))
        if row is None:
            return None
        holder, epoch, wall, clean = row
        return LeaderMark(str(holder), int(epoch), float(wall), bool(clean))

    async def prune(self, *, below: int) -> None:
        """Delete the rows of older epochs."""
        await self._run("prune", _PRUNE, (below,))
