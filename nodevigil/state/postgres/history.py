"""The probe history (``monitor.history.HistoryStore``) in the shared PostgreSQL database.

The same table as SQLite's ``history.db`` (``probe_runs``), over the backend's pool. A batch
is one statement per 10,000 runs (``unnest`` of arrays built off the event loop); a run saved
again (same node, probe, vantage and first result) is updated in place. Reads of a time range
use the index on the run's last result, as in SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool

from monitor.history import ProbeRun
from nodevigil.core.errors import StateError
from nodevigil.state.history_rows import COLUMNS, Row, rows, runs_of
from nodevigil.state.postgres.schema import migrate

COMPONENT = "history"

STEPS = (
    """
    CREATE TABLE probe_runs (
        node TEXT NOT NULL,
        probe TEXT NOT NULL,
        vantage TEXT NOT NULL,
        first_at DOUBLE PRECISION NOT NULL,
        last_at DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        count INTEGER NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (node, probe, vantage, first_at)
    );
    CREATE INDEX probe_runs_last ON probe_runs (last_at);
    """,
)

CHUNK = 10_000  # runs per statement
_UPSERT = f"""
INSERT INTO probe_runs ({", ".join(COLUMNS)})
SELECT * FROM unnest(
    %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::text[], %s::int[],
    %s::text[])
ON CONFLICT (node, probe, vantage, first_at) DO UPDATE SET last_at = excluded.last_at,
    outcome = excluded.outcome, count = excluded.count, detail = excluded.detail
"""
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM probe_runs WHERE last_at >= %s AND first_at <= %s"


class PostgresHistoryStore:
    """Runs of equal probe results in the ``probe_runs`` table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool  # the backend's: it closes it

    async def open(self) -> None:
        """Create or migrate the schema; a StateError when PostgreSQL cannot be reached."""
        try:
            async with self._pool.connection() as conn:
                await migrate(conn, COMPONENT, STEPS)
        except psycopg.Error as exc:
            raise StateError(f"cannot open the probe history (PostgreSQL): {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: the pool belongs to the backend."""

    async def save(self, runs: Sequence[ProbeRun]) -> None:
        """Keep ``runs`` in one transaction (a run with the same key is replaced)."""
        if not runs:
            return
        chunks = await asyncio.to_thread(_columns, list(runs))
        try:
            async with self._pool.connection() as conn, conn.transaction():
                for chunk in chunks:
                    await conn.execute(_UPSERT, chunk)
        except psycopg.Error as exc:
            raise StateError(f"cannot save the probe history (PostgreSQL): {exc}") from exc

    async def runs(
        self, since: float, until: float, nodes: Iterable[str] | None = None
    ) -> list[ProbeRun]:
        """Every run that overlaps ``[since, until]`` (wall time), ordered by ``first``."""
        sql = _SELECT
        args: list[object] = [since, until]
        if nodes is not None:
            sql += " AND node = ANY(%s::text[])"
            args.append(list(nodes))
        sql += ' ORDER BY first_at, node COLLATE "C", probe COLLATE "C", vantage COLLATE "C"'
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql.encode(), args)
                found = await cursor.fetchall()
        except psycopg.Error as exc:
            raise StateError(f"cannot read the probe history (PostgreSQL): {exc}") from exc
        return await asyncio.to_thread(runs_of, found)

    async def prune(self, before: float) -> int:
        """Drop runs that ended before ``before``; return how many."""
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute("DELETE FROM probe_runs WHERE last_at < %s", (before,))
                return cursor.rowcount
        except psycopg.Error as exc:
            raise StateError(f"cannot prune the probe history (PostgreSQL): {exc}") from exc


def _columns(runs: list[ProbeRun]) -> list[tuple[list[str | float | int], ...]]:
    """The batch as one tuple of column arrays per CHUNK runs (deduplicated by key: one
    statement must not update a row twice)."""
    found: list[Row] = rows(runs)
    out = []
    for start in range(0, len(found), CHUNK):
        part = found[start : start + CHUNK]
        out.append(tuple([row[i] for row in part] for i in range(len(COLUMNS))))
    return out
