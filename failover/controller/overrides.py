"""The operator overrides (drains) in force: in memory and in the store, changed atomically.

Every change holds one lock across the store's await. Without it two undrains (or an undrain
and an expiry) both saw the override, and the second one's delete raised KeyError: a 500 for
the request, or an aborted controller cycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypedDict

from failover.controller.release import orphaned
from failover.controller.state import Override, OverrideKind
from failover.controller.store import ActionRecord, Store
from failover.events import (
    OverrideCleared,
    OverrideDropped,
    OverrideEvent,
    OverrideExpired,
    OverrideSet,
)
from nodevigil.core.config.schema import Config
from nodevigil.core.errors import NodevigilError
from nodevigil.core.events import Event

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]
StoreFailed = Callable[[str, NodevigilError], None]  # (what was refused, the error)


class _OverrideFacts(TypedDict):
    subject: str
    at: float
    vantage: str
    target: str
    name: str
    reason: str
    who: str
    since: float
    until: float | None


class Overrides:
    """The overrides in force; a clear of one that is not there is a no-op, never an error."""

    def __init__(
        self,
        store: Store,
        *,
        emit: Emit,
        wall: Callable[[], float],
        vantage: Callable[[], str],
        store_failed: StoreFailed,
    ) -> None:
        self._store = store
        self._emit = emit
        self._wall = wall
        self._vantage = vantage
        self._store_failed = store_failed
        self._current: dict[tuple[OverrideKind, str], Override] = {}
        self._lock = asyncio.Lock()

    def load(self, stored: Mapping[tuple[OverrideKind, str], Override]) -> None:
        """Start from what the store held."""
        self._current = dict(stored)

    async def refresh(
        self, read: Callable[[], Awaitable[Mapping[tuple[OverrideKind, str], Override]]]
    ) -> None:
        """Replace what is in force with what ``read`` finds in the store (another host's API
        may have written there). Read under the lock, so a change made meanwhile is not lost."""
        async with self._lock:
            self._current = dict(await read())

    def snapshot(self) -> dict[tuple[OverrideKind, str], Override]:
        """A copy of the overrides in force."""
        return dict(self._current)

    def sorted(self) -> list[Override]:
        """Every override in force, sorted by kind and name."""
        return [self._current[k] for k in sorted(self._current)]

    async def put(self, override: Override) -> None:
        """Set or replace an override: durable before it takes effect."""
        async with self._lock:
            await self._store.put_override(override)
            self._current[(override.kind, override.name)] = override
            self._emit(OverrideSet(**self._facts(override)))

    async def clear(self, kind: OverrideKind, name: str, who: str) -> bool:
        """Lift an override; return whether there was one."""
        async with self._lock:
            override = self._current.get((kind, name))
            if override is None:
                return False  # never drained, or already cleared (a racing undrain)
            await self._store.delete_override(kind, name)
            del self._current[(kind, name)]
            self._emit(OverrideCleared(**self._facts(override), cleared_by=who))
            return True

    async def expire(self, wall: float, longest: float) -> None:
        """End the overrides whose time box has run out at wall time ``wall``."""

        def expired(o: Override) -> bool:
            # A drain stored open-ended by an older nodevigil ends ``longest`` after it began.
            return o.expired(wall) or (o.until is None and wall >= o.since + longest)

        async with self._lock:
            for o in [o for o in self._current.values() if expired(o)]:
                await self._end(o, OverrideExpired(**self._facts(o), cleared_by="expiry"))

    async def drop_orphaned(self, config: Config, wall: float) -> list[Override]:
        """Drop the overrides of nodes and sites ``config`` no longer has; record each."""
        async with self._lock:
            dropped = orphaned(self._current, config)
            for o in dropped:
                why = f"{o.kind} {o.name} is no longer in the configuration"
                await self._end(o, OverrideDropped(**self._facts(o), cleared_by="reload", why=why))
                log.warning("failover: dropped the drain of %s (by %s)", o.name, o.who)
        records = [
            ActionRecord(
                wall,
                "controller",
                "drop_override",
                f"{o.kind} {o.name}",
                f"drained by {o.who}: {o.reason}",
                "none",
                f"{o.kind} {o.name} is no longer in the configuration",
                "ok",
            )
            for o in dropped
        ]
        if records:
            try:
                await self._store.record_actions(records)
            except NodevigilError as exc:
                log.error("cannot record the action log: %s", exc)
        return dropped

    def _facts(self, o: Override) -> _OverrideFacts:
        """What every override event says about ``o`` (``subject`` is its name)."""
        return {
            "subject": o.name,
            "at": self._wall(),
            "vantage": self._vantage(),
            "target": o.kind,
            "name": o.name,
            "reason": o.reason,
            "who": o.who,
            "since": o.since,
            "until": o.until,
        }

    async def _end(self, o: Override, event: OverrideEvent) -> None:
        """Forget ``o`` (the caller holds the lock)."""
        try:
            await self._store.delete_override(o.kind, o.name)
        except NodevigilError as exc:
            # The store refused (a full disk): the override ends all the same, since an expired
            # or orphaned row left on disk ends again at the next start. Failover goes on.
            self._store_failed(f"override {o.kind} {o.name}", exc)
        self._current.pop((o.kind, o.name), None)
        self._emit(event)
