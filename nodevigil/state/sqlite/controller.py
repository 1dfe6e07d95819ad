"""The controller's store (``failover.controller.store.Store``) in one SQLite file.

It holds overrides, hold-down bookkeeping, open whole-service outages and the action
log. Times in the store are wall-clock: monotonic time does not survive a reboot, so the
controller shifts its monotonic bookkeeping to wall time when saving and back when loading.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from failover.controller.state import Book, NodeBook, Outage, Override, OverrideKind, SiteBook
from failover.controller.store import ActionRecord, StoredState
from nodevigil.core.errors import StateError

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
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
"""


class SqliteControllerStore:
    """The store in one SQLite file (WAL), every call on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # One thread owns the connection: sqlite3 objects must not hop threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodevigil-store")
        self._db: sqlite3.Connection | None = None
        self._saved: Book | None = None  # what the database holds, so a save writes changes only

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = self._open()
        try:
            with self._db:
                return fn(self._db)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise StateError(
                    f"{self.path}: schema version {version} is newer than this nodevigil "
                    f"understands ({SCHEMA_VERSION}); upgrade nodevigil"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.isolation_level = "DEFERRED"  # from here on, `with db:` is one transaction
            return db
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self.path}: cannot open the state database: {exc}") from exc

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
                "INSERT OR REPLACE INTO overrides VALUES (?, ?, ?, ?, ?, ?)",
                (o.kind, o.name, o.reason, o.who, o.since, o.until),
            )
        )

    async def delete_override(self, kind: OverrideKind, name: str) -> None:
        """Forget an override."""
        await self._run(
            lambda db: db.execute("DELETE FROM overrides WHERE kind=? AND name=?", (kind, name))
        )

    async def save_book(self, book: Book) -> None:
        """Replace the saved bookkeeping, writing only the entries that changed."""
        # The controller saves before it acts: with 10,000 nodes rewriting every row took
        # ~140 ms on the drain path, writing the few that changed takes a few.
        saved = self._saved
        await self._run(lambda db: _save_book(db, book, saved))
        self._saved = book  # only after the transaction committed

    async def record_actions(self, records: list[ActionRecord]) -> None:
        """Append to the action log."""
        rows = [(r.at, json.dumps(asdict(r))) for r in records]
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
        return [ActionRecord(**json.loads(body)) for (body,) in reversed(rows)]

    async def prune_actions(self, before: float) -> int:
        """Delete action records older than wall time ``before`` (retention); return the count."""
        cur = await self._run(lambda db: db.execute("DELETE FROM actions WHERE at < ?", (before,)))
        return int(cur.rowcount)

    async def close(self) -> None:
        """Close the database and stop the worker thread."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)


def _load(db: sqlite3.Connection) -> StoredState:
    overrides: dict[tuple[OverrideKind, str], Override] = {}
    for kind, name, reason, who, since, until in db.execute("SELECT * FROM overrides"):
        overrides[(kind, name)] = Override(kind, name, reason, who, since, until)
    nodes: dict[str, NodeBook] = {}
    sites: dict[str, SiteBook] = {}
    for kind, name, body in db.execute("SELECT kind, name, body FROM books"):
        if kind == "node":
            nodes[name] = NodeBook(**json.loads(body))
        elif kind == "site":
            sites[name] = SiteBook(**json.loads(body))
    outages: dict[str, Outage] = {}
    for service, started_at, body in db.execute("SELECT service, started_at, body FROM outages"):
        extra: dict[str, Any] = json.loads(body)
        outages[service] = Outage(
            service, started_at, tuple(extra.get("sites", ())), extra.get("evidence", {})
        )
    return StoredState(overrides, Book(nodes, sites, outages))


def _changes(new: Mapping[str, T], old: Mapping[str, T] | None) -> tuple[dict[str, T], list[str]]:
    """Entries of ``new`` that differ from ``old``, and names ``old`` has but ``new`` lacks."""
    if old is None:
        return dict(new), []
    changed = {name: value for name, value in new.items() if old.get(name) != value}
    return changed, [name for name in old if name not in new]


def _save_book(db: sqlite3.Connection, book: Book, saved: Book | None) -> None:
    if saved is None:  # nothing known about the database's content: rewrite it all
        db.execute("DELETE FROM books")
        db.execute("DELETE FROM outages")
    nodes, gone_nodes = _changes(book.nodes, None if saved is None else saved.nodes)
    sites, gone_sites = _changes(book.sites, None if saved is None else saved.sites)
    db.executemany(
        "INSERT OR REPLACE INTO books VALUES (?, ?, ?)",
        [("node", name, json.dumps(asdict(b))) for name, b in nodes.items()]
        + [("site", name, json.dumps(asdict(b))) for name, b in sites.items()],
    )
    db.executemany(
        "DELETE FROM books WHERE kind=? AND name=?",
        [("node", n) for n in gone_nodes] + [("site", n) for n in gone_sites],
    )
    changed_outages, ended = _changes(book.outages, None if saved is None else saved.outages)
    db.executemany(
        "INSERT OR REPLACE INTO outages VALUES (?, ?, ?)",
        [
            (o.service, o.started_at, json.dumps({"sites": o.sites, "evidence": dict(o.evidence)}))
            for o in changed_outages.values()
        ],
    )
    db.executemany("DELETE FROM outages WHERE service=?", [(s,) for s in ended])
