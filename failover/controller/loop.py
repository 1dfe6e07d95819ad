"""The failover controller: a level-triggered loop around the pure ``decide``.

Each cycle reads the load balancers back, decides from that actual state (never from what it
believes it did before, since another process or an operator may have acted), applies the
difference, publishes events and saves its bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from itertools import compress, repeat
from operator import is_not
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from failover.controller.brake import FLEET
from failover.controller.changes import (
    FleetIndex,
    changed_nodes,
    changed_overrides,
    decide_changed,
    moved_servers,
    unsettled_sites,
)
from failover.controller.decide import decide, site_backend
from failover.controller.lbio import (
    Applied,
    Report,
    after_applied,
    apply,
    check_adapters,
    describe_applied,
    failure_kind,
    read_back,
    release,
    unreadable,
)
from failover.controller.metrics import ControllerMetrics
from failover.controller.overrides import Overrides
from failover.controller.release import Release, releases, still_released
from failover.controller.state import (
    Book,
    ControllerState,
    Decision,
    Observed,
    Override,
    OverrideKind,
    SetServerState,
    UnknownNameError,
    VerdictSource,
    shift_book,
    shift_changed,
)
from failover.controller.status import (
    ControllerStatus,
    ServiceStatus,
    WouldAction,
    build_load_balancers,
    build_services,
    build_status,
    would_do,
)
from failover.controller.store import ActionRecord, Store
from failover.events import ControllerDecision, FailoverFailed, FailoverModeChanged, LbRecovered
from failover.lb.base import GlobalLoadBalancer, LocalLoadBalancer
from failover.proof.runner import ProofRunner
from monitor.verdicts import NodeVerdictEvent, Verdict
from nodevigil.core.authority import OBSERVING, Authority, Sole, TrafficGate
from nodevigil.core.clock import Clock
from nodevigil.core.config.schema import Config
from nodevigil.core.durations import format_duration
from nodevigil.core.errors import NodevigilError
from nodevigil.core.events import Event, EventBus, Subscription
from nodevigil.core.failpoints import failpoint

log = logging.getLogger(__name__)

PACE = 2.0  # rest this many times a cycle's duration before the next (see _loop)
# ... once the cycles' CPU beyond their share (1 / (1 + PACE) of the time) passes this many
# seconds: a verdict is not kept waiting by a rest the controller's CPU did not need.
PACE_BURST = 0.05
# The sweep for drift (read every load balancer back, decide every site, a slice a cycle)
# covers the fleet every failover.cycle, or less often when it is expensive: the last full
# pass's duration is at most this share of the period, and the period at most FULL_PASS_MAX
# seconds. Besides, a cycle redoes only what changed (changes.py).
FULL_PASS_SHARE = 0.02
FULL_PASS_MAX = 30.0
# In a cluster, how often every host re-reads the shared overrides: a drain written through a
# standby's API is in the store, not in the leader's memory. A few rows: cheap.
OVERRIDES_REFRESH = 2.0
# Stored bookkeeping is in wall time; the monotonic -> wall offset it was shifted by is kept
# while the clocks agree within this (seconds): hold-downs are seconds long, and a wall clock
# step beyond it shifts the whole book again.
OFFSET_SLACK = 0.05
# The action log is written behind the cycle: with the next cycle's book save, or by itself
# after this many seconds without one (see Controller._record).
RECORD_DELAY = 0.2


class Controller:
    """Keeps the load balancers matching the verdicts, policy and operator overrides.

    Use ``async with Controller(...) as c:`` to run the loop; ``run_once()`` runs one cycle
    (tests). The caller owns the load-balancer adapters and the store and closes them.

    ``authority`` says whether this process may act (``Sole`` on a single host). Without it the
    controller is a warm standby: it reads back and decides every cycle, so it can take over
    in one, but applies nothing, saves nothing to the shared store and logs what it would do.

    ``traffic`` gates every load-balancer command: the lease, shut while ``failover.mode`` is
    ``observe`` (``TrafficGate``). The daemon gives the adapters the same gate, so observe mode
    holds even against a caller that ignores it. Observing, the controller keeps its books and
    overrides as a leader does and serves the actions it did not send (``status().would``).
    """

    def __init__(
        self,
        *,
        config: Config,
        verdicts: VerdictSource,
        bus: EventBus,
        clock: Clock,
        local_lbs: Mapping[str, LocalLoadBalancer],
        global_lbs: Mapping[str, GlobalLoadBalancer],
        store: Store,
        vantage: str | None = None,
        registry: CollectorRegistry | None = None,
        lb_timeout: float = 10.0,
        authority: Authority | None = None,
        traffic: Authority | None = None,
    ) -> None:
        if lb_timeout <= 0:
            raise ValueError("lb_timeout must be positive")
        self._local = dict(local_lbs)
        self._global = dict(global_lbs)
        check_adapters(config, self._local, self._global)
        self._config = config
        self._source = verdicts
        self._bus = bus
        self._clock = clock
        self._store = store
        self.vantage = vantage or config.vantage
        self.metrics = ControllerMetrics(registry)
        self.metrics.show_services((s.name, s.sites) for s in config.services)
        self._lb_timeout = lb_timeout
        self._authority: Authority = authority or Sole()
        self._traffic: Authority = traffic or TrafficGate(self._authority, self._observing)
        self._acting: bool | None = None  # whether the last cycle could act (None: no cycle)
        self._mode: str | None = None  # failover.mode as of the last cycle
        self._would: list[WouldAction] = []  # observing: what the last cycle did not send
        self._would_logged: tuple[str, ...] = ()  # observing: the would-be actions last logged
        self._unread: dict[str, list[str]] = {}  # lb -> what the last cycle could not read
        self._overrides = Overrides(
            store,
            emit=self._emit,
            wall=clock.wall,
            vantage=lambda: self.vantage,
            store_failed=lambda what, exc: self._report("store", "store", "delete", what, exc),
        )
        self._overrides_read: float | None = None  # monotonic time of the last re-read
        self._overrides_stale = False  # the last re-read failed (logged once per streak)
        self._releases: list[Release] = []  # servers a reload let go of, still to put back
        self._book = Book()
        self._saved_book: Book | None = None
        self._saved_wall: tuple[float, Book] | None = None  # (offset, _saved_book shifted by it)
        self._reasons: dict[str, str] = {}
        self._failing: dict[str, str] = {}
        # Per failing call key: when its streak began (wall) and how many attempts failed.
        self._streaks: dict[str, tuple[float, int]] = {}
        self._retrying: str | None = None  # the decision line whose actions failed last cycle
        self._logged_errors: set[tuple[str, str, str]] = (
            set()
        )  # failing call key -> error, to report once per streak
        self._observed: Observed | None = None
        self._last: Decision | None = None
        # What the last cycle decided from, so the next one redoes only what changed.
        self._last_state: ControllerState | None = None
        self._last_config: Config | None = None
        self._last_acting: tuple[bool, bool] | None = None  # (leader, observing)
        self._index: tuple[Config, FleetIndex] | None = None
        self._touched: set[str] = set()  # nodes named by verdict events since the last cycle
        self._unsettled: set[str] = set()  # sites of the last cycle's actions that did not take
        self._unread_sites: set[str] = set()  # sites with a server the last read missed
        self._unread_records: set[tuple[str, str]] = set()
        self._unread_keys: dict[tuple[str, str], str] = {}  # (lb, target) -> why unreadable
        self._full_took = 0.0  # how long the last full pass took (seconds)
        self._cpu_owed = 0.0  # the cycles' CPU beyond their share, to rest off (_rest)
        self._paced_at: float | None = None  # when _rest last counted (perf_counter)
        # The sweep for drift: the sites it has still to redo, when it began (monotonic),
        # how many sites it covers, and whether every slice so far saw and fixed everything.
        self._sweep: list[str] = []
        self._sweep_at: float | None = None
        self._sweep_size = 0
        self._sweep_ok = True
        self._last_cycle_at: float | None = None
        self._loaded = False
        self._sub: Subscription | None = None
        self._poke = asyncio.Event()
        self._cycle = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._records: list[ActionRecord] = []  # the action log's entries still to write
        self._recording: asyncio.Task[None] | None = None  # writing them (_record)
        self._writing = False  # _write_records has a batch in the store's hands
        self._write_now = asyncio.Event()  # ends the writer's delay (_flush_records)
        # Proof that traffic followed each applied action, in the background (failover/proof).
        self.proofs = ProofRunner(
            clock=clock,
            authority=self._authority,
            local_lbs=self._local,
            global_lbs=self._global,
            lb_types=self._lb_type,
            emit=self._emit,
            record=self._store.record_actions,
            vantage=lambda: self.vantage,
            registry=self.metrics.registry,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load durable state and subscribe to verdict events (idempotent)."""
        if self._sub is None:
            self._sub = self._bus.subscribe(("node.",))
        if not self._loaded:
            stored = await self._store.load()
            self._overrides.load(stored.overrides)
            # Stored times are wall-clock; bookkeeping runs on the monotonic clock.
            self._book = shift_book(stored.book, self._clock.monotonic() - self._clock.wall())
            self._saved_book = self._book
            self._saved_wall = None
            self._loaded = True

    async def __aenter__(self) -> Controller:
        await self.start()
        self._task = asyncio.create_task(self._loop(), name="nodevigil-failover-controller")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.proofs.close()  # after the loop: no cycle starts one any more
        await self._flush_records()  # the caller closes the store next
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    async def _loop(self) -> None:
        while True:
            started = time.thread_time()  # the loop thread's CPU, not waits on disk or LBs
            try:
                # A full pass when one is needed (the first cycle, a reload...); else the
                # changes, and the next slice of the sweep for drift (_sweep_slice).
                await self.run_once(full=False, sweep=True, write_behind=True)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one cycle must not end failover; the next cycle retries
                log.exception("failover cycle failed; retrying on the next cycle")
            # A flapping fleet sends a verdict every few milliseconds: rest twice as long as
            # the cycle's CPU before the next one, so deciding never takes more than a third of
            # the loop's thread (bench/load_bench.py). CPU, not elapsed time: a cycle waiting
            # on a synced save or a load balancer costs the loop nothing, and resting for it
            # only delayed the verdicts queued behind it (bench/controller_bench.py).
            took = time.thread_time() - started
            await asyncio.sleep(min(self._rest(took), self._config.failover.cycle))
            await self._wait()

    def _rest(self, took: float) -> float:
        """How long to rest after a cycle that took ``took`` seconds of the loop's CPU.

        The cycles may use 1 / (1 + PACE) of the time: what they use beyond it is owed,
        and paid back, once the debt passes PACE_BURST, by resting as long as it takes to
        earn it (as resting PACE times each cycle's CPU would, on average: cycles back to
        back keep to the share); light load never rests."""
        now = time.perf_counter()
        since, self._paced_at = now - (self._paced_at or now), now
        self._cpu_owed = max(0.0, self._cpu_owed + took - since / (1 + PACE))
        if self._cpu_owed <= PACE_BURST:
            return 0.0
        return (1 + PACE) * self._cpu_owed  # earned back while resting (the next count)

    def _sweep_slice(self, config: Config) -> tuple[set[str], bool]:
        """The sites this cycle reads back and decides whole for drift, and whether they end
        a sweep. A sweep covers every site once a period (FULL_PASS_SHARE: the time the last
        full pass took, spread), a share in each cycle in proportion to the time gone, so
        no cycle blocks the loop for the whole fleet (bench/controller_bench.py)."""
        now = self._clock.monotonic()
        period = max(config.failover.cycle, self._full_took / FULL_PASS_SHARE)
        period = min(period, FULL_PASS_MAX)
        if not self._sweep:
            if self._sweep_at is not None and now - self._sweep_at < period:
                return set(), False
            self._sweep = [s.name for s in config.sites]
            self._sweep_size, self._sweep_at, self._sweep_ok = len(self._sweep), now, True
        began = now if self._sweep_at is None else self._sweep_at
        done = self._sweep_size - len(self._sweep)
        share = min(1.0, (now - began) / period) if period > 0 else 1.0
        take = max(0, math.ceil(self._sweep_size * share) - done)
        sites, self._sweep = self._sweep[:take], self._sweep[take:]
        return set(sites), bool(sites) and not self._sweep

    async def _wait(self) -> None:
        """Until a verdict event, an override or config change, or the cycle time passes."""
        assert self._sub is not None
        waits: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._sub.get(), name="verdict-event"),
            asyncio.create_task(self._poke.wait(), name="poke"),
            asyncio.create_task(self._clock.sleep(self._config.failover.cycle), name="cycle"),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if waits[0].done() and not waits[0].cancelled():
            self._note(waits[0].result())
        self._poke.clear()

    def _lb_type(self, name: str) -> str:
        lb = self._config.load_balancers.get(name)
        return "unknown" if lb is None else lb.type

    def _observing(self) -> bool:
        return self._config.failover.mode == "observe"

    def _note(self, event: Event) -> None:
        if isinstance(event, NodeVerdictEvent):
            self._reasons[event.subject] = event.reason
            self._touched.add(event.subject)

    def update_config(self, config: Config) -> None:
        """Use ``config`` from the next cycle on (adapters are fixed; missing ones are refused).

        The next cycle resolves what the old configuration leaves behind (``release.py``):
        servers nodevigil held out and no longer manages go back to ready, and overrides of
        nodes and sites no longer configured are dropped.
        """
        check_adapters(config, self._local, self._global)
        let_go = releases(self._config, config, self._last)
        known = {r.key for r in let_go}
        self._releases = [r for r in self._releases if r.key not in known] + let_go
        self._config = config
        self.metrics.show_services((s.name, s.sites) for s in config.services)
        self._poke.set()

    # --- one cycle ---------------------------------------------------------------------------

    async def run_once(
        self, *, full: bool = True, sweep: bool = False, write_behind: bool = False
    ) -> Decision:
        """Run one cycle: read back, decide, apply, publish, save. Return the decision.

        ``full``: read every load balancer back and decide every site; else only the sites
        whose verdicts, overrides or pending actions changed since the last cycle (and the
        records of their services), unless something needs a full pass anyway; inside such
        a site, only its changed nodes when its budget allows (``decide_changed``).
        ``sweep``: a short cycle also reads back and redoes the next slice of the sweep for
        drift (``_sweep_slice``; the loop's cycles do). ``write_behind``: return before the
        action log is written (``_record``; the loop's cycles do), else after.
        """
        async with self._cycle:
            await self.start()
            started = time.perf_counter()  # real elapsed time, for the histogram only
            assert self._sub is not None
            for event in self._sub.drain():  # a burst of verdicts becomes one decision
                self._note(event)
            config = self._config
            observing = config.failover.mode == "observe"  # a reload switches at a cycle
            self._note_mode(config.failover.mode)
            leader = await self._take_authority()
            acting = leader and not observing  # observing, a leader sends no command
            # The epoch this cycle acts under, for its decision line (each command carries
            # the one read right before it was sent).
            epoch = self._authority.epoch if acting else None
            await self._refresh_overrides()
            if leader:  # a standby leaves the shared overrides to the leader
                await self._overrides.drop_orphaned(config, self._clock.wall())
                await self._overrides.expire(self._clock.wall(), config.failover.drain_max)
            index = self._fleet_index(config)
            # Verdicts that moved during the awaits above: their events are noted with the
            # verdicts read, so a decision never pairs a new verdict with an old reason.
            for event in self._sub.drain():
                self._note(event)
            verdicts = dict(self._source.verdicts())
            overrides = self._overrides.snapshot()
            changed = None if full else self._dirty(config, index, verdicts, overrides, leader)
            dirty, narrow = (None, {}) if changed is None else changed
            swept = False
            if dirty is None:
                self._touched = set()  # the full pass looks at every node anyway
            elif sweep:
                slice_, swept = self._sweep_slice(config)
                dirty |= slice_
                narrow = {site: few for site, few in narrow.items() if site not in slice_}
            observed, complete = await self._read(config, index, dirty)
            now, wall = self._clock.monotonic(), self._clock.wall()
            state = ControllerState(
                verdicts=verdicts,
                observed=observed,
                overrides=overrides,
                book=self._book,
                reasons=dict(self._reasons),
            )
            decision = None
            if dirty is not None and self._last is not None and self._last_state is not None:
                before = self._last_state.observed.servers
                narrow = moved_servers(index, narrow, observed.servers, before)
                decision = decide_changed(
                    config, index, state, now, wall, last=self._last, dirty=dirty, nodes=narrow
                )
            if decision is None:  # a full pass, or one the brakes need
                decision = decide(config, state, now, wall)
            self._book = decision.book
            self._last_state, self._last_config = state, config
            self._last_acting = (leader, observing)
            applied: list[Applied] = []
            released: list[Applied] = []
            if leader:
                # Saved before acting: after a crash between the two, a restart still knows why
                # a node is out instead of putting it back in while its verdict is unknown.
                await self._save_book()
            if acting:
                if decision.actions:
                    failpoint("controller.before_apply")
                # The authority is checked again right before each command (``apply``).
                applied = await apply(
                    decision.actions,
                    self._local,
                    self._global,
                    self._lb_timeout,
                    self._report,
                    authority=self._traffic,
                )
                if applied:
                    failpoint("controller.after_apply")
                    self.proofs.start(applied, config.failover.proof)
                released = await self._release_servers()
            self._observed = after_applied(observed, applied)
            self._unsettled = unsettled_sites(decision.actions, (r.action for r in applied))
            self._last = decision
            self._last_cycle_at = wall
            self._would = [would_do(a, config) for a in decision.actions] if observing else []
            await self._publish(
                decision,
                applied,
                released,
                state,
                wall,
                acting=leader,
                epoch=epoch,
                observing=observing and leader,
            )
            reconciled = complete and acting and len(applied) == len(decision.actions)
            if dirty is not None:  # a sweep's slices saw everything, one after the other
                self._sweep_ok = self._sweep_ok and reconciled
                reconciled = swept and self._sweep_ok
            self._update_metrics(decision, [*applied, *released], reconciled, wall, started)
            if dirty is None:  # a full pass: the next sweep starts a period from now
                self._sweep, self._sweep_at = [], self._clock.monotonic()
                self._full_took = time.perf_counter() - started
            if write_behind:
                self._write_later(RECORD_DELAY)
            else:
                await self._flush_records()
            return decision

    def _fleet_index(self, config: Config) -> FleetIndex:
        """The lookups of ``config``, built once per configuration."""
        if self._index is None or self._index[0] is not config:
            self._index = (config, FleetIndex.of(config))
        return self._index[1]

    def _dirty(
        self,
        config: Config,
        index: FleetIndex,
        verdicts: Mapping[str, Verdict],
        overrides: Mapping[tuple[OverrideKind, str], Override],
        leader: bool,
    ) -> tuple[set[str], dict[str, set[str]]] | None:
        """The sites this cycle must redo and, of those, the ones it may redo per node (site
        -> its nodes named by events or whose verdict changed); or None when it must be a
        full pass (the first cycle, a reload, a new role or mode, bookkeeping reloaded from
        the store)."""
        last, before = self._last, self._last_state
        mode = (leader, config.failover.mode == "observe")
        if (
            last is None
            or before is None
            or self._last_config is not config
            or self._last_acting != mode
            or self._book is not last.book
        ):
            return None
        touched, self._touched = self._touched, set()
        whole = changed_overrides(overrides, before.overrides, index)
        whole |= self._unsettled  # actions that failed or were not sent: decided again
        whole |= self._unread_sites  # read again: the load balancer may be back
        narrow: dict[str, set[str]] = {}
        for node in touched | changed_nodes(verdicts, before.verdicts):
            site = index.site_of.get(node)
            if site is not None and site not in whole:
                narrow.setdefault(site, set()).add(node)
        return whole | narrow.keys(), narrow

    async def _read(
        self, config: Config, index: FleetIndex, dirty: set[str] | None
    ) -> tuple[Observed, bool]:
        """Read the load balancers back: all of them (``dirty`` None), or only the servers of
        the ``dirty`` sites and the records of their services (the rest as last cycle left
        it). Keeps what could not be read, for readiness and for the next cycle."""
        records = None
        if dirty is not None:
            records = {
                (svc.global_lb, svc.record)
                for site in dirty
                for svc in index.services_of.get(site, ())
                if svc.global_lb is not None and svc.record is not None
            } | self._unread_records
            if self._observed is None:
                dirty = None
            elif not dirty and not records:
                return self._observed, True
        unread = self._unread_keys if dirty is not None else {}
        self._forget_unread(config, dirty, records)
        got, complete = await read_back(
            config,
            self._local,
            self._global,
            self._lb_timeout,
            self._reading(unread),
            only_sites=dirty,
            only_records=records,
            nodes_of=index.nodes_of,
        )
        self._unread_keys = unread
        self._unread = {}
        for (lb, _), why in unread.items():
            self._unread.setdefault(lb, []).append(why)
        sites = dirty if dirty is not None else index.nodes_of.keys()
        with_lb = {s.name for s in config.sites if s.local_lb is not None}
        missing = {
            site
            for site in sites
            if site in with_lb
            and any(n.name not in got.servers for n in index.nodes_of.get(site, ()))
        }
        if dirty is None or self._observed is None:
            self._unread_sites = missing
            self._unread_records = {r for r in self._wanted(config) if r not in got.records}
            return got, complete
        self._unread_sites = (self._unread_sites - dirty) | missing
        assert records is not None
        self._unread_records = {r for r in records if r not in got.records}
        servers = dict(self._observed.servers)
        for site in dirty:
            for n in index.nodes_of.get(site, ()):
                servers.pop(n.name, None)
        servers.update(got.servers)
        kept = {k: v for k, v in self._observed.records.items() if k not in records}
        return Observed(servers, {**kept, **got.records}), complete

    @staticmethod
    def _wanted(config: Config) -> set[tuple[str, str]]:
        return {
            (svc.global_lb, svc.record)
            for svc in config.services
            if svc.global_lb is not None and svc.record is not None
        }

    def _forget_unread(
        self, config: Config, dirty: set[str] | None, records: set[tuple[str, str]] | None
    ) -> None:
        """Before reading some targets again, drop what their last read could not read."""
        if dirty is None or records is None:
            return
        backends = {
            (s.local_lb, site_backend(config, s))
            for s in config.sites
            if s.name in dirty and s.local_lb is not None
        }
        for lb, target in list(self._unread_keys):
            record = target.removeprefix("record ")
            backend = target.removeprefix("backend ").split("/", 1)[0]
            if (lb, record) in records or (lb, backend) in backends:
                del self._unread_keys[(lb, target)]

    async def _take_authority(self) -> bool:
        """Whether this cycle may act; on becoming the leader, reload the durable state the
        previous leader kept (overrides, bookkeeping) before acting on it."""
        acting = self._authority.may_act()
        if acting and self._acting is False:
            log.info("failover: acting from now on (epoch %s)", self._authority.epoch)
            self._loaded = False
            await self.start()
        self._acting = acting
        return acting

    def _note_mode(self, mode: str) -> None:
        """Follow ``failover.mode`` from cycle to cycle: the gauge, a log line and an event
        when a reload changes it."""
        previous, self._mode = self._mode, mode
        self.metrics.observe.set(int(mode == "observe"))
        if previous == mode:
            return
        self._would_logged = ()
        if mode == "observe":
            reason = "deciding as ever; " + OBSERVING + " and no customer is notified"
        else:
            reason = "the load balancers are changed again from this cycle on"
        if previous is None:
            if mode == "observe":
                log.warning("failover: observe mode: %s", reason)
            return
        log.warning("failover: mode %s -> %s: %s", previous, mode, reason)
        self._emit(
            FailoverModeChanged(
                subject=self.vantage,
                at=self._clock.wall(),
                vantage=self.vantage,
                mode=mode,
                previous=previous,
                reason=reason,
            )
        )

    def _observe_line(self, decision: Decision) -> str:
        """Observing, the decision line: said when what it would do changes, not each cycle
        (nothing is sent, so the same actions are decided again every cycle)."""
        would = tuple(f"would {w.text}" for w in self._would)
        others = [n.phrase for n in decision.notices if n.phrase]
        others += [p for view in decision.brakes.values() for p in view.phrases()]
        changed, self._would_logged = would != self._would_logged, would
        if not changed and not others:
            return ""
        if not would and not others:
            return "observe: nothing to do any more: the load balancers match the decision"
        return "observe: " + "; ".join([*would, *others])

    def _reading(self, unread: dict[tuple[str, str], str]) -> Report:
        """``_report``, also noting in ``unread`` what this cycle could not read, and why."""

        def report(key: str, lb: str, what: str, target: str, error: BaseException | None) -> None:
            if error is not None and what == "read":
                text = (str(error) or type(error).__name__).removeprefix(f"{lb}: ")
                unread[(lb, target)] = f"cannot read {target}: {text}"
            self._report(key, lb, what, target, error)

        return report

    async def _refresh_overrides(self) -> None:
        """In a cluster, re-read the overrides every ``OVERRIDES_REFRESH`` seconds so the
        leader acts on a drain written through another host's API (a single host has them all
        in memory already)."""
        now = self._clock.monotonic()
        if isinstance(self._authority, Sole) or (
            self._overrides_read is not None and now - self._overrides_read < OVERRIDES_REFRESH
        ):
            return
        self._overrides_read = now

        async def read() -> Mapping[tuple[OverrideKind, str], Override]:
            return (await self._store.load()).overrides

        try:
            await self._overrides.refresh(read)
        except NodevigilError as exc:
            if not self._overrides_stale:
                log.warning("cannot re-read the overrides (using those in memory): %s", exc)
            self._overrides_stale = True
            return
        if self._overrides_stale:
            log.info("the overrides are read from the store again")
        self._overrides_stale = False

    async def _publish(
        self,
        decision: Decision,
        applied: list[Applied],
        released: list[Applied],
        state: ControllerState,
        wall: float,
        *,
        acting: bool = True,
        epoch: int | None = None,
        observing: bool = False,
    ) -> None:
        records = []
        for result in [*applied, *released]:
            event, record = describe_applied(result, wall, self.vantage)
            key = (record.lb, record.target, record.new)
            if result.error is None:
                self._logged_errors.discard(key)
                self._emit(event)
            elif key in self._logged_errors:
                continue  # a failure retried every cycle is logged once, not once a second
            else:
                self._logged_errors.add(key)
            records.append(record)
        for notice in decision.notices:
            self._emit(notice.event)
        phrases = [decision.text] if decision.text else []
        phrases += [r.action.describe() for r in released]
        text = "; ".join(phrases)
        if observing:
            text = self._observe_line(decision)
        elif text and not acting:
            text = f"standby: would {text}"
        elif decision.actions and len(applied) < len(decision.actions):
            gate = self._traffic
            why = OBSERVING if isinstance(gate, TrafficGate) and gate.observing() else ""
            text += (
                f" [{len(decision.actions) - len(applied)} not sent: "
                f"{why or 'no longer the leader'}]"
            )
        if text and self._failing_again(text, [*applied, *released]):
            text = ""  # the same decision failing again: said once per streak, not per cycle
        if text:
            failed = sum(1 for r in [*applied, *released] if r.error is not None)
            line = text + (f" [{failed} failed, retrying]" if failed else "")
            # In a cluster, which leader decided: hosts' logs are read side by side.
            who = "" if epoch is None else f" [{self.vantage}, epoch {epoch}]"
            log.info("failover: %s%s", line, who)
            # Evidence: the nodes acted on and every node not up (not the whole fleet).
            acted = {r.action.node for r in applied if isinstance(r.action, SetServerState)}
            v = state.verdicts  # the nodes not up, found in C: this runs on the hot path
            shown = acted | set(compress(v, map(is_not, v.values(), repeat(Verdict.UP))))
            evidence = {  # sorted after filtering: a few nodes, not the whole fleet
                name: {"verdict": v[name].value, "reason": state.reasons.get(name, "")}
                for name in sorted(shown)
                if name in v
            }
            self._emit(
                ControllerDecision(
                    subject=self.vantage,
                    at=wall,
                    vantage=self.vantage,
                    decision=line,
                    actions=len(applied) + len(released),
                    failed=failed,
                    evidence=evidence,
                    epoch=epoch,
                )
            )
        if records:
            self._record(records)

    def _record(self, records: list[ActionRecord]) -> None:
        """Queue ``records`` for the action log, written behind the cycle (write-behind).

        The log says what was done; it decides nothing, so no cycle waits for a disk sync of
        its own: the records go into the next cycle's book save, one transaction and one
        sync (``Store.save_book``), or, when no save comes within RECORD_DELAY, are written
        by ``_write_records``. In order; ``actions()`` and leaving the ``async with`` wait
        for them. As before, a crash after an action and before its record loses the record
        (the window is now up to RECORD_DELAY longer).
        """
        self._records.extend(records)

    def _write_later(self, delay: float) -> None:
        """Write the queued records ``delay`` seconds from now, unless a save takes them."""
        if self._records and (self._recording is None or self._recording.done()):
            self._write_now.clear()
            self._recording = asyncio.create_task(
                self._write_records(delay), name="nodevigil-failover-action-log"
            )

    async def _write_records(self, delay: float) -> None:
        if delay > 0:  # real time: a bound on the log's lag, not a decision
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._write_now.wait(), delay)
        self._write_now.clear()
        while self._records:
            batch, self._records = self._records, []
            self._writing = True
            try:
                await self._store.record_actions(batch)
            except NodevigilError as exc:
                log.error("cannot record the action log: %s", exc)
            except Exception:  # a background task: nobody else would see it
                log.exception("cannot record the action log")
            finally:
                self._writing = False

    async def _flush_records(self) -> None:
        """Until every action record queued so far is written (or failed and was logged)."""
        while self._records or (self._recording is not None and not self._recording.done()):
            if self._recording is None or self._recording.done():
                self._write_later(0.0)
            self._write_now.set()  # a writer still waiting out its delay writes at once
            if self._recording is not None:
                await asyncio.shield(self._recording)

    async def _save_book(self) -> None:
        if self._book == self._saved_book:
            return
        try:
            # Kept from save to save while it stays within OFFSET_SLACK (the two clocks are
            # read microseconds apart and slew): an offset that moves rewrites every entry,
            # ~10,000 rows at 10,000 nodes (bench/controller_bench.py's slowest saves).
            offset = round(self._clock.wall() - self._clock.monotonic(), 3)
            saved, shifted = self._saved_book, self._saved_wall
            if shifted is not None and abs(shifted[0] - offset) < OFFSET_SLACK:
                offset = shifted[0]
            if saved is not None and shifted is not None and shifted[0] == offset:
                wall_book = shift_changed(self._book, offset, saved, shifted[1])
            else:
                wall_book = shift_book(self._book, offset)
            # The queued action records ride along (one sync, not two), unless the writer is
            # writing a batch: then they follow it, in order.
            records: list[ActionRecord] = []
            if not self._writing:
                records, self._records = self._records, []
            try:
                await self._store.save_book(wall_book, records)
            except BaseException:
                self._records[:0] = records  # written later (or by the next save)
                raise
            self._saved_book = self._book
            self._saved_wall = (offset, wall_book)
        except NodevigilError as exc:  # keep acting on traffic; saving is retried next cycle
            self._report("store", "store", "save", "bookkeeping", exc)

    def _update_metrics(
        self, d: Decision, applied: list[Applied], complete: bool, wall: float, started: float
    ) -> None:
        m = self.metrics
        for result in applied:
            action = "set_state" if isinstance(result.action, SetServerState) else "set_addresses"
            outcome = "ok" if result.error is None else "error"
            m.lb_actions.labels(result.action.lb, action, outcome).inc()
        for name, sv in d.sites.items():
            m.nodes_out.labels(name).set(sv.nodes_out)
            m.panic.labels(name).set(int(sv.panic))
            m.site_serving.labels(name).set(int(sv.serving))
            m.brake.labels("site", name).set(int(sv.brake))
        m.brake.labels("fleet", "").set(int(FLEET in d.brakes))
        for view in d.brakes.values():
            if view.new_held or view.new_held_sites:
                held = len(view.new_held) + len(view.new_held_sites)
                m.brake_held.labels(view.scope, view.site or "").inc(held)
        for name, ok in d.available.items():
            m.service_available.labels(name).set(int(ok))
        if complete and all(r.error is None for r in applied):
            m.last_reconcile.set(wall)
        m.set_lb_up([*self._local, *self._global], unreadable(self._failing))
        m.cycle_seconds.observe(time.perf_counter() - started)

    def _failing_again(self, text: str, results: list[Applied]) -> bool:
        """Whether ``text`` is last cycle's decision, whose actions fail again: its failures
        were logged when they began (``_report``), and their end will be."""
        failing = any(r.error is not None for r in results)
        again = failing and text == self._retrying
        self._retrying = text if failing else None
        return again

    def _report(
        self, key: str, lb: str, what: str, target: str, error: BaseException | None
    ) -> None:
        """Count every failure; log and publish only when a call starts or stops failing."""
        if error is None:
            began, attempts = self._streaks.pop(key, (0.0, 0))
            if self._failing.pop(key, None) is not None:
                log.info(
                    "%s: %s %s works again (after %d failed attempts over %s)",
                    lb,
                    what,
                    target,
                    attempts,
                    format_duration(max(0.0, round(self._clock.wall() - began, 1))),
                )
                wall = self._clock.wall()
                self._emit(
                    LbRecovered(
                        subject=lb, at=wall, vantage=self.vantage, lb=lb, what=what, target=target
                    )
                )
            return
        if lb != "store":
            self.metrics.lb_errors.labels(lb).inc()
        began, attempts = self._streaks.get(key, (self._clock.wall(), 0))
        self._streaks[key] = (began, attempts + 1)
        if key in self._failing:
            return
        self._failing[key] = str(error)
        log.warning("%s: %s %s failed: %s (retrying every cycle)", lb, what, target, error)
        failure, code = failure_kind(error)
        self._emit(
            FailoverFailed(
                subject=lb,
                at=self._clock.wall(),
                vantage=self.vantage,
                lb=lb,
                what=what,
                target=target,
                error=str(error),
                failure=failure,
                code=code,
            )
        )

    def _emit(self, event: Event) -> None:
        """Publish ``event`` stamped with the time now and this controller's vantage.

        ``decide`` is pure: its notices carry the decision's wall time and no vantage.
        """
        self._bus.publish(replace(event, at=self._clock.wall(), vantage=self.vantage))

    # --- overrides ---------------------------------------------------------------------------

    async def drain_node(
        self,
        name: str,
        *,
        until: float | None = None,
        duration: float | None = None,
        reason: str = "",
        who: str = "operator",
    ) -> Override:
        """Hold node ``name`` out whatever its verdict (until wall time ``until`` if given)."""
        if self._config.node(name) is None:
            raise UnknownNameError(f"no node is called {name!r}")
        return await self._set_override(
            kind="node", name=name, until=until, duration=duration, reason=reason, who=who
        )

    async def drain_site(
        self,
        name: str,
        *,
        until: float | None = None,
        duration: float | None = None,
        reason: str = "",
        who: str = "operator",
    ) -> Override:
        """Stop publishing site ``name`` in the global LBs (never the last site of a service)."""
        if self._config.site(name) is None:
            raise UnknownNameError(f"no site is called {name!r}")
        return await self._set_override(
            kind="site", name=name, until=until, duration=duration, reason=reason, who=who
        )

    async def undrain_node(self, name: str, *, who: str = "operator") -> bool:
        """Lift a node drain; return whether there was one."""
        return await self._clear_override("node", name, who)

    async def undrain_site(self, name: str, *, who: str = "operator") -> bool:
        """Lift a site drain; return whether there was one."""
        return await self._clear_override("site", name, who)

    def overrides(self) -> list[Override]:
        """Every override in force, sorted by kind and name."""
        return self._overrides.sorted()

    async def _clear_override(self, kind: OverrideKind, name: str, who: str) -> bool:
        await self.start()
        cleared = await self._overrides.clear(kind, name, who)
        if cleared:
            self._poke.set()
        return cleared

    async def _set_override(
        self,
        *,
        kind: OverrideKind,
        name: str,
        until: float | None,
        duration: float | None,
        reason: str,
        who: str,
    ) -> Override:
        wall = self._clock.wall()
        longest = self._config.failover.drain_max
        if until is not None and duration is not None:
            raise ValueError("give until or duration, not both")
        if duration is not None:
            if duration <= 0:
                raise ValueError("duration must be positive")
            until = wall + duration
        if until is None:
            until = wall + longest  # every drain is time-boxed (failover.drain_max)
        if until <= wall:
            raise ValueError("until is in the past")
        if until - wall > longest:
            raise ValueError(f"a drain may last at most failover.drain_max, {longest:g}s")
        await self.start()
        override = Override(kind, name, reason, who, wall, until)
        await self._overrides.put(override)
        self._poke.set()
        return override

    async def _release_servers(self) -> list[Applied]:
        """Put back the servers a reload let go of (see ``release.py``); retry failures.

        Judged against the configuration in force now, not the one this cycle began with: a
        reload during the cycle hands over servers the older configuration still named, and
        those must not be forgotten (nor those a reload adds while the commands run).
        """
        pending = still_released(self._releases, self._config)
        self._releases = []
        if not pending:
            return []
        applied, failed = await release(
            pending, self._local, self._lb_timeout, self._report, authority=self._traffic
        )
        added = self._releases  # by a reload during the commands above
        known = {r.key for r in added}
        self._releases = [r for r in failed if r.key not in known] + added
        return applied

    # --- read-only views ---------------------------------------------------------------------

    @property
    def last_cycle_at(self) -> float | None:
        """Wall time the last cycle ended (None before the first)."""
        return self._last_cycle_at

    @property
    def mode(self) -> str:
        """``failover.mode`` as of the last cycle (the configured one before the first)."""
        return self._mode or self._config.failover.mode

    def would(self) -> list[WouldAction]:
        """Observing: the actions the last cycle decided and did not send (else empty)."""
        return list(self._would)

    def not_ready(self) -> list[str]:
        """Why the daemon is not ready: empty once the last cycle read every load balancer in
        use back (each backend, server and record), else each that failed and its error."""
        if self._last_cycle_at is None:
            return ["the controller has not read the load balancers back yet"]
        return [f"{lb}: {e}" for lb, errors in sorted(self._unread.items()) for e in errors]

    def services(self) -> list[ServiceStatus]:
        """The services' availability as of the last cycle, without the per-node snapshot."""
        return build_services(self._config, self._last)

    def status(self) -> ControllerStatus:
        """A snapshot for the API: nodes, sites and services as of the last cycle."""
        status = build_status(
            config=self._config,
            last=self._last,
            observed=self._observed,
            verdicts=dict(self._source.verdicts()),
            overrides=self._overrides.snapshot(),
            mono_to_wall=self._clock.wall() - self._clock.monotonic(),
            last_cycle_at=self._last_cycle_at,
        )
        lbs = build_load_balancers(self._config, self._observed, self._unread)
        return replace(status, mode=self.mode, would=self.would(), load_balancers=lbs)

    async def actions(self, limit: int = 100) -> list[ActionRecord]:
        """The latest entries of the durable action log (with every record queued so far)."""
        await self._flush_records()
        return await self._store.actions(limit)
