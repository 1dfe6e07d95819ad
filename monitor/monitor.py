"""The monitor: runs every node's probes on a jittered schedule and publishes verdict changes."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from types import TracebackType
from typing import Any, Self

from monitor.heartbeat import HeartbeatBoard, MqttProber
from monitor.history import RunRecorder
from monitor.looplag import LagWatch
from monitor.metrics import MonitorMetrics
from monitor.probes import build_prober
from monitor.probes.base import HedgedProber, Prober, ProbeResult
from monitor.probes.httpclient import ProbeSession
from monitor.timers import Entry, Timers, clock_timers, loop_timers
from monitor.verdict import NodeJudge, Transition
from monitor.verdicts import Verdict, VerdictChange
from nodevigil.core.clock import Clock
from nodevigil.core.config import Config, HttpProbe, MqttProbe, Node
from nodevigil.core.events import EventBus

log = logging.getLogger(__name__)


# A stalled event loop makes every probe look timed out. Failures seen while the loop is this
# late are not trusted (they judge nothing), and probe rounds that start this late are skipped
# so the monitor sheds load instead of collapsing: its own trouble must never drain a fleet.
OVERLOAD_LAG = 0.1
OVERLOAD_HOLD = 2.0
# Which failures a stall can fake depends on the probe: an answer that arrived during a stall
# is still read as a success, but a stall eats into a try's time to connect and answer, and
# into a latency limit. A failure is not trusted when the loop was late, within the hold, by
# more than this share of the probe's own budget (its timeout, or its max_latency if shorter):
# 50 ms for a 100 ms probe, 450 ms for the default 900 ms. A fleet of 10,000 nodes has
# decision cycles of ~0.1 s; with one flat threshold of 0.1 s they blinded the monitor for good.
# A loop overloaded for good is late by less than that on every turn, yet a probe spends most
# of its time queued: its failure is not trusted either when the loop's late time summed over
# the probe's own run passes that share (monitor.looplag); then only failures that ran out of
# time are suspect: a node's answer (a refusal, an HTTP 503) still judges it.
OVERLOAD_SHARE = 0.5
# A probe's first round opens its connection, which costs several times a round on a kept-alive
# one: 10,000 of them in the first second stalled the loop for seconds at start, and the rounds
# it shed opened yet more. The first rounds of a large batch of new probes are spread so that
# at most this many start per second, each still at its own random phase within its interval.
FIRST_ROUNDS_PER_SECOND = 2000


@dataclass(slots=True)
class _Watched:
    node: Node
    judge: NodeJudge
    schedules: list[_Schedule]
    probers: dict[str, Prober]
    series: dict[str, tuple[Any, Any]]  # probe -> its success and duration gauge children
    budgets: dict[str, float]  # probe -> the time a stall could eat into (see OVERLOAD_SHARE)


@dataclass(slots=True, eq=False)
class _Schedule:
    """One probe's place in the timers; a round runs as a short task, never two at once."""

    watched: _Watched
    probe: str
    prober: Prober
    interval: float
    kind: str
    name: str
    next_at: float = 0.0
    entry: Entry | None = None
    task: asyncio.Task[None] | None = None
    stopped: bool = False


class Monitor:
    """Owns the probes, the judges and the verdicts; implements the controller's VerdictSource."""

    def __init__(
        self,
        config: Config,
        *,
        bus: EventBus,
        clock: Clock,
        metrics: MonitorMetrics,
        board: HeartbeatBoard,
        rng: random.Random | None = None,
        history: RunRecorder | None = None,
    ) -> None:
        self._config = config
        self._history = history  # every judged result is folded into runs (monitor.history)
        self._bus = bus
        self._clock = clock
        self._metrics = metrics
        self._board = board
        self._rng = rng or random.Random()
        self._watched: dict[str, _Watched] = {}
        self._session: ProbeSession | None = None
        self._flapping: set[str] = set()
        self._confirming: set[tuple[str, str]] = set()  # (node, mqtt probe) confirming a will
        self._overloaded_until = 0.0
        self.lag_watch = LagWatch(time.monotonic)  # real time: stalls are real whatever the clock
        self.untrusted = 0  # failures not trusted because the monitor was overloaded
        self._said_overloaded = False
        self._lag_task: asyncio.Task[None] | None = None
        self._timers: Timers | None = None
        self._rounds = 0
        self._durations: dict[str, Any] = {}  # probe type -> its histogram child
        self._results: dict[tuple[str, str], Any] = {}  # (probe type, outcome) -> counter child
        # Plain totals for benchmarks and the stats() view (the labelled series are per type).
        self.outcomes = {"success": 0, "failure": 0, "inconclusive": 0}
        self.skipped = 0
        board.on_offline = self._agent_offline

    async def __aenter__(self) -> Self:
        from monitor.probes.http import make_session

        self._session = make_session()
        self._timers = clock_timers(self._clock)  # one timer heap for every probe's schedule
        session = self._session
        for state in ("idle", "connecting", "orphaned"):
            self._metrics.probe_connections.labels(state).set_function(
                partial(lambda key: session.stats()[key], state)
            )
        self._metrics.probe_rounds.set_function(lambda: self._rounds)
        self.lag_watch.on_sample = self._lag_seen
        self._lag_task = asyncio.create_task(self.lag_watch.run(), name="monitor-lag")
        self.apply_config(self._config)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_all()
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._timers is not None and self._timers is not loop_timers():
            self._timers.close()  # the loop's shared timers serve others too

    # --- what the controller and the API read -------------------------------------------

    def verdicts(self) -> Mapping[str, Verdict]:
        """Every watched node's current verdict."""
        return {name: w.judge.verdict for name, w in self._watched.items()}

    def node_status(self, name: str) -> dict[str, Any] | None:
        """The API's view of one node, or None when it is not watched."""
        watched = self._watched.get(name)
        if watched is None:
            return None
        judge = watched.judge
        since = None
        if judge.since is not None:
            since = self._clock.wall() - (self._clock.monotonic() - judge.since)
        probes = []
        for spec in watched.node.probes:
            track = judge.probes[spec.label]
            last = track.last
            probes.append(
                {
                    "name": spec.label,
                    "type": spec.type,
                    "state": track.state.value,
                    "consecutive_successes": track.successes,
                    "consecutive_failures": track.failures,
                    "last": None
                    if last is None
                    else {
                        "ok": last.ok,
                        "detail": last.detail,
                        "duration_ms": round(last.duration * 1000, 3),
                        "at": last.at,
                        "vantage": last.vantage,
                    },
                }
            )
        return {
            "name": name,
            "site": watched.node.site,
            "lb_server": watched.node.server_name,
            "labels": dict(watched.node.labels),
            "verdict": judge.verdict.value,
            "since": since,
            "flapping": judge.flapping,
            "vantage": self._config.vantage,
            "probes": probes,
        }

    def stats(self) -> dict[str, Any]:
        """Totals and backlogs: results by outcome, rounds shed and running, connections."""
        connections = self._session.stats() if self._session is not None else {}
        return {
            **self.outcomes,
            "skipped": self.skipped,
            "running": self._rounds,
            "timers": len(self._timers) if self._timers is not None else 0,
            "overloaded": self.overloaded(),
            "untrusted": self.untrusted,
            "flapping": len(self._flapping),
            **{f"connections_{k}": v for k, v in connections.items()},
        }

    def node_names(self) -> list[str]:
        """The watched nodes, in configuration order."""
        return list(self._watched)

    # --- configuration ------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """Start watching added nodes, stop removed ones, restart changed ones."""
        assert self._session is not None, "use Monitor as an async context manager"
        old = self._watched
        wanted = {n.name: n for n in config.nodes}
        self._config = config
        for name in list(old):
            if name not in wanted or old[name].node != wanted[name]:
                self._stop(old.pop(name))
        new = [node for node in config.nodes if node.name not in old]
        spread = sum(len(node.probes) for node in new) / FIRST_ROUNDS_PER_SECOND
        for node in new:
            old[node.name] = self._start(node, spread)
        self._watched = {n.name: old[n.name] for n in config.nodes}
        # Only the agents of configured mqtt probes are heard; messages for others are dropped.
        self._board.expect(
            spec.agent or node.name
            for node in config.nodes
            for spec in node.probes
            if isinstance(spec, MqttProbe)
        )

    def _start(self, node: Node, spread: float = 0.0) -> _Watched:
        """Watch ``node``: a judge, a prober and a schedule per probe, whose first round comes
        within ``spread`` seconds (at least one interval; see FIRST_ROUNDS_PER_SECOND)."""
        d = self._config.defaults
        judge = NodeJudge.create(
            [p.label for p in node.probes],
            rise=node.rise or d.rise,
            fall=node.fall or d.fall,
            require=node.require,
            flap=d.flap,
        )
        self._metrics.set_verdict(node.name, node.site, Verdict.UNKNOWN)
        watched = _Watched(node, judge, [], {}, {}, {})
        assert self._session is not None and self._timers is not None
        mqtt = self._config.mqtt
        grace = mqtt.reconnect_grace if mqtt else None
        now = self._clock.monotonic()
        for spec in node.probes:
            if spec.type == "mqtt":
                prober: Prober = MqttProber(spec, spec.agent or node.name, self._board, grace)
            else:
                prober = build_prober(spec, self._session)
            watched.probers[spec.label] = prober
            budget = spec.timeout or d.timeout
            if isinstance(spec, HttpProbe) and spec.max_latency is not None:
                budget = min(budget, spec.max_latency)
            watched.budgets[spec.label] = budget
            interval = spec.interval or d.interval
            schedule = _Schedule(
                watched, spec.label, prober, interval, spec.type, f"probe:{node.name}/{spec.label}"
            )
            # A random phase per probe spreads 10,000 probes over the interval; the schedule is
            # then fixed on the monotonic clock so probes neither drift nor bunch up again. The
            # first round comes at that phase in one of the first intervals that ``spread``
            # covers, so that a fleet's connections open at the pace its rounds will run.
            schedule.next_at = now + self._rng.uniform(0, interval)
            if spread > interval:
                schedule.next_at += self._rng.randrange(math.ceil(spread / interval)) * interval
            schedule.entry = self._timers.call_at(
                schedule.next_at, partial(self._first_due, schedule)
            )
            watched.schedules.append(schedule)
        return watched

    def _first_due(self, schedule: _Schedule) -> None:
        """A probe's first round: at its phase, unless the loop was too busy (starting up, a
        reload's batch) to run it near then. Such first rounds come due all at once when the
        loop is free again; each then takes a fresh random phase within the next interval
        instead of all opening their connections together (once: later rounds are shed when
        late, see ``_due``)."""
        if schedule.stopped or schedule.entry is None:
            return
        schedule.entry[2] = partial(self._due, schedule)  # every later round
        now = self._clock.monotonic()
        if now - schedule.next_at > min(OVERLOAD_LAG, schedule.interval / 2):
            schedule.next_at = now + self._rng.uniform(0, schedule.interval)
            assert self._timers is not None
            self._timers.reschedule(schedule.entry, schedule.next_at)
            return
        self._due(schedule)

    def _stop(self, watched: _Watched) -> None:
        for schedule in watched.schedules:
            schedule.stopped = True
            if schedule.entry is not None:
                Timers.cancel(schedule.entry)
            if schedule.task is not None:
                schedule.task.cancel()
        self._flapping.discard(watched.node.name)
        self._metrics.forget_node(watched.node.name, watched.node.site, watched.probers)
        if self._history is not None:  # removed or changed: its runs end here
            self._history.forget(watched.node.name)

    async def _stop_all(self) -> None:
        tasks = [s.task for w in self._watched.values() for s in w.schedules if s.task is not None]
        for watched in self._watched.values():
            self._stop(watched)
        self._watched = {}
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- probing ------------------------------------------------------------------------

    def _due(self, schedule: _Schedule) -> None:
        """A probe's time has come (the timers call this): run a round, or shed it if late.

        Between rounds a probe holds no task and no future, only its timer entry: 10,000
        sleeping probes would otherwise keep 10,000 futures alive, and the garbage collector
        would walk them again and again.
        """
        if schedule.stopped:
            return
        if self._clock.monotonic() - schedule.next_at > schedule.interval / 2:
            self._metrics.probes_skipped.inc()  # shed load rather than pile it up
            self.skipped += 1
            self._advance(schedule)
            return
        schedule.task = asyncio.get_running_loop().create_task(
            self._round(schedule), name=schedule.name
        )

    async def _round(self, schedule: _Schedule) -> None:
        self._rounds += 1
        try:
            await self.run_probe(schedule.watched, schedule.probe, schedule.prober, schedule.kind)
        finally:
            self._rounds -= 1
            schedule.task = None
            if not schedule.stopped:
                self._advance(schedule)

    def _advance(self, schedule: _Schedule) -> None:
        """Schedule the next round one interval on; skip rounds we fell behind on (a stalled
        loop), keeping the phase."""
        interval = schedule.interval
        schedule.next_at += interval
        now = self._clock.monotonic()
        if schedule.next_at < now:
            schedule.next_at += ((now - schedule.next_at) // interval + 1) * interval
        assert self._timers is not None and schedule.entry is not None
        self._timers.reschedule(schedule.entry, schedule.next_at)

    async def run_probe(self, watched: _Watched, probe: str, prober: Prober, kind: str) -> None:
        """Run one probe once and feed its result to the node's judge."""
        result = await self._check(watched, probe, prober)
        self._record(watched, probe, kind, result)

    async def _check(self, watched: _Watched, probe: str, prober: Prober) -> ProbeResult:
        """Run one probe once; its failures are not trusted while the loop is stalled."""
        started = time.perf_counter()
        since = time.monotonic()  # the lag watch's clock
        loop_since = asyncio.get_running_loop().time()  # the clock of the probe's own deadline
        try:
            ok, detail, decisive = await prober.check()
        except Exception as exc:  # a prober bug must never kill the schedule
            log.exception("probe %s/%s crashed", watched.node.name, probe)
            ok, detail, decisive = False, f"probe error: {type(exc).__name__}", False
        duration = time.perf_counter() - started
        if (
            ok is False
            and not decisive
            and self._may_be_ours(watched, probe, prober, since, loop_since)
        ):
            ok, detail = None, f"not trusted, the monitor is overloaded: {detail}"
            self.untrusted += 1
            # Whatever the ticker saw, withholding a judgement is being overloaded: said at once.
            self._overloaded_until = self._clock.monotonic() + OVERLOAD_HOLD
        return ProbeResult(ok, detail, duration, self._clock.wall(), self._config.vantage, decisive)

    def _record(self, watched: _Watched, probe: str, kind: str, result: ProbeResult) -> None:
        """Count a result and feed it to the node's judge; publish the change it causes."""
        ok = result.ok
        outcome = "inconclusive" if ok is None else ("success" if ok else "failure")
        self.outcomes[outcome] += 1
        # Label lookups cost more than the update: the children are kept.
        counter = self._results.get((kind, outcome))
        if counter is None:
            counter = self._results[(kind, outcome)] = self._metrics.probe_results.labels(
                kind, outcome
            )
        counter.inc()
        histogram = self._durations.get(kind)
        if histogram is None:
            histogram = self._durations[kind] = self._metrics.probe_type_duration.labels(kind)
        histogram.observe(result.duration)
        if ok is not None:  # an inconclusive try says nothing about the node: keep the last
            gauges = watched.series.get(probe)
            if gauges is None:
                name = watched.node.name
                gauges = watched.series[probe] = (
                    self._metrics.probe_success.labels(name, probe),
                    self._metrics.probe_duration.labels(name, probe),
                )
            gauges[0].set(1 if ok else 0)
            gauges[1].set(result.duration)
        history = self._history
        if history is not None:  # as history.observe, one call less (every result passes)
            closed = history.fold(watched.node.name, probe, result)
            if closed is not None:
                history.add((closed,))
        transition = watched.judge.observe(probe, result, self._clock.monotonic())
        if transition is not None:
            self._publish(watched.node, transition)

    def _change(self, node: Node, t: Transition) -> VerdictChange:
        """The verdict change ``t`` of ``node``, stamped now; the flapping set follows it."""
        if t.flapping:
            self._flapping.add(node.name)
        else:
            self._flapping.discard(node.name)
        return VerdictChange(
            node=node.name,
            site=node.site,
            old=t.old,
            new=t.new,
            reason=t.reason,
            probe=t.probe,
            at=self._clock.wall(),
            vantage=self._config.vantage,
            flapping=t.flapping,
        )

    def _publish(self, node: Node, t: Transition) -> None:
        change = self._change(node, t)
        self._metrics.set_verdict(node.name, node.site, t.new)
        self._metrics.verdict_changes.labels(node.site, t.new.value).inc()
        self._metrics.nodes_flapping.set(len(self._flapping))
        # Logged once per change (and once on recovery), never once per failed probe.
        if t.new is Verdict.DOWN:
            log.warning("node %s is down: %s", node.name, t.reason)
        elif t.new is Verdict.UP and t.old is Verdict.DOWN:
            log.info("node %s recovered: %s", node.name, t.reason)
        else:
            log.info("node %s is %s: %s", node.name, t.new.value, t.reason)
        self._bus.publish(change.to_event())

    def _may_be_ours(
        self, watched: _Watched, probe: str, prober: Prober, since: float, loop_since: float
    ) -> bool:
        """Whether a failure may be the monitor's own overload rather than the node's.

        After a stall (the loop late by more than the share once, within the hold, the stall
        in progress included) no failure is trusted. A loop overloaded for good, late by less
        on every turn, makes probes run out of time (a timeout, a latency limit) but fakes no
        answer: a hedged probe that failed before its budget ran out (refused, reset, a wrong
        status) still judges the node, so a dead node leaves an overloaded monitor's fleet.
        Elapsed time is read on the loop's clock, as the probe's deadline is (uvloop's is the
        time of the loop turn, which may be well behind).
        """
        share = OVERLOAD_SHARE * watched.budgets[probe]
        watch = self.lag_watch
        if watch.worst_within(OVERLOAD_HOLD) > share:
            return True
        elapsed = asyncio.get_running_loop().time() - loop_since
        if isinstance(prober, HedgedProber) and elapsed < watched.budgets[probe]:
            return False
        return watch.late_during(since) > share

    def overloaded(self) -> bool:
        """Whether the event loop has been too late recently for failures to be trusted."""
        return self._clock.monotonic() < self._overloaded_until

    def _lag_seen(self, lag: float) -> None:
        """A tick of the lag watch: the overloaded state, its gauge and its two log lines."""
        if lag > OVERLOAD_LAG:
            self._overloaded_until = self._clock.monotonic() + OVERLOAD_HOLD
        now = self.overloaded()
        if now != self._said_overloaded:  # logged once when it starts and once when it ends
            self._metrics.overloaded.set(1 if now else 0)
            if now:
                log.warning(
                    "monitor overloaded (loop %.0fms late): failures of probes whose "
                    "timeout that lateness could eat into are not trusted",
                    max(lag, self.lag_watch.worst_within(OVERLOAD_HOLD)) * 1e3,
                )
            else:
                log.info(
                    "monitor no longer overloaded (%d failures were not trusted)", self.untrusted
                )
            self._said_overloaded = now

    def _agent_offline(self, agent: str) -> None:
        """An agent's last-will was believed: confirm it with its nodes' other probes, now."""
        for watched in self._watched.values():
            for spec in watched.node.probes:
                if spec.type != "mqtt" or (spec.agent or watched.node.name) != agent:
                    continue
                key = (watched.node.name, spec.label)
                if key in self._confirming:
                    continue  # one round in flight answers every will that came meanwhile
                self._confirming.add(key)
                asyncio.get_running_loop().create_task(
                    self._confirm_will(watched, spec.label, agent),
                    name=f"last-will:{watched.node.name}",
                )

    async def _confirm_will(self, watched: _Watched, mqtt_probe: str, agent: str) -> None:
        """One immediate round of the node's other probes decides what the will is worth.

        The node goes down at once only when every other probe fails in this round: then
        their failures and the mqtt probe's are decisive. When any passes (or cannot tell),
        each result counts as an ordinary one, so a will alone never drains a serving node:
        a client that can publish to the broker is not trusted with traffic. A node with no
        other probe has only its agent's word: it is believed when the word is signed
        (``mqtt.agent_secret``), and counts as one ordinary failure when it is not.
        """
        try:
            await self._confirm_round(watched, mqtt_probe, agent)
        finally:
            self._confirming.discard((watched.node.name, mqtt_probe))

    async def _confirm_round(self, watched: _Watched, mqtt_probe: str, agent: str) -> None:
        others = [label for label in watched.probers if label != mqtt_probe]
        results = await asyncio.gather(
            *(self._check(watched, label, watched.probers[label]) for label in others)
        )
        mqtt = await self._check(watched, mqtt_probe, watched.probers[mqtt_probe])
        agreed = all(r.ok is False for r in results) if others else self._board.authenticated
        if self._watched.get(watched.node.name) is not watched:
            return  # the node was removed or changed while we probed
        kinds = {spec.label: spec.type for spec in watched.node.probes}
        for label, result in zip(others, results, strict=True):
            self._record(watched, label, kinds[label], replace(result, decisive=agreed))
        if agreed and mqtt.ok is False:
            mqtt = replace(mqtt, decisive=True)
        self._record(watched, mqtt_probe, "mqtt", mqtt)
        if not agreed and not self._board.authenticated:
            # An unsigned will the node's probes contradict may be anyone's: it cost the mqtt
            # probe this one failure; from now on silence judges the agent again.
            self._board.doubt(agent)
