"""Maintenance windows, and pruning, in the incidents' SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from failover.incidents.model import Window
from failover.incidents.ports import LedgerChange
from nodevigil.state.incident_rows import window_of
from nodevigil.state.sqlite.incidents_db import WINDOW_COLUMNS, IncidentsDb
from nodevigil.state.sqlite.incidents_ledger import put_ledger_change


class SqliteWindows(IncidentsDb):
    """Maintenance windows: declared, cancelled, marked excluded in the ledger."""

    async def windows(self, *, include_cancelled: bool = False) -> list[Window]:
        """Every maintenance window, by start."""
        where = "" if include_cancelled else "WHERE cancelled = 0"
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {WINDOW_COLUMNS} FROM maintenance {where} ORDER BY start, id"
            ).fetchall()
        )
        return [window_of(r) for r in rows]

    async def add_window(
        self,
        *,
        start: float,
        end: float,
        services: Sequence[str],
        note: str,
        source: str,
        who: str,
        config_key: str | None = None,
        ledger: Callable[[Window], LedgerChange] | None = None,
    ) -> Window:
        """Declare a window (a config window is written once, by its key), with the ledger's
        change pending in the same transaction."""

        def run(conn: sqlite3.Connection) -> Window:
            if config_key is not None:
                row = conn.execute(
                    f"SELECT {WINDOW_COLUMNS} FROM maintenance WHERE config_key = ?",
                    (config_key,),
                ).fetchone()
                if row is not None:
                    return window_of(row)
            cursor = conn.execute(
                "INSERT INTO maintenance (start, end, services, note, source, who, config_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (start, end, json.dumps(list(services)), note, source, who, config_key),
            )
            row = conn.execute(
                f"SELECT {WINDOW_COLUMNS} FROM maintenance WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
            window = window_of(row)
            if ledger is not None:
                put_ledger_change(conn, ledger(window))
            return window

        return await self._write(run)

    async def cancel_window(self, window: int, now: float) -> Window | None:
        """Cancel a window that has not started; None when there is none such."""

        def run(conn: sqlite3.Connection) -> Window | None:
            changed = conn.execute(
                "UPDATE maintenance SET cancelled = 1 WHERE id = ? AND start > ? AND cancelled = 0",
                (window, now),
            ).rowcount
            if not changed:
                return None
            conn.execute(
                "UPDATE ledger_outbox SET state = 'cancelled' "
                "WHERE window_id = ? AND state = 'pending'",
                (window,),
            )
            row = conn.execute(
                f"SELECT {WINDOW_COLUMNS} FROM maintenance WHERE id = ?", (window,)
            ).fetchone()
            return window_of(row)

        return await self._write(run)

    async def mark_window_excluded(self, window: int, exclusion_id: int) -> None:
        """The ledger holds the window's exclusion."""
        await self._call(
            lambda c: c.execute(
                "UPDATE maintenance SET exclusion_id = ? WHERE id = ?", (exclusion_id, window)
            )
        )

    # --- retention --------------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Delete incidents resolved, notifications finished, windows ended and ledger changes
        done before ``before``."""

        def run(conn: sqlite3.Connection) -> int:
            removed = conn.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND created_at < ? AND "
                "(incident IS NULL OR incident IN (SELECT id FROM incidents "
                "WHERE resolved_at IS NOT NULL AND resolved_at < ?))",
                (before, before),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM updates WHERE incident IN (SELECT id FROM incidents "
                "WHERE resolved_at IS NOT NULL AND resolved_at < ?)",
                (before,),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM incidents WHERE resolved_at IS NOT NULL AND resolved_at < ? "
                "AND id NOT IN (SELECT incident FROM outbox WHERE incident IS NOT NULL)",
                (before,),
            ).rowcount
            removed += conn.execute(
                "DELETE FROM maintenance WHERE end < ? AND config_key IS NULL", (before,)
            ).rowcount
            removed += conn.execute(
                "DELETE FROM ledger_outbox WHERE state != 'pending' AND not_before < ?", (before,)
            ).rowcount
            return removed

        return await self._write(run)
