"""Versioned schema migrations of one SQLite file, by ``PRAGMA user_version``.

The same rule as PostgreSQL's (``nodevigil.state.postgres.schema``): steps apply in order,
once, in one transaction; a file whose version is newer than this nodevigil knows is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from nodevigil.core.errors import StateError


def migrate(conn: sqlite3.Connection, steps: Sequence[str], *, path: Path | str) -> int:
    """Bring the file to version ``len(steps)``; return how many steps were applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``); each step is a script.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(steps):
        raise StateError(
            f"{path}: schema version {version} is newer than this nodevigil knows "
            f"({len(steps)}): upgrade nodevigil"
        )
    if version == len(steps):
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for step in steps[version:]:
            for statement in _statements(step):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={len(steps)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(steps) - version


def _statements(script: str) -> list[str]:
    """A script split into statements (executescript would commit the open transaction)."""
    out: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n\t;"):
                out.append(buffer.strip())
            buffer = ""
    return out
