"""The controller's store (``failover.controller.store.Store``) in one SQLite file.

It holds overrides, hold-down bookkeeping, open whole-service outages and the action
log. Times in the store are wall-clock: monotonic time does not survive a reboot, so the
controller shifts its monotonic bookkeeping to wall time when saving and back when loading.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from failover.controller.state import Book, Override, OverrideKind
from failover.controller.store import ActionRecord, StoredState
from nodevigil.core.errors import StateError
from nodevigil.state.controller_rows import action_body, action_from, book_changes, book_from
from nodevigil.state.sqlite.schema import migrate
from nodevigil.state.sqlite.worker import SqliteWorker

T = TypeVar("T")

# Versions by PRAGMA user_version; version 1 is what files have carried since the store began.
STEPS = (
    """
    CREATE TABLE IF NOT EXISTS overrides (
        kind TEXT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL, who TEXT NOT NULL,
        since REAL NOT NULL, until REAL, PRIMARY KEY (kind, name));
    CREATE TABLE IF NOT EXISTS books (
        kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, name));
    CREATE TABLE IF NOT EXISTS outages (
        service TEXT PRIMARY KEY, started_at REAL NOT NULL, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, body TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS actions_at ON actions (at);
    """,
)
SCHEMA_VERSION = len(STEPS)


class SqliteControllerStore:
    """The store in one SQLite file (WAL), every call on the file's worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # FULL: an override or a hold-down must survive a power cut, not only a crash.
        self._db = SqliteWorker(self.path, synchronous="FULL")
        self._ready = False  # the schema is migrated (on the first call, as the file opens)
        self._saved: Book | None = None  # what the database holds, so a save writes changes only

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one transaction; the schema brought up to date first; errors as StateError."""
        if not self._ready:
            await self._prepare()
        try:
            return await self._db.transaction(fn)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    async def _prepare(self) -> None:
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
            await self._db.call(lambda db: migrate(db, STEPS, path=self.path))
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self.path}: cannot open the state database: {exc}") from exc
        self._ready = True

    async def load(self) -> StoredState:
        """Everything saved so far."""
        stored = await self._run(_load)
        self._saved = stored.book
        return stored

    async def put_override(self, override: Override) -> None:
        """Save or replace an override."""
        o = override
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO overrides (kind, name, reason, who, since, until) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (o.kind, o.name, o.reason, o.who, o.since, o.until),
            )
        )

    async def delete_override(self, kind: OverrideKind, name: str) -> None:
        """Forget an override (no error when absent)."""
        await self._run(
            lambda db: db.execute("DELETE FROM overrides WHERE kind=? AND name=?", (kind, name))
        )

    async def save_book(self, book: Book, records: Sequence[ActionRecord] = ()) -> None:
        """Replace the saved bookkeeping, writing only the entries that changed, and append
        ``records`` to the action log, in one transaction."""
        changes = book_changes(book, self._saved)
        rows = [(r.at, action_body(r)) for r in records]

        def save(db: sqlite3.Connection) -> None:
            if changes.rewrite:
                db.execute("DELETE FROM books")
                db.execute("DELETE FROM outages")
            db.executemany("INSERT OR REPLACE INTO books VALUES (?, ?, ?)", changes.entries)
            db.executemany("DELETE FROM books WHERE kind=? AND name=?", changes.gone)
            db.executemany("INSERT OR REPLACE INTO outages VALUES (?, ?, ?)", changes.outages)
            db.executemany("DELETE FROM outages WHERE service=?", [(s,) for s in changes.ended])
            db.executemany("INSERT INTO actions (at, body) VALUES (?, ?)", rows)

        await self._run(save)
        self._saved = book  # only after the transaction committed

    async def record_actions(self, records: list[ActionRecord]) -> None:
        """Append to the action log."""
        rows = [(r.at, action_body(r)) for r in records]
        await self._run(
            lambda db: db.executemany("INSERT INTO actions (at, body) VALUES (?, ?)", rows)
        )

    async def actions(self, limit: int = 100) -> list[ActionRecord]:
        """The latest ``limit`` action records, newest last."""
        rows = await self._run(
            lambda db: db.execute(
                "SELECT body FROM actions ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [action_from(body) for (body,) in reversed(rows)]

    async def prune_actions(self, before: float) -> int:
        """Delete action records older than wall time ``before`` (retention); return the count."""
        cur = await self._run(lambda db: db.execute("DELETE FROM actions WHERE at < ?", (before,)))
        return int(cur.rowcount)

    async def close(self) -> None:
        """Close the database and stop the worker thread."""
        await asyncio.to_thread(self._db.close)


def _load(db: sqlite3.Connection) -> StoredState:
    overrides: dict[tuple[OverrideKind, str], Override] = {}
    for kind, name, reason, who, since, until in db.execute(
        "SELECT kind, name, reason, who, since, until FROM overrides"
    ):
        overrides[(kind, name)] = Override(kind, name, reason, who, since, until)
    book = book_from(
        db.execute("SELECT kind, name, body FROM books").fetchall(),
        db.execute("SELECT service, started_at, body FROM outages").fetchall(),
    )
    return StoredState(overrides, book)
