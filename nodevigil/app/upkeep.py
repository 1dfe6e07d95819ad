"""The daemon's housekeeping: queue gauges every few seconds, old records pruned every hour.

Each store prunes itself (its port has the method); this module only says when, and with
which cutoff (``records.retention``; the ledger keeps at least the 90 days of clause IV.3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from failover.controller.store import Store
from failover.incidents.ports import IncidentStore
from monitor.history import HistoryStore
from nodevigil.app.metrics import DaemonMetrics
from nodevigil.app.sla_bridge import utc
from nodevigil.core.clock import Clock
from nodevigil.core.eventlog import EventLog
from nodevigil.core.events import EventBus
from sla.ledger import Ledger

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0
GAUGES_EVERY = 5.0  # queue-depth and error gauges


class Upkeep:
    """Refreshes the event log's and the bus's gauges; prunes every store past retention."""

    def __init__(
        self,
        *,
        events: EventLog,
        store: Store,
        incidents: IncidentStore,
        ledger: Ledger,
        bus: EventBus,
        metrics: DaemonMetrics,
        clock: Clock,
        retention: Callable[[], float],
        history: HistoryStore | None = None,
    ) -> None:
        self._events = events
        self._store = store
        self._incidents = incidents
        self._ledger = ledger
        self._bus = bus
        self._metrics = metrics
        self._clock = clock
        self._retention = retention  # read at each pass: a reload may change it
        self._history = history  # the probe history (runs of equal results)

    async def run(self) -> None:
        """Refresh the queue gauges every few seconds; prune old records every hour."""
        pruned_at: float | None = None
        while True:
            self._metrics.show_event_log(self._events)
            self._metrics.event_queue_depth.set(self._bus.depth())
            now = self._clock.monotonic()
            if pruned_at is None or now - pruned_at >= PRUNE_EVERY:
                pruned_at = now
                try:
                    await self.prune()
                except Exception as exc:  # a full or read-only disk: the next hour retries
                    log.error("pruning old records failed (retrying in an hour): %s", exc)
            await asyncio.sleep(GAUGES_EVERY)

    async def prune(self) -> int:
        """Delete records older than the retention period from every store; how many."""
        now = self._clock.wall()
        retention = self._retention()
        cutoff = now - retention
        removed = await self._events.prune(cutoff) + await self._store.prune_actions(cutoff)
        removed += await self._incidents.prune(cutoff)
        pruned = await self._ledger.prune(utc(now), retention)
        removed += sum(pruned.values())
        if self._history is not None:  # last: the records above matter more if it fails
            removed += await self._history.prune(cutoff)
        if removed:
            log.info("pruned %d records older than the retention period", removed)
        return removed
