"""Feeds the SLA ledger from the controller: whole-service unavailability in, credits out.

Event-driven for exact times, and level-triggered as a safety net: every few seconds the ledger's
open intervals are compared with the controller's view, so a missed event heals by itself.
Time when nodevigil itself was not running is recorded as ``unknown``: after a crash however
short it was, after a clean stop only past ``UNKNOWN_AFTER``.

An incident's cause and a maintenance window's exclusion do not travel by event: the incident
store writes them as pending ledger changes in the same transaction as the incident or window,
and ``apply_ledger_changes`` applies them here, at start, when woken and on every upkeep pass
until the ledger takes them. The ledger records each change's stable id with the change, so one
applied again (a crash before it was marked applied) changes nothing.

Only a process that may act (``authority``: the leader lease's holder, ``Sole`` on one host)
writes the ledger; a standby drops the controller's events and leaves the shared ledger to the
leader, whose reconcile pass repairs anything an event carried during a hand-over.

In a cluster, ``unknown`` time is time when no leader held the lease, not one host's downtime:
the host's own ``alive`` mark books nothing, and a new leader books the gap since the previous
leader's last mark (``record_takeover``, called by ``nodevigil.app.leader_marks``) by the same
rules, with ``CLEAN_HANDOVER`` for a planned hand-over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from failover.events import ServiceAvailable, ServiceUnavailable
from failover.incidents.ports import LedgerChange
from nodevigil.core.authority import Authority, Sole, check
from nodevigil.core.backlog import Backlog
from nodevigil.core.clock import Clock
from nodevigil.core.errors import StateError
from nodevigil.core.events import Event, EventBus
from nodevigil.core.failpoints import failpoint
from nodevigil.core.leader_marks import LeaderMark
from nodevigil.state.sqlite.worker import DATABASE_ERRORS
from nodevigil.state.statedir import AliveMark, boot_id, read_alive
from sla.errors import SlaError
from sla.events import SlaUnknown
from sla.ledger import Ledger

if TYPE_CHECKING:
    from failover.incidents.manager import IncidentManager

log = logging.getLogger(__name__)

# The "alive" mark is written every second (nodevigil.state.statedir); after a clean stop, a silence
# longer than this was nodevigil not running (a quick planned restart is not worth a review).
# After a crash every gap counts: a crash loop must not hide an outage in gaps under this.
UNKNOWN_AFTER = 5.0
# A planned hand-over (the leader's last mark is clean) is booked only past this: the next
# leader acts within about a second. An unclean loss of the leader is booked however short.
CLEAN_HANDOVER = 2.0
UPKEEP_EVERY = 5.0  # maintenance exclusions, reconcile, settlement, the minutes gauge
FIRST_RECONCILE_EVERY = 0.5  # until the controller has judged once (a crash loop is short)


def utc(seconds: float) -> datetime:
    """Wall-clock seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def leaderless(previous: LeaderMark, took_over: float) -> tuple[float, float] | None:
    """The time without a leader to book as ``unknown``, between the previous leader's last
    mark and the moment this one took over; None when there is none to book.

    Both ends are wall times of two hosts: a new leader whose clock is behind the old one's
    by more than the gap sees none (``docs/sla.md``: keep the cluster's clocks in NTP sync).
    """
    gap = took_over - previous.wall
    if gap <= 0 or (previous.clean and gap <= CLEAN_HANDOVER):
        return None
    return previous.wall, took_over


class LedgerMinutes(Collector):
    """``nodevigil_sla_unavailable_seconds{service}``: the ledger's last computed totals of
    unavailable minutes, in seconds, and 0 for every configured service it holds none for (so
    rules with ``offset`` work on a fresh daemon)."""

    def __init__(self, services: Callable[[], list[str]] | None = None) -> None:
        # service -> unavailable minutes; None until the ledger was read: a 0 shown before
        # would make the first real total look like minutes accruing.
        self.totals: dict[str, int] | None = None
        self._services = services or list

    def collect(self) -> Iterator[Metric]:
        """A gauge: exclusions and pruning can lower the figure."""
        family = GaugeMetricFamily(
            "nodevigil_sla_unavailable_seconds",
            "Unavailable time counted for credit per service over the retained ledger, in "
            "whole minutes (clause VIII.8), as seconds.",
            labels=["service"],
        )
        totals = self.totals
        if totals is None:
            yield family
            return
        try:
            shown = dict.fromkeys(self._services(), 0) | totals
        except Exception:  # a collector never raises during a scrape
            shown = dict(totals)
        for service, minutes in sorted(shown.items()):
            family.add_metric([service], minutes * 60)
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
        transient: tuple[type[Exception], ...] = DATABASE_ERRORS,
        authority: Authority | None = None,
        in_cluster: bool = False,
    ) -> None:
        self._ledger = ledger
        # In a cluster the leader's marks, not this host's alive mark, measure unknown time.
        self._in_cluster = in_cluster
        self._authority: Authority = authority or Sole()
        # Causes tagged on incidents and announced maintenance windows reach the ledger here.
        self._incidents = incidents
        self._bus = bus
        self._clock = clock
        self._services = services
        # service -> unavailable since (wall) per the controller; None before its first cycle
        self._unavailable = unavailable
        self._state_dir = state_dir
        self._sub = bus.subscribe(["service."])
        self._transient: tuple[type[Exception], ...] = (*transient, OSError, StateError)
        self._changes_lock = asyncio.Lock()  # the wake-up and the upkeep pass never overlap
        # Events the ledger could not take (a full or read-only disk), replayed in order: the
        # reconcile pass alone would close an outage at the time of the repair, not its end.
        self._backlog = Backlog(
            "ledger",
            self._apply,
            transient=self._transient,
            describe=lambda e: f"{e.kind} for {e.subject}",
            log=log,
        )
        self._failing = False
        self.minutes = LedgerMinutes(services)
        registry.register(self.minutes)
        self._settled = Counter(
            "nodevigil_sla_credits_settled",
            "Credit settled for final billing days, by currency.",
            ["currency"],
            registry=registry,
        )

    async def load_totals(self) -> None:
        """Read the ledger's unavailable minutes for the metrics, at start (before the API
        serves) and after each upkeep pass; a failure is logged and the next pass retries."""
        failures: tuple[type[Exception], ...] = (SlaError, *self._transient)
        try:
            self.minutes.totals = await self._ledger.unavailable_minutes_total()
        except failures as exc:
            log.warning("reading the ledger's unavailable minutes failed (retrying): %s", exc)

    async def record_downtime(self) -> None:
        """Record the time since the previous process's last sign of life as ``unknown``.

        After a crash (the mark is not a clean one) however short the gap was; after a clean
        stop only when longer than ``UNKNOWN_AFTER``. Then the services the ledger holds open
        (an outage the previous process saw) are handed to the incidents at once. In a cluster
        this host's own downtime books nothing: ``record_takeover`` books the leader's absence.
        """
        if not self._authority.may_act():
            return  # a standby: this host's own downtime is not the service's unknown time
        if not self._in_cluster:
            mark = await asyncio.to_thread(read_alive, self._state_dir)
            if mark is not None:
                await self._record_gap(mark)
        await self._resume_outages()

    async def record_takeover(self, previous: LeaderMark | None, took_over: float) -> None:
        """On becoming the leader: book, for every service, the time since the previous
        leader's last mark as ``unknown`` (``leaderless``). An outage open in the ledger across
        the gap stays one interval: the unknown time is booked beside it and subtracted from it.

        Raises ``Fenced`` when this process no longer leads; the ledger's errors pass through
        (the caller retries with the same ``took_over``).
        """
        check(self._authority, "book the time without a leader")
        if previous is None:
            log.info("cluster: no earlier leader left a mark; no unknown time to book")
            return
        gap = leaderless(previous, took_over)
        services = self._services()
        if gap is None or not services:
            log.info(
                "cluster: took over %.1fs after %s's last mark (epoch %d, %s): nothing to book",
                took_over - previous.wall,
                previous.who,
                previous.epoch,
                "clean" if previous.clean else "unclean",
            )
            return
        start, end = gap
        await self._ledger.record_unknown(utc(start), utc(end), services)
        how = "stepped down cleanly" if previous.clean else "was lost without a hand-over"
        log.warning(
            "cluster: no leader for %.1fs (%s at epoch %d %s); recorded as unknown for review",
            end - start,
            previous.who,
            previous.epoch,
            how,
        )
        self._bus.publish(
            SlaUnknown(
                subject="nodevigil",
                at=took_over,
                vantage="",
                start=start,
                end=end,
                clean=previous.clean,
            )
        )

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
        self._bus.publish(
            SlaUnknown(
                subject="nodevigil", at=now, vantage="", start=start, end=end, clean=mark.clean
            )
        )

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
        if not self._authority.may_act():
            return  # the leader writes it; its reconcile repairs a hand-over
        match event:
            case ServiceUnavailable():
                start = event.started_at
                await self._ledger.open_interval(
                    event.subject,
                    utc(start),
                    cause=self._cause(event.subject, start),
                    evidence={"sites": list(event.sites)},
                )
            case ServiceAvailable():
                await self._ledger.close_interval(event.subject, utc(event.ended_at))

    def _cause(self, service: str, start: float) -> str:
        if self._incidents is None:
            return "provider"
        return self._incidents.cause_for(service, start) or "provider"

    async def apply_ledger_changes(self) -> int:
        """Apply the incidents' pending ledger changes, in order; how many were applied.

        Each is applied once: the ledger keeps its stable id with the change, and it is marked
        applied in the incident store after. A transient error (the ledger's database away)
        stops here and is raised: the rest wait for the next pass. A change the ledger refuses
        for good is logged and set aside so it cannot hold back those behind it.
        """
        if self._incidents is None or not self._authority.may_act():
            return 0
        applied = 0
        async with self._changes_lock:
            while changes := await self._incidents.ledger_changes():
                for change in changes:
                    try:
                        exclusion = await self._apply_change(change)
                    except self._transient:
                        raise
                    except (SlaError, ValueError) as exc:
                        log.error("ledger change %s (%s) refused: %s", change.id, change.kind, exc)
                        await self._incidents.ledger_change_refused(change, str(exc))
                        continue
                    failpoint("ledger.change_applied")
                    await self._incidents.ledger_change_applied(change, exclusion_id=exclusion)
                    applied += 1
        return applied

    async def _apply_change(self, change: LedgerChange) -> int | None:
        """Make ``change`` in the ledger; a window's exclusion id."""
        if change.kind == "cause":
            # Every interval of the service within the incident (an open one: up to now).
            end = change.end if change.end is not None else self._clock.wall()
            await self._ledger.set_cause_within(
                change.services[0],
                utc(change.start),
                utc(end + 60),
                cause=change.cause,
                who=change.who,
                note=change.note,
                key=change.id,
            )
            return None
        return await self._ledger.add_exclusion(
            utc(change.start),
            utc(change.end if change.end is not None else change.start),
            change.cause,
            services=list(change.services),
            note=change.note,
            who=change.who,
            key=change.id,
        )

    async def _periodic(self) -> None:
        judged = False
        while True:
            try:
                acting = self._authority.may_act()
                judged = judged and acting  # a standby looks twice a second for its turn
                replayed = await self._backlog.replay()
                if replayed and acting:  # never reconcile past refusals
                    await self.apply_ledger_changes()  # causes and exclusions first
                    judged = await self.reconcile()
                    for row in await self._ledger.settle():
                        self._settled.labels(row.currency).inc(float(row.credit))
                if replayed and (acting or self._in_cluster):  # a standby: the shared ledger's
                    self.minutes.totals = await self._ledger.unavailable_minutes_total()
                if replayed and acting and self._failing:
                    self._failing = False
                    log.warning("ledger upkeep works again")
            except Exception:
                if not self._failing:  # once per streak, not every few seconds
                    self._failing = True
                    log.exception("ledger upkeep failed; retrying")
            # Soon after start, an outage the controller's saved bookkeeping carries reaches the
            # ledger within a second, not five: a process in a crash loop lives only seconds.
            await self._pause(UPKEEP_EVERY if judged else FIRST_RECONCILE_EVERY)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a ledger change was written meanwhile."""
        if self._incidents is None:
            await asyncio.sleep(seconds)
            return
        pending = self._incidents.ledger_pending
        try:
            async with asyncio.timeout(seconds):
                await pending.wait()
        except TimeoutError:
            pass
        pending.clear()  # before the pass that reads the rows: a later write wakes again

    async def reconcile(self) -> bool:
        """Open what the controller says is down, close what it says is back.

        Whether the controller had judged (nothing is done before it has).
        """
        if not self._authority.may_act():
            return False
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
