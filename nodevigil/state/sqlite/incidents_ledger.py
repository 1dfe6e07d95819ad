"""Pending ledger changes in the incidents' SQLite file: the SLA ledger's outbox.

A row is written in the same transaction as the incident's cause or the window it follows
(``put_ledger_change``), and leaves ``pending`` only once the ledger holds it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from failover.incidents.ports import LedgerChange
from nodevigil.state.sqlite.incidents_db import IncidentsDb

CHANGE_COLUMNS = (
    "id, kind, services, start_at, end_at, cause, note, who, not_before, incident_id, window_id"
)


def put_ledger_change(conn: sqlite3.Connection, change: LedgerChange) -> None:
    """Write ``change`` pending (inside the caller's transaction)."""
    conn.execute(
        f"INSERT INTO ledger_outbox ({CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            change.id,
            change.kind,
            json.dumps(list(change.services)),
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
        services=tuple(json.loads(row[2])),
        start=row[3],
        end=row[4],
        cause=row[5],
        note=row[6],
        who=row[7],
        not_before=row[8],
        incident=row[9],
        window=row[10],
    )


class SqliteLedgerChanges(IncidentsDb):
    """The ledger's outbox: pending changes read in order and marked once the ledger has them."""

    async def ledger_changes(self, now: float, limit: int = 100) -> list[LedgerChange]:
        """Pending ledger changes whose ``not_before`` has come, in the order they were written."""
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {CHANGE_COLUMNS} FROM ledger_outbox WHERE state = 'pending' "
                "AND not_before <= ? ORDER BY seq LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [ledger_change_of(r) for r in rows]

    async def ledger_change_applied(self, change: str, *, exclusion_id: int | None = None) -> bool:
        """The ledger holds the change; a window's exclusion is noted on the window."""

        def run(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(
                "UPDATE ledger_outbox SET state = 'applied' WHERE id = ? AND state = 'pending'",
                (change,),
            ).rowcount
            if changed and exclusion_id is not None:
                conn.execute(
                    "UPDATE maintenance SET exclusion_id = ? WHERE id = "
                    "(SELECT window_id FROM ledger_outbox WHERE id = ?)",
                    (exclusion_id, change),
                )
            return bool(changed)

        return await self._write(run)

    async def ledger_change_refused(self, change: str, error: str) -> None:
        """The ledger refused the change for good: kept with the reason, no longer pending."""
        await self._write(
            lambda c: c.execute(
                "UPDATE ledger_outbox SET state = 'refused', error = ? "
                "WHERE id = ? AND state = 'pending'",
                (error, change),
            )
        )
