"""The notification outbox and the notifiers' state, in the incidents' SQLite file.

A row is claimed in the store's ``owner``'s name until an expiry: a claim that has not expired
keeps every other pass (this process's or another's on the same file) from handing it out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from failover.incidents.model import OutboxRow, Outgoing
from failover.incidents.ports import CLAIM_LEASE
from nodevigil.state.incident_rows import OUTBOX_COLUMNS, outbox_row_of
from nodevigil.state.sqlite.incidents_db import IncidentsDb, enqueue

# Pending, due, and held by no live claim (parameters: now, now).
_CLAIMABLE = "state = 'pending' AND next_at <= ? AND (claimed_by IS NULL OR claimed_until <= ?)"
# A late result must not overwrite a row another owner took over after this one's claim expired.
_STILL_MINE = "state = 'pending' AND (claimed_by IS NULL OR claimed_by = ?)"


class SqliteOutbox(IncidentsDb):
    """The outbox's lifecycle: enqueue, claim, deliver, retry, dead-letter, requeue."""

    async def enqueue(self, items: Sequence[Outgoing]) -> int:
        """Write notifications (an id already written is left alone); how many are new."""
        if not items:
            return 0
        return await self._write(lambda t: enqueue(t, items))

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Pending notifications whose time has come and that no live claim holds, oldest first."""
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {_CLAIMABLE} ORDER BY next_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
        )
        return [outbox_row_of(r) for r in rows]

    async def claim_due(
        self, now: float, limit: int = 100, *, lease: float = CLAIM_LEASE
    ) -> list[OutboxRow]:
        """Like ``due``, and claim them for this store's owner until ``now + lease``."""

        def run(conn: sqlite3.Connection) -> list[Any]:
            # BEGIN IMMEDIATE holds the file's write lock: another store on the same file
            # reads only after this commits, and then sees the claims.
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {_CLAIMABLE} ORDER BY next_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                [(self.owner, now + lease, r[0]) for r in rows],
            )
            return rows

        return [outbox_row_of(r) for r in await self._write(run)]

    async def extend_claim(
        self, message_id: str, now: float, *, lease: float = CLAIM_LEASE
    ) -> bool:
        """Hold this owner's claim until ``now + lease``; False when it is not this owner's."""
        changed = await self._call(
            lambda c: (
                c.execute(
                    "UPDATE outbox SET claimed_until = ? "
                    "WHERE id = ? AND claimed_by = ? AND state = 'pending'",
                    (now + lease, message_id, self.owner),
                ).rowcount
            )
        )
        return bool(changed)

    async def release_claims(self, message_id: str | None = None) -> None:
        """Free one notification this owner holds, or (at start-up) every one it holds."""
        sql = "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?"
        args: tuple[str, ...] = (self.owner,)
        if message_id is not None:
            sql += " AND id = ?"
            args += (message_id,)
        await self._call(lambda c: c.execute(sql, args))

    async def take_over_claims(self) -> int:
        """Free every pending notification another owner holds (a new leader's takeover)."""
        changed = await self._call(
            lambda c: (
                c.execute(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                    "WHERE state = 'pending' AND claimed_by IS NOT NULL AND claimed_by != ?",
                    (self.owner,),
                ).rowcount
            )
        )
        return int(changed)

    async def next_due_at(self) -> float | None:
        """When the next pending notification no other owner holds may be claimed."""
        row = await self._call(
            lambda c: c.execute(
                "SELECT MIN(CASE WHEN claimed_by IS NULL THEN next_at "
                "ELSE MAX(next_at, claimed_until) END) FROM outbox "
                "WHERE state = 'pending' AND (claimed_by IS NULL OR claimed_by != ?)",
                (self.owner,),
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def mark_delivered(self, message_id: str, at: float, attempts: int) -> None:
        """The receiver took it (recorded whoever holds it: a delivery is a fact)."""
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = ?, "
                "last_error = '', claimed_by = NULL, claimed_until = NULL WHERE id = ?",
                (at, attempts, message_id),
            )
        )

    async def mark_retry(self, message_id: str, attempts: int, next_at: float, error: str) -> None:
        """It failed; try again at ``next_at`` (ignored when another owner holds it now)."""
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ?, claimed_by = NULL, "
                f"claimed_until = NULL WHERE id = ? AND {_STILL_MINE}",
                (attempts, next_at, error[:500], message_id, self.owner),
            )
        )

    async def mark_dead(self, message_id: str, attempts: int, error: str) -> None:
        """Retries exhausted or the receiver is gone: dead-lettered, kept for the API
        (ignored when another owner holds it now)."""
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET state = 'dead', attempts = ?, last_error = ?, "
                f"claimed_by = NULL, claimed_until = NULL WHERE id = ? AND {_STILL_MINE}",
                (attempts, error[:500], message_id, self.owner),
            )
        )

    async def requeue(self, message_id: str, now: float) -> bool:
        """Put a dead-lettered notification back in line (an operator's retry)."""
        changed = await self._call(
            lambda c: (
                c.execute(
                    "UPDATE outbox SET state = 'pending', next_at = ?, created_at = ?, "
                    "claimed_by = NULL, claimed_until = NULL WHERE id = ? AND state = 'dead'",
                    (now, now, message_id),
                ).rowcount
            )
        )
        return bool(changed)

    async def notifications(
        self,
        *,
        incident: int | None = None,
        state: str | None = None,
        limit: int = 200,
    ) -> list[OutboxRow]:
        """Outbox rows, newest first, by incident and/or state."""
        clauses, args = ["1=1"], list[Any]()
        if incident is not None:
            clauses.append("incident = ?")
            args.append(incident)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        sql = (
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at DESC, id LIMIT ?"
        )
        args.append(limit)
        rows = await self._call(lambda c: c.execute(sql, args).fetchall())
        return [outbox_row_of(r) for r in rows]

    async def outbox_stats(self, now: float) -> tuple[int, int, float | None]:
        """(due now, scheduled for later, creation time of the oldest due one)."""

        def run(conn: sqlite3.Connection) -> tuple[int, int, float | None]:
            due, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox "
                "WHERE state = 'pending' AND not_before <= ?",
                (now,),
            ).fetchone()
            (scheduled,) = conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND not_before > ?", (now,)
            ).fetchone()
            return int(due), int(scheduled), oldest

        return await self._call(run)

    # --- notifiers a receiver disabled (410 Gone) ------------------------------------------

    async def disable_notifier(self, name: str, at: float, reason: str) -> None:
        """Remember that a receiver answered 410 Gone (survives a restart)."""
        await self._call(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO notifiers (name, disabled_at, reason) VALUES (?, ?, ?)",
                (name, at, reason[:500]),
            )
        )

    async def enable_notifier(self, name: str) -> bool:
        """An operator re-enables a notifier; whether it was disabled."""
        changed = await self._call(
            lambda c: c.execute("DELETE FROM notifiers WHERE name = ?", (name,)).rowcount
        )
        return bool(changed)

    async def disabled_notifiers(self) -> dict[str, tuple[float, str]]:
        """Disabled notifiers: name -> (since, reason)."""
        rows = await self._call(
            lambda c: c.execute("SELECT name, disabled_at, reason FROM notifiers").fetchall()
        )
        return {r[0]: (r[1], r[2]) for r in rows}
