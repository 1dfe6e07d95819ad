"""What a transport is given and what it answers: one message, one delivery attempt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

# Kinds whose alert clears the one its partner raised (Alertmanager ``endsAt``).
RESOLVES: Mapping[str, str] = {
    "node.up": "node.down",
    "site.up": "site.down",
    "service.available": "service.unavailable",
    "incident.resolved": "incident.opened",
    "lb.recovered": "failover.failed",
    "failover.panic_over": "failover.panic",
    "failover.brake_released": "failover.brake",
}


@dataclass(frozen=True, slots=True)
class Message:
    """One notification, as written to the outbox before it is sent.

    ``id`` stays the same on every retry (``webhook-id``, the mail's Message-ID), so a receiver
    can deduplicate. ``kind`` is an event kind (``incident.opened``, ``node.down``...),
    ``subject`` what it is about (a service, node, site), ``created_at`` wall seconds.
    ``data`` is the JSON-ready payload; ``summary`` one line for a subject or alert title;
    ``text`` a plain-text body with the facts.
    """

    id: str
    notifier: str
    kind: str
    subject: str
    created_at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    text: str = ""

    @property
    def timestamp(self) -> str:
        """``created_at`` in RFC 3339 UTC."""
        return datetime.fromtimestamp(self.created_at, UTC).isoformat().replace("+00:00", "Z")

    def envelope(self) -> dict[str, Any]:
        """The JSON body every machine receiver gets: ``{type, id, timestamp, data}``."""
        return {"type": self.kind, "id": self.id, "timestamp": self.timestamp, "data": self.data}


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one attempt achieved.

    ``delivered``: the receiver took it (2xx, 250, PUBACK). ``retry``: try again later,
    no sooner than ``retry_after`` seconds when the receiver said so (HTTP Retry-After).
    ``disabled``: the receiver asked never to be sent to again (HTTP 410 Gone).
    """

    outcome: Literal["delivered", "retry", "disabled"]
    detail: str = ""
    retry_after: float | None = None

    @classmethod
    def ok(cls, detail: str = "") -> Delivery:
        return cls("delivered", detail)

    @classmethod
    def retry(cls, detail: str, after: float | None = None) -> Delivery:
        return cls("retry", detail, after)


class Transport(Protocol):
    """Delivers messages to one configured notifier. Never raises for a failed delivery:
    trouble is answered as a ``Delivery`` (network errors and timeouts are ``retry``)."""

    name: str

    async def send(self, message: Message) -> Delivery:
        """Try once to deliver ``message``."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
