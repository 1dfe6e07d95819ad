"""The monitor over worker processes (monitor.sharded): the same verdicts as in one process,
a killed worker judges nothing down, reloads move nodes across shards, and the daemon with
``monitor.workers: 2`` drains a dead node in a real HAProxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Histogram

from failover.lb import ServerState
from monitor.heartbeat import HeartbeatBoard
from monitor.metrics import MonitorMetrics
from monitor.monitor import Monitor
from monitor.sharded import ShardedMonitor, local_nodes, worker_count
from monitor.shards import add_to_histogram, shard_of
from monitor.verdicts import NodeVerdictEvent, Verdict
from nodevigil.app.daemon import Daemon
from nodevigil.core.clock import Clock, SystemClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.events import EventBus
from tests.failover.conftest import haproxy  # noqa: F401 -- the fixture, for the daemon test
from tests.failover.daemons import HAProxyInstance, free_port, poll_until
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config
from tests.http_target import healthy_target

FAST = {"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 2}


def fleet(healthy: int, names: list[str], dead: frozenset[str] | set[str] = frozenset()) -> Config:
    """Nodes probed over http (``healthy``'s port) and tcp; those in ``dead`` on closed ports."""
    nodes = []
    for name in names:
        port = free_port() if name in dead else healthy
        kind = "tcp" if name.endswith("t") else "http"
        probe = (
            {"type": "tcp", "address": f"127.0.0.1:{port}"}
            if kind == "tcp"
            else {"type": "http", "url": f"http://127.0.0.1:{port}/"}
        )
        nodes.append({"name": name, "site": "s", "probes": [probe]})
    return parse_config(
        {
            "defaults": FAST,
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": nodes,
        }
    )


class World:
    """A monitor with its bus, metrics and the verdict events it published."""

    def __init__(self, monitor: Monitor | ShardedMonitor, registry: CollectorRegistry) -> None:
        self.monitor = monitor
        self.registry = registry
        self.events: list[NodeVerdictEvent] = []


@contextlib.asynccontextmanager
async def running(
    config: Config, workers: int, silence_limit: float = 30.0
) -> AsyncIterator[World]:
    """The in-process Monitor (workers 0) or a ShardedMonitor over ``workers`` processes."""
    registry, bus, clock = CollectorRegistry(), EventBus(), SystemClock()
    metrics = MonitorMetrics(registry)
    board = HeartbeatBoard(clock)
    monitor: Monitor | ShardedMonitor
    if workers == 0:
        monitor = Monitor(config, bus=bus, clock=clock, metrics=metrics, board=board)
    else:
        monitor = ShardedMonitor(
            config,
            bus=bus,
            clock=clock,
            metrics=metrics,
            board=board,
            registry=registry,
            workers=workers,
            restart_delay=0.2,
            silence_limit=silence_limit,
        )
    world = World(monitor, registry)

    def sink(event: Any) -> None:
        if isinstance(event, NodeVerdictEvent):
            world.events.append(event)

    bus.add_sink(sink)
    async with monitor:
        yield world


async def settled(world: World, expected: dict[str, Verdict], within: float = 20) -> None:
    async def done() -> bool:
        return dict(world.monitor.verdicts()) == expected

    await poll_until(done, within=within, what=f"verdicts {expected}")


NAMES = [f"n{i}{'t' if i % 2 else ''}" for i in range(8)]  # http and tcp probes alike


async def test_two_workers_judge_as_one_process_does() -> None:
    async with healthy_target() as port:
        config = fleet(port, NAMES, dead={"n2", "n3t"})
        assert {shard_of(n, 2) for n in NAMES} == {0, 1}, "both workers get nodes"
        expected = {n: Verdict.DOWN if n in ("n2", "n3t") else Verdict.UP for n in NAMES}
        async with running(config, 0) as single, running(config, 2) as sharded:
            await settled(single, expected)
            await settled(sharded, expected)
            assert sharded.monitor.node_names() == single.monitor.node_names() == NAMES
            downs = sorted(e.subject for e in sharded.events if e.new is Verdict.DOWN)
            assert downs == ["n2", "n3t"]
            assert all(e.old is Verdict.UNKNOWN for e in sharded.events)

            async def counters() -> bool:  # pushed every 2 s
                status = sharded.monitor.node_status("n3t")
                return status is not None and status["probes"][0]["last"] is not None

            await poll_until(counters, within=10, what="probe counters from the workers")
            one, other = single.monitor.node_status("n3t"), sharded.monitor.node_status("n3t")
            assert one is not None and other is not None
            assert one.keys() == other.keys()
            assert other["verdict"] == "down" and other["site"] == "s"
            assert other["probes"][0]["state"] == "down"
            assert other["probes"][0]["consecutive_failures"] >= 2
            assert other["probes"][0]["last"]["ok"] is False
            assert sharded.monitor.node_status("ghost") is None

            def value(name: str, labels: dict[str, str] | None = None) -> float:
                return sharded.registry.get_sample_value(name, labels or {}) or 0.0

            async def totals() -> bool:  # pushed every second
                failures = {"type": "tcp", "result": "failure"}
                observed = {"type": "http"}
                return bool(
                    value("nodevigil_probe_results_total", failures)
                    and value("nodevigil_probe_duration_by_type_seconds_count", observed)
                )

            await poll_until(totals, within=10, what="the workers' totals in the main registry")
            down = sharded.registry.get_sample_value(
                "nodevigil_node_up", {"node": "n2", "site": "s"}
            )
            assert down == 0
            assert value("nodevigil_probe_success", {"node": "n1t", "probe": "tcp"}) == 1
            assert value("nodevigil_monitor_workers") == 2
            stats = sharded.monitor.stats()
            assert stats["workers"] == 2 and stats["success"] > 0 and stats["failure"] > 0


async def test_a_killed_worker_is_started_again_and_judges_nothing_down() -> None:
    async with healthy_target() as port:
        config = fleet(port, NAMES)
        up = dict.fromkeys(NAMES, Verdict.UP)
        async with running(config, 2) as world:
            monitor = world.monitor
            assert isinstance(monitor, ShardedMonitor)
            await settled(world, up)
            events = len(world.events)
            victim = monitor.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> bool:
                assert dict(monitor.verdicts()) == up, "a worker's death judges no node"
                pids = monitor.worker_pids()
                return monitor.restarts == 1 and len(pids) == 2 and victim not in pids

            await poll_until(restarted, within=20, what="the worker started again")
            # The new worker judges its nodes afresh: they were up, so nothing is published.
            await asyncio.sleep(1.0)
            assert dict(monitor.verdicts()) == up
            assert world.events[events:] == []
            assert world.registry.get_sample_value("nodevigil_monitor_worker_restarts_total") == 1


async def test_a_stalled_worker_judges_nothing_its_own_guard_holds() -> None:
    """A worker's stalls (SIGSTOP, as a blocked loop) make its failures untrusted, as the
    in-process guard does (tests/monitor/test_overload.py): the dead node stays unknown."""
    config = fleet(1, ["dead"], dead={"dead"})
    async with running(config, 1) as world:
        monitor = world.monitor
        assert isinstance(monitor, ShardedMonitor)
        await poll_until(
            lambda: asyncio.sleep(0, bool(monitor.worker_pids())), within=10, what="worker up"
        )
        (pid,) = monitor.worker_pids()
        stalling = True

        async def stall() -> None:
            while stalling:
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(0.15)
                os.kill(pid, signal.SIGCONT)
                await asyncio.sleep(0.05)

        staller = asyncio.create_task(stall())
        try:
            await poll_until(
                lambda: asyncio.sleep(0, monitor.overloaded()), within=10, what="overload seen"
            )
            deadline = asyncio.get_running_loop().time() + 2.0
            while asyncio.get_running_loop().time() < deadline:
                assert monitor.verdicts()["dead"] is Verdict.UNKNOWN
                await asyncio.sleep(0.1)
        finally:
            stalling = False
            await staller
            os.kill(pid, signal.SIGCONT)
        # Once the worker keeps up again, its failures count: the dead node goes down.
        await settled(world, {"dead": Verdict.DOWN})


async def test_a_stuck_worker_is_replaced_and_its_nodes_keep_their_verdict() -> None:
    async with healthy_target() as port:
        config = fleet(port, ["a", "b"])
        up = dict.fromkeys(["a", "b"], Verdict.UP)
        async with running(config, 1, silence_limit=1.5) as world:
            monitor = world.monitor
            assert isinstance(monitor, ShardedMonitor)
            await settled(world, up)
            (stuck,) = monitor.worker_pids()
            os.kill(stuck, signal.SIGSTOP)  # alive, silent: as a worker wedged for good
            try:

                async def replaced() -> bool:
                    assert dict(monitor.verdicts()) == up
                    return monitor.restarts == 1 and monitor.worker_pids() not in ([], [stuck])

                await poll_until(replaced, within=15, what="the stuck worker replaced")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stuck, signal.SIGCONT)
            assert not _alive(stuck)
            await asyncio.sleep(0.5)
            assert dict(monitor.verdicts()) == up


async def test_reload_adds_and_removes_nodes_across_shards() -> None:
    async with healthy_target() as port:
        first = fleet(port, NAMES[:4])
        second = fleet(port, NAMES[2:], dead={"n7t"})
        async with running(first, 2) as world:
            await settled(world, dict.fromkeys(NAMES[:4], Verdict.UP))
            world.monitor.apply_config(second)
            assert world.monitor.node_names() == NAMES[2:]
            assert world.monitor.node_status("n0") is None
            expected = {n: Verdict.DOWN if n == "n7t" else Verdict.UP for n in NAMES[2:]}
            await settled(world, expected)
            labels = {"node": "n0", "site": "s"}
            assert world.registry.get_sample_value("nodevigil_node_up", labels) is None
            assert (
                world.registry.get_sample_value("nodevigil_node_up", {**labels, "node": "n7t"}) == 0
            )


def test_worker_count_follows_the_setting_the_fleet_and_the_clock() -> None:
    small = fleet(1, ["a", "b"])
    assert worker_count(small, SystemClock()) == 1  # unset and few nodes: one process
    two = small.model_copy(update={"monitor": small.monitor.model_copy(update={"workers": 2})})
    assert worker_count(two, SystemClock()) == 2

    class FakeClock(SystemClock):
        pass

    fake: Clock = FakeClock()
    assert worker_count(two, fake) == 1  # workers run on the system clock only


def test_mqtt_nodes_stay_in_the_main_process() -> None:
    config = parse_config(
        {
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {"name": "a", "site": "s", "probes": [{"type": "mqtt"}]},
                {"name": "b", "site": "s", "probes": [{"type": "tcp", "address": "127.0.0.1:1"}]},
            ],
        }
    )
    assert [n.name for n in local_nodes(config)] == ["a"]


def test_worker_histograms_add_up_as_observations_would() -> None:
    registry = CollectorRegistry()
    direct = Histogram("d", "d", buckets=(0.1, 1.0), registry=registry)
    added = Histogram("a", "a", buckets=(0.1, 1.0), registry=registry)
    for value in (0.05, 0.5, 0.7, 3.0):
        direct.observe(value)
    add_to_histogram(added, [1, 2, 1], 4.25)
    for suffix in ("_count", "_sum"):
        assert registry.get_sample_value("a" + suffix) == registry.get_sample_value("d" + suffix)
    for le in ("0.1", "1.0", "+Inf"):
        assert registry.get_sample_value("a_bucket", {"le": le}) == registry.get_sample_value(
            "d_bucket", {"le": le}
        )


async def test_daemon_with_two_workers_drains_a_dead_node(
    tmp_path: Path,
    haproxy: HAProxyInstance,  # noqa: F811 -- the fixture imported above
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(path, haproxy, defaults={"interval": "200ms", "timeout": "150ms"})
    data = yaml.safe_load(path.read_text())
    data["monitor"] = {"workers": 2}
    path.write_text(yaml.safe_dump(data))
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())
    try:
        await poll_until(
            lambda: asyncio.sleep(0, daemon.api_port is not None and daemon.context.ready),
            within=15,
            what="daemon ready",
        )
        assert isinstance(daemon.monitor, ShardedMonitor)
        await poll_until(
            lambda: asyncio.sleep(0, set(daemon.monitor.verdicts().values()) == {Verdict.UP}),
            within=15,
            what="every node up",
        )
        await haproxy.nodes["n2"].stop()

        async def n2_out() -> bool:
            return (await admin_states(haproxy))["n2"] is ServerState.MAINT

        await poll_until(n2_out, within=10, what="n2 in maint")
        states = await admin_states(haproxy)
        assert states["n1"] is ServerState.READY and states["n3"] is ServerState.READY
        pids = daemon.monitor.worker_pids()
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)

    async def workers_gone() -> bool:  # the workers stopped with the daemon
        return not any(_alive(pid) for pid in pids)

    await poll_until(workers_gone, within=5, what="the workers gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
