"""Versioned schema migrations: each store applies its own list, in order, once.

A table ``nodevigil_schema`` holds each component's version. Migrations run in one
transaction under an advisory lock, so two hosts starting at once apply them once. A database
whose schema is newer than this nodevigil knows is refused with a message saying so: an old
binary must not write into a shape it does not understand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, Connection

from nodevigil.core.errors import StateError

_LOCK = 0x6E6F6465  # pg_advisory_xact_lock key: "node"

_TABLE = """
CREATE TABLE IF NOT EXISTS nodevigil_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
_UPSERT = (
    "INSERT INTO nodevigil_schema (component, version) VALUES (%s, %s) "
    "ON CONFLICT (component) DO UPDATE SET version = excluded.version, applied_at = now()"
)


def _refuse_newer(component: str, version: int, known: int) -> None:
    if version > known:
        raise StateError(
            f"PostgreSQL schema of {component} is at version {version}, newer than this "
            f"nodevigil knows ({known}): upgrade nodevigil on this host"
        )


async def migrate(conn: AsyncConnection, component: str, steps: Sequence[str]) -> int:
    """Bring ``component`` to version ``len(steps)``; return how many steps were applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(_TABLE)
        row = await (
            await conn.execute(
                "SELECT version FROM nodevigil_schema WHERE component = %s", (component,)
            )
        ).fetchone()
        version = 0 if row is None else int(row[0])
        _refuse_newer(component, version, len(steps))
        for step in steps[version:]:
            await conn.execute(step.encode())
        if version < len(steps):
            await conn.execute(_UPSERT, (component, len(steps)))
    return len(steps) - version


def migrate_sync(conn: Connection[Any], component: str, steps: Sequence[str]) -> int:
    """``migrate`` on a synchronous connection (a store on a worker thread of its own)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(_TABLE)
        sql = "SELECT version FROM nodevigil_schema WHERE component = %s"
        row = conn.execute(sql, (component,)).fetchone()
        version = 0 if row is None else int(row[0])
        _refuse_newer(component, version, len(steps))
        for step in steps[version:]:
            conn.execute(step.encode())
        if version < len(steps):
            conn.execute(_UPSERT, (component, len(steps)))
    return len(steps) - version


async def version_of(conn: AsyncConnection, component: str) -> int | None:
    """The component's schema version, or None when it was never migrated."""
    exists = await (
        await conn.execute("SELECT to_regclass('nodevigil_schema') IS NOT NULL")
    ).fetchone()
    if not exists or not exists[0]:
        return None
    row = await (
        await conn.execute(
            "SELECT version FROM nodevigil_schema WHERE component = %s", (component,)
        )
    ).fetchone()
    return None if row is None else int(row[0])
