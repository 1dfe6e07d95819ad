"""The incidents' port: what the manager, the dispatcher, the API and the daemon ask of a store.

Incidents, their updates, maintenance windows, the notification outbox and the notifiers'
state live together, because an incident's change and the notifications it causes are written
in one transaction: a crash can never leave an opened incident whose customers will not be
told, and a notification is durable before any attempt to send it. Backends live in
``nodevigil.state`` (SQLite: ``nodevigil.state.sqlite.incidents``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from failover.incidents.model import Incident, IncidentState, OutboxRow, Outgoing, Update, Window


class IncidentStore(Protocol):
    """Incidents, their updates, maintenance windows and the outbox, durable."""

    async def open(self) -> None:
        """Create the schema."""
        ...

    async def close(self) -> None:
        """Close the database."""
        ...

    async def open_incident(
        self,
        service: str,
        *,
        started_at: float,
        at: float,
        maintenance: bool,
        cause: str,
        message: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """Open a new incident, its first update and its notifications, atomically."""
        ...

    async def reopen_incident(
        self,
        incident: int,
        *,
        at: float,
        message: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """Reopen a recently resolved incident (the service failed again soon after)."""
        ...

    async def resolve_incident(
        self,
        incident: int,
        *,
        resolved_at: float,
        at: float,
        message: str,
        author: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> tuple[Incident, int]:
        """Resolve, cancel plan steps not yet due, enqueue the resolution notices.

        Returns the incident and how many scheduled steps were cancelled.
        """
        ...

    async def add_update(
        self,
        incident: int,
        *,
        at: float,
        state: IncidentState | None,
        message: str,
        author: str,
        outgoing: Callable[[Incident], list[Outgoing]],
    ) -> Incident:
        """An operator's update (and optionally a new state) with its notifications."""
        ...

    async def set_cause(
        self, incident: int, *, cause: str, note: str, at: float, author: str
    ) -> Incident:
        """Tag the incident's cause (the ledger follows through an event)."""
        ...

    async def get(self, incident: int) -> Incident | None:
        """One incident, or None."""
        ...

    async def incidents(
        self,
        *,
        open_only: bool = False,
        services: Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents, newest first; ``since`` keeps those open or resolved after it."""
        ...

    async def last_resolved(self, service: str) -> Incident | None:
        """The service's most recently resolved incident."""
        ...

    async def updates(self, incident: int) -> list[Update]:
        """The incident's timeline of updates, oldest first."""
        ...

    async def record_first_notice(self, incident: int, at: float) -> Incident | None:
        """Note the first customer notice delivered; the incident when this was the first."""
        ...

    async def enqueue(self, items: Sequence[Outgoing]) -> int:
        """Write notifications (an id already written is left alone); how many are new."""
        ...

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Pending notifications whose time has come and that no sender holds, oldest first."""
        ...

    async def claim_due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Like ``due``, and mark them held, so no later pass reads them while they are sent.

        A claim lives only as long as the process: ``release_claims`` at start-up frees what a
        crash left held, so nothing waits for a lease to expire.
        """
        ...

    async def release_claims(self, message_id: str | None = None) -> None:
        """Free one held notification, or (at start-up) every one."""
        ...

    async def next_due_at(self) -> float | None:
        """When the next pending notification that no sender holds falls due."""
        ...

    async def mark_delivered(self, message_id: str, at: float, attempts: int) -> None:
        """The receiver took it."""
        ...

    async def mark_retry(self, message_id: str, attempts: int, next_at: float, error: str) -> None:
        """It failed; try again at ``next_at``."""
        ...

    async def mark_dead(self, message_id: str, attempts: int, error: str) -> None:
        """Retries exhausted or the receiver is gone: dead-lettered, kept for the API."""
        ...

    async def requeue(self, message_id: str, now: float) -> bool:
        """Put a dead-lettered notification back in line (an operator's retry)."""
        ...

    async def notifications(
        self,
        *,
        incident: int | None = None,
        state: str | None = None,
        limit: int = 200,
    ) -> list[OutboxRow]:
        """Outbox rows, newest first, by incident and/or state."""
        ...

    async def outbox_stats(self, now: float) -> tuple[int, int, float | None]:
        """(due now, scheduled for later, creation time of the oldest due one)."""
        ...

    async def disable_notifier(self, name: str, at: float, reason: str) -> None:
        """Remember that a receiver answered 410 Gone (survives a restart)."""
        ...

    async def enable_notifier(self, name: str) -> bool:
        """An operator re-enables a notifier; whether it was disabled."""
        ...

    async def disabled_notifiers(self) -> dict[str, tuple[float, str]]:
        """Disabled notifiers: name -> (since, reason)."""
        ...

    async def windows(self, *, include_cancelled: bool = False) -> list[Window]:
        """Every maintenance window, by start."""
        ...

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
    ) -> Window:
        """Declare a window (a config window is written once, by its key)."""
        ...

    async def cancel_window(self, window: int, now: float) -> Window | None:
        """Cancel a window that has not started; None when there is none such."""
        ...

    async def mark_window_excluded(self, window: int, exclusion_id: int) -> None:
        """The ledger holds the window's exclusion."""
        ...

    async def prune(self, before: float) -> int:
        """Delete incidents resolved, notifications finished and windows ended before ``before``."""
        ...
