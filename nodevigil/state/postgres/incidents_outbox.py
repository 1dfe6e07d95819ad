"""The notification outbox and the notifiers' state, in PostgreSQL.

Several hosts may share the outbox. A row is claimed in the store's ``owner``'s name until an
expiry; ``SELECT ... FOR UPDATE SKIP LOCKED`` lets two hosts claim at once without waiting on
each other, and a row another claim still holds is never handed out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from failover.incidents.model import OutboxRow, Outgoing
from failover.incidents.ports import CLAIM_LEASE
from nodevigil.state.incident_rows import OUTBOX_COLUMNS, outbox_row_of
from nodevigil.state.postgres.incidents_db import IncidentsDb, enqueue

# Pending, due, and held by no live claim (parameters: now, now).
_CLAIMABLE = "state = 'pending' AND next_at <= %s AND (claimed_by IS NULL OR claimed_until <= %s)"
# A late result must not overwrite a row another owner took over after this one's claim expired.
_STILL_MINE = "state = 'pending' AND (claimed_by IS NULL OR claimed_by = %s)"

_CLAIM = f"""
WITH picked AS (
    SELECT id FROM outbox WHERE {_CLAIMABLE}
    ORDER BY next_at LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET claimed_by = %s, claimed_until = %s
FROM picked WHERE o.id = picked.id
RETURNING {", ".join("o." + c.strip() for c in OUTBOX_COLUMNS.split(","))}
"""


class PostgresOutbox(IncidentsDb):
    """The outbox's lifecycle: enqueue, claim, deliver, retry, dead-letter, requeue."""

    async def enqueue(self, items: Sequence[Outgoing]) -> int:
        """Write notifications (an id already written is left alone); how many are new."""
        if not items:
            return 0
        # The leader's alerts and repeats; operators' notices come with their update.
        return await self._run("enqueue notifications", lambda c: enqueue(c, items), leader=True)

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Pending notifications whose time has come and that no live claim holds, oldest first."""
        rows = await self._all(
            "read the due notifications",
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {_CLAIMABLE} ORDER BY next_at LIMIT %s",
            (now, now, limit),
        )
        return [outbox_row_of(r) for r in rows]

    async def claim_due(
        self, now: float, limit: int = 100, *, lease: float = CLAIM_LEASE
    ) -> list[OutboxRow]:
        """Like ``due``, and claim them for this store's owner until ``now + lease``."""
        # A row locked by a concurrent claim is skipped; one that claim committed meanwhile is
        # re-checked against the WHERE on its new version, which its live claim now fails.
        rows = await self._all(
            "claim due notifications",
            _CLAIM,
            (now, now, limit, self.owner, now + lease),
            leader=True,
        )
        return sorted((outbox_row_of(r) for r in rows), key=lambda r: r.next_at)

    async def extend_claim(
        self, message_id: str, now: float, *, lease: float = CLAIM_LEASE
    ) -> bool:
        """Hold this owner's claim until ``now + lease``; False when it is not this owner's."""
        changed = await self._changed(
            "extend a claim",
            "UPDATE outbox SET claimed_until = %s "
            "WHERE id = %s AND claimed_by = %s AND state = 'pending'",
            (now + lease, message_id, self.owner),
            leader=True,
        )
        return bool(changed)

    async def release_claims(self, message_id: str | None = None) -> None:
        """Free one notification this owner holds, or (at start-up) every one it holds."""
        sql = "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = %s"
        args: tuple[str, ...] = (self.owner,)
        if message_id is not None:
            sql += " AND id = %s"
            args += (message_id,)
        await self._changed("release claims", sql, args)

    async def take_over_claims(self) -> int:
        """Free every pending notification another owner holds (a new leader's takeover)."""
        return await self._changed(
            "take over claims",
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
            "WHERE state = 'pending' AND claimed_by IS NOT NULL AND claimed_by <> %s",
            (self.owner,),
            leader=True,  # fenced: only the holder of the newest epoch takes claims over
        )

    async def next_due_at(self) -> float | None:
        """When the next pending notification no other owner holds may be claimed."""
        row = await self._one(
            "read the next due time",
            "SELECT MIN(CASE WHEN claimed_by IS NULL THEN next_at "
            "ELSE GREATEST(next_at, claimed_until) END) FROM outbox "
            "WHERE state = 'pending' AND (claimed_by IS NULL OR claimed_by <> %s)",
            (self.owner,),
        )
        return None if row is None or row[0] is None else float(row[0])

    async def mark_delivered(self, message_id: str, at: float, attempts: int) -> None:
        """The receiver took it (recorded whoever holds it: a delivery is a fact)."""
        await self._changed(
            "record a delivery",
            "UPDATE outbox SET state = 'delivered', delivered_at = %s, attempts = %s, "
            "last_error = '', claimed_by = NULL, claimed_until = NULL WHERE id = %s",
            (at, attempts, message_id),
        )

    async def mark_retry(self, message_id: str, attempts: int, next_at: float, error: str) -> None:
        """It failed; try again at ``next_at`` (ignored when another owner holds it now)."""
        await self._changed(
            "record a failed attempt",
            "UPDATE outbox SET attempts = %s, next_at = %s, last_error = %s, claimed_by = NULL, "
            f"claimed_until = NULL WHERE id = %s AND {_STILL_MINE}",
            (attempts, next_at, error[:500], message_id, self.owner),
            leader=True,
        )

    async def mark_dead(self, message_id: str, attempts: int, error: str) -> None:
        """Retries exhausted or the receiver is gone: dead-lettered, kept for the API
        (ignored when another owner holds it now)."""
        await self._changed(
            "dead-letter a notification",
            "UPDATE outbox SET state = 'dead', attempts = %s, last_error = %s, "
            f"claimed_by = NULL, claimed_until = NULL WHERE id = %s AND {_STILL_MINE}",
            (attempts, error[:500], message_id, self.owner),
            leader=True,
        )

    async def requeue(self, message_id: str, now: float) -> bool:
        """Put a dead-lettered notification back in line (an operator's retry)."""
        changed = await self._changed(
            "requeue a notification",
            "UPDATE outbox SET state = 'pending', next_at = %s, created_at = %s, "
            "claimed_by = NULL, claimed_until = NULL WHERE id = %s AND state = 'dead'",
            (now, now, message_id),
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
        clauses, args = ["true"], list[Any]()
        if incident is not None:
            clauses.append("incident = %s")
            args.append(incident)
        if state is not None:
            clauses.append("state = %s")
            args.append(state)
        args.append(limit)
        rows = await self._all(
            "list notifications",
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(clauses)} "
            'ORDER BY created_at DESC, id COLLATE "C" LIMIT %s',
            args,
        )
        return [outbox_row_of(r) for r in rows]

    async def outbox_stats(self, now: float) -> tuple[int, int, float | None]:
        """(due now, scheduled for later, creation time of the oldest due one)."""
        row = await self._one(
            "count the outbox",
            "SELECT COUNT(*) FILTER (WHERE not_before <= %s), "
            "COUNT(*) FILTER (WHERE not_before > %s), "
            "MIN(created_at) FILTER (WHERE not_before <= %s) "
            "FROM outbox WHERE state = 'pending'",
            (now, now, now),
        )
        assert row is not None  # an aggregate always returns one row
        return int(row[0]), int(row[1]), row[2]

    # --- notifiers a receiver disabled (410 Gone) ------------------------------------------

    async def disable_notifier(self, name: str, at: float, reason: str) -> None:
        """Remember that a receiver answered 410 Gone (survives a restart)."""
        await self._changed(
            "disable a notifier",
            "INSERT INTO notifiers_disabled (name, disabled_at, reason) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET disabled_at = excluded.disabled_at, "
            "reason = excluded.reason",
            (name, at, reason[:500]),
            leader=True,
        )

    async def enable_notifier(self, name: str) -> bool:
        """An operator re-enables a notifier; whether it was disabled."""
        changed = await self._changed(
            "enable a notifier", "DELETE FROM notifiers_disabled WHERE name = %s", (name,)
        )
        return bool(changed)

    async def disabled_notifiers(self) -> dict[str, tuple[float, str]]:
        """Disabled notifiers: name -> (since, reason)."""
        rows = await self._all(
            "read disabled notifiers", "SELECT name, disabled_at, reason FROM notifiers_disabled"
        )
        return {r[0]: (r[1], r[2]) for r in rows}
