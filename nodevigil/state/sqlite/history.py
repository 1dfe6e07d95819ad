"""The probe history (``monitor.history.HistoryStore``) in ``history.db`` under ``state_dir``.

A file of its own, on a worker thread of its own: saving tens of thousands of open runs every
few seconds never waits on (or delays) the ledger's or the event log's commits. Rows are the
runs of ``monitor.history``; a run saved again (same node, probe, vantage and first result)
is updated in place. Reads of a time range use the index on the run's last result: a run
overlaps ``[since, until]`` when it ended at or after ``since`` and began by ``until``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from monitor.history import ProbeRun
from nodevigil.core.errors import StateError
from nodevigil.state.history_rows import COLUMNS, rows, runs_of
from nodevigil.state.sqlite.schema import migrate
from nodevigil.state.sqlite.worker import SqliteWorker

STEPS = (
    """
    CREATE TABLE probe_runs (
        node TEXT NOT NULL,
        probe TEXT NOT NULL,
        vantage TEXT NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        outcome TEXT NOT NULL,
        count INTEGER NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (node, probe, vantage, first_at)
    );
    CREATE INDEX probe_runs_last ON probe_runs (last_at);
    """,
)

_UPSERT = (
    f"INSERT INTO probe_runs ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (node, probe, vantage, first_at) DO UPDATE SET last_at = excluded.last_at, "
    "outcome = excluded.outcome, count = excluded.count, detail = excluded.detail"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM probe_runs WHERE last_at >= ? AND first_at <= ?"


class SqliteHistoryStore:
    """Runs of equal probe results in one SQLite file (WAL), every call on its worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # NORMAL: a power cut may cost the last commits; the history is evidence, not a promise.
        self._db = SqliteWorker(self.path, synchronous="NORMAL")

    async def open(self) -> None:
        """Create or migrate the schema."""
        try:
            await self._db.call(lambda c: migrate(c, STEPS, path=self.path))
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the probe history {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the file and its thread."""
        await asyncio.to_thread(self._db.close)

    async def save(self, runs: Sequence[ProbeRun]) -> None:
        """Keep ``runs`` in one transaction (a run with the same key is replaced)."""
        if not runs:
            return
        batch = list(runs)  # the rows are built on the worker thread, not on the event loop
        try:
            await self._db.transaction(lambda c: c.executemany(_UPSERT, rows(batch)))
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the probe history: {exc}") from exc

    async def runs(
        self, since: float, until: float, nodes: Iterable[str] | None = None
    ) -> list[ProbeRun]:
        """Every run that overlaps ``[since, until]`` (wall time), ordered by ``first``."""
        sql = _SELECT
        args: list[object] = [since, until]
        if nodes is not None:
            sql += " AND node IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(nodes)))
        sql += " ORDER BY first_at, node, probe, vantage"
        try:
            return await self._db.call(lambda c: runs_of(c.execute(sql, args).fetchall()))
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the probe history: {exc}") from exc

    async def prune(self, before: float) -> int:
        """Drop runs that ended before ``before``; return how many."""
        try:
            cursor = await self._db.transaction(
                lambda c: c.execute("DELETE FROM probe_runs WHERE last_at < ?", (before,))
            )
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot prune the probe history: {exc}") from exc
        return int(cursor.rowcount)
