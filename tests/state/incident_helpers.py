"""Helpers of the incident store's contract tests: stores of either backend, messages, times."""

from __future__ import annotations

from collections.abc import Callable

from failover.incidents.model import Incident, Outgoing
from failover.incidents.ports import IncidentStore
from failover.notify.base import Message
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend

T0 = 1_767_225_600.0  # a wall time: 2026-01-01T00:00:00Z


def store_on(backend: Backend, owner: str) -> IncidentStore:
    """Another incident store on the same state as ``backend``'s, claiming as ``owner``
    (another host sharing PostgreSQL, another process on the same SQLite file)."""
    if isinstance(backend, SqliteBackend):
        from nodevigil.state.sqlite.incidents import SqliteIncidentStore

        return SqliteIncidentStore(backend.state_dir / "incidents.db", owner=owner)
    assert isinstance(backend, PostgresBackend)
    from nodevigil.state.postgres.incidents import PostgresIncidentStore

    return PostgresIncidentStore(backend.pool, owner=owner)


def outgoing(
    message_id: str,
    not_before: float,
    *,
    notifier: str = "hook",
    incident: int | None = None,
    customer: str | None = None,
    step: str | None = None,
    data: dict[str, object] | None = None,
) -> Outgoing:
    """One notification to enqueue."""
    message = Message(
        id=message_id,
        notifier=notifier,
        kind="incident.opened",
        subject="web",
        created_at=not_before,
        data=data or {"service": "web", "n": 1},
        summary=f"summary of {message_id}",
        text=f"text of {message_id}",
    )
    return Outgoing(message, not_before, incident, customer, step)


def plan(*steps: tuple[str, float]) -> Callable[[Incident], list[Outgoing]]:
    """An ``outgoing`` callback: one notification per (step, delay), ids from the incident."""

    def build(incident: Incident) -> list[Outgoing]:
        return [
            outgoing(
                f"i{incident.id}-{incident.openings}-{step}",
                incident.opened_at + delay,
                incident=incident.id,
                customer="acme",
                step=step,
            )
            for step, delay in steps
        ]

    return build
