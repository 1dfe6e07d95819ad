"""What the state contract suites share: making events, bumping a stored schema version."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from nodevigil.core.events import Event, GenericEvent
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend


def event(kind: str, subject: str, at: float, **data: Any) -> Event:
    """An event of any kind (the event log stores every kind alike)."""
    return GenericEvent(raw_kind=kind, subject=subject, at=at, vantage="sh-probe", data=data)


async def set_schema_version(backend: Backend, *, file: str, component: str, version: int) -> None:
    """Pretend a newer nodevigil migrated this store: SQLite ``file``'s user_version, or
    PostgreSQL's ``nodevigil_schema`` row of ``component``."""
    if isinstance(backend, SqliteBackend):
        with contextlib.closing(sqlite3.connect(backend.state_dir / file)) as db:
            db.execute(f"PRAGMA user_version={version}")
    else:
        assert isinstance(backend, PostgresBackend)
        async with backend.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE nodevigil_schema SET version = %s WHERE component = %s",
                (version, component),
            )
            assert cursor.rowcount == 1
