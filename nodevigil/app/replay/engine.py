"""Replay: what a configuration would have done over recorded probe history.

The real logic, on a simulated clock, as fast as the CPU allows: the monitor's judges
(``feed.py``), the controller's ``decide`` (and ``decide_changed``, as the loop uses it) on
load balancers simulated in memory, the incident manager on a throwaway SQLite store in a
temporary directory (its customer notices are the outbox rows it writes), and the SLA rule
(``sla.rule.calculate``). Nothing leaves the process: no load balancer, no notifier, and no
state of the daemon's is read or written.

A decision is made at every verdict change (the loop wakes on the verdict event) and, for
what time alone changes (a hold-down ending, a site's hold-down), at the loop's next cycle
(every ``failover.cycle`` from the first decision); while a brake is engaged, every cycle.
Every replay starts as a fresh daemon does: verdicts unknown, every server ready, every site
published.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from failover.controller.changes import FleetIndex, decide_changed
from failover.controller.decide import decide
from failover.controller.state import (
    Action,
    Book,
    ControllerState,
    Decision,
    Observed,
    SetAddresses,
    SetServerState,
)
from failover.events import ServiceAvailable, ServiceUnavailable
from failover.incidents.manager import IncidentManager
from failover.lb.base import ServerState
from failover.notify.metrics import NotifyMetrics
from monitor.history import ProbeRun
from monitor.verdicts import Verdict
from nodevigil.app.replay.feed import FeedStats, VerdictChange, verdict_changes
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.incidents import SqliteIncidentStore
from sla.model import Cause, Charge, CreditRow, Interval, parse_cause
from sla.rule import BillingCalendar, calculate, unavailable_minutes

US = 1_000_000


@dataclass(frozen=True, slots=True)
class Happening:
    """One thing the replayed configuration did: a drain, a withdrawal, an incident, a notice.

    ``kind``: drain, restore, withdraw, publish, incident.opened, incident.reopened,
    incident.resolved or notice; ``subject`` the node, site, service or customer;
    ``what`` the facts that must agree for two replays to have done the same thing.
    """

    kind: str
    subject: str
    at: float
    what: str
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form (times as wall seconds)."""
        return {
            "kind": self.kind,
            "subject": self.subject,
            "at": self.at,
            "what": self.what,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one configuration would have done between ``since`` and ``until``."""

    since: float
    until: float
    happenings: list[Happening]
    outages: list[Interval]  # whole-service unavailability, with the cause the ledger takes
    minutes: dict[tuple[str, str], int]  # (service, local day) -> unavailable minutes
    credits: list[CreditRow]
    stats: FeedStats
    decisions: int
    actions: list[tuple[float, Action]] = field(default_factory=list)  # what was sent, when
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per part of the replay


def _initial_observed(config: Config) -> Observed:
    """What a fresh daemon finds: every server ready, every site of a service published."""
    with_lb = {s.name for s in config.sites if s.local_lb is not None}
    servers = {n.name: ServerState.READY for n in config.nodes if n.site in with_lb}
    records: dict[tuple[str, str], frozenset[str]] = {}
    for svc in config.services:
        if svc.global_lb is None or svc.record is None:
            continue
        members = [s for name in svc.sites if (s := config.site(name)) is not None]
        records[(svc.global_lb, svc.record)] = frozenset(m.address for m in members)
    return Observed(servers, records)


class _Decider:
    """The controller's cycle without its I/O: decide, apply to the simulated balancers."""

    def __init__(self, config: Config, since: float) -> None:
        self.config = config
        self.index = FleetIndex.of(config)
        self.verdicts: dict[str, Verdict] = {}
        self.reasons: dict[str, str] = {}
        self.evidence: dict[str, VerdictChange] = {}  # node -> its latest verdict change
        start = _initial_observed(config)
        self._servers: dict[str, ServerState] = dict(start.servers)
        self._records: dict[tuple[str, str], frozenset[str]] = dict(start.records)
        self.observed = Observed(self._servers, self._records)  # the balancers, in memory
        self.book = Book()
        self.last: Decision | None = None
        self.since = since
        self.happenings: list[Happening] = []
        self.outage_events: list[ServiceUnavailable | ServiceAvailable] = []
        self.actions: list[tuple[float, Action]] = []
        self.decisions = 0
        self._site_of_address = {
            (svc.name, s.address): s.name
            for svc in config.services
            for name in svc.sites
            if (s := config.site(name)) is not None
        }

    def next_wake(self) -> float:
        """When time alone next changes a decision (inf: never): the first of the loop's
        cycles (every ``failover.cycle`` from the first decision) at or after it."""
        last, grid = self.last, self._grid
        if last is None or grid is None:
            return math.inf
        cycle = self.config.failover.cycle
        wake = min(last.wakes.values(), default=math.inf)
        if last.brakes and self._last_at is not None:
            wake = min(wake, self._last_at + cycle / 2)  # engaged: decide every cycle
        if wake == math.inf:
            return wake
        ticks = math.ceil((wake - grid) / cycle - 1e-9)
        at = grid + ticks * cycle
        if self._last_at is not None and at <= self._last_at:
            at += cycle
        return at

    _acted: frozenset[str] | set[str] = frozenset()  # nodes the last decision acted on
    _last_at: float | None = None
    _grid: float | None = None  # the first decision's time: the loop's cycles count from it

    def run(self, now: float, dirty: set[str], narrow: dict[str, set[str]] | None = None) -> None:
        """One decision at ``now`` (wall seconds, also the monotonic time). ``narrow``: site ->
        its nodes whose verdict changed; as the loop does, the nodes the last decision acted
        on are added (their read-back state moved), so such a site is decided per node when
        its budget allows it."""
        state = ControllerState(self.verdicts, self.observed, {}, self.book, self.reasons)
        decision = None
        if self.last is not None:
            nodes = narrow or {}
            for node in self._acted:
                site = self.index.site_of.get(node)
                if site is not None and site in nodes:
                    nodes[site].add(node)
            decision = decide_changed(
                self.config, self.index, state, now, now, last=self.last, dirty=dirty, nodes=nodes
            )
        if decision is None:
            decision = decide(self.config, state, now, now)
        self.decisions += 1
        self._apply(decision, now)
        self.book, self.last, self._last_at = decision.book, decision, now
        if self._grid is None:
            self._grid = now

    def _apply(self, decision: Decision, now: float) -> None:
        # The simulated balancers take every action; changed in place (nothing keeps an older
        # read-back: the loop reads back anew each cycle), not copied per decision.
        self._acted = {a.node for a in decision.actions if isinstance(a, SetServerState)}
        for action in decision.actions:
            if now >= self.since:
                self.actions.append((now, action))
            if isinstance(action, SetServerState):
                self._servers[action.node] = action.new
                self._server(action, now)
            elif isinstance(action, SetAddresses):
                self._records[(action.lb, action.record)] = action.new
                self._addresses(action, now)
        self._notices(decision)

    def _notices(self, decision: Decision) -> None:
        for notice in decision.notices:
            if isinstance(notice.event, ServiceUnavailable | ServiceAvailable):
                self.outage_events.append(notice.event)

    def _server(self, action: SetServerState, now: float) -> None:
        kind = "restore" if action.new is ServerState.READY else "drain"
        change = self.evidence.get(action.node)
        evidence: dict[str, Any] = {"why": action.why, "site": action.site}
        if change is not None:
            evidence["verdict"] = change.evidence()
        what = f"{action.node} {action.old.value if action.old else '?'}->{action.new.value}"
        self._add(Happening(kind, action.node, now, what, evidence))

    def _addresses(self, action: SetAddresses, now: float) -> None:
        for address, kind in [
            *((a, "withdraw") for a in sorted(action.old - action.new)),
            *((a, "publish") for a in sorted(action.new - action.old)),
        ]:
            site = self._site_of_address.get((action.service, address), address)
            nodes = [n.name for n in self.index.nodes_of.get(site, [])]
            evidence = {
                "why": action.why,
                "service": action.service,
                "record": action.record,
                "address": address,
                "nodes": {
                    n: self.evidence[n].evidence() if n in self.evidence else None
                    for n in nodes
                    if self.verdicts.get(n) is not Verdict.UP
                },
            }
            what = f"site {site} {kind} from {action.service} ({action.record})"
            self._add(Happening(kind, site, now, what, evidence))

    def _add(self, happening: Happening) -> None:
        if happening.at >= self.since:  # before the window: the warm-up
            self.happenings.append(happening)


def decide_over(
    config: Config, changes: Sequence[VerdictChange], since: float, until: float
) -> _Decider:
    """Run the controller's decisions over ``changes`` up to ``until``."""
    decider = _Decider(config, since)
    i, n = 0, len(changes)
    first = changes[0].at if changes else since
    decider.run(min(first, since), set())  # the start: a fresh daemon's first full pass
    while True:
        at_change = changes[i].at if i < n else math.inf
        now = min(at_change, decider.next_wake())
        if now > until or now == math.inf:
            break
        dirty: set[str] = set()
        narrow: dict[str, set[str]] = {}
        while i < n and changes[i].at == now:
            change = changes[i]
            decider.verdicts[change.node] = change.transition.new
            decider.reasons[change.node] = change.transition.reason
            decider.evidence[change.node] = change
            if (site := decider.index.site_of.get(change.node)) is not None:
                dirty.add(site)
                narrow.setdefault(site, set()).add(change.node)
            i += 1
        decider.run(now, dirty, narrow)
    return decider


async def replay(
    config: Config,
    runs: Iterable[ProbeRun],
    since: float,
    until: float,
    *,
    charges: Sequence[Charge] = (),
    vantage: str | None = None,
) -> ReplayResult:
    """What ``config`` would have done over ``runs`` between ``since`` and ``until``.

    Runs before ``since`` warm the judges and the controller's bookkeeping up; what they
    cause is not reported. Runs after ``until`` are ignored. CPU-bound: the daemon runs it
    in a process of its own (``replay_routes``), never on its event loop.
    """
    cpu = {}
    started = time.process_time()
    kept = [r for r in runs if r.first <= until]
    changes, stats = verdict_changes(config, kept, vantage=vantage)
    changes = [c for c in changes if c.at <= until]
    cpu["judges"], started = time.process_time() - started, time.process_time()
    decider = decide_over(config, changes, since, until)
    cpu["decisions"], started = time.process_time() - started, time.process_time()
    happenings = list(decider.happenings)
    outages, incident_happenings = await _incidents(config, decider.outage_events, until)
    happenings += [h for h in incident_happenings if h.at >= since]
    happenings.sort(key=lambda h: (h.at, h.kind, h.subject, h.what))
    clipped = [
        Interval(o.service, max(o.start_us, int(since * US)), o.end_us, o.cause, o.source)
        for o in outages
        if o.end_us > since * US
    ]
    zone = ZoneInfo(config.timezone)
    calendar = BillingCalendar(zone)
    minutes = unavailable_minutes(clipped, (), calendar, config.sla.rounding)
    report = calculate(clipped, (), charges, zone, config.sla.rounding)
    cpu["incidents_sla"] = time.process_time() - started
    return ReplayResult(
        since,
        until,
        happenings,
        clipped,
        {(svc, day.isoformat()): m for (svc, day), m in minutes.items()},
        [c for c in report.credits if c.unavailable_minutes or c.credit],
        stats,
        decider.decisions,
        decider.actions,
        cpu,
    )


async def _incidents(
    config: Config, events: Sequence[ServiceUnavailable | ServiceAvailable], until: float
) -> tuple[list[Interval], list[Happening]]:
    """The incident manager's answer to the outages: incidents, notices and ledger causes."""
    if not events:
        return [], []
    # The replayed incidents are not the daemon's: their log lines ("incident 3 opened")
    # would read as real ones in an operator's terminal or journal.
    quiet = logging.getLogger(IncidentManager.__module__)
    was, quiet.disabled = quiet.disabled, True
    try:
        return await _incidents_quietly(config, events, until)
    finally:
        quiet.disabled = was


async def _incidents_quietly(
    config: Config, events: Sequence[ServiceUnavailable | ServiceAvailable], until: float
) -> tuple[list[Interval], list[Happening]]:
    intervals: list[Interval] = []
    happenings: list[Happening] = []
    with tempfile.TemporaryDirectory(prefix="nodevigil-replay-") as tmp:
        store = SqliteIncidentStore(Path(tmp) / "incidents.db")
        await store.open()
        try:
            clock = ManualClock(start=events[0].at, wall_offset=events[0].at)
            manager = IncidentManager(
                store,
                config=lambda: config,
                bus=EventBus(),
                clock=clock,
                unavailable=lambda: None,
                metrics=NotifyMetrics(CollectorRegistry()),
                outbox_changed=lambda: None,
            )
            await manager.start()
            opened: dict[str, tuple[float, str]] = {}  # service -> (start, cause)
            for event in events:
                await _repeats_until(manager, clock, event.at, config)
                clock.advance(event.at - clock.monotonic())
                if isinstance(event, ServiceUnavailable):
                    cause = manager.cause_for(event.service, event.started_at) or "provider"
                    opened[event.service] = (event.started_at, cause)
                    await manager.service_down(event.service, event.started_at)
                else:
                    start, cause = opened.pop(event.service, (event.started_at, "provider"))
                    intervals.append(_interval(event.service, start, event.ended_at, cause))
                    await manager.service_up(event.service, event.ended_at)
            await _repeats_until(manager, clock, until, config)
            for service, (start, cause) in opened.items():  # still open at the window's end
                intervals.append(_interval(service, start, until, cause))
            happenings = await _incident_happenings(store, until)
        finally:
            await store.close()
    return intervals, happenings


async def _repeats_until(
    manager: IncidentManager, clock: ManualClock, moment: float, config: Config
) -> None:
    """Let the plans' repeats come due up to ``moment`` (each ``repeat_every`` while open)."""
    plans = [p.repeat_every for p in config.contingency_plans.values() if p.repeat_every]
    if not plans or not manager.open_incidents():
        return
    step = min(plans)
    while clock.monotonic() + step <= moment and manager.open_incidents():
        clock.advance(step)
        await manager.repeat_due()


def _interval(service: str, start: float, end: float, cause: str) -> Interval:
    try:
        parsed = parse_cause(cause)
    except ValueError:
        parsed = Cause.PROVIDER
    return Interval(service, int(start * US), int(end * US), parsed, "replay")


async def _incident_happenings(store: SqliteIncidentStore, until: float) -> list[Happening]:
    out: list[Happening] = []
    for incident in await store.incidents():
        evidence = incident.as_dict()
        out.append(
            Happening(
                "incident.opened",
                incident.service,
                incident.started_at,
                f"{incident.service} wholly unavailable",
                evidence,
            )
        )
        if incident.openings > 1:
            out.append(
                Happening(
                    "incident.reopened",
                    incident.service,
                    incident.opened_at,
                    f"{incident.service} reopened ({incident.openings} openings)",
                    evidence,
                )
            )
        if incident.resolved_at is not None:
            out.append(
                Happening(
                    "incident.resolved",
                    incident.service,
                    incident.resolved_at,
                    f"{incident.service} available again",
                    evidence,
                )
            )
        for row in await store.notifications(incident=incident.id, limit=100_000):
            if row.state == "cancelled" or row.not_before > until or row.customer is None:
                continue
            msg = row.message
            out.append(
                Happening(
                    "notice",
                    row.customer,
                    row.not_before,
                    f"{msg.kind} to {row.customer} via {msg.notifier} ({msg.subject}, "
                    f"step {row.step})",
                    {"incident": incident.id, "summary": msg.summary, "service": msg.subject},
                )
            )
    return out
