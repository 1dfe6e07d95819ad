"""One SQLite connection on one worker thread: how the stores keep SQLite off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# What a SQLite store may raise when the disk refuses it: callers retry these later.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)


class SqliteWorker:
    """One SQLite connection used from one dedicated thread, so the event loop never blocks."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self._synchronous = synchronous  # FULL where a commit must survive a power cut
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
        return self._conn

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._open()))

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the worker thread in one transaction: all of it or none."""

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (disk I/O error)
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self.call(run)

    def close(self) -> None:
        """Close the connection and stop the thread (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)
