"""The durable event log (clause IV.3) in SQLite: every event written, kept, then pruned.

It implements ``nodevigil.core.eventlog.EventLog``, the port the API and the daemon use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from nodevigil.core.errors import StateError
from nodevigil.core.events import Event
from nodevigil.state.sqlite.worker import SqliteWorker

log = logging.getLogger(__name__)

_SCHEMA = """
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
"""


MAX_WAITING = 200_000  # events kept in memory while the disk refuses them (~100 MB at most)


class SqliteEventLog:
    """Buffers published events and writes them in small batches; lists and prunes them."""

    def __init__(
        self, path: Path, *, flush_every: float = 0.1, max_waiting: int = MAX_WAITING
    ) -> None:
        self._db = SqliteWorker(path)
        self._buffer: list[Event] = []
        self._writing: list[Event] = []  # the batch on its way to the disk
        self._flushing = asyncio.Lock()
        self._flush_every = flush_every
        self._max_waiting = max_waiting
        self._wake = asyncio.Event()
        self.write_errors = 0
        self.dropped = 0  # oldest waiting events given up when the disk stayed full too long

    @property
    def waiting(self) -> int:
        """Events published but not yet written."""
        return len(self._buffer) + len(self._writing)

    async def open(self) -> None:
        """Create the schema."""
        try:
            await self._db.call(lambda c: c.executescript(_SCHEMA))
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the event log: {exc}") from exc

    def append(self, event: Event) -> None:
        """Bus sink: queue the event for the next batch."""
        self._buffer.append(event)
        if len(self._buffer) >= 500:
            self._wake.set()

    async def run(self) -> None:
        """Flush batches until cancelled, then flush what is left."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self._flush_every):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Write every buffered event; on a write error keep them for the next try."""
        async with self._flushing:  # one batch at a time: query() sees it until it is readable
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            self._writing = batch
            try:
                await self._write(batch)
            except sqlite3.Error as exc:
                self._keep(batch, exc)
            finally:
                self._writing = []

    async def _write(self, batch: list[Event]) -> None:
        rows = [
            (e.id, e.at, e.kind, e.subject, e.vantage, json.dumps(dict(e.data), default=str))
            for e in batch
        ]
        await self._db.call(
            lambda c: c.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        )

    def _keep(self, batch: list[Event], exc: sqlite3.Error) -> None:
        self.write_errors += 1
        self._buffer[:0] = batch  # keep them; nothing is lost while the disk is full
        excess = len(self._buffer) - self._max_waiting
        if excess > 0:  # memory is finite: give up the oldest, and count them
            del self._buffer[:excess]
            self.dropped += excess
        if self.write_errors == 1 or self.write_errors % 100 == 0:
            log.error(
                "cannot write the event log (%d events waiting, %d dropped): %s",
                len(self._buffer),
                self.dropped,
                exc,
            )

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        subject: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events, newest first, filtered by time, kind prefix and subject."""
        await self.flush()
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
        # Taken before the read: an event is then either in this list or already readable.
        pending = [*self._writing, *self._buffer]
        try:
            rows = await self._db.call(lambda c: c.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the event log: {exc}") from exc
        found = {
            r[0]: {
                "id": r[0],
                "at": r[1],
                "kind": r[2],
                "subject": r[3],
                "vantage": r[4],
                "data": json.loads(r[5]),
            }
            for r in rows
        }
        # Events the disk has not taken yet (full or read-only) are listed all the same.
        for e in pending:
            if (
                (since is None or e.at >= since)
                and (until is None or e.at < until)
                and (not kind or e.kind.startswith(kind))
                and (not subject or e.subject == subject)
            ):
                data = json.loads(json.dumps(dict(e.data), default=str))
                found[e.id] = {"id": e.id, "at": e.at, "kind": e.kind, "subject": e.subject,
                               "vantage": e.vantage, "data": data}  # fmt: skip
        return sorted(found.values(), key=lambda r: r["at"], reverse=True)[:limit]

    async def prune(self, before: float) -> int:
        """Delete events older than ``before`` (wall time); return how many."""
        cursor = await self._db.call(
            lambda c: c.execute("DELETE FROM events WHERE at < ?", (before,))
        )
        return cursor.rowcount

    async def close(self) -> None:
        """Flush and close."""
        await self.flush()
        await asyncio.to_thread(self._db.close)
