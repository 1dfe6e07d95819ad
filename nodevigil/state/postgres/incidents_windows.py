"""Maintenance windows, and pruning, in PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from failover.incidents.model import Window
from failover.incidents.ports import LedgerChange
from nodevigil.state.incident_rows import window_of
from nodevigil.state.postgres.incidents_db import WINDOW_COLUMNS, Conn, IncidentsDb
from nodevigil.state.postgres.incidents_ledger import put_ledger_change


class PostgresWindows(IncidentsDb):
    """Maintenance windows: declared, cancelled, marked excluded in the ledger."""

    async def windows(self, *, include_cancelled: bool = False) -> list[Window]:
        """Every maintenance window, by start."""
        where = "" if include_cancelled else "WHERE NOT cancelled"
        rows = await self._all(
            "list maintenance windows",
            f"SELECT {WINDOW_COLUMNS} FROM maintenance_windows {where} ORDER BY start_at, id",
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

        async def run(conn: Conn) -> Window:
            # Two hosts writing the same config window at once: one inserts, the other reads.
            row = await (
                await conn.execute(
                    "INSERT INTO maintenance_windows (start_at, end_at, services, note, source, "
                    "who, config_key) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    f"ON CONFLICT (config_key) DO NOTHING RETURNING {WINDOW_COLUMNS}",
                    (start, end, list(services), note, source, who, config_key),
                )
            ).fetchone()
            if row is None:
                row = await (
                    await conn.execute(
                        f"SELECT {WINDOW_COLUMNS} FROM maintenance_windows WHERE config_key = %s",
                        (config_key,),
                    )
                ).fetchone()
                assert row is not None  # the conflict was on this key
                return window_of(row)
            window = window_of(row)
            if ledger is not None:
                await put_ledger_change(conn, ledger(window))
            return window

        return await self._run("add a maintenance window", run)

    async def cancel_window(self, window: int, now: float) -> Window | None:
        """Cancel a window that has not started, and its pending ledger change; None when there
        is none such."""

        async def run(conn: Conn) -> Window | None:
            row = await (
                await conn.execute(
                    "UPDATE maintenance_windows SET cancelled = true WHERE id = %s "
                    f"AND start_at > %s AND NOT cancelled RETURNING {WINDOW_COLUMNS}",
                    (window, now),
                )
            ).fetchone()
            if row is None:
                return None
            await conn.execute(
                "UPDATE ledger_outbox SET state = 'cancelled' "
                "WHERE window_id = %s AND state = 'pending'",
                (window,),
            )
            return window_of(row)

        return await self._run("cancel a maintenance window", run)

    async def mark_window_excluded(self, window: int, exclusion_id: int) -> None:
        """The ledger holds the window's exclusion."""
        await self._changed(
            "mark a window excluded",
            "UPDATE maintenance_windows SET exclusion_id = %s WHERE id = %s",
            (exclusion_id, window),
        )

    # --- retention --------------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Delete incidents resolved, notifications finished, windows ended and ledger changes
        done before ``before``."""

        async def run(conn: Conn) -> int:
            gone = "SELECT id FROM incidents WHERE resolved_at IS NOT NULL AND resolved_at < %s"
            statements: list[tuple[str, tuple[float, ...]]] = [
                (
                    "DELETE FROM outbox WHERE state <> 'pending' AND created_at < %s AND "
                    f"(incident IS NULL OR incident IN ({gone}))",
                    (before, before),
                ),
                (f"DELETE FROM incident_updates WHERE incident IN ({gone})", (before,)),
                (
                    "DELETE FROM incidents WHERE resolved_at IS NOT NULL AND resolved_at < %s "
                    "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.incident = incidents.id)",
                    (before,),
                ),
                (
                    "DELETE FROM maintenance_windows WHERE end_at < %s AND config_key IS NULL",
                    (before,),
                ),
                (
                    "DELETE FROM ledger_outbox WHERE state <> 'pending' AND not_before < %s",
                    (before,),
                ),
            ]
            removed = 0
            for sql, args in statements:
                removed += max((await conn.execute(sql, args)).rowcount, 0)
            return removed

        return await self._run("prune incidents", run)
