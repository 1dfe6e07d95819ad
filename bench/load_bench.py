"""Load benchmark: the whole daemon watching 10,000 nodes every second, 5 % of them flapping.

Run: ``cd /work/main && .venv/bin/python bench/load_bench.py`` (5 minutes measured per
backend, about 13 in all for both) or ``--quick`` (1 minute each, about 6 for both).
Options: ``--nodes N``, ``--minutes M``, ``--peer-nodes N`` (0 skips the peer),
``--flap-share F``, ``--target-procs P``, ``--seed S``, ``--workers N`` or ``N,M``
(monitor.workers; two counts are compared on the first backend, ``--abba`` for N M M N),
``--backend sqlite|postgres|both``, ``--hog D`` (a task in the daemon keeps its event
loop busy a share D of the time in short slices: one process overloaded for good, 1/(1-D)
times, rather than stalled now and then), ``--machine-hogs N`` (N processes spinning on the
cores for each main run: the whole machine overloaded, targets too), ``--base PATH`` (the main
plan also runs the daemon on the code of another checkout, e.g. ``git worktree add
/tmp/nv-guard-base HEAD``: before and after in one invocation, with ``--abba`` as base, this,
this, base)
(default both: the whole run once on SQLite, then once on PostgreSQL 15 started by
``tests/postgres_server.py``, the daemon's configuration with a ``database:`` section and a
fresh database; the peer runs on the first backend only).
Everything listens on 127.0.0.1 ephemeral ports and writes to a temp dir; every child process
stops by itself when the benchmark goes away.

1. Targets: ``bench/common.py switchable`` processes (the light asyncio responder), one port
   per node, so that every node is its own keep-alive connection as in a real fleet. The
   benchmark switches a port to ``503`` and back over the process's stdin; the process
   acknowledges each switch with the wall time it took effect. Their CPU is reported apart.
2. The daemon: ``nodevigil.app.daemon.Daemon`` (monitor, controller, event log, SLA bridge,
   incidents, outbox, API) in a child process, as ``nodevigil run`` runs it (garbage collector
   tuned), on a generated configuration: N nodes with one http probe each at the probe
   defaults (1 s interval, and the defaults' timeout, hedged attempts, rise, fall and flap
   damping), 20 sites behind recording local load balancers, 10 services of
   two sites behind a recording global load balancer, ``failover.hold_down: 0s`` so that a
   recovered node goes back at once and the benchmark sees the controller's reaction rather
   than the hold-down policy. The child also samples itself every few seconds: event-loop lag
   (a 100 ms ticker), garbage-collector pauses, probe totals, connection and round backlogs,
   event-bus subscriber queues, the event log's unwritten events, controller cycles.
3. Flaps: 5 % of the nodes, chosen at random, fail for 15 s out of every 45 s (random phase):
   at most 6 verdict changes in 2 minutes, so flap damping (more than 6) never holds them.
4. Outside view: the daemon's CPU (user + system, all threads) and RSS from psutil.
5. Decisions, from the daemon's own event log (events.db) after it stopped: for every switch,
   target switched -> ``node.down``/``node.up`` verdict -> ``lb.action`` (maint / ready).
   Every other node must never be judged down (a false verdict).
6. Peer, in the same run: the same pipeline at 1,000 nodes; ratios use medians.

Roles ``--role daemon`` is internal: the script starts itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import json
import logging
import math
import os
import queue
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.common import (
    Child,
    cpu_seconds,
    postgres_cpu,
    quantile,
    raise_fd_limit_to,
    start_switchable_targets,
)

if TYPE_CHECKING:
    from tests.postgres_server import PostgresAddress

SITES = 20
SERVICES = 10
DOWN_FOR, PERIOD = 15.0, 45.0  # seconds failing out of every period
SAMPLE_EVERY = 5.0
WARMUP = 20.0  # seconds before the measured window: start-up storm and first verdicts
KEPT_UP_RATE = 0.97
STALLS = False
BACKENDS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@dataclass(frozen=True)
class Plan:
    """One measured run of the pipeline."""

    nodes: int
    seconds: float
    flap_share: float
    target_procs: int
    seed: int
    scrape_every: float = 15.0
    backend: str = "sqlite"  # or "postgres": the daemon's configuration gets a database: section
    workers: int | None = None  # monitor.workers (None: the daemon's default)
    hog: float = 0.0  # share of the daemon's loop a CPU hog takes (--hog)
    repo: Path | None = None  # the daemon runs this checkout's code (--base); None: this one
    machine_hogs: int = 0  # processes spinning on the machine's cores for the run (--machine-hogs)


# --- the daemon's side (child process) -------------------------------------------------------


class LoopTicker:
    """Event-loop lag: how late a 100 ms ticker wakes, every wake kept until taken."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self, period: float = 0.1) -> None:
        """Tick forever."""
        while True:
            due = time.monotonic() + period
            await asyncio.sleep(period)
            self.lags.append(max(time.monotonic() - due, 0.0))

    def take(self) -> list[float]:
        """The lags since the last take (seconds, rounded to 0.1 ms)."""
        lags, self.lags = self.lags, []
        return [round(lag, 4) for lag in lags]


class StallWatch:
    """Where the event loop's thread is when the loop is late (a sampling thread, for --stalls)."""

    def __init__(self, threshold: float = 0.1) -> None:
        import collections
        import traceback

        self.beat = time.monotonic()
        self.stacks: collections.Counter[str] = collections.Counter()
        self._loop_thread = threading.get_ident()
        self._threshold = threshold
        self._format = traceback.format_stack
        threading.Thread(target=self._watch, daemon=True).start()

    async def run(self) -> None:
        """Beat every 10 ms."""
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(0.01)

    def _watch(self) -> None:
        while True:
            time.sleep(0.01)
            if time.monotonic() - self.beat > self._threshold:
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self.stacks["".join(self._format(frame)[-8:])] += 1

    def report(self) -> str:
        """The most frequent stacks seen while the loop was late."""
        total = sum(self.stacks.values())
        lines = [f"{total} samples (10 ms apart) while the loop was late:"]
        for stack, count in self.stacks.most_common(8):
            lines.append(f"--- {count} samples\n{stack}")
        return "\n".join(lines)


class GcWatch:
    """Garbage-collector runs per generation and their pauses, kept per sample."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.pause = 0.0
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.runs[info["generation"]] += 1
        self.pause += pause
        self.longest = max(self.longest, pause)

    def take(self) -> dict[str, Any]:
        """Runs, total and longest pause since the last take."""
        out = {"runs": self.runs, "pause": self.pause, "max": self.longest}
        self.runs, self.pause, self.longest = [0, 0, 0], 0.0, 0.0
        return out


def _histogram(metric: Any) -> tuple[float, float]:
    """(count, sum) of an unlabelled prometheus Histogram, read from its own collect()."""
    count = total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


class WriteTimer:
    """The event log's batch writes, timed (wraps the log's ``_write``; benchmark only)."""

    def __init__(self, events: Any) -> None:
        self.batches = 0
        self.events = 0
        self.seconds = 0.0
        self.longest = 0.0
        self.largest = 0
        write = events._write

        async def timed(batch: list[Any]) -> None:
            started = time.perf_counter()
            try:
                await write(batch)
            finally:
                took = time.perf_counter() - started
                self.batches += 1
                self.events += len(batch)
                self.seconds += took
                self.longest = max(self.longest, took)
                self.largest = max(self.largest, len(batch))

        events._write = timed

    def take(self) -> dict[str, Any]:
        """Totals so far; longest write and largest batch since the last take."""
        out = {
            "batches": self.batches,
            "events": self.events,
            "seconds": self.seconds,
            "max": self.longest,
            "largest": self.largest,
        }
        self.longest, self.largest = 0.0, 0
        return out


def _pool_stats(daemon: Any) -> dict[str, int] | None:
    """The PostgreSQL pool's counters (psycopg_pool ``get_stats``: totals since start), or None
    on SQLite."""
    backend = getattr(daemon, "state_backend", None)
    if backend is None or backend.name != "postgres":
        return None
    return dict(backend.pool.get_stats())


def _trim_recordings(daemon: Any) -> int:
    """The recording load balancers keep every call they ever got: a test aid that would grow
    without bound here and count as the daemon's memory. Forget the calls (not the state)."""
    trimmed = 0
    lbs = {**getattr(daemon.controller, "_local", {}), **getattr(daemon.controller, "_global", {})}
    for lb in lbs.values():
        calls = getattr(lb, "calls", None)
        if isinstance(calls, list):
            trimmed += len(calls)
            calls.clear()
    return trimmed


HOG_SLICE = 0.02  # the hog's longest burn: each stall short against the overload guard's


async def hog(duty: float) -> None:
    """Keep the loop busy ``duty`` of the time: after every turn of the loop, burn
    duty / (1 - duty) of the time the turn took (at most HOG_SLICE at once), so that the
    daemon's own work gets 1 - duty of one core however busy it is."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0)
        now = time.perf_counter()
        until = now + min((now - last) * duty / (1 - duty), HOG_SLICE)
        while time.perf_counter() < until:
            pass
        last = time.perf_counter()


def _worker_lags(daemon: Any) -> dict[str, list[float]]:
    """Each monitor worker's loop lags since the last sample (empty without workers)."""
    take = getattr(daemon.monitor, "take_worker_lags", None)
    if take is None:
        return {}
    return {str(pid): [round(lag, 4) for lag in lags] for pid, lags in take().items()}


async def daemon_role(
    config_path: Path, sample_every: float, stalls: bool = False, duty: float = 0.0
) -> None:
    """Run the real daemon; print a hello line, then one JSON sample every ``sample_every``."""
    from nodevigil.app.daemon import Daemon

    raise_fd_limit_to(65536)
    logging.basicConfig(
        filename=str(config_path.parent / "daemon.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ticker, gcw = LoopTicker(), GcWatch()
    daemon = Daemon(config_path, tune_gc=True)  # as ``nodevigil run`` does
    run = asyncio.create_task(daemon.run(), name="daemon")
    started = time.monotonic()
    while (
        getattr(daemon, "controller", None) is None
        or daemon.controller.last_cycle_at is None
        or daemon.api_port is None
    ):
        if run.done():
            await run  # raises what stopped it
            return
        await asyncio.sleep(0.05)
    import nodevigil

    hello = {
        "pid": os.getpid(),
        "ready_after": time.monotonic() - started,
        "code": str(Path(nodevigil.__file__).resolve().parent.parent),
    }
    print(json.dumps({**hello, "api_port": daemon.api_port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def stop_on_eof() -> None:
        await reader.read()
        daemon.request_stop()

    helpers = [
        asyncio.create_task(stop_on_eof(), name="stdin"),
        asyncio.create_task(ticker.run(), name="ticker"),
    ]
    if duty > 0:
        helpers.append(asyncio.create_task(hog(duty), name="hog"))
    stall = StallWatch() if stalls else None
    if stall is not None:
        helpers.append(asyncio.create_task(stall.run(), name="stalls"))
    ticker.take()
    gcw.take()
    writes = WriteTimer(daemon.context.events)
    try:
        while not run.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sample_every):
                    await asyncio.shield(run)
            if run.done():
                break
            cycles, cycle_time = _histogram(daemon.controller.metrics.cycle_seconds)
            events = daemon.context.events
            sample = {
                "t": time.monotonic(),
                "wall": time.time(),
                "probes": daemon.monitor.stats(),
                "lag": ticker.take(),
                "gc": gcw.take(),
                "bus": daemon.bus.depth(),
                "eventlog": events.waiting,
                "eventlog_dropped": events.dropped,
                "eventlog_errors": events.write_errors,
                "writes": writes.take(),
                "pool": _pool_stats(daemon),
                "tasks": len(asyncio.all_tasks()),
                "cycles": cycles,
                "cycle_time": cycle_time,
                "lb_calls": _trim_recordings(daemon),
                # monitor.workers: each worker's 100 ms ticker lags, by pid
                "worker_lags": _worker_lags(daemon),
            }
            print(json.dumps(sample), flush=True)
        await run
    finally:
        for task in helpers:
            task.cancel()
        if stall is not None:
            print(stall.report(), file=sys.stderr, flush=True)


# --- configuration and flaps -----------------------------------------------------------------


def build_config(
    workdir: Path,
    addresses: list[str],
    nodes: int,
    database: dict[str, str] | None = None,
    workers: int | None = None,
) -> Path:
    """The daemon's configuration file: ``nodes`` nodes on ``addresses`` (one each); state in
    ``workdir/state``, or in PostgreSQL with ``database`` (url, password_file)."""
    lbs: dict[str, Any] = {f"lb-{s:02d}": {"type": "recording"} for s in range(SITES)}
    lbs["gslb"] = {"type": "recording"}
    config = {
        "vantage": "loadbench",
        "state_dir": str(workdir / "state"),
        "api": {"listen": "127.0.0.1:0"},
        "failover": {"hold_down": "0s"},
        "load_balancers": lbs,
        "sites": [
            {
                "name": f"s{s:02d}",
                "address": f"198.51.100.{s + 1}",
                "local_lb": f"lb-{s:02d}",
            }
            for s in range(SITES)
        ],
        "services": [
            {
                "name": f"svc{v:02d}",
                "sites": [f"s{2 * v:02d}", f"s{2 * v + 1:02d}"],
                "global_lb": "gslb",
                "record": f"svc{v:02d}",
            }
            for v in range(SERVICES)
        ],
        "nodes": [
            {
                "name": f"n{i:05d}",
                "site": f"s{i % SITES:02d}",
                "probes": [{"type": "http", "url": f"http://{addresses[i]}/healthz"}],
            }
            for i in range(nodes)
        ],
    }
    if database is not None:
        config["database"] = database
    if workers is not None:
        config["monitor"] = {"workers": workers}
    path = workdir / "nodevigil.json"  # YAML is a superset of JSON: the loader reads it
    path.write_text(json.dumps(config))
    return path


@dataclass(frozen=True, order=True)
class Switch:
    """A flapping node's target turning failing (``fail``) or healthy at ``at`` (monotonic)."""

    at: float
    node: str = field(compare=False)
    address: str = field(compare=False)  # host:port
    fail: bool = field(compare=False)


def flap_schedule(plan: Plan, addresses: list[str], start: float) -> list[Switch]:
    """Every switch of every flapping node over the run, in time order."""
    rng = random.Random(plan.seed)
    count = round(plan.nodes * plan.flap_share)
    flappers = sorted(rng.sample(range(plan.nodes), count))
    end = start + plan.seconds + WARMUP
    switches = []
    for i in flappers:
        at = start + rng.uniform(0, PERIOD)  # the first failure
        while at < end:
            switches.append(Switch(at, f"n{i:05d}", addresses[i], True))
            if at + DOWN_FOR < end:
                switches.append(Switch(at + DOWN_FOR, f"n{i:05d}", addresses[i], False))
            at += PERIOD
    return sorted(switches)


# --- the parent: orchestration and measurement -----------------------------------------------


class Targets:
    """The target processes; switches ports and keeps the time each switch took effect."""

    def __init__(self, ports_per_proc: list[int]) -> None:
        self.children: list[Child] = []
        self.owner: dict[str, int] = {}  # host:port -> its process
        self._acks: list[queue.Queue[dict[str, Any]]] = []
        for index, count in enumerate(ports_per_proc):
            # One loopback address per process: 20,000 listeners would not fit in the
            # ephemeral port range of one address (28,232 ports, shared with every client).
            child = start_switchable_targets(count, f"127.0.0.{index + 1}")
            child.hello["host"] = f"127.0.0.{index + 1}"
            self.children.append(child)
            for port in child.hello["ports"]:
                self.owner[f"{child.hello['host']}:{port}"] = index
            acks: queue.Queue[dict[str, Any]] = queue.Queue()
            self._acks.append(acks)
            threading.Thread(target=self._read, args=(child, acks), daemon=True).start()

    @property
    def addresses(self) -> list[str]:
        """Every host:port, in process order."""
        return [f"{c.hello['host']}:{p}" for c in self.children for p in c.hello["ports"]]

    @staticmethod
    def _read(child: Child, acks: queue.Queue[dict[str, Any]]) -> None:
        assert child.process.stdout is not None
        for line in child.process.stdout:
            with contextlib.suppress(ValueError):
                acks.put(json.loads(line))

    def switch(self, addresses: list[str], fail: bool) -> float:
        """Switch ``addresses``; return the (latest) wall time the switch took effect."""
        by_proc: dict[int, list[str]] = {}
        for address in addresses:
            by_proc.setdefault(self.owner[address], []).append(address.rpartition(":")[2])
        at = 0.0
        for index, group in by_proc.items():
            stdin = self.children[index].process.stdin
            assert stdin is not None
            stdin.write(f"{'fail' if fail else 'ok'} {' '.join(map(str, group))}\n")
            stdin.flush()
        for index in by_proc:
            at = max(at, float(self._acks[index].get(timeout=30)["at"]))
        return at

    def cpu(self) -> float:
        """CPU seconds of every target process."""
        return sum(cpu_seconds(child.pid) for child in self.children)

    def stop(self) -> None:
        """Stop every target process."""
        for child in self.children:
            child.stop()


class DaemonChild:
    """The daemon's child process and the samples it prints."""

    def __init__(self, config: Path, hog: float = 0.0, repo: Path | None = None) -> None:
        args = [sys.executable, str(Path(__file__).resolve()), "--role", "daemon"]
        args += ["--config", str(config), "--sample", str(SAMPLE_EVERY), "--hog", str(hog)]
        if STALLS:
            args.append("--stalls")
        env = None
        if repo is not None:  # that checkout's code first on the path (and its workers' path)
            args += ["--repo", str(repo)]
            env = {**os.environ, "PYTHONPATH": str(repo)}
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=repo,
        )
        self.samples: list[dict[str, Any]] = []
        self.outside: list[dict[str, Any]] = []
        self._hello: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._hello.get(timeout=600)
        self.ps = psutil.Process(self.process.pid)

    def _read(self) -> None:
        assert self.process.stdout is not None
        first = True
        for line in self.process.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if first:
                self._hello.put(data)
                first = False
            else:
                self.samples.append(data)
        if first:
            self._hello.put({"error": f"the daemon exited ({self.process.wait()})"})

    def look(self) -> None:
        """The outside view: CPU seconds, RSS, open files (psutil, all threads)."""
        times = self.ps.cpu_times()
        workers: dict[str, dict[str, float]] = {}  # monitor workers (monitor.workers), by pid
        for child in self.ps.children():
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                rss = child.memory_info().rss / (1 << 20)
                workers[str(child.pid)] = {"cpu": t.user + t.system, "rss": rss}
        self.outside.append(
            {
                "t": time.monotonic(),
                "cpu": times.user + times.system,
                "workers": workers,
                "rss": self.ps.memory_info().rss / (1 << 20),
                "fds": float(self.ps.num_fds()),
                "db_cpu": postgres_cpu(),  # the PostgreSQL server's processes (0 without one)
            }
        )

    def stop(self) -> None:
        """Ask the daemon to stop (stdin EOF) and wait for it."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Scraper:
    """Prometheus' part: GET /metrics every ``every`` seconds, as a scrape job would."""

    def __init__(self, port: int, every: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if every > 0:
            self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.every):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    self.sizes.append(len(response.read()))
                self.times.append(time.monotonic() - started)
            except OSError:
                self.errors += 1

    def stop(self) -> None:
        """Stop scraping."""
        self._stop.set()


@dataclass
class RunResult:
    """What one run measured."""

    plan: Plan
    samples: list[dict[str, Any]]
    outside: list[dict[str, Any]]
    switches: list[tuple[Switch, float]]  # each switch and the wall time it took effect
    events: list[tuple[str, str, float, dict[str, Any]]]
    start_wall: float
    start_mono: float
    ready_after: float
    target_cpu: float
    wall: float
    scrapes: list[float] = field(default_factory=list)  # seconds per /metrics scrape
    scrape_size: int = 0
    scrape_errors: int = 0
    code: str = ""  # the checkout whose code the daemon ran


def run_pipeline(plan: Plan, log: Any, address: PostgresAddress | None = None) -> RunResult:
    """Targets, the daemon, the flaps and the samples for one plan (on PostgreSQL: a fresh
    database on ``address``, dropped afterwards)."""
    per_proc = [
        plan.nodes // plan.target_procs + (i < plan.nodes % plan.target_procs)
        for i in range(plan.target_procs)
    ]
    log(f"  starting {plan.target_procs} target processes ({plan.nodes} ports)")
    targets = Targets(per_proc)
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(plan.machine_hogs)
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
            dbname = None
            database = None
            if plan.backend == "postgres":
                assert address is not None
                dbname = address.create_database()
                database = {"url": address.url(dbname), "password_file": str(address.password_file)}
            try:
                config = build_config(
                    Path(tmp), targets.addresses, plan.nodes, database, plan.workers
                )
                log(f"  starting the daemon on {plan.nodes} nodes ({BACKENDS[plan.backend]})")
                daemon = DaemonChild(config, plan.hog, plan.repo)
                if "error" in daemon.hello:
                    raise RuntimeError(daemon.hello["error"])
                scraper = Scraper(int(daemon.hello["api_port"]), plan.scrape_every)
                try:
                    result = _drive(plan, targets, daemon, log)
                finally:
                    scraper.stop()
                    daemon.stop()
                result.scrapes = scraper.times
                result.scrape_size = max(scraper.sizes, default=0)
                result.scrape_errors = scraper.errors
                if address is not None and dbname is not None:
                    result.events = read_events_postgres(address, dbname)
                else:
                    result.events = read_events(Path(tmp) / "state" / "events.db")
                result.ready_after = float(daemon.hello["ready_after"])
                result.code = str(daemon.hello.get("code", ""))
                return result
            finally:
                if address is not None and dbname is not None:
                    address.drop_database(dbname)
    finally:
        for spinning in hogs:
            spinning.kill()
            spinning.wait()
        targets.stop()


def _drive(plan: Plan, targets: Targets, daemon: DaemonChild, log: Any) -> RunResult:
    start_mono, start_wall = time.monotonic(), time.time()
    target_cpu0 = targets.cpu()
    schedule = flap_schedule(plan, targets.addresses, start_mono)
    end = start_mono + WARMUP + plan.seconds
    switched: list[tuple[Switch, float]] = []
    next_look = start_mono
    next_note = start_mono + 60
    pending = list(reversed(schedule))
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_look:
            daemon.look()
            next_look += SAMPLE_EVERY
        if now >= next_note:
            log(f"  {now - start_mono:.0f}s: {_progress(daemon)}")
            next_note += 60
        due: dict[bool, list[Switch]] = {True: [], False: []}
        while pending and pending[-1].at <= now + 0.002:
            switch = pending.pop()
            due[switch.fail].append(switch)
        for fail, group in due.items():
            if group:
                at = targets.switch([s.address for s in group], fail)
                switched.extend((s, at) for s in group)
        upcoming = min(next_look, end, pending[-1].at if pending else end)
        time.sleep(max(0.0, min(upcoming - time.monotonic(), 0.05)))
    daemon.look()
    # Heal every target before stopping, so the last samples are not mid-flap.
    return RunResult(
        plan=plan,
        samples=daemon.samples,
        outside=daemon.outside,
        switches=switched,
        events=[],
        start_wall=start_wall,
        start_mono=start_mono,
        ready_after=0.0,
        target_cpu=targets.cpu() - target_cpu0,
        wall=time.monotonic() - start_mono,
    )


def _progress(daemon: DaemonChild) -> str:
    if len(daemon.samples) < 2 or len(daemon.outside) < 2:
        return "warming up"
    a, b = daemon.samples[-2], daemon.samples[-1]
    done = _total(b) - _total(a)
    o1, o2 = daemon.outside[-2], daemon.outside[-1]
    cores = (o2["cpu"] - o1["cpu"]) / max(o2["t"] - o1["t"], 1e-9)
    return (
        f"{done / (b['t'] - a['t']):.0f} probes/s, {cores:.2f} cores, "
        f"RSS {o2['rss']:.0f} MiB, loop lag max {max(b['lag'], default=0) * 1000:.0f} ms"
    )


def read_events(path: Path) -> list[tuple[str, str, float, dict[str, Any]]]:
    """Verdicts and load-balancer actions from the daemon's event log, in time order."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT kind, subject, at, data FROM events "
            "WHERE kind IN ('node.down', 'node.up', 'lb.action') ORDER BY at"
        ).fetchall()
    return [(kind, subject, at, json.loads(data)) for kind, subject, at, data in rows]


def read_events_postgres(
    address: PostgresAddress, dbname: str
) -> list[tuple[str, str, float, dict[str, Any]]]:
    """The same from the ``events`` table of the daemon's PostgreSQL database."""
    import psycopg

    dsn = address.admin_dsn.replace("dbname=postgres", f"dbname={dbname}")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT kind, subject, at, body FROM events "
            "WHERE kind IN ('node.down', 'node.up', 'lb.action') ORDER BY at"
        ).fetchall()
    return [(kind, subject, at, json.loads(body)["data"]) for kind, subject, at, body in rows]


# --- analysis --------------------------------------------------------------------------------


def _total(sample: dict[str, Any]) -> float:
    p = sample["probes"]
    return float(p["success"] + p["failure"] + p["inconclusive"])


@dataclass
class Decision:
    """One switch and what the daemon made of it."""

    switch: Switch
    switched_at: float  # wall
    verdict_at: float | None
    action_at: float | None

    @property
    def verdict_lag(self) -> float | None:
        """Target switched -> verdict, seconds."""
        return None if self.verdict_at is None else self.verdict_at - self.switched_at

    @property
    def action_lag(self) -> float | None:
        """Verdict -> load-balancer action, seconds."""
        if self.verdict_at is None or self.action_at is None:
            return None
        return self.action_at - self.verdict_at


def decisions(result: RunResult) -> tuple[list[Decision], list[str]]:
    """Match each switch with its verdict and action; list the false verdicts."""
    by_node: dict[str, list[tuple[str, float, dict[str, Any]]]] = {}
    for kind, subject, at, data in result.events:
        by_node.setdefault(subject, []).append((kind, at, data))
    flappers = {s.node for s, _ in result.switches}
    # A verdict counts for a switch only if it came before the node's next switch: a failure
    # the daemon missed must not be matched with the next period's verdict.
    following: dict[tuple[str, float], float] = {}
    last_at: dict[str, float] = {}
    for switch, at in sorted(result.switches, key=lambda pair: pair[1], reverse=True):
        following[(switch.node, at)] = last_at.get(switch.node, float("inf"))
        last_at[switch.node] = at
    out = []
    for switch, at in result.switches:
        kind = "node.down" if switch.fail else "node.up"
        wanted = "maint" if switch.fail else "ready"
        events = by_node.get(switch.node, [])
        until = following[(switch.node, at)]
        verdict = next((t for k, t, _ in events if k == kind and at <= t < until), None)
        action = None
        if verdict is not None:
            action = next(
                (
                    t
                    for k, t, d in events
                    if k == "lb.action" and d.get("new") == wanted and verdict <= t < until
                ),
                None,
            )
        out.append(Decision(switch, at, verdict, action))
    false = [
        f"{subject} {kind} at {at - result.start_wall:.1f}s: {data.get('reason', '')}"
        for kind, subject, at, data in result.events
        if kind == "node.down" and subject not in flappers
    ]
    return out, false


def _detail_kind(line: str) -> str:
    """A false verdict's probe detail without its figures ("timed out (no answer within Nms)")."""
    reason = line.split(": ", 1)[-1]
    return "".join("N" if c.isdigit() else c for c in reason).replace("NN", "N")[:60]


def _in(decision: Decision, window: tuple[float, float], until: float) -> bool:
    """Whether a switch falls in ``window`` (wall) and had time to be decided before ``until``."""
    return window[0] <= decision.switched_at < window[1] and decision.switched_at < until - 10


def _lags(values: list[float | None]) -> tuple[float, float, float, int]:
    got = [v for v in values if v is not None]
    return quantile(got, 0.5), quantile(got, 0.95), max(got, default=float("nan")), len(got)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60


@dataclass
class Window:
    """Figures of one stretch of the run (a minute, or the whole measured window)."""

    label: str
    rate: float
    ok: float
    skipped: float
    cores: float
    rss: float
    lag_p50: float
    lag_p99: float
    lag_max: float
    gc_pause: float  # seconds per second
    gc_max: float
    bus: float
    eventlog: float
    orphaned: float
    running: float
    cycles: float  # controller cycles per second
    cycle_ms: float  # mean cycle duration
    flaps: int
    verdict: tuple[float, float, float, int]
    action: tuple[float, float, float, int]
    decided: int
    db_cores: float = 0.0  # the PostgreSQL server's processes
    writes: dict[str, float] = field(default_factory=dict)  # event-log batch writes
    pool: dict[str, float] = field(default_factory=dict)  # PostgreSQL pool (empty on SQLite)
    # monitor.workers: each worker's loop lag p99 and RSS at the end, and their CPU together
    worker_lag_p99: list[float] = field(default_factory=list)
    worker_rss: list[float] = field(default_factory=list)
    worker_cores: float = 0.0


def _writes(
    first: dict[str, Any], last: dict[str, Any], later: list[dict[str, Any]]
) -> dict[str, float]:
    """Event-log batch writes between two samples: per second, mean and longest write."""
    a, b = first.get("writes"), last.get("writes")
    if not a or not b:
        return {}
    span = last["t"] - first["t"]
    batches = b["batches"] - a["batches"]
    return {
        "batches_s": batches / span,
        "events_per_batch": (b["events"] - a["events"]) / max(batches, 1),
        "mean_ms": (b["seconds"] - a["seconds"]) / max(batches, 1) * 1000,
        "busy": (b["seconds"] - a["seconds"]) / span,  # share of the time a write was running
        "max_ms": max(s["writes"]["max"] for s in later) * 1000,
        "largest": max(s["writes"]["largest"] for s in later),
    }


def _pool(
    first: dict[str, Any], last: dict[str, Any], later: list[dict[str, Any]]
) -> dict[str, float]:
    """PostgreSQL pool use between two samples (psycopg_pool's counters)."""
    a, b = first.get("pool"), last.get("pool")
    if not a or not b:
        return {}
    span = last["t"] - first["t"]
    requests = b.get("requests_num", 0) - a.get("requests_num", 0)
    return {
        "requests_s": requests / span,
        "queued": b.get("requests_queued", 0) - a.get("requests_queued", 0),
        "wait_ms": (b.get("requests_wait_ms", 0) - a.get("requests_wait_ms", 0)) / max(requests, 1),
        "size": b.get("pool_max", 0),
        "waiting_max": max((s["pool"] or {}).get("requests_waiting", 0) for s in later),
        "errors": b.get("requests_errors", 0) - a.get("requests_errors", 0),
    }


def window(
    result: RunResult, label: str, t0: float, t1: float, made: list[Decision]
) -> Window | None:
    """Figures between ``t0`` and ``t1`` seconds after the start (monotonic)."""
    base = result.start_mono
    samples = [s for s in result.samples if t0 <= s["t"] - base <= t1]
    outside = [o for o in result.outside if t0 <= o["t"] - base <= t1]
    if len(samples) < 2 or len(outside) < 2:
        return None
    first, last = samples[0], samples[-1]
    span = last["t"] - first["t"]
    done = _total(last) - _total(first)
    ok = last["probes"]["success"] - first["probes"]["success"]
    cores = (outside[-1]["cpu"] - outside[0]["cpu"]) / (outside[-1]["t"] - outside[0]["t"])
    db_cores = (outside[-1]["db_cpu"] - outside[0]["db_cpu"]) / (outside[-1]["t"] - outside[0]["t"])
    later = samples[1:]
    lags = [lag for s in later for lag in s["lag"]]
    wall0, wall1 = result.start_wall + t0, result.start_wall + t1
    end_wall = result.start_wall + result.wall
    picked = [d for d in made if _in(d, (wall0, wall1), end_wall)]
    return Window(
        label=label,
        rate=done / span,
        ok=ok / done if done else float("nan"),
        skipped=(last["probes"]["skipped"] - first["probes"]["skipped"]) / span,
        cores=cores,
        rss=outside[-1]["rss"],
        lag_p50=quantile(lags, 0.5),
        lag_p99=quantile(lags, 0.99),
        lag_max=max(lags, default=float("nan")),
        gc_pause=sum(s["gc"]["pause"] for s in later) / span,
        gc_max=max(s["gc"]["max"] for s in later),
        bus=max(s["bus"] for s in later),
        eventlog=max(s["eventlog"] for s in later),
        orphaned=max(s["probes"].get("connections_orphaned", 0) for s in later),
        running=max(s["probes"]["running"] for s in later),
        cycles=(last["cycles"] - first["cycles"]) / span,
        cycle_ms=(last["cycle_time"] - first["cycle_time"])
        / max(last["cycles"] - first["cycles"], 1)
        * 1000,
        flaps=len(picked),
        verdict=_lags([d.verdict_lag for d in picked]),
        action=_lags([d.action_lag for d in picked]),
        decided=sum(d.action_at is not None for d in picked),
        db_cores=db_cores,
        writes=_writes(first, last, later),
        pool=_pool(first, last, later),
        **_workers(later, outside),
    )


def _workers(later: list[dict[str, Any]], outside: list[dict[str, Any]]) -> dict[str, Any]:
    """The monitor workers' figures over a window: loop lag p99 and RSS per worker, cores."""
    lags: dict[str, list[float]] = {}
    for sample in later:
        for pid, got in sample.get("worker_lags", {}).items():
            lags.setdefault(pid, []).extend(got)
    a, b = outside[0].get("workers", {}), outside[-1].get("workers", {})
    span = outside[-1]["t"] - outside[0]["t"]
    cores = sum(b[pid]["cpu"] - a[pid]["cpu"] for pid in b if pid in a) / span
    # A worker started during the window (a restart) counts from its start.
    cores += sum(b[pid]["cpu"] for pid in b if pid not in a) / span
    return {
        "worker_lag_p99": [quantile(v, 0.99) for _, v in sorted(lags.items()) if v],
        "worker_rss": [w["rss"] for _, w in sorted(b.items())],
        "worker_cores": cores,
    }


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def print_table(result: RunResult, made: list[Decision]) -> list[Window]:
    """One row per minute (the first includes the start-up) and the measured window."""
    plan = result.plan
    rows: list[Window] = []
    total = WARMUP + plan.seconds
    edges = [0.0, WARMUP, *[WARMUP + 60 * k for k in range(1, int(plan.seconds // 60) + 1)]]
    if edges[-1] < total - 1:
        edges.append(total)
    for i in range(len(edges) - 1):
        label = "warm-up" if i == 0 else f"min {i}"
        w = window(result, label, edges[i], edges[i + 1], made)
        if w is not None:
            rows.append(w)
    head = (
        f"{'window':<9}{'probes/s':>9}{'ok':>7}{'shed/s':>7}{'cores':>6}{'db':>5}{'RSS':>6}"
        f"{'lag50':>6}{'lag99':>6}{'lagmax':>7}{'gc%':>6}{'gcmax':>6}{'bus':>5}{'elog':>5}{'orph':>5}"
        f"{'run':>5}{'cyc/s':>6}{'cyc ms':>7}{'flaps':>6}{'verdict p50/p95':>16}"
        f"{'action p50/p95':>15}{'decided':>8}"
    )
    print(head)
    for w in rows:
        print(
            f"{w.label:<9}{w.rate:>9.0f}{w.ok:>7.1%}{w.skipped:>7.0f}{w.cores:>6.2f}{w.db_cores:>5.2f}"
            f"{w.rss:>6.0f}{_ms(w.lag_p50):>6}{_ms(w.lag_p99):>6}{_ms(w.lag_max):>7}{w.gc_pause:>6.1%}"
            f"{_ms(w.gc_max):>6}{w.bus:>5.0f}{w.eventlog:>5.0f}{w.orphaned:>5.0f}{w.running:>5.0f}"
            f"{w.cycles:>6.1f}{w.cycle_ms:>7.1f}"
            f"{w.flaps:>6}{_ms(w.verdict[0]):>9}/{_ms(w.verdict[1]):<6}"
            f"{_ms(w.action[0]):>8}/{_ms(w.action[1]):<6}{w.decided:>8}"
        )
    return rows


def summarize(result: RunResult) -> dict[str, Any]:
    """The measured window (after the warm-up) and its verdicts, printed and returned."""
    plan = result.plan
    made, false = decisions(result)
    print(
        f"\n--- {BACKENDS[plan.backend]}: {plan.nodes} nodes @ 1s, "
        f"{plan.flap_share:.0%} flapping, ",
        end="",
    )
    print(f"{plan.seconds:.0f}s measured after {WARMUP:.0f}s warm-up ---")
    print(f"daemon ready (API up, first controller cycle) {result.ready_after:.1f}s after start")
    rows = print_table(result, made)
    whole = window(result, "measured", WARMUP, WARMUP + plan.seconds, made)
    if whole is None:
        raise RuntimeError("no samples in the measured window")
    base = result.start_mono
    steady = [o for o in result.outside if o["t"] - base >= WARMUP]
    samples = [s for s in result.samples if s["t"] - base >= WARMUP]
    intervals = list(itertools.pairwise(steady))
    core_points = [(b["t"] - base, (b["cpu"] - a["cpu"]) / (b["t"] - a["t"])) for a, b in intervals]
    rss_points = [(o["t"] - base, o["rss"]) for o in steady]
    lag_points = [(s["t"] - base, quantile(s["lag"], 0.99)) for s in samples[1:]]
    offered = plan.nodes / 1.0
    minutes = [w for w in rows if w.label.startswith("min")]
    first, last = (minutes[0], minutes[-1]) if minutes else (whole, whole)
    print(
        f"first vs last minute: probes/s {first.rate:.0f} -> {last.rate:.0f}, cores "
        f"{first.cores:.2f} -> {last.cores:.2f}, RSS {first.rss:.0f} -> {last.rss:.0f} MiB, "
        f"lag p99 {_ms(first.lag_p99)} -> {_ms(last.lag_p99)} ms"
    )
    print(
        f"slopes over the measured window: CPU {_slope(core_points):+.3f} cores/min, "
        f"RSS {_slope(rss_points):+.2f} MiB/min, lag p99 {_slope(lag_points) * 1000:+.2f} ms/min"
    )
    settled = [d for d in made if d.switched_at < result.start_wall + result.wall - 10]
    missing_verdict = sum(d.verdict_at is None for d in settled)
    missing_action = sum(d.verdict_at is not None and d.action_at is None for d in settled)
    downs = [d for d in settled if d.switch.fail]
    ups = [d for d in settled if not d.switch.fail]
    print(
        f"decisions over the whole run: {len(settled)} switches, verdict missing "
        f"{missing_verdict}, action missing {missing_action}; false verdicts (a steady node "
        f"judged down): {len(false)}"
    )
    for name, group in (("failing -> down", downs), ("healthy -> up", ups)):
        v = _lags([d.verdict_lag for d in group])
        a = _lags([d.action_lag for d in group])
        print(
            f"  {name:<16} verdict p50 {_ms(v[0])} p95 {_ms(v[1])} max {_ms(v[2])} ms; "
            f"lb action after it p50 {_ms(a[0])} p95 {_ms(a[1])} max {_ms(a[2])} ms"
        )
    for line in false[:5]:
        print(f"  false: {line}")
    if false:
        kinds = collections.Counter(_detail_kind(line) for line in false)
        print(f"  false verdicts by probe detail: {dict(kinds.most_common())}")
    measured = [s for s in samples if "overloaded" in s["probes"]]
    overloaded = sum(bool(s["probes"]["overloaded"]) for s in measured)
    inconclusive = (
        (samples[-1]["probes"].get("inconclusive", 0) - samples[0]["probes"].get("inconclusive", 0))
        / (samples[-1]["t"] - samples[0]["t"])
        if len(samples) > 1
        else 0.0
    )
    print(
        f"overload guard: overloaded in {overloaded} of {len(measured)} samples, "
        f"{inconclusive:.1f} results/s not trusted (inconclusive); daemon code {result.code}"
    )
    kept = all(w.rate >= KEPT_UP_RATE * offered for w in minutes) and whole.rate >= (
        KEPT_UP_RATE * offered
    )
    per_probe = whole.cores / whole.rate * 1e6 if whole.rate else float("nan")
    gc_runs = [sum(s["gc"]["runs"][g] for s in samples[1:]) for g in range(3)]
    print(
        f"measured window: {whole.rate:.0f} of {offered:.0f} probes/s offered "
        f"({whole.rate / offered:.1%}), {per_probe:.0f} CPU-us per probe, "
        f"target processes {result.target_cpu / result.wall:.2f} cores; GC runs by generation "
        f"{gc_runs}, pause max {_ms(whole.gc_max)} ms; open files "
        f"{max(o['fds'] for o in steady):.0f}"
    )
    late = whole.skipped * (plan.seconds)
    print(
        f"probes on time: {whole.rate / offered:.2%} of the offered rate ran; rounds shed for "
        f"running late (> interval/2): {late:.0f} ({whole.skipped:.1f}/s)"
    )
    rss_total = [(o["t"] - base, o["rss"] + sum(w["rss"] for w in o.get("workers", {}).values()))
                 for o in steady]  # fmt: skip
    if whole.worker_rss:
        print(
            f"monitor workers: {len(whole.worker_rss)}, loop lag p99 "
            f"{', '.join(_ms(v) for v in whole.worker_lag_p99)} ms (main {_ms(whole.lag_p99)} "
            f"ms), RSS {', '.join(f'{v:.0f}' for v in whole.worker_rss)} MiB (main "
            f"{whole.rss:.0f}), {whole.worker_cores:.2f} cores (main {whole.cores:.2f}); all "
            f"processes' RSS {_slope(rss_total):+.2f} MiB/min"
        )
    if result.scrapes:
        print(
            f"/metrics scraped every {plan.scrape_every:g}s: {len(result.scrapes)} scrapes of "
            f"{result.scrape_size / 1e6:.1f} MB, answered in p50 "
            f"{_ms(quantile(result.scrapes, 0.5))} max {_ms(max(result.scrapes))} ms, "
            f"{result.scrape_errors} failed"
        )
    wr = whole.writes
    if wr:
        print(
            f"event log writes: {wr['batches_s']:.1f} batches/s of {wr['events_per_batch']:.1f} "
            f"events, write mean {wr['mean_ms']:.1f} ms max {wr['max_ms']:.0f} ms (largest batch "
            f"{wr['largest']:.0f}), busy {wr['busy']:.1%} of the time; events waiting max "
            f"{whole.eventlog:.0f}, write errors {samples[-1].get('eventlog_errors', 0)}"
        )
    if whole.pool:
        pl = whole.pool
        print(
            f"PostgreSQL: server {whole.db_cores:.2f} cores; pool of {pl['size']:.0f}: "
            f"{pl['requests_s']:.1f} connections handed out/s, queued for one "
            f"{pl['queued']:.0f} (mean wait {pl['wait_ms']:.1f} ms, max waiting "
            f"{pl['waiting_max']:.0f}), errors {pl['errors']:.0f}"
        )
    print(f"kept up (>= {KEPT_UP_RATE:.0%} of the offered rate every minute): {kept}")
    action_all = [d.action_lag for d in settled if d.action_lag is not None]
    return {
        "backend": plan.backend,
        "workers": plan.workers,
        "rss_total_slope": _slope(rss_total),
        "scrape_p50": quantile(result.scrapes, 0.5) if result.scrapes else math.nan,
        "action_p99": quantile(action_all, 0.99),
        "nodes": plan.nodes,
        "whole": whole,
        "per_probe_us": per_probe,
        "kept_up": kept,
        "false": len(false),
        "code": result.code,
        "overloaded": f"{overloaded}/{len(measured)}",
        "inconclusive": inconclusive,
        "missing": missing_verdict + missing_action,
        "down_verdict": _lags([d.verdict_lag for d in downs]),
        "up_verdict": _lags([d.verdict_lag for d in ups]),
        "action": _lags([d.action_lag for d in settled]),
    }


def print_code_comparison(by_code: dict[str, list[dict[str, Any]]]) -> None:
    """Two checkouts on the same plan (--base): what the overload guard let through."""
    print("\n--- the same plan on two checkouts, same invocation ---")
    for code, runs in by_code.items():
        print(
            f"{code}: false verdicts {[r['false'] for r in runs]}, verdicts or actions missing "
            f"{[r['missing'] for r in runs]}, overloaded in {[r['overloaded'] for r in runs]} "
            f"of the samples, inconclusive results/s "
            f"{[round(r['inconclusive'], 1) for r in runs]}, "
            f"down verdict p50 {[_ms(r['down_verdict'][0]) for r in runs]} ms"
        )


def print_ratios(main: dict[str, Any], peer: dict[str, Any]) -> None:
    """The main run against the peer (same pipeline, fewer nodes), medians."""
    m, p = main["whole"], peer["whole"]
    print(f"\n--- {main['nodes']} nodes against the peer at {peer['nodes']} (same run) ---")
    rows = [
        ("CPU-us per probe", main["per_probe_us"], peer["per_probe_us"]),
        ("loop lag p50 (ms)", m.lag_p50 * 1000, p.lag_p50 * 1000),
        ("loop lag p99 (ms)", m.lag_p99 * 1000, p.lag_p99 * 1000),
        ("GC time share", m.gc_pause * 100, p.gc_pause * 100),
        ("down verdict p50 (ms)", main["down_verdict"][0] * 1000, peer["down_verdict"][0] * 1000),
        ("up verdict p50 (ms)", main["up_verdict"][0] * 1000, peer["up_verdict"][0] * 1000),
        ("lb action after verdict p50 (ms)", main["action"][0] * 1000, peer["action"][0] * 1000),
        ("RSS per 1,000 nodes (MiB)", m.rss / main["nodes"] * 1000, p.rss / peer["nodes"] * 1000),
    ]
    print(f"{'':<34}{main['nodes']:>10}{peer['nodes']:>10}{'ratio':>8}")
    for name, a, b in rows:
        ratio = a / b if b else float("nan")
        print(f"{name:<34}{a:>10.1f}{b:>10.1f}{ratio:>7.2f}x")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def print_worker_ratios(runs: dict[int | None, list[dict[str, Any]]]) -> None:
    """The same plan with two values of monitor.workers (same run; A B B A with --abba):
    each figure over the measured window, averaged over each count's runs."""
    (wa, a), (wb, b) = runs.items()
    rows: list[tuple[str, Any]] = [
        ("probes/s achieved", lambda r: r["whole"].rate),
        ("share of offered probes that ran (%)", lambda r: r["whole"].rate / r["nodes"] * 100),
        ("rounds shed for lateness (/s)", lambda r: r["whole"].skipped),
        ("main process: cores", lambda r: r["whole"].cores),
        ("workers: cores (together)", lambda r: r["whole"].worker_cores),
        ("main process: loop lag p99 (ms)", lambda r: r["whole"].lag_p99 * 1000),
        ("main process: loop lag max (ms)", lambda r: r["whole"].lag_max * 1000),
        ("worst worker: loop lag p99 (ms)",
         lambda r: max(r["whole"].worker_lag_p99, default=math.nan) * 1000),
        ("main process: RSS at the end (MiB)", lambda r: r["whole"].rss),
        ("workers: RSS at the end (MiB, sum)", lambda r: sum(r["whole"].worker_rss)),
        ("all processes: RSS slope (MiB/min)", lambda r: r["rss_total_slope"]),
        ("down verdict p50 (ms)", lambda r: r["down_verdict"][0] * 1000),
        ("verdict -> lb action p50 (ms)", lambda r: r["action"][0] * 1000),
        ("verdict -> lb action p99 (ms)", lambda r: r["action_p99"] * 1000),
        ("/metrics scrape p50 (ms)", lambda r: r["scrape_p50"] * 1000),
        ("false verdicts", lambda r: r["false"]),
        ("decisions missing", lambda r: r["missing"]),
    ]  # fmt: skip
    name = {None: "default"}
    ha, hb = f"workers {name.get(wa, wa)}", f"workers {name.get(wb, wb)}"
    each = f" (mean of {len(a)} runs each, A B B A)" if len(a) > 1 else ""
    print(f"\n--- {a[0]['nodes']} nodes: monitor.workers compared, same invocation{each} ---")
    print(f"{'':<40}{ha:>12}{hb:>12}")
    for label, get in rows:
        print(f"{label:<40}{_mean([get(r) for r in a]):>12.2f}{_mean([get(r) for r in b]):>12.2f}")


def print_backend_ratios(sq: list[dict[str, Any]], pg: list[dict[str, Any]]) -> None:
    """The same plan on PostgreSQL against SQLite (same run): each figure over the measured
    window, averaged over a backend's runs (A B B A: two each)."""
    rows: list[tuple[str, Any]] = [
        ("probes/s achieved", lambda r: r["whole"].rate),
        ("daemon CPU (cores)", lambda r: r["whole"].cores),
        ("PostgreSQL server CPU (cores)", lambda r: r["whole"].db_cores),
        ("daemon + server CPU (cores)", lambda r: r["whole"].cores + r["whole"].db_cores),
        ("CPU-us per probe, daemon + server",
         lambda r: (r["whole"].cores + r["whole"].db_cores) / r["whole"].rate * 1e6),
        ("daemon RSS at the end (MiB)", lambda r: r["whole"].rss),
        ("loop lag p50 (ms)", lambda r: r["whole"].lag_p50 * 1000),
        ("loop lag p99 (ms)", lambda r: r["whole"].lag_p99 * 1000),
        ("loop lag max (ms)", lambda r: r["whole"].lag_max * 1000),
        ("down verdict p50 (ms)", lambda r: r["down_verdict"][0] * 1000),
        ("verdict -> lb action p50 (ms)", lambda r: r["action"][0] * 1000),
        ("verdict -> lb action p99 (ms)", lambda r: r["action_p99"] * 1000),
        ("event log: events waiting, max", lambda r: r["whole"].eventlog),
        ("event bus: fullest queue, max", lambda r: r["whole"].bus),
        ("event log: batch write mean (ms)", lambda r: r["whole"].writes.get("mean_ms", math.nan)),
        ("event log: batch write max (ms)", lambda r: r["whole"].writes.get("max_ms", math.nan)),
        ("GC time share (%)", lambda r: r["whole"].gc_pause * 100),
        ("decisions missing", lambda r: r["missing"]),
    ]  # fmt: skip
    runs = f" (mean of {len(sq)} runs each, A B B A)" if len(sq) > 1 else ""
    print(f"\n--- {sq[0]['nodes']} nodes: PostgreSQL against SQLite, same invocation{runs} ---")
    print(f"{'':<36}{'SQLite':>10}{'PostgreSQL':>11}{'PG/SQLite':>10}")
    for name, get in rows:
        x, y = _mean([get(r) for r in sq]), _mean([get(r) for r in pg])
        ratio = f"{y / x:>9.2f}x" if x else f"{'-':>10}"
        print(f"{name:<36}{x:>10.2f}{y:>11.2f}{ratio}")
    print(
        "kept up: SQLite "
        + ", ".join(str(r["kept_up"]) for r in sq)
        + "; PostgreSQL "
        + ", ".join(str(r["kept_up"]) for r in pg)
        + f"; false verdicts: SQLite {sum(r['false'] for r in sq)}, "
        f"PostgreSQL {sum(r['false'] for r in pg)}"
    )


def main_parent(args: argparse.Namespace) -> None:
    """Run the peer and the main plan on each backend, print each and the ratios."""
    started = time.monotonic()
    raise_fd_limit_to(65536)
    seconds = 60.0 * (1 if args.quick else args.minutes)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    command = "cd /work/main && .venv/bin/python bench/load_bench.py" + " ".join(
        ["", *sys.argv[1:]]
    )

    def log(text: str) -> None:
        print(text, flush=True)

    with contextlib.ExitStack() as stack:
        address = None
        if "postgres" in backends:
            from tests.postgres_server import postgres_for_session

            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="load-bench-pg-")))
            address = stack.enter_context(postgres_for_session(work))
            log(f"PostgreSQL 15 on 127.0.0.1:{address.port} (tests/postgres_server.py, fsync=off)")
        peer_summary = None
        if args.peer_nodes:
            # The peer runs once, on the first backend: it measures how the daemon scales.
            peer = Plan(
                args.peer_nodes,
                30.0 if args.quick else 60.0,
                args.flap_share,
                1,
                args.seed,
                args.scrape_every,
                backends[0],
            )
            log(f"peer: {peer.nodes} nodes for {WARMUP + peer.seconds:.0f}s on {peer.backend}")
            peer_summary = summarize(run_pipeline(peer, log, address))
        summaries: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
        counts: list[int | None] = (
            [int(w) for w in args.workers.split(",")] if args.workers else [None]
        )
        runs: list[tuple[str, int | None, Path | None]] = [(b, counts[0], None) for b in backends]
        if len(counts) == 2:  # workers against workers, on the first backend
            runs = [(backends[0], w, None) for w in counts]
        elif args.base is not None:  # the other checkout against this one, on the first backend
            runs = [(backends[0], counts[0], args.base.resolve()), (backends[0], counts[0], None)]
        if args.abba and len(runs) == 2:
            runs = [runs[0], runs[1], runs[1], runs[0]]
        by_workers: dict[int | None, list[dict[str, Any]]] = {}
        by_code: dict[str, list[dict[str, Any]]] = {}
        for backend, workers, repo in runs:
            plan = Plan(
                args.nodes,
                seconds,
                args.flap_share,
                args.target_procs,
                args.seed,
                args.scrape_every,
                backend,
                workers,
                args.hog,
                repo,
                args.machine_hogs,
            )
            log(
                f"\nmain: {plan.nodes} nodes for {WARMUP + plan.seconds:.0f}s on {backend}, "
                f"monitor.workers {workers if workers is not None else 'default'}"
                + (f", loop hog {args.hog:.0%}" if args.hog else "")
                + (f", {args.machine_hogs} spinning processes" if args.machine_hogs else "")
                + (f", code of {repo}" if repo is not None else "")
            )
            summary = summarize(run_pipeline(plan, log, address))
            if repo is None:
                summaries[backend].append(summary)
                by_workers.setdefault(workers, []).append(summary)
            by_code.setdefault(summary["code"], []).append(summary)
    if peer_summary is not None:
        print_ratios(summaries[backends[0]][0], peer_summary)
    if len(by_code) == 2:
        print_code_comparison(by_code)
    if len(by_workers) == 2:
        print_worker_ratios(by_workers)
    elif len(summaries) == 2:
        print_backend_ratios(summaries["sqlite"], summaries["postgres"])
    print(f"\ncommand: {command}\ntotal time: {time.monotonic() - started:.0f}s")


def main() -> None:
    """Parse arguments; run as the parent or as the daemon child."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 measured minute, short peer")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--peer-nodes", type=int, default=1_000, help="0 skips the peer")
    parser.add_argument("--flap-share", type=float, default=0.05)
    parser.add_argument("--target-procs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="state backend(s): the whole run once on each (default both)",
    )
    parser.add_argument(
        "--abba",
        action="store_true",
        help="with both: run SQLite, PostgreSQL, PostgreSQL, SQLite (drift hits both alike)",
    )
    parser.add_argument(
        "--scrape-every", type=float, default=15.0, help="GET /metrics this often (0: never)"
    )
    parser.add_argument(
        "--workers",
        help="monitor.workers for the daemon: N, or N,M to compare two counts on the first "
        "backend (with --abba: N M M N); unset: the daemon's default",
    )
    parser.add_argument(
        "--stalls", action="store_true", help="the daemon prints where its loop was late"
    )
    parser.add_argument(
        "--hog",
        type=float,
        default=0.0,
        help="share of the daemon's event loop a CPU hog takes, in short slices (0 to 0.95)",
    )
    parser.add_argument(
        "--machine-hogs",
        type=int,
        default=0,
        help="processes spinning on the machine's cores during each main run (the whole "
        "machine overloaded: daemon and targets alike)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="another checkout (a worktree of HEAD, say): the main plan also runs its daemon",
    )
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["daemon"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=float, default=SAMPLE_EVERY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.hog <= 0.95:
        parser.error("--hog must be between 0 and 0.95")
    if args.role == "daemon":
        if args.repo is not None:  # before anything imports the daemon's code
            sys.path.insert(0, str(args.repo.resolve()))
        asyncio.run(daemon_role(args.config, args.sample, args.stalls, args.hog))
    else:
        global STALLS  # noqa: PLW0603 -- passed on to the daemon child
        STALLS = args.stalls
        main_parent(args)


if __name__ == "__main__":
    main()
