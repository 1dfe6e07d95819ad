"""The durable event log (clause IV.3) in SQLite: every event written, kept, then pruned.

It implements ``nodevigil.core.eventlog.EventLog``, the port the API and the daemon use; the
buffering it shares with PostgreSQL's is ``nodevigil.state.eventbuffer``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from nodevigil.core.errors import StateError
from nodevigil.core.events import EVENT_SCHEMA, Event
from nodevigil.state.eventbuffer import MAX_WAITING, BatchedEventLog
from nodevigil.state.sqlite.schema import migrate
from nodevigil.state.sqlite.worker import SqliteWorker

# Versions by PRAGMA user_version. Files made before versioning are at 0 with version 1's
# tables already there: hence IF NOT EXISTS in step 1, which then only records the version.
STEPS = (
    """
    CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        vantage TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_at ON events (at);
    CREATE INDEX IF NOT EXISTS events_subject ON events (subject, at);
    """,
    # The version of the stored form (nodevigil.core.events.EVENT_SCHEMA); older rows are 1.
    "ALTER TABLE events ADD COLUMN schema INTEGER NOT NULL DEFAULT 1;",
)

__all__ = ["MAX_WAITING", "STEPS", "SqliteEventLog"]


class SqliteEventLog(BatchedEventLog):
    """Buffers published events and writes them in small batches; lists and prunes them."""

    refusals = (sqlite3.Error,)

    def __init__(
        self, path: Path, *, flush_every: float = 0.1, max_waiting: int = MAX_WAITING
    ) -> None:
        super().__init__(flush_every=flush_every, max_waiting=max_waiting)
        self.path = path
        self._db = SqliteWorker(path)

    async def open(self) -> None:
        """Create or migrate the schema."""
        try:
            await self._db.call(lambda c: migrate(c, STEPS, path=self.path))
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the event log: {exc}") from exc

    async def _write(self, batch: list[Event]) -> None:
        rows = [
            (
                e.id,
                e.at,
                e.kind,
                e.subject,
                e.vantage,
                json.dumps(e.as_dict()["data"], default=str),
                EVENT_SCHEMA,
            )
            for e in batch
        ]
        await self._db.transaction(  # one transaction: the whole batch is written, or none
            lambda c: c.executemany(
                "INSERT OR IGNORE INTO events (id, at, kind, subject, vantage, data, schema) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

    async def _select(
        self,
        since: float | None,
        until: float | None,
        kind: str | None,
        subject: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = ["1=1"]
        args: list[object] = []
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        if until is not None:
            clauses.append("at < ?")
            args.append(until)
        if kind:
            clauses.append("kind LIKE ? ESCAPE '\\'")
            args.append(kind.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if subject:
            clauses.append("subject = ?")
            args.append(subject)
        sql = (
            "SELECT id, at, kind, subject, vantage, data FROM events "
            f"WHERE {' AND '.join(clauses)} ORDER BY at DESC LIMIT ?"
        )
        args.append(limit)
        rows = await self._db.call(lambda c: c.execute(sql, args).fetchall())
        return [_row(r) for r in rows]

    async def _delete(self, before: float) -> int:
        cursor = await self._db.call(
            lambda c: c.execute("DELETE FROM events WHERE at < ?", (before,))
        )
        return int(cursor.rowcount)

    async def _release(self) -> None:
        await asyncio.to_thread(self._db.close)


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row (id, at, kind, subject, vantage, data) in ``Event.as_dict()``'s form."""
    return {"id": r[0], "kind": r[2], "subject": r[3], "at": r[1], "vantage": r[4],
            "data": json.loads(r[5])}  # fmt: skip
