"""Pending ledger changes in PostgreSQL: the SLA ledger's outbox, beside the incidents.

A row is written in the same transaction as the incident's cause or the window it follows
(``put_ledger_change``), and leaves ``pending`` only once the ledger holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from failover.incidents.ports import LedgerChange
from nodevigil.state.postgres.incidents_db import Conn, IncidentsDb

CHANGE_COLUMNS = (
    "id, kind, services, start_at, end_at, cause, note, who, not_before, incident_id, window_id"
)


async def put_ledger_change(conn: Conn, change: LedgerChange) -> None:
    """Write ``change`` pending (inside the caller's transaction)."""
    await conn.execute(
        f"INSERT INTO ledger_outbox ({CHANGE_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            change.id,
            change.kind,
            list(change.services),
            change.start,
            change.end,
            change.cause,
            change.note,
            change.who,
            change.not_before,
            change.incident,
            change.window,
        ),
    )


def ledger_change_of(row: Sequence[Any]) -> LedgerChange:
    """A ``ledger_outbox`` row (``CHANGE_COLUMNS``) as a LedgerChange."""
    return LedgerChange(
        id=row[0],
        kind=row[1],
        services=tuple(row[2]),
        start=row[3],
        end=row[4],
        cause=row[5],
        note=row[6],
        who=row[7],
        not_before=row[8],
        incident=row[9],
        window=row[10],
    )


class PostgresLedgerChanges(IncidentsDb):
    """The ledger's outbox: pending changes read in order and marked once the ledger has them."""

    async def ledger_changes(self, now: float, limit: int = 100) -> list[LedgerChange]:
        """Pending ledger changes whose ``not_before`` has come, in the order they were written."""
        rows = await self._all(
            "list pending ledger changes",
            f"SELECT {CHANGE_COLUMNS} FROM ledger_outbox WHERE state = 'pending' "
            "AND not_before <= %s ORDER BY seq LIMIT %s",
            (now, limit),
        )
        return [ledger_change_of(r) for r in rows]

    async def ledger_change_applied(self, change: str, *, exclusion_id: int | None = None) -> bool:
        """The ledger holds the change; a window's exclusion is noted on the window."""

        async def run(conn: Conn) -> bool:
            row = await (
                await conn.execute(
                    "UPDATE ledger_outbox SET state = 'applied' "
                    "WHERE id = %s AND state = 'pending' RETURNING window_id",
                    (change,),
                )
            ).fetchone()
            if row is None:
                return False
            if exclusion_id is not None and row[0] is not None:
                await conn.execute(
                    "UPDATE maintenance_windows SET exclusion_id = %s WHERE id = %s",
                    (exclusion_id, row[0]),
                )
            return True

        return await self._run("mark a ledger change applied", run)

    async def ledger_change_refused(self, change: str, error: str) -> None:
        """The ledger refused the change for good: kept with the reason, no longer pending."""
        await self._changed(
            "mark a ledger change refused",
            "UPDATE ledger_outbox SET state = 'refused', error = %s "
            "WHERE id = %s AND state = 'pending'",
            (error, change),
        )
