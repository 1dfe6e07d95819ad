"""What the public status page may show: services' states, their daily history, recent
incidents, maintenance.

The page needs no token, so the snapshot leaves out what is private (an incident's cause note,
when its first notice went out, who wrote an update) and is rebuilt at most every few seconds.

The history is the SLA ledger's: per service and billing day, the unavailable minutes the
credits count (provider-caused whole-service unavailability, exclusions and maintenance taken
out), for the last ``status_page.history_days`` days. Days before the ledger knew anything have
no data; today counts only the minutes gone by. It is recomputed once a minute, and at
once when a service's state changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from failover.controller import Controller
from failover.incidents.manager import IncidentManager
from failover.incidents.model import iso
from failover.incidents.ports import IncidentStore
from nodevigil.core.clock import Clock
from nodevigil.core.config import Config
from sla.ledger import Ledger
from sla.ledger_core import DailyHistory
from sla.model import MINUTE_US

STATUS_CACHE = 2.0  # the public status page is rebuilt at most this often
HISTORY_CACHE = 60.0  # the daily history changes slowly: recomputed at most this often
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
        ledger: Ledger | None = None,
    ) -> None:
        """``ledger``: the SLA ledger the history comes from (None: no history shown)."""
        self._controller = controller
        self._incidents = incidents
        self._store = store
        self._config = config
        self._clock = clock
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._ledger = ledger
        self._history: tuple[float, tuple[int, tuple[str, ...]], DailyHistory] | None = None

    async def __call__(self) -> dict[str, Any]:
        """What the public status page shows (cached for a moment: it needs no token)."""
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < STATUS_CACHE:
            return cached[1]
        now = self._clock.wall()
        services = self._services(now)
        history = await self._daily_history(tuple(s["state"] for s in services))
        if history is not None:
            for service in services:
                service.update(service_history(history, service["name"], now))
        snapshot: dict[str, Any] = {
            "generated_at": iso(now),
            "services": services,
            "incidents": await self._recent_incidents(now),
            "maintenance": [
                {k: w.as_dict()[k] for k in ("start", "end", "services", "note")}
                for w in await self._incidents.windows()
                if w.end > now
            ],
        }
        if history is not None:
            snapshot["history"] = {
                "days": (history.last - history.first).days + 1,
                "timezone": self._config().timezone,
            }
        if self._controller.mode == "observe":
            # Observe mode (failover.mode): what failover would do, which it does not.
            # The summary, not the evidence: this page needs no token (docs/reliability.md).
            snapshot["observe"] = [f"would {w.summary}" for w in self._controller.would()]
        self._cache = (time.monotonic(), snapshot)
        return snapshot

    async def _daily_history(self, states: tuple[str, ...]) -> DailyHistory | None:
        """The ledger's history, kept for a minute unless a service's state changed."""
        if self._ledger is None:
            return None
        key = (self._config().status_page.history_days, states)
        cached = self._history
        if cached is not None and cached[1] == key and time.monotonic() - cached[0] < HISTORY_CACHE:
            return cached[2]
        history = await self._ledger.daily_history(key[0])
        self._history = (time.monotonic(), key, history)
        return history

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


def service_history(history: DailyHistory, service: str, now: float) -> dict[str, Any]:
    """The service's ``history`` (one entry per day, oldest first) and ``uptime`` over it.

    Each day: its date, its minutes (today: those gone by), and its unavailable minutes, None
    for a day without data. ``uptime`` is a percentage rounded down to two places (never shown
    better than it was), None when no day has data.
    """
    now_us = to_us_seconds(now)
    days: list[dict[str, Any]] = []
    total = lost = 0
    day = history.first
    while day <= history.last:
        start, end = history.calendar.bounds(day)
        if day < history.since or start > now_us:
            days.append({"date": day.isoformat(), "minutes": 0, "unavailable_minutes": None})
        else:
            length = -(-(min(end, now_us) - start) // MINUTE_US) or 1
            minutes = min(history.minutes.get((service, day), 0), length)
            days.append(
                {"date": day.isoformat(), "minutes": length, "unavailable_minutes": minutes}
            )
            total += length
            lost += minutes
        day += timedelta(days=1)
    uptime = math.floor((total - lost) * 10_000 / total) / 100 if total else None
    return {"uptime": uptime, "history": days}


def to_us_seconds(seconds: float) -> int:
    """Wall seconds as the ledger's microseconds."""
    return round(seconds * 1_000_000)
