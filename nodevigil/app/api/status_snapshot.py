"""What the public status page may show: services' states, recent incidents, maintenance.

The page needs no token, so the snapshot leaves out what is private (an incident's cause note,
when its first notice went out, who wrote an update) and is rebuilt at most every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from failover.controller import Controller
from failover.incidents.manager import IncidentManager
from failover.incidents.model import iso
from failover.incidents.ports import IncidentStore
from nodevigil.core.clock import Clock
from nodevigil.core.config import Config

STATUS_CACHE = 2.0  # the public status page is rebuilt at most this often
RECENT_INCIDENTS = 7 * 86400.0  # resolved incidents the status page still lists
PRIVATE_INCIDENT_FIELDS = ("cause_note", "first_notice_at", "openings")


class StatusSnapshot:
    """``await snapshot()``: the status page's content, cached for a moment."""

    def __init__(
        self,
        *,
        controller: Controller,
        incidents: IncidentManager,
        store: IncidentStore,
        config: Callable[[], Config],
        clock: Clock,
    ) -> None:
        self._controller = controller
        self._incidents = incidents
        self._store = store
        self._config = config
        self._clock = clock
        self._cache: tuple[float, dict[str, Any]] | None = None

    async def __call__(self) -> dict[str, Any]:
        """What the public status page shows (cached for a moment: it needs no token)."""
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < STATUS_CACHE:
            return cached[1]
        now = self._clock.wall()
        snapshot = {
            "generated_at": iso(now),
            "services": self._services(now),
            "incidents": await self._recent_incidents(now),
            "maintenance": [
                {k: w.as_dict()[k] for k in ("start", "end", "services", "note")}
                for w in await self._incidents.windows()
                if w.end > now
            ],
        }
        self._cache = (time.monotonic(), snapshot)
        return snapshot

    def _services(self, now: float) -> list[dict[str, Any]]:
        last_cycle_at = self._controller.last_cycle_at
        by_name = {s.name: s for s in self._controller.services()}
        services = []
        for service in self._config().services:
            current = by_name.get(service.name)
            since = None
            if last_cycle_at is None or current is None:
                state = "unknown"
            elif self._incidents.maintenance_at(service.name, now) is not None:
                state = "maintenance"
            elif not current.available:
                state = "unavailable"
                since = iso(current.unavailable_since)
            else:
                state = "operational"
            services.append({"name": service.name, "state": state, "since": since})
        return services

    async def _recent_incidents(self, now: float) -> list[dict[str, Any]]:
        incidents = []
        for incident in await self._store.incidents(since=now - RECENT_INCIDENTS, limit=50):
            updates = await self._store.updates(incident.id)
            entry = incident.as_dict()
            for private in PRIVATE_INCIDENT_FIELDS:
                entry.pop(private, None)
            # Public: the updates' text and state, not which token wrote them.
            entry["updates"] = [
                {k: v for k, v in u.as_dict().items() if k != "author"} for u in updates
            ]
            incidents.append(entry)
        return incidents
