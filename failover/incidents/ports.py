"""The incidents' port: what the manager, the dispatcher, the API and the daemon ask of a store.

Incidents, their updates, maintenance windows, the notification outbox and the notifiers'
state live together, because an incident's change and the notifications it causes are written
in one transaction: a crash can never leave an opened incident whose customers will not be
told, and a notification is durable before any attempt to send it. Backends live in
``nodevigil.state`` (``sqlite.incidents``, ``postgres.incidents``).

What the SLA ledger must do because of an incident or a window (an incident's cause, a
maintenance window's exclusion) is written here too, as a pending ``LedgerChange`` in the same
transaction as the change it follows: the ledger is another database, and the application
applies these rows to it (idempotently, by their stable id) until each is marked applied, so a
crash or a ledger that refuses for a while can never leave the two disagreeing.

Each store has an ``owner`` (the host's vantage name): outbox rows are claimed in its name with
a lease, so several hosts can share one outbox without sending a row twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from failover.incidents.model import Incident, IncidentState, OutboxRow, Outgoing, Update, Window

# How long a claim on an outbox row lasts (seconds): comfortably longer than one delivery, which
# the dispatcher abandons after ``failover.notify.outbox.SEND_LIMIT`` (120 s). A host that dies
# mid-delivery delays its rows by at most this; the same host restarting frees them at once.
CLAIM_LEASE = 300.0


@dataclass(frozen=True, slots=True)
class LedgerChange:
    """A change the SLA ledger must make, written with the incident or window it follows.

    ``kind`` ``cause``: the intervals of ``services[0]`` overlapping ``[start, end]`` (``end``
    None: the incident is open, up to when it is applied) take ``cause``. ``exclusion``: the
    window ``[start, end]`` of ``services`` becomes an exclusion with ``cause``. ``id`` is
    stable (random, never reused): the ledger records it with the change, so applying the same
    row twice (a crash before it was marked applied) changes nothing the second time.
    ``not_before``: a window's exclusion waits for its start (until then it can be cancelled).
    """

    id: str
    kind: Literal["cause", "exclusion"]
    services: tuple[str, ...]
    start: float
    end: float | None
    cause: str
    note: str
    who: str
    not_before: float
    incident: int | None = None
    window: int | None = None


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
        self,
        incident: int,
        *,
        cause: str,
        note: str,
        at: float,
        author: str,
        ledger: Callable[[Incident], LedgerChange] | None = None,
    ) -> Incident:
        """Tag the incident's cause; ``ledger``'s change is written pending in the same
        transaction."""
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
        """Pending notifications whose time has come and that no live claim holds, oldest first."""
        ...

    async def claim_due(
        self, now: float, limit: int = 100, *, lease: float = CLAIM_LEASE
    ) -> list[OutboxRow]:
        """Like ``due``, and claim them for this store's owner until ``now + lease``.

        A row claimed by anyone (this owner included) is not handed out again until its claim
        expires or is released: two hosts sharing the outbox never send the same row, and a
        host that died mid-delivery leaves its rows to whoever claims after the lease.
        """
        ...

    async def extend_claim(
        self, message_id: str, now: float, *, lease: float = CLAIM_LEASE
    ) -> bool:
        """Hold this owner's claim until ``now + lease``; False when the row is no longer
        this owner's to send (another took it over after it expired, or it left ``pending``)."""
        ...

    async def release_claims(self, message_id: str | None = None) -> None:
        """Free one notification this owner holds, or (at start-up) every one it holds.

        Claims of other owners are never touched: they are freed by them or by their expiry.
        """
        ...

    async def take_over_claims(self) -> int:
        """Free every pending notification another owner holds; return how many.

        Only for a new leader of a cluster: the previous leader lost the lease (and with it,
        its fencing epoch) before this one took it, so what it claimed and did not mark
        delivered is sent again now, with the same message id, instead of after its lease.
        """
        ...

    async def next_due_at(self) -> float | None:
        """When the next pending notification no other owner holds may be claimed."""
        ...

    async def mark_delivered(self, message_id: str, at: float, attempts: int) -> None:
        """The receiver took it."""
        ...

    async def mark_retry(self, message_id: str, attempts: int, next_at: float, error: str) -> None:
        """It failed; try again at ``next_at`` (ignored when another owner holds it now)."""
        ...

    async def mark_dead(self, message_id: str, attempts: int, error: str) -> None:
        """Retries exhausted or the receiver is gone: dead-lettered, kept for the API
        (ignored when another owner holds it now)."""
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
        ledger: Callable[[Window], LedgerChange] | None = None,
    ) -> Window:
        """Declare a window (a config window is written once, by its key); when it is new,
        ``ledger``'s change is written pending in the same transaction."""
        ...

    async def cancel_window(self, window: int, now: float) -> Window | None:
        """Cancel a window that has not started, and its pending ledger change; None when there
        is none such."""
        ...

    async def mark_window_excluded(self, window: int, exclusion_id: int) -> None:
        """The ledger holds the window's exclusion."""
        ...

    async def ledger_changes(self, now: float, limit: int = 100) -> list[LedgerChange]:
        """Pending ledger changes whose ``not_before`` has come, in the order they were written."""
        ...

    async def ledger_change_applied(self, change: str, *, exclusion_id: int | None = None) -> bool:
        """The ledger holds the change: it is no longer pending, and a window's exclusion is
        noted on the window (in one transaction). Whether it was pending."""
        ...

    async def ledger_change_refused(self, change: str, error: str) -> None:
        """The ledger refused the change for good (retrying cannot help): kept, not pending."""
        ...

    async def prune(self, before: float) -> int:
        """Delete incidents resolved, notifications finished and windows ended before ``before``,
        and ledger changes no longer pending written before it."""
        ...
