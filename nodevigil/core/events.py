"""The in-process event stream: every package publishes here, sinks and subscribers read it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


# The kernel's own kinds (the state directory and the clock); each domain declares its own
# (``monitor.verdicts``, ``failover.events``, ``sla.events``) and the application joins them.
EVENT_KINDS = frozenset({"state.error", "state.recovered", "clock.stepped"})


def kind_matches(pattern: str, kind: str) -> bool:
    """``node.down`` matches itself; ``node.*`` every node event; ``*`` everything."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return kind.startswith(pattern[:-1])
    return kind == pattern


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, with the vantage point that saw it.

    ``kind`` is dotted (``node.down``, ``site.up``, ``lb.action``, ``service.unavailable``),
    ``subject`` names what it is about (a node, site or service), ``at`` is wall time.
    """

    kind: str
    subject: str
    at: float
    vantage: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "at": self.at,
            "vantage": self.vantage,
            "data": dict(self.data),
        }


class Subscription:
    """One consumer's queue of events; iterate it with ``async for``."""

    def __init__(self, bus: EventBus, kinds: tuple[str, ...]) -> None:
        self._bus = bus
        self._kinds = kinds
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def wants(self, event: Event) -> bool:
        """Whether the event's kind matches one of the prefixes subscribed to."""
        return not self._kinds or event.kind.startswith(self._kinds)

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)

    async def get(self) -> Event:
        """The next event."""
        return await self.queue.get()

    def drain(self) -> list[Event]:
        """Every event waiting now, without blocking (to handle a burst as one decision)."""
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


class EventBus:
    """Fan-out of events to subscribers and sinks; publishing never blocks the publisher."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._sinks: list[Callable[[Event], None]] = []
        self._published = itertools.count()

    def subscribe(self, kinds: Iterable[str] = ()) -> Subscription:
        """A new subscription to events whose kind starts with one of ``kinds`` (all if none)."""
        sub = Subscription(self, tuple(kinds))
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription."""
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        """Call ``sink`` synchronously with every event (durable log, metrics)."""
        self._sinks.append(sink)

    def publish(self, event: Event) -> None:
        """Hand the event to every sink and matching subscriber."""
        next(self._published)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a broken sink must not stop the stream
                log.exception("event sink failed on %s", event.kind)
        for sub in self._subscriptions:
            if sub.wants(event):
                sub.queue.put_nowait(event)

    def depth(self) -> int:
        """Events waiting in the fullest subscription (for the queue-depth metric)."""
        return max((s.queue.qsize() for s in self._subscriptions), default=0)
