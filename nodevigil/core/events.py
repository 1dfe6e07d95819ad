"""The in-process event stream: every package publishes here, sinks and subscribers read it.

An event is one frozen dataclass per kind (``NodeDown``, ``ServiceUnavailable``, ...), declared
by the package that publishes it on top of ``Event`` (kind, subject, at, vantage, id). Listeners
read typed fields; ``as_dict()`` is the JSON form the event log, the API and the notifiers serve
(``{"id", "kind", "subject", "at", "vantage", "data": {...}}``), and ``EventTypes`` rebuilds a
typed event from that form (a kind it does not know becomes a ``GenericEvent``, never an error).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import types
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Self

log = logging.getLogger(__name__)

# The version of the stored form: ``as_dict()`` plus ``"schema": EVENT_SCHEMA``. A store keeps
# it with each event; a reader meeting a newer one still lists it, as a ``GenericEvent``.
EVENT_SCHEMA = 1

_BASE_FIELDS = frozenset({"subject", "at", "vantage", "id"})


def kind_matches(pattern: str, kind: str) -> bool:
    """``node.down`` matches itself; ``node.*`` every node event; ``*`` everything."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return kind.startswith(pattern[:-1])
    return kind == pattern


def key(name: str, *, omit_none: bool = False) -> dict[str, Any]:
    """Field metadata: the field's key in the JSON ``data`` (when not its Python name).

    ``omit_none`` leaves the key out while the value is None (a key present only sometimes).
    """
    return {"key": name, "omit_none": omit_none}


def _new_id() -> str:
    return uuid.uuid4().hex


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _coerce(hint: Any, value: Any) -> Any:
    """A JSON value in the shape of the field's type (lists become tuples, ints floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                return _coerce(arg, value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing that happened, with the vantage point that saw it.

    ``kind`` is dotted (``node.down``, ``site.up``, ``lb.action``, ``service.unavailable``) and
    fixed per class (``KIND``); ``subject`` names what it is about (a node, site or service),
    ``at`` is wall time. Subclasses add the kind's facts as typed fields.
    """

    KIND: ClassVar[str] = ""
    subject: str
    at: float
    vantage: str
    id: str = field(default_factory=_new_id)

    @property
    def kind(self) -> str:
        """The dotted kind (alert routes and subscriptions match on it)."""
        return self.KIND

    def payload(self) -> dict[str, Any]:
        """The kind's facts in their JSON form: the ``data`` of ``as_dict()``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _BASE_FIELDS:
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.metadata.get("key", f.name)] = _jsonable(value)
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (stable: the event log, the API and notifier payloads use it)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "at": self.at,
            "vantage": self.vantage,
            "data": self.payload(),
        }

    def detail(self) -> str:
        """The fact worth a headline: the first of reason, error, decision, message set."""
        names = {f.name for f in fields(self)}
        for name in ("reason", "error", "decision", "message"):
            value = getattr(self, name) if name in names else None
            if isinstance(value, str) and value:
                return value[:200]
        return ""

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Self:
        """The event ``record`` (the ``as_dict()`` form) describes; TypeError/ValueError if not."""
        data = record.get("data") or {}
        if not isinstance(data, Mapping):
            raise TypeError("data is not an object")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {
            "subject": str(record["subject"]),
            "at": float(record["at"]),
            "vantage": str(record.get("vantage", "")),
            "id": str(record["id"]),
        }
        for f in fields(cls):
            if f.name in _BASE_FIELDS or not f.init:
                continue
            name = f.metadata.get("key", f.name)
            if name in data:
                kwargs[f.name] = _coerce(hints[f.name], data[name])
            elif f.metadata.get("omit_none"):
                kwargs[f.name] = None
        return cls(**kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericEvent(Event):
    """An event of a kind this nodevigil does not know (stored by a newer one): kept as read."""

    raw_kind: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The kind as stored."""
        return self.raw_kind

    def payload(self) -> dict[str, Any]:
        """The facts as stored."""
        return _jsonable(self.data)  # type: ignore[no-any-return]

    def detail(self) -> str:
        """The first of reason, error, decision, message the stored facts hold."""
        for name in ("reason", "error", "decision", "message"):
            value = self.data.get(name)
            if isinstance(value, str) and value:
                return value[:200]
        return ""


class EventTypes:
    """Which class each kind is: rebuilds typed events from their stored form."""

    def __init__(self, classes: Iterable[type[Event]]) -> None:
        self._by_kind: dict[str, type[Event]] = {}
        for cls in classes:
            if not cls.KIND:
                raise ValueError(f"{cls.__name__} has no KIND")
            if cls.KIND in self._by_kind:
                raise ValueError(f"event kind {cls.KIND} declared twice")
            self._by_kind[cls.KIND] = cls

    @property
    def kinds(self) -> frozenset[str]:
        """Every kind known."""
        return frozenset(self._by_kind)

    def from_dict(self, record: Mapping[str, Any]) -> Event:
        """The typed event of a stored record; a ``GenericEvent`` when the kind is unknown,
        from a newer schema, or its facts do not fit the class (never an exception for that)."""
        kind = str(record.get("kind", ""))
        cls = self._by_kind.get(kind)
        newer = int(record.get("schema", EVENT_SCHEMA)) > EVENT_SCHEMA
        if cls is not None and not newer:
            try:
                return cls.from_dict(record)
            except (KeyError, TypeError, ValueError):
                log.warning("event %s: stored facts do not fit %s", record.get("id"), kind)
        data = record.get("data")
        return GenericEvent(
            raw_kind=kind,
            subject=str(record.get("subject", "")),
            at=float(record.get("at", 0.0)),
            vantage=str(record.get("vantage", "")),
            id=str(record.get("id") or _new_id()),
            data=dict(data) if isinstance(data, Mapping) else {},
        )


def kinds_of(classes: Iterable[type[Event]]) -> frozenset[str]:
    """The kinds of ``classes``: a package's ``EVENT_KINDS`` comes from its event classes."""
    return frozenset(cls.KIND for cls in classes)


def stored_form(event: Event) -> dict[str, Any]:
    """What an event log keeps: ``as_dict()`` and the schema version it was written in."""
    return {**event.as_dict(), "schema": EVENT_SCHEMA}


# --- the kernel's own kinds: the state directory and the clock -------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StateWritesFailed(Event):
    """The state directory stopped taking writes (subject ``state_dir``)."""

    KIND = "state.error"
    path: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateWritesRecovered(Event):
    """The state directory takes writes again after ``seconds``."""

    KIND = "state.recovered"
    path: str
    error: str
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockStepped(Event):
    """The wall clock stepped by ``step`` seconds; ``offset`` from nodevigil's timeline now."""

    KIND = "clock.stepped"
    step: float
    offset: float


# Each domain declares its own (``monitor.verdicts``, ``failover.events``, ``sla.events``) and the
# application joins them.
EVENT_TYPES: tuple[type[Event], ...] = (StateWritesFailed, StateWritesRecovered, ClockStepped)
EVENT_KINDS = kinds_of(EVENT_TYPES)


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
