"""The monitor over several processes: every core probes (``monitor.workers``).

The fleet is cut into shards by a stable hash of the node names; each shard is probed and
judged by a worker process (``monitor.worker``) running an ordinary ``Monitor``, with its own
event loop and its own overload guard. The main process keeps the controller, the API and
the state; here it keeps what they read: every node's verdict (moved only by the changes the
workers send), each node's probe counters and last result (pushed every few seconds), and
the totals behind the monitor's metrics. ``ShardedMonitor`` has the public face of
``Monitor``, so nothing above it knows the difference.

Nodes with an mqtt probe stay in the main process, in a plain ``Monitor``: the heartbeat
board is fed by the main process's MQTT link, and a last-will is confirmed at once by the
node's other probes, next to the board.

A worker that dies is logged, counted (``nodevigil_monitor_worker_restarts_total``) and
started again; meanwhile its nodes keep their last verdict: a worker's death judges no node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Protocol, Self

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitor.heartbeat import HeartbeatBoard
from monitor.history import RunRecorder, run_of_row
from monitor.metrics import MonitorMetrics
from monitor.monitor import Monitor
from monitor.shards import (
    ChangeRow,
    ProbeRow,
    StatusRow,
    add_to_histogram,
    change_of,
    frame,
    read_frame,
    shard_of,
)
from monitor.verdicts import Verdict, VerdictChange
from nodevigil.core.clock import Clock, SystemClock
from nodevigil.core.config import Config, MqttProbe, Node
from nodevigil.core.events import EventBus

log = logging.getLogger(__name__)

# With ``monitor.workers`` unset, a fleet smaller than this stays in one process: a worker
# costs a Python process (~40 MiB) and a hop for each verdict, which a small fleet never needs.
AUTO_MIN_NODES = 2_000
RESTART_DELAY = 0.5  # first restart of a dead worker; doubles up to RESTART_MAX
RESTART_MAX = 10.0
STOP_WAIT = 5.0  # seconds a worker gets to stop after its socket closes, then it is killed
# A worker sends its totals every second; one silent this long is stuck (not merely busy: its
# own overload guard covers that) and is killed and started again.
SILENCE_LIMIT = 30.0
LAGS_KEPT = 3000  # loop-lag samples kept per worker until taken (5 minutes of a 100 ms ticker)


class MonitorView(Protocol):
    """What the daemon, the controller, the API and the vantages read from a monitor."""

    def verdicts(self) -> Mapping[str, Verdict]:
        """Every watched node's current verdict."""
        ...

    def node_status(self, name: str) -> dict[str, Any] | None:
        """The API's view of one node, or None when it is not watched."""
        ...

    def node_names(self) -> list[str]:
        """The watched nodes, in configuration order."""
        ...

    def stats(self) -> dict[str, Any]:
        """Totals and backlogs."""
        ...

    def apply_config(self, config: Config) -> None:
        """Follow a new configuration."""
        ...

    def overloaded(self) -> bool:
        """Whether the monitor distrusts failures now (its event loop was late)."""
        ...


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(config: Config, clock: Clock) -> int:
    """How many worker processes probe (1: the plain in-process Monitor).

    Unset, the number of cores, for fleets of AUTO_MIN_NODES and more. Workers run on the
    system clock: a test's injected clock keeps the monitor in its own process.
    """
    if type(clock) is not SystemClock:
        return 1
    setting = config.monitor.workers
    if setting is None:
        return available_cores() if len(config.nodes) >= AUTO_MIN_NODES else 1
    return setting


def build_monitor(
    config: Config,
    *,
    bus: EventBus,
    clock: Clock,
    metrics: MonitorMetrics,
    board: HeartbeatBoard,
    registry: CollectorRegistry,
    history: RunRecorder | None = None,
) -> AbstractAsyncContextManager[MonitorView]:
    """The monitor for ``config``: in this process, or sharded over worker processes; every
    result judged is folded into ``history`` (by a worker: it sends its runs here)."""
    workers = worker_count(config, clock)
    if workers <= 1:
        return Monitor(config, bus=bus, clock=clock, metrics=metrics, board=board, history=history)
    return ShardedMonitor(
        config,
        bus=bus,
        clock=clock,
        metrics=metrics,
        board=board,
        registry=registry,
        workers=workers,
        history=history,
    )


class ShardMetrics:
    """The workers themselves: how many run, how often one had to be started again."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = Gauge(
            "nodevigil_monitor_workers",
            "Monitor worker processes running (0 when the monitor runs in the main process).",
            registry=registry,
        )
        self.restarts = Counter(
            "nodevigil_monitor_worker_restarts",
            "Monitor worker processes that ended unasked and were started again.",
            registry=registry,
        )


def local_nodes(config: Config) -> list[Node]:
    """The nodes judged in the main process: those with an mqtt probe (see the module doc)."""
    return [n for n in config.nodes if any(isinstance(p, MqttProbe) for p in n.probes)]


@dataclass(eq=False)
class _Worker:
    """One worker process as the main process sees it."""

    index: int
    config: Config | None = None  # its shard of the configuration
    nodes: int = 0
    writer: asyncio.StreamWriter | None = None
    process: asyncio.subprocess.Process | None = None
    pid: int | None = None
    starts: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)  # loop lags since the last take
    # Running totals of this incarnation, to turn the next ones into increments.
    results: dict[tuple[str, str], float] = field(default_factory=dict)
    durations: dict[str, tuple[list[float], float]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def send_config(self) -> None:
        if self.writer is not None and self.config is not None and not self.writer.is_closing():
            self.writer.write(frame(("config", self.config)))


class ShardedMonitor:
    """``Monitor``'s public face over worker processes; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        bus: EventBus,
        clock: Clock,
        metrics: MonitorMetrics,
        board: HeartbeatBoard,
        registry: CollectorRegistry,
        workers: int,
        restart_delay: float = RESTART_DELAY,
        silence_limit: float = SILENCE_LIMIT,
        history: RunRecorder | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._config = config
        self._bus = bus
        self._clock = clock
        self._metrics = metrics
        self._shard_metrics = ShardMetrics(registry)
        self._history = history  # the workers' runs join the local monitor's here
        self._local = Monitor(
            _only(config, local_nodes(config)),
            bus=bus,
            clock=clock,
            metrics=metrics,
            board=board,
            history=history,
        )
        self._workers = [_Worker(i) for i in range(workers)]
        self._restart_delay = restart_delay
        self._silence_limit = silence_limit
        self._closing = False
        self._names: list[str] = []
        self._nodes: dict[str, Node] = {}
        self._shard: dict[str, int] = {}  # node -> worker index (the local nodes are absent)
        self._verdicts: dict[str, Verdict] = {}
        self._since: dict[str, float] = {}  # node -> wall time of its verdict
        self._flapping: set[str] = set()
        self._status: dict[str, tuple[ProbeRow, ...]] = {}
        self._gauges: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.restarts = 0

    # --- life -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._local.__aenter__()
        m, local = self._metrics, self._local
        # The local Monitor set these for itself; here they speak for every process.
        m.probe_rounds.set_function(lambda: self._total("running") + local.stats()["running"])
        for state in ("idle", "connecting", "orphaned"):
            key = f"connections_{state}"
            m.probe_connections.labels(state).set_function(partial(self._connections, key))
        m.overloaded.set_function(lambda: 1 if self.overloaded() else 0)
        m.nodes_flapping.set_function(lambda: len(self._flapping) + local.stats()["flapping"])
        self._shard_metrics.running.set_function(
            lambda: sum(1 for w in self._workers if w.pid is not None)
        )
        self.apply_config(self._config)
        for worker in self._workers:
            worker.task = asyncio.create_task(
                self._supervise(worker), name=f"monitor-worker-{worker.index}"
            )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        for worker in self._workers:
            if worker.writer is not None and not worker.writer.is_closing():
                # Half-closed: the worker sees the end of its stream and stops, and can still
                # send its last probe-history runs; it closes the socket when done.
                with contextlib.suppress(OSError):  # the worker is gone already
                    worker.writer.write_eof()
        tasks = [w.task for w in self._workers if w.task is not None]
        _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT + 1) if tasks else ((), ())
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in self._workers:  # cancelled mid-start: never leave a process behind
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
        await self._local.__aexit__(et, e, tb)

    async def _supervise(self, worker: _Worker) -> None:
        """Run the worker; when it ends unasked, start it again (backing off)."""
        delay = self._restart_delay
        while not self._closing:
            started = time.monotonic()
            code: int | None = None
            try:
                code = await self._run(worker)
            except Exception:  # a broken message or a failed start: start the worker again
                log.exception("monitor worker %d failed", worker.index)
            if self._closing:
                return
            self.restarts += 1
            self._shard_metrics.restarts.inc()
            if time.monotonic() - started > 60:
                delay = self._restart_delay  # it ran a good while: not a crash loop
            log.warning(
                "monitor worker %d ended (exit status %s): its %d nodes keep their last verdict "
                "until it is back; starting it again in %.1fs",
                worker.index,
                code,
                worker.nodes,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _run(self, worker: _Worker) -> int | None:
        """One life of a worker process; its exit status."""
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "monitor.worker",
                "--fd",
                str(theirs.fileno()),
                "--index",
                str(worker.index),
                "--log-level",
                logging.getLevelName(log.getEffectiveLevel()),
                "--loop",
                _loop_name(),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.process = process
        worker.starts += 1
        worker.results, worker.durations, worker.stats = {}, {}, {}
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker.writer = writer
        try:
            worker.send_config()
            while True:
                try:
                    async with asyncio.timeout(self._silence_limit):
                        message = await read_frame(reader)
                except TimeoutError:
                    log.error(
                        "monitor worker %d said nothing for %gs: stopping it",
                        worker.index,
                        self._silence_limit,
                    )
                    process.kill()
                    break
                if message is None:
                    break
                self._handle(worker, message)
        finally:
            worker.writer = None
            worker.pid = None
            writer.close()
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    # --- what the workers say ---------------------------------------------------------------

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "changes":
            self._changes(worker, message[1])
        elif kind == "status":
            self._statuses(worker, message[1])
        elif kind == "stats":
            self._stats(worker, message[1])
        elif kind == "runs":
            if self._history is not None:
                self._history.add(run_of_row(row) for row in message[1])
        elif kind == "hello":
            worker.pid = int(message[1])
            if worker.starts > 1:
                log.info("monitor worker %d is back (pid %d)", worker.index, worker.pid)

    def _changes(self, worker: _Worker, rows: list[ChangeRow]) -> None:
        for row in rows:
            node = row[0]
            if self._shard.get(node) != worker.index:
                continue  # removed or moved by a reload the worker had not seen yet
            old = self._verdicts.get(node, Verdict.UNKNOWN)
            new = Verdict(row[3])
            if new is old:
                continue  # a restarted worker reaching the verdict the node already has
            self._publish(change_of(row, old))

    def _publish(self, change: VerdictChange) -> None:
        """As ``Monitor._publish``: metrics, one log line, the event on the bus."""
        node = change.node
        self._verdicts[node] = change.new
        self._since[node] = change.at
        self._metrics.set_verdict(node, change.site, change.new)
        self._metrics.verdict_changes.labels(change.site, change.new.value).inc()
        if change.flapping:
            self._flapping.add(node)
        else:
            self._flapping.discard(node)
        if change.new is Verdict.DOWN:
            log.warning("node %s is down: %s", node, change.reason)
        elif change.new is Verdict.UP and change.old is Verdict.DOWN:
            log.info("node %s recovered: %s", node, change.reason)
        else:
            log.info("node %s is %s: %s", node, change.new.value, change.reason)
        self._bus.publish(change.to_event())

    def _statuses(self, worker: _Worker, rows: list[StatusRow]) -> None:
        for name, probes in rows:
            node = self._nodes.get(name)
            if node is None or self._shard.get(name) != worker.index:
                continue
            self._status[name] = probes
            for spec, (_, _, _, last) in zip(node.probes, probes, strict=False):
                if last is None or last[0] is None:
                    continue  # as in Monitor: an inconclusive try keeps the last series
                gauges = self._gauges.get((name, spec.label))
                if gauges is None:
                    gauges = self._gauges[(name, spec.label)] = (
                        self._metrics.probe_success.labels(name, spec.label),
                        self._metrics.probe_duration.labels(name, spec.label),
                    )
                gauges[0].set(1 if last[0] else 0)
                gauges[1].set(last[2])

    def _stats(self, worker: _Worker, stats: dict[str, Any]) -> None:
        results: dict[tuple[str, str], float] = stats.pop("results")
        durations: dict[str, tuple[list[float], float]] = stats.pop("durations")
        worker.lags.extend(stats.pop("lags"))
        if len(worker.lags) > LAGS_KEPT:  # only benchmarks take them
            del worker.lags[:-LAGS_KEPT]
        for key, total in results.items():
            increment = total - worker.results.get(key, 0.0)
            if increment > 0:
                self._metrics.probe_results.labels(*key).inc(increment)
        for kind, (buckets, total) in durations.items():
            seen, seen_sum = worker.durations.get(kind, ([0.0] * len(buckets), 0.0))
            add_to_histogram(
                self._metrics.probe_type_duration.labels(kind),
                [b - s for b, s in zip(buckets, seen, strict=True)],
                total - seen_sum,
            )
        skipped = stats.get("skipped", 0) - worker.stats.get("skipped", 0)
        if skipped > 0:
            self._metrics.probes_skipped.inc(skipped)
        worker.results, worker.durations, worker.stats = results, durations, stats

    # --- what the controller and the API read -----------------------------------------------

    def verdicts(self) -> Mapping[str, Verdict]:
        """Every watched node's current verdict."""
        return {**self._verdicts, **self._local.verdicts()}

    def node_status(self, name: str) -> dict[str, Any] | None:
        """The API's view of one node, or None when it is not watched (as ``Monitor``'s; the
        probe counters and last results are at most a few seconds old)."""
        node = self._nodes.get(name)
        if node is None:
            return None
        if name not in self._shard:
            return self._local.node_status(name)
        rows = self._status.get(name, ())
        probes = []
        for i, spec in enumerate(node.probes):
            state, successes, failures, last = rows[i] if i < len(rows) else ("unknown", 0, 0, None)
            probes.append(
                {
                    "name": spec.label,
                    "type": spec.type,
                    "state": state,
                    "consecutive_successes": successes,
                    "consecutive_failures": failures,
                    "last": None
                    if last is None
                    else {
                        "ok": last[0],
                        "detail": last[1],
                        "duration_ms": round(last[2] * 1000, 3),
                        "at": last[3],
                        "vantage": last[4],
                    },
                }
            )
        return {
            "name": name,
            "site": node.site,
            "lb_server": node.server_name,
            "labels": dict(node.labels),
            "verdict": self._verdicts.get(name, Verdict.UNKNOWN).value,
            "since": self._since.get(name),
            "flapping": name in self._flapping,
            "vantage": self._config.vantage,
            "probes": probes,
        }

    def node_names(self) -> list[str]:
        """The watched nodes, in configuration order."""
        return list(self._names)

    def overloaded(self) -> bool:
        """Whether any process's monitor distrusts failures now (its loop was late)."""
        return self._local.overloaded() or any(w.stats.get("overloaded") for w in self._workers)

    def stats(self) -> dict[str, Any]:
        """``Monitor.stats()`` summed over the processes, and the workers' own figures."""
        out = dict(self._local.stats())
        for worker in self._workers:
            for key, value in worker.stats.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if number and key != "pid":
                    out[key] = out.get(key, 0) + value
        out["overloaded"] = self.overloaded()
        out["flapping"] = len(self._flapping) + self._local.stats()["flapping"]
        out["workers"] = sum(1 for w in self._workers if w.pid is not None)
        out["worker_restarts"] = self.restarts
        return out

    def take_worker_lags(self) -> dict[int, list[float]]:
        """Each running worker's event-loop lags (a 100 ms ticker) since the last take, by pid
        (for benchmarks)."""
        out: dict[int, list[float]] = {}
        for worker in self._workers:
            if worker.pid is not None:
                out[worker.pid] = worker.lags
            worker.lags = []
        return out

    def worker_pids(self) -> list[int]:
        """The running workers' process ids."""
        return [w.pid for w in self._workers if w.pid is not None]

    def _connections(self, key: str) -> float:
        return self._total(key) + float(self._local.stats().get(key, 0))

    def _total(self, key: str) -> float:
        return float(sum(w.stats.get(key, 0) for w in self._workers))

    # --- configuration ----------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """Start watching added nodes, stop removed ones, restart changed ones; each worker
        gets its shard (the number of workers is fixed at start)."""
        old_nodes = self._nodes
        self._config = config
        local = local_nodes(config)
        local_names = {n.name for n in local}
        self._local.apply_config(_only(config, local))
        shards: list[list[Node]] = [[] for _ in self._workers]
        shard: dict[str, int] = {}
        for node in config.nodes:
            if node.name not in local_names:
                index = shard_of(node.name, len(self._workers))
                shards[index].append(node)
                shard[node.name] = index
        self._nodes = {n.name: n for n in config.nodes}
        self._names = [n.name for n in config.nodes]
        for name, node in old_nodes.items():
            if name in self._shard and (shard.get(name) is None or self._nodes[name] != node):
                self._forget(node)
        self._shard = shard
        for name in shard:
            if name not in self._verdicts:
                node = self._nodes[name]
                self._verdicts[name] = Verdict.UNKNOWN
                self._metrics.set_verdict(name, node.site, Verdict.UNKNOWN)
        for worker, nodes in zip(self._workers, shards, strict=True):
            worker.config = _only(config, nodes)
            worker.nodes = len(nodes)
            worker.send_config()

    def _forget(self, node: Node) -> None:
        """A node left the shards or changed: its verdict starts again from unknown."""
        name = node.name
        for store in (self._verdicts, self._since, self._status):
            store.pop(name, None)
        self._flapping.discard(name)
        for spec in node.probes:
            self._gauges.pop((name, spec.label), None)
        self._metrics.forget_node(name, node.site, [p.label for p in node.probes])


def _loop_name() -> str:
    """The running event loop's kind, for the workers to run on the same (uvloop or asyncio;
    nodevigil.core.eventloop chooses it for the main process)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def _only(config: Config, nodes: list[Node]) -> Config:
    """``config`` with only ``nodes`` (already validated as part of the whole)."""
    return config.model_copy(update={"nodes": nodes})
