"""Opens, reopens and resolves incidents from the controller's whole-service verdicts.

Event-driven for exact times (``service.unavailable`` carries the outage's start), and
level-triggered as a safety net: every second the open incidents are compared with the
controller's view, so an event missed across a crash or restart heals by itself. Each change
and the notifications it causes are committed together before anything is sent; so are an
incident's cause and a maintenance window with the change the SLA ledger must make for them
(a pending ``LedgerChange``, which the application applies to the ledger: ``ledger_pending``
tells it when one was written).

Only a process that may act (``authority``: the holder of the leader lease, or ``Sole`` on one
host) opens, resolves and repeats incidents and queues alerts; a standby drops the controller's
events and, once it becomes the leader, reloads the open incidents from the shared store and
reconciles within a second. Operators' writes (updates, causes, maintenance) go to the shared
store from any process; the leader sends what they queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypedDict

from failover.events import (
    IncidentCauseSet,
    IncidentEvent,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    IncidentUpdated,
    MaintenanceCancelled,
    MaintenanceDeclared,
    ServiceAvailable,
    ServiceUnavailable,
)
from failover.incidents.messages import Composer, human_duration
from failover.incidents.model import Incident, IncidentState, Outgoing, Window, iso
from failover.incidents.ports import IncidentStore, LedgerChange
from failover.notify.metrics import NotifyMetrics
from nodevigil.core.authority import Authority, Fenced, Sole, check
from nodevigil.core.backlog import Backlog
from nodevigil.core.clock import Clock, Timeline
from nodevigil.core.config import Config
from nodevigil.core.errors import NodevigilError, StateError
from nodevigil.core.events import Event, EventBus
from nodevigil.core.failpoints import failpoint

log = logging.getLogger(__name__)

TICK = 1.0


class IncidentError(NodevigilError):
    """An operator's request about an incident cannot be done (the message says why)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class IncidentManager:
    """The incidents of every service, their updates, causes and maintenance windows."""

    def __init__(
        self,
        store: IncidentStore,
        *,
        config: Callable[[], Config],
        bus: EventBus,
        clock: Clock,
        unavailable: Callable[[], dict[str, float] | None],
        metrics: NotifyMetrics,
        outbox_changed: Callable[[], None],
        status_url: str | None = None,
        authority: Authority | None = None,
        installation: str = "",
    ) -> None:
        """``installation``: the state's installation id, first part of every notice's id
        (``Backend.installation_id``; the daemon always gives it)."""
        self._store = store
        self._authority: Authority = authority or Sole()
        self._acting: bool | None = None  # whether the last reconcile could act
        self._config = config
        self._bus = bus
        # The process's timeline already; with any other clock, the same timeline the outbox
        # keeps, so the due times written here and compared there cannot part.
        self._clock = Timeline(clock)
        # service -> unavailable since (wall), per the controller; None before its first cycle
        self._unavailable = unavailable
        self._metrics = metrics
        self._outbox_changed = outbox_changed
        self._status_url = status_url
        self._installation = installation
        self._lock = asyncio.Lock()
        self._open: dict[str, Incident] = {}
        self._windows: list[Window] = []
        # Set when a change for the SLA ledger is written: whoever applies them wakes up.
        self.ledger_pending = asyncio.Event()
        self._sub = bus.subscribe(["service."])
        self._alerts = bus.subscribe([])
        # What the store refused (a full or read-only disk) waits here, in order.
        self._service_backlog = Backlog(
            "incidents",
            self._service_event,
            transient=(StateError,),
            describe=lambda e: f"{e.kind} for {e.subject}",
            log=log,
        )
        self._alert_backlog = Backlog(
            "alerts",
            self._alert,
            transient=(StateError,),
            describe=lambda e: f"alert for {e.kind} {e.subject}",
            log=log,
            limit=10_000,
        )

    @property
    def vantage(self) -> str:
        return self._config().vantage

    def _composer(self) -> Composer:
        return Composer(self._config(), self._status_url, installation=self._installation)

    def _observing(self) -> bool:
        """``failover.mode: observe``: incidents open and resolve, customers are not told."""
        return self._config().failover.mode == "observe"

    def _to_customers(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """``outgoing`` (customer notices), or none at all while observing: never queued,
        so switching to act later sends nothing stale."""
        return [] if self._observing() else outgoing

    def _unnotified(self) -> str:
        """What an incident's opening says when customers are not told of it."""
        return " (observe mode: no customer is notified)" if self._observing() else ""

    async def start(self) -> None:
        """Load the open incidents and write the configured maintenance windows."""
        self._open = {i.service: i for i in await self._store.incidents(open_only=True)}
        await self.sync_config_windows()
        self._metrics.incidents_open.set(len(self._open))

    def open_incidents(self) -> list[Incident]:
        """The incidents open now, one per service at most."""
        return list(self._open.values())

    async def run(self) -> None:
        """Follow service events, alerts and the safety-net reconcile until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._service_events(), name="incident-events")
                tg.create_task(self._alert_events(), name="incident-alerts")
                tg.create_task(self._periodic(), name="incident-periodic")
        finally:
            self._sub.close()
            self._alerts.close()

    # --- what the controller says ------------------------------------------------------------

    async def _service_events(self) -> None:
        async for event in self._sub:
            await self._service_backlog.add(event)

    async def _service_event(self, event: Event) -> None:
        if not self._authority.may_act():
            return  # a standby: the leader opens it (and this process reconciles if it leads)
        match event:
            case ServiceUnavailable():
                await self.service_down(event.subject, event.started_at)
            case ServiceAvailable():
                await self.service_up(event.subject, event.ended_at)

    async def _alert_events(self) -> None:
        async for event in self._alerts:
            await self._alert_backlog.add(event)

    async def _alert(self, event: Event) -> None:
        if not self._authority.may_act():
            return  # the leader queues the alert: one per event, not one per host
        outgoing = self._composer().alerts(event)
        if self._observing():
            outgoing = [observed_alert(o) for o in outgoing]
        if outgoing and await self._store.enqueue(outgoing):
            self._outbox_changed()

    async def _periodic(self) -> None:
        failing = False
        while True:
            try:
                await self._alert_backlog.replay()
                # Refused service events first, in order, so the reconcile below never ends an
                # incident at the time of the repair instead of the outage's end.
                if await self._service_backlog.replay():
                    await self.reconcile()
                    await self.repeat_due()
                    failing = False
            except Fenced as exc:  # the lease ran out between the check and the write
                log.info("incident upkeep: %s", exc)
            except NodevigilError as exc:
                if not failing:  # once per streak, not once a second
                    failing = True
                    log.error("incident upkeep failed (retrying every %gs): %s", TICK, exc)
            await asyncio.sleep(TICK)

    async def reconcile(self) -> None:
        """Open what the controller says is down, resolve what it says is back."""
        if not await self._take_authority():
            return
        wanted = self._unavailable()
        if wanted is None:
            return  # the controller has not judged yet: resolving now would end real outages
        configured = {s.name for s in self._config().services}
        for service, since in wanted.items():
            if service not in self._open:
                await self.service_down(service, since)
        for service in list(self._open):
            if service not in wanted:
                note = None if service in configured else "the service is no longer configured"
                await self.service_up(service, self._clock.wall(), note=note)

    async def _take_authority(self) -> bool:
        """Whether this process may act; on becoming the leader, the open incidents are
        reloaded from the shared store first (the previous leader may have opened some)."""
        acting = self._authority.may_act()
        if acting and self._acting is False:
            async with self._lock:
                self._open = {i.service: i for i in await self._store.incidents(open_only=True)}
                self._metrics.incidents_open.set(len(self._open))
        self._acting = acting
        return acting

    async def service_down(self, service: str, started_at: float) -> Incident:
        """The whole service is unavailable: open (or reopen) its incident and tell customers.

        Raises ``Fenced`` when this process may not act."""
        async with self._lock:
            check(self._authority, f"open an incident for {service}")
            current = self._open.get(service)
            if current is not None:
                return current
            now = self._clock.wall()
            window = self.maintenance_at(service, started_at) or self.maintenance_at(service, now)
            composer = self._composer()
            previous = await self._store.last_resolved(service)
            reopen = self._config().incidents.reopen_window
            if (
                previous is not None
                and previous.resolved_at is not None
                and started_at - previous.resolved_at <= reopen
            ):
                gap = human_duration(max(0.0, round(started_at - previous.resolved_at)))
                incident = await self._store.reopen_incident(
                    previous.id,
                    at=now,
                    message=f"{service} failed again {gap} after recovering; reopened"
                    + self._unnotified(),
                    outgoing=lambda i: self._to_customers(composer.opening(i, now, window)),
                )
                kind: type[IncidentEvent] = IncidentReopened
            else:
                cause = "scheduled_maintenance" if window else "provider"
                text = f"{service} is wholly unavailable: no site can serve it"
                if window is not None:
                    text += " (during announced maintenance)"
                text += self._unnotified()
                incident = await self._store.open_incident(
                    service,
                    started_at=started_at,
                    at=now,
                    maintenance=window is not None,
                    cause=cause,
                    message=text,
                    outgoing=lambda i: self._to_customers(composer.opening(i, now, window)),
                )
                kind = IncidentOpened
            self._open[service] = incident
            self._metrics.incidents_open.set(len(self._open))
            self._metrics.incidents_opened.inc()
        failpoint("incident.opened")
        self._outbox_changed()
        log.warning("incident %d %s: %s is wholly unavailable", incident.id, kind.KIND[9:], service)
        self._bus.publish(kind(**self._facts(incident)))
        return incident

    async def service_up(self, service: str, ended_at: float, *, note: str | None = None) -> None:
        """The service is available again: resolve its incident and send the notices.

        Raises ``Fenced`` when this process may not act."""
        async with self._lock:
            check(self._authority, f"resolve the incident of {service}")
            current = self._open.get(service)
            if current is None:
                return
            incident = await self._resolve(current, ended_at, note or "", "nodevigil")
        log.info("incident %d resolved: %s is available again", incident.id, service)

    async def _resolve(self, current: Incident, ended_at: float, note: str, who: str) -> Incident:
        now = self._clock.wall()
        took = human_duration(max(0.0, round(ended_at - current.started_at)))
        text = f"{current.service} is available again after {took}" + (f" ({note})" if note else "")
        composer = self._composer()
        incident, cancelled = await self._store.resolve_incident(
            current.id,
            resolved_at=max(ended_at, current.started_at),
            at=now,
            message=text,
            author=who,
            outgoing=lambda i: self._to_customers(composer.resolution(i, now)),
        )
        if cancelled:
            log.info("incident %d: %d escalation steps no longer needed", incident.id, cancelled)
        del self._open[current.service]
        self._metrics.incidents_open.set(len(self._open))
        self._outbox_changed()
        self._bus.publish(IncidentResolved(**self._facts(incident)))
        return incident

    async def repeat_due(self) -> None:
        """Queue the repeats that plans ask for, for incidents still open."""
        if not self._authority.may_act():
            return
        now = self._clock.wall()
        composer = self._composer()
        outgoing: list[Outgoing] = []
        for incident in list(self._open.values()):
            outgoing += self._to_customers(composer.repeat(incident, now))
        if outgoing and await self._store.enqueue(outgoing):
            self._outbox_changed()

    # --- what operators do ------------------------------------------------------------------

    async def get(self, incident_id: int) -> Incident:
        """One incident, or IncidentError 404."""
        incident = await self._store.get(incident_id)
        if incident is None:
            raise IncidentError(f"no incident {incident_id}", status=404)
        return incident

    async def post_update(
        self,
        incident_id: int,
        *,
        message: str,
        state: IncidentState | None,
        author: str,
        notify: bool = True,
    ) -> Incident:
        """An operator's update; ``resolved`` only when the service is available again."""
        async with self._lock:
            current = await self.get(incident_id)
            if state is IncidentState.RESOLVED:
                if current.resolved_at is not None:
                    raise IncidentError(f"incident {incident_id} is already resolved", status=409)
                wanted = self._unavailable() or {}
                if current.service in wanted:
                    raise IncidentError(
                        f"{current.service} is still unavailable; the incident resolves "
                        "by itself when it recovers",
                        status=409,
                    )
                return await self._resolve(current, self._clock.wall(), message, author)
            if current.resolved_at is not None and state is not None:
                raise IncidentError(f"incident {incident_id} is resolved", status=409)
            now = self._clock.wall()
            composer = self._composer()
            incident = await self._store.add_update(
                incident_id,
                at=now,
                state=state,
                message=message,
                author=author,
                outgoing=lambda i: self._to_customers(
                    composer.update(i, message, now) if notify else []
                ),
            )
            if incident.is_open:
                self._open[incident.service] = incident
        self._outbox_changed()
        self._bus.publish(IncidentUpdated(**self._facts(incident), message=message, author=author))
        return incident

    async def set_cause(self, incident_id: int, *, cause: str, note: str, author: str) -> Incident:
        """Tag the cause; the SLA ledger's change for it commits with it (``ledger_changes``)."""

        def ledger(incident: Incident) -> LedgerChange:
            # The ledger's intervals of the service overlapping the incident take the cause.
            return LedgerChange(
                id=uuid.uuid4().hex,
                kind="cause",
                services=(incident.service,),
                start=incident.started_at,
                end=incident.resolved_at,
                cause=cause,
                note=f"incident {incident.id}: {note}".strip(),
                who=author or "operator",
                not_before=now,
                incident=incident.id,
            )

        async with self._lock:
            await self.get(incident_id)
            now = self._clock.wall()
            incident = await self._store.set_cause(
                incident_id, cause=cause, note=note, at=now, author=author, ledger=ledger
            )
            if incident.is_open:
                self._open[incident.service] = incident
        failpoint("incident.cause_set")
        self.ledger_pending.set()
        self._bus.publish(IncidentCauseSet(**self._facts(incident), note=note, author=author))
        return incident

    def cause_for(self, service: str, at: float) -> str | None:
        """The cause the ledger should record for an outage of ``service`` starting at ``at``."""
        incident = self._open.get(service)
        if incident is not None and incident.cause != "provider":
            return incident.cause
        if self.maintenance_at(service, at) is not None:
            return "scheduled_maintenance"
        return None

    # --- maintenance windows ----------------------------------------------------------------

    def maintenance_at(self, service: str, at: float) -> Window | None:
        """The maintenance window covering ``service`` at wall time ``at``, if any."""
        return next((w for w in self._windows if w.covers(service, at)), None)

    async def windows(self) -> list[Window]:
        """Every window not cancelled."""
        return list(self._windows)

    async def sync_config_windows(self) -> None:
        """Write the configuration's windows once each (keyed by their content)."""
        for window in self._config().maintenance:
            services = sorted(window.services)
            key = hashlib.sha256(
                f"{window.start.timestamp()}|{window.end.timestamp()}|{services}|{window.note}".encode()
            ).hexdigest()
            await self._store.add_window(
                start=window.start.timestamp(),
                end=window.end.timestamp(),
                services=services,
                note=window.note,
                source="config",
                who="config",
                config_key=key,
                ledger=_exclusion,
            )
        self._windows = await self._store.windows()
        self.ledger_pending.set()

    async def declare_window(
        self, *, start: float, end: float, services: Sequence[str], note: str, who: str
    ) -> Window:
        """Announce maintenance ahead (API or CLI)."""
        configured = {s.name for s in self._config().services}
        unknown = [s for s in services if s not in configured]
        if unknown:
            raise IncidentError(f"services: no service is called {unknown[0]!r}")
        if end <= start:
            raise IncidentError("end: must be after start")
        if end <= self._clock.wall():
            raise IncidentError("end: the window is already over; use an SLA exclusion instead")
        window = await self._store.add_window(
            start=start,
            end=end,
            services=list(services),
            note=note,
            source="api",
            who=who,
            ledger=_exclusion,
        )
        failpoint("maintenance.declared")
        self._windows = await self._store.windows()
        self.ledger_pending.set()
        facts = self._window_facts(window, ",".join(services), window.who)
        self._bus.publish(MaintenanceDeclared(**facts))
        return window

    async def cancel_window(self, window_id: int, who: str) -> Window:
        """Cancel a window before it starts."""
        window = await self._store.cancel_window(window_id, self._clock.wall())
        if window is None:
            raise IncidentError(
                f"no maintenance window {window_id} that has yet to start", status=409
            )
        self._windows = await self._store.windows()
        facts = self._window_facts(window, ",".join(window.services), who)
        self._bus.publish(MaintenanceCancelled(**facts))
        return window

    async def windows_to_exclude(self) -> list[Window]:
        """Started windows the ledger does not hold yet."""
        now = self._clock.wall()
        return [w for w in self._windows if w.exclusion_id is None and w.start <= now]

    async def window_excluded(self, window: Window, exclusion_id: int) -> None:
        """The ledger now holds the window's exclusion."""
        await self._store.mark_window_excluded(window.id, exclusion_id)
        self._windows = await self._store.windows()

    # --- the SLA ledger's outbox ------------------------------------------------------------

    async def ledger_changes(self) -> list[LedgerChange]:
        """Changes the ledger must make, due now, in the order they were written."""
        return await self._store.ledger_changes(self._clock.wall())

    async def ledger_change_applied(
        self, change: LedgerChange, *, exclusion_id: int | None = None
    ) -> None:
        """The ledger holds ``change`` (a window's exclusion: ``exclusion_id``)."""
        await self._store.ledger_change_applied(change.id, exclusion_id=exclusion_id)
        if change.window is not None:
            self._windows = await self._store.windows()

    async def ledger_change_refused(self, change: LedgerChange, error: str) -> None:
        """The ledger refused ``change`` for good: kept with the reason, no longer retried."""
        await self._store.ledger_change_refused(change.id, error)

    # ------------------------------------------------------------------------------------------

    def _facts(self, incident: Incident) -> _IncidentFacts:
        """What every incident event says: the incident's API form and its wall times."""
        return {
            "subject": incident.service,
            "at": self._clock.wall(),
            "vantage": self.vantage,
            "incident": incident.id,
            "service": incident.service,
            "state": incident.state.value,
            "cause": incident.cause,
            "cause_note": incident.cause_note,
            "maintenance": incident.maintenance,
            "started_at": iso(incident.started_at),
            "resolved_at": iso(incident.resolved_at),
            "openings": incident.openings,
            "first_notice_at": iso(incident.first_notice_at),
            "started": incident.started_at,
            "ended": incident.resolved_at,
        }

    def _window_facts(self, window: Window, subject: str, who: str) -> _WindowFacts:
        """What a maintenance event says: the window's API form (``who`` acted on it)."""
        return {
            "subject": subject,
            "at": self._clock.wall(),
            "vantage": self.vantage,
            "window": window.id,
            "start": iso(window.start),
            "end": iso(window.end),
            "services": tuple(window.services),
            "note": window.note,
            "source": window.source,
            "who": who,
            "excluded_in_ledger": window.exclusion_id is not None,
            "cancelled": window.cancelled,
        }


OBSERVE_MARK = "[observe]"


def observed_alert(outgoing: Outgoing) -> Outgoing:
    """An operator alert sent in observe mode, marked so: ``[observe]`` before its summary
    and text, ``"observe": true`` in its payload (nothing was done to the load balancers)."""
    message = outgoing.message
    marked = replace(
        message,
        summary=f"{OBSERVE_MARK} {message.summary}",
        text=f"{OBSERVE_MARK} {message.text}",
        data={**message.data, "observe": True},
    )
    return replace(outgoing, message=marked)


def _exclusion(window: Window) -> LedgerChange:
    """A maintenance window's exclusion, for the ledger once the window has begun."""
    return LedgerChange(
        id=uuid.uuid4().hex,
        kind="exclusion",
        services=tuple(window.services),
        start=window.start,
        end=window.end,
        cause="scheduled_maintenance",
        note=f"maintenance window {window.id}: {window.note}".strip(),
        who=window.who,
        not_before=window.start,
        window=window.id,
    )


class _IncidentFacts(TypedDict):
    subject: str
    at: float
    vantage: str
    incident: int
    service: str
    state: str
    cause: str
    cause_note: str
    maintenance: bool
    started_at: str | None
    resolved_at: str | None
    openings: int
    first_notice_at: str | None
    started: float
    ended: float | None


class _WindowFacts(TypedDict):
    subject: str
    at: float
    vantage: str
    window: int
    start: str | None
    end: str | None
    services: tuple[str, ...]
    note: str
    source: str
    who: str
    excluded_in_ledger: bool
    cancelled: bool
