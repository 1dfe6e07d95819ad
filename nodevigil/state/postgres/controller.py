"""The controller's store (``failover.controller.store.Store``) in PostgreSQL.

The same facts as SQLite's (``nodevigil.state.sqlite.controller``), in tables named
``controller_*`` of the shared database: overrides, the book of hold-downs, open whole-service
outages and the action log. Times are wall seconds (double precision). Every call is one
transaction; a psycopg error becomes a StateError naming what could not be done, which the
controller logs and retries on its next cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from failover.controller.state import Book, Override, OverrideKind
from failover.controller.store import ActionRecord, StoredState
from nodevigil.core.errors import StateError
from nodevigil.state.controller_rows import action_body, action_from, book_changes, book_from
from nodevigil.state.postgres.bounded import Bounded
from nodevigil.state.postgres.epoch import EpochFence
from nodevigil.state.postgres.schema import migrate

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

COMPONENT = "controller"
WAIT = 1.0  # seconds the controller waits for one store call before it goes on without it

STEPS = (
    """
    CREATE TABLE controller_overrides (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        reason TEXT NOT NULL,
        who TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        until DOUBLE PRECISION,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE controller_books (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE controller_outages (
        service TEXT PRIMARY KEY,
        started_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE controller_actions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX controller_actions_at ON controller_actions (at);
    """,
)

# Whole lists in one statement each: a first save of 10,000 nodes is one round trip, not 10,000.
_PUT_ENTRIES = """
INSERT INTO controller_books (kind, name, body)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body
"""
_DELETE_ENTRIES = """
DELETE FROM controller_books b
USING unnest(%s::text[], %s::text[]) AS gone (kind, name)
WHERE b.kind = gone.kind AND b.name = gone.name
"""
_PUT_OUTAGES = """
INSERT INTO controller_outages (service, started_at, body)
SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[])
ON CONFLICT (service) DO UPDATE SET started_at = excluded.started_at, body = excluded.body
"""


class PostgresControllerStore:
    """The controller's store in the shared database, over the backend's connection pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        available: Callable[[], bool] = lambda: True,
        fence: EpochFence | None = None,
    ) -> None:
        self._pool = pool  # the backend's: it closes it
        # The leader's writes (book, action log) are refused once a newer epoch holds the
        # database; overrides are operators' writes from any host and are not fenced.
        self._fence = fence or EpochFence(holder="")
        self._ready = False  # the schema is migrated (on the first call)
        self._saved: Book | None = None  # what the database holds, so a save writes changes only
        # The book is saved on the failover path: never wait long for a database that does
        # not answer (nodevigil.state.postgres.bounded); the controller retries next cycle.
        self._bounded = Bounded("controller store (PostgreSQL)", wait=WAIT, available=available)

    async def _run(
        self, what: str, fn: Callable[[Conn], Awaitable[T]], *, leader: bool = False
    ) -> T:
        """``fn`` in one transaction, waited for at most ``WAIT`` seconds; errors as StateError."""
        return await self._bounded.run(
            lambda: self._transaction(what, fn, leader=leader), what=what
        )

    async def _transaction(
        self, what: str, fn: Callable[[Conn], Awaitable[T]], *, leader: bool = False
    ) -> T:
        """``fn`` in one transaction, the schema brought up to date first; errors as StateError.

        A ``leader`` write is fenced by the epoch (``nodevigil.state.postgres.epoch``)."""
        try:
            async with self._pool.connection() as conn:
                if not self._ready:
                    await migrate(conn, COMPONENT, STEPS)
                    self._ready = True
                async with self._fence.transaction(conn, what, leader=leader):
                    return await fn(conn)
        except psycopg.Error as exc:
            raise StateError(f"controller store (PostgreSQL): cannot {what}: {exc}") from exc

    async def load(self) -> StoredState:
        """Everything saved so far."""
        # At start, before anything acts: as long as it takes (a 10,000-node book, a migration).
        stored = await self._transaction("load the saved state", _load)
        self._saved = stored.book
        return stored

    async def put_override(self, override: Override) -> None:
        """Save or replace an override."""
        o = override

        async def put(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO controller_overrides (kind, name, reason, who, since, until) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (kind, name) DO UPDATE SET "
                "reason = excluded.reason, who = excluded.who, since = excluded.since, "
                "until = excluded.until",
                (o.kind, o.name, o.reason, o.who, o.since, o.until),
            )

        await self._run(f"save the override of {o.kind} {o.name}", put)

    async def delete_override(self, kind: OverrideKind, name: str) -> None:
        """Forget an override (no error when absent)."""

        async def delete(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM controller_overrides WHERE kind = %s AND name = %s", (kind, name)
            )

        await self._run(f"delete the override of {kind} {name}", delete)

    async def save_book(self, book: Book, records: Sequence[ActionRecord] = ()) -> None:
        """Replace the saved bookkeeping, writing only the entries that changed, and append
        ``records`` to the action log, in one transaction."""
        changes = book_changes(book, self._saved)
        rows = [(r.at, action_body(r)) for r in records]

        async def save(conn: Conn) -> None:
            if changes.rewrite:
                await conn.execute("DELETE FROM controller_books")
                await conn.execute("DELETE FROM controller_outages")
            if changes.entries:
                kinds, names, bodies = (list(c) for c in zip(*changes.entries, strict=True))
                await conn.execute(_PUT_ENTRIES, (kinds, names, bodies))
            if changes.gone:
                kinds, names = (list(c) for c in zip(*changes.gone, strict=True))
                await conn.execute(_DELETE_ENTRIES, (kinds, names))
            if changes.outages:
                services, starts, bodies = (list(c) for c in zip(*changes.outages, strict=True))
                await conn.execute(_PUT_OUTAGES, (services, starts, bodies))
            if changes.ended:
                await conn.execute(
                    "DELETE FROM controller_outages WHERE service = ANY(%s::text[])",
                    (changes.ended,),
                )
            if rows:
                async with conn.cursor() as cursor:  # in order: the identity keeps their order
                    await cursor.executemany(
                        "INSERT INTO controller_actions (at, body) VALUES (%s, %s)", rows
                    )

        async def save_and_note() -> None:
            await self._transaction("save the book", save, leader=True)
            # Only after the commit; also when it commits after the controller stopped waiting.
            self._saved = book

        await self._bounded.run(save_and_note, what="save the book")

    async def record_actions(self, records: list[ActionRecord]) -> None:
        """Append to the action log."""
        if not records:
            return
        rows = [(r.at, action_body(r)) for r in records]

        async def record(conn: Conn) -> None:
            async with conn.cursor() as cursor:  # in order: the identity keeps their order
                await cursor.executemany(
                    "INSERT INTO controller_actions (at, body) VALUES (%s, %s)", rows
                )

        await self._run("record actions", record, leader=True)

    async def actions(self, limit: int = 100) -> list[ActionRecord]:
        """The latest ``limit`` action records, newest last."""

        async def latest(conn: Conn) -> list[TupleRow]:
            cursor = await conn.execute(
                "SELECT body FROM controller_actions ORDER BY id DESC LIMIT %s", (max(0, limit),)
            )
            return await cursor.fetchall()

        rows = await self._run("read the action log", latest)
        return [action_from(body) for (body,) in reversed(rows)]

    async def prune_actions(self, before: float) -> int:
        """Delete action records older than wall time ``before`` (retention); return the count."""

        async def prune(conn: Conn) -> int:
            cursor = await conn.execute("DELETE FROM controller_actions WHERE at < %s", (before,))
            return cursor.rowcount

        return await self._run("prune the action log", prune, leader=True)

    async def close(self) -> None:
        """Cancel an operation still waiting for the server (the pool belongs to the backend)."""
        await self._bounded.close()


async def _load(conn: Conn) -> StoredState:
    overrides: dict[tuple[OverrideKind, str], Override] = {}
    cursor = await conn.execute(
        "SELECT kind, name, reason, who, since, until FROM controller_overrides"
    )
    for kind, name, reason, who, since, until in await cursor.fetchall():
        overrides[(kind, name)] = Override(kind, name, reason, who, since, until)
    entries = await (await conn.execute("SELECT kind, name, body FROM controller_books")).fetchall()
    outages = await (
        await conn.execute("SELECT service, started_at, body FROM controller_outages")
    ).fetchall()
    book = book_from(entries, outages)
    return StoredState(overrides, book)
