"""Feeds the SLA ledger from the controller: whole-service unavailability in, credits out.

Event-driven for exact times, and level-triggered as a safety net: every few seconds the ledger's
open intervals are compared with the controller's view, so a missed event heals by itself.
Time when nodevigil itself was not running is recorded as ``unknown``: after a crash however
short it was, after a clean stop only past ``UNKNOWN_AFTER``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodevigil.core.backlog import Backlog
from nodevigil.core.clock import Clock
from nodevigil.core.errors import StateError
from nodevigil.core.events import Event, EventBus
from nodevigil.state.sqlite.worker import DATABASE_ERRORS
from nodevigil.state.statedir import AliveMark, boot_id, read_alive
from sla.ledger import Ledger

if TYPE_CHECKING:
    from failover.incidents.manager import IncidentManager

log = logging.getLogger(__name__)

# The "alive" mark is written every second (nodevigil.state.statedir); after a clean stop, a silence
# longer than this was nodevigil not running (a quick planned restart is not worth a review).
# After a crash every gap counts: a crash loop must not hide an outage in gaps under this.
UNKNOWN_AFTER = 5.0
UPKEEP_EVERY = 5.0  # maintenance exclusions, reconcile, settlement, the minutes gauge
FIRST_RECONCILE_EVERY = 0.5  # until the controller has judged once (a crash loop is short)


def utc(seconds: float) -> datetime:
    """Wall-clock seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


class LedgerMinutes(Collector):
    """``nodevigil_sla_unavailable_minutes{service}`` from the ledger's last computed totals."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        """A gauge: exclusions and pruning can lower the figure."""
        family = GaugeMetricFamily(
            "nodevigil_sla_unavailable_minutes",
            "Unavailable minutes counted for credit per service, over the retained ledger.",
            labels=["service"],
        )
        for service, minutes in sorted(self.totals.items()):
            family.add_metric([service], minutes)
        yield family


class SlaBridge:
    """Keeps the ledger in step with the controller and settles days as they become final."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        bus: EventBus,
        clock: Clock,
        services: Callable[[], list[str]],
        unavailable: Callable[[], dict[str, float] | None],
        state_dir: Path,
        registry: CollectorRegistry,
        incidents: IncidentManager | None = None,
    ) -> None:
        self._ledger = ledger
        # Causes tagged on incidents and announced maintenance windows reach the ledger here.
        self._incidents = incidents
        self._bus = bus
        self._clock = clock
        self._services = services
        # service -> unavailable since (wall) per the controller; None before its first cycle
        self._unavailable = unavailable
        self._state_dir = state_dir
        self._sub = bus.subscribe(["service.", "incident.cause"])
        # Events the ledger could not take (a full or read-only disk), replayed in order: the
        # reconcile pass alone would close an outage at the time of the repair, not its end.
        self._backlog = Backlog(
            "ledger",
            self._apply,
            transient=(*DATABASE_ERRORS, OSError, StateError),
            describe=lambda e: f"{e.kind} for {e.subject}",
            log=log,
        )
        self._failing = False
        self.minutes = LedgerMinutes()
        registry.register(self.minutes)
        self._settled = Counter(
            "nodevigil_sla_credits_settled",
            "Credit settled for final billing days, by currency.",
            ["currency"],
            registry=registry,
        )

    async def record_downtime(self) -> None:
        """Record the time since the previous process's last sign of life as ``unknown``.

        After a crash (the mark is not a clean one) however short the gap was; after a clean
        stop only when longer than ``UNKNOWN_AFTER``. Then the services the ledger holds open
        (an outage the previous process saw) are handed to the incidents at once.
        """
        mark = await asyncio.to_thread(read_alive, self._state_dir)
        if mark is not None:
            await self._record_gap(mark)
        await self._resume_outages()

    async def _record_gap(self, mark: AliveMark) -> None:
        now = self._clock.wall()
        services = self._services()
        start, end = mark.wall, now
        if end < start:
            # The wall clock stepped back across the restart: this timeline starts before the
            # previous one ended. Count the gap where it lies on the previous timeline.
            elapsed = mark.elapsed(self._clock.monotonic(), await asyncio.to_thread(boot_id))
            end = start + (elapsed or 0.0)
        if not services or (mark.clean and end - start <= UNKNOWN_AFTER):
            return
        await self._ledger.record_unknown(utc(start), utc(end), services)
        how = "stopped cleanly" if mark.clean else "did not stop cleanly"
        log.warning(
            "nodevigil was not running for %.1fs (the previous process %s); recorded as unknown "
            "for review",
            end - start,
            how,
        )
        data = {"from": start, "to": end, "clean": mark.clean}
        self._bus.publish(Event("sla.unknown", "nodevigil", now, "", data))

    async def _resume_outages(self) -> None:
        """An outage the previous process saw goes on: the ledger and the incidents agree.

        An open incident without a ledger interval gets one from the incident's start; an open
        interval without an incident gets its incident (and the customers their notice). The
        controller's saved bookkeeping carries the outage too, but only once it has judged, and
        a process in a crash loop may die sooner.
        """
        if self._incidents is None:
            return
        configured = set(self._services())
        open_now = {e.service: e for e in await self._ledger.open_intervals()}
        for incident in self._incidents.open_incidents():
            if incident.service in configured and incident.service not in open_now:
                start = incident.started_at if incident.openings == 1 else incident.opened_at
                await self._ledger.open_interval(
                    incident.service,
                    utc(start),
                    cause=self._cause(incident.service, start),
                    evidence={"resumed": f"incident {incident.id}"},
                )
        for service, entry in open_now.items():
            if service in configured:
                await self._incidents.service_down(service, entry.start.timestamp())

    async def run(self) -> None:
        """Consume service events, reconcile and settle, until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._events(), name="sla-events")
                tg.create_task(self._periodic(), name="sla-periodic")
        finally:
            self._sub.close()

    async def _events(self) -> None:
        async for event in self._sub:
            await self._backlog.add(event)

    async def _apply(self, event: Event) -> None:
        data: dict[str, Any] = dict(event.data)
        if event.kind == "service.unavailable":
            start = float(data.get("started_at") or event.at)
            await self._ledger.open_interval(
                event.subject,
                utc(start),
                cause=self._cause(event.subject, start),
                evidence={"sites": data.get("sites")},
            )
        elif event.kind == "incident.cause":
            await self._apply_cause(event.subject, data)
        elif event.kind == "service.available":
            end = float(data.get("ended_at") or event.at)
            await self._ledger.close_interval(event.subject, utc(end))

    def _cause(self, service: str, start: float) -> str:
        if self._incidents is None:
            return "provider"
        return self._incidents.cause_for(service, start) or "provider"

    async def _apply_cause(self, service: str, data: dict[str, Any]) -> None:
        """An incident's cause applies to every ledger interval within the incident."""
        start = float(data["started"])
        end = float(data["ended"]) if data.get("ended") is not None else self._clock.wall()
        who = str(data.get("author") or "operator")
        note = f"incident {data.get('id')}: {data.get('note') or ''}".strip()
        entries = await self._ledger.ledger(service=service, from_=utc(start), to=utc(end + 60))
        for entry in entries:
            if entry.cause.value != data["cause"]:
                await self._ledger.set_cause(entry.id, str(data["cause"]), who, note)

    async def exclude_maintenance(self) -> None:
        """Each maintenance window, once it has begun, becomes a ledger exclusion (once)."""
        if self._incidents is None:
            return
        for window in await self._incidents.windows_to_exclude():
            exclusion = await self._ledger.add_exclusion(
                utc(window.start),
                utc(window.end),
                "scheduled_maintenance",
                services=list(window.services),
                note=f"maintenance window {window.id}: {window.note}".strip(),
                who=window.who,
            )
            await self._incidents.window_excluded(window, exclusion)

    async def _periodic(self) -> None:
        judged = False
        while True:
            try:
                if await self._backlog.replay():  # never reconcile past refused events
                    await self.exclude_maintenance()
                    judged = await self.reconcile()
                    for row in await self._ledger.settle():
                        self._settled.labels(row.currency).inc(float(row.credit))
                    self.minutes.totals = await self._ledger.unavailable_minutes_total()
                    if self._failing:
                        self._failing = False
                        log.warning("ledger upkeep works again")
            except Exception:
                if not self._failing:  # once per streak, not every few seconds
                    self._failing = True
                    log.exception("ledger upkeep failed; retrying")
            # Soon after start, an outage the controller's saved bookkeeping carries reaches the
            # ledger within a second, not five: a process in a crash loop lives only seconds.
            await asyncio.sleep(UPKEEP_EVERY if judged else FIRST_RECONCILE_EVERY)

    async def reconcile(self) -> bool:
        """Open what the controller says is down, close what it says is back.

        Whether the controller had judged (nothing is done before it has).
        """
        wanted = self._unavailable()
        if wanted is None:
            return False  # the controller has not judged: closing now would end real outages
        open_now = {entry.service for entry in await self._ledger.open_intervals()}
        for service, since in wanted.items():
            if service not in open_now:
                await self._ledger.open_interval(
                    service,
                    utc(since),
                    cause=self._cause(service, since),
                    evidence={"repaired": True},
                )
        for service in open_now - set(wanted):
            await self._ledger.close_interval(service, utc(self._clock.wall()))
        return True
