"""Incidents, their updates, maintenance windows and outbox rows, as the store hands them out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from failover.notify.base import Message

# The contract's causes (clauses VII, VIII.3, VIII.5); only ``provider`` earns credit.
CAUSES = (
    "provider",
    "force_majeure",
    "telecom_failure",
    "third_party",
    "cyber_attack",
    "customer_action",
    "scheduled_maintenance",
    "payment_issue",
)


class IncidentState(StrEnum):
    """An incident's lifecycle; it opens as ``investigating`` and resolves by itself."""

    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


def iso(seconds: float | None) -> str | None:
    """Wall seconds as RFC 3339 UTC, or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Incident:
    """A period in which a whole service is unavailable.

    ``started_at`` is when the service became unavailable (not when nodevigil noticed);
    ``openings`` counts how often it opened (a quick relapse reopens the same incident).
    """

    id: int
    service: str
    state: IncidentState
    cause: str
    cause_note: str
    maintenance: bool
    started_at: float
    resolved_at: float | None
    openings: int
    opened_at: float  # when the latest opening began
    first_notice_at: float | None

    @property
    def is_open(self) -> bool:
        """Whether the incident is not yet resolved."""
        return self.resolved_at is None

    def as_dict(self) -> dict[str, Any]:
        """The API and status-page form."""
        return {
            "id": self.id,
            "service": self.service,
            "state": self.state.value,
            "cause": self.cause,
            "cause_note": self.cause_note,
            "maintenance": self.maintenance,
            "started_at": iso(self.started_at),
            "resolved_at": iso(self.resolved_at),
            "openings": self.openings,
            "first_notice_at": iso(self.first_notice_at),
        }


@dataclass(frozen=True, slots=True)
class Update:
    """One entry of an incident's timeline written by nodevigil or an operator."""

    id: int
    incident: int
    at: float
    state: IncidentState
    message: str
    author: str

    def as_dict(self) -> dict[str, Any]:
        """The API and status-page form."""
        return {
            "at": iso(self.at),
            "state": self.state.value,
            "message": self.message,
            "author": self.author,
        }


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A notification to enqueue: the message, when it may go, and whom it concerns."""

    message: Message
    not_before: float
    incident: int | None = None
    customer: str | None = None
    step: str | None = None  # "s0", "s1.r2", "resolve", "update": plan steps can be cancelled


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A notification in the outbox and its delivery state."""

    message: Message
    state: str  # pending, delivered, dead, cancelled
    not_before: float
    next_at: float
    attempts: int
    last_error: str
    delivered_at: float | None
    incident: int | None
    customer: str | None
    step: str | None

    def as_dict(self) -> dict[str, Any]:
        """The API form (no payload secrets: messages carry none)."""
        m = self.message
        return {
            "id": m.id,
            "notifier": m.notifier,
            "kind": m.kind,
            "subject": m.subject,
            "summary": m.summary,
            "customer": self.customer,
            "step": self.step,
            "state": self.state,
            "created_at": iso(m.created_at),
            "not_before": iso(self.not_before),
            "next_attempt_at": iso(self.next_at) if self.state == "pending" else None,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "delivered_at": iso(self.delivered_at),
        }


@dataclass(frozen=True, slots=True)
class Window:
    """A maintenance window: its time is excluded from the SLA and incidents say so."""

    id: int
    start: float
    end: float
    services: tuple[str, ...]
    note: str
    source: str  # "config" or "api"
    who: str
    exclusion_id: int | None
    cancelled: bool

    def covers(self, service: str, at: float) -> bool:
        """Whether ``service`` is under this maintenance at wall time ``at``."""
        return not self.cancelled and service in self.services and self.start <= at < self.end

    def as_dict(self) -> dict[str, Any]:
        """The API form."""
        return {
            "id": self.id,
            "start": iso(self.start),
            "end": iso(self.end),
            "services": list(self.services),
            "note": self.note,
            "source": self.source,
            "who": self.who,
            "excluded_in_ledger": self.exclusion_id is not None,
            "cancelled": self.cancelled,
        }
