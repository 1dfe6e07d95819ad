"""The monitor's own trouble never judges a node: failures during a stalled loop count nothing."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from monitor.heartbeat import HeartbeatBoard
from monitor.metrics import MonitorMetrics
from monitor.monitor import Monitor
from monitor.verdicts import Verdict
from nodevigil.core.clock import SystemClock
from nodevigil.core.config import parse_config
from nodevigil.core.events import EventBus
from tests.failover.daemons import free_port, poll_until


async def test_failures_during_a_stalled_loop_judge_nothing() -> None:
    config = parse_config(
        {
            "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 2},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {
                    "name": "dead",
                    "site": "s",
                    "probes": [{"type": "tcp", "address": f"127.0.0.1:{free_port()}"}],
                }
            ],
        }
    )
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    clock = SystemClock()
    stalling = True

    async def stall() -> None:
        while stalling:
            time.sleep(0.15)  # noqa: ASYNC251 -- blocking the loop on purpose, as overload does
            await asyncio.sleep(0.05)

    async with Monitor(
        config, bus=EventBus(), clock=clock, metrics=metrics, board=HeartbeatBoard(clock)
    ) as monitor:
        staller = asyncio.create_task(stall())
        try:
            await poll_until(
                lambda: asyncio.sleep(0, monitor.overloaded()), within=5, what="overload seen"
            )
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert monitor.verdicts()["dead"] is Verdict.UNKNOWN
                await asyncio.sleep(0.1)
            assert registry.get_sample_value("nodevigil_monitor_overloaded") == 1
            inconclusive = registry.get_sample_value(
                "nodevigil_probe_results_total",
                {"type": "tcp", "result": "inconclusive"},
            )
            skipped = registry.get_sample_value("nodevigil_probes_skipped_total")
            # Each stalled round was either run and not trusted, or shed for being late
            # (which one depends on how late the loop is on a busy machine).
            assert (inconclusive or 0) + (skipped or 0) > 0
        finally:
            stalling = False
            await staller
        # Once the loop is healthy again, the dead node is judged as it should be.
        await poll_until(
            lambda: asyncio.sleep(0, monitor.verdicts()["dead"] is Verdict.DOWN),
            within=10,
            what="dead node judged down after the overload",
        )


async def test_a_stall_short_against_the_probe_timeout_does_not_blind_the_monitor() -> None:
    """A 10,000-node fleet's decision cycles stall the loop ~0.1 s every second: a dead node
    probed with a 900 ms timeout must still be judged down through such stalls."""
    config = parse_config(
        {
            "defaults": {"interval": "1s", "timeout": "900ms", "rise": 1, "fall": 2},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {
                    "name": "dead",
                    "site": "s",
                    "probes": [{"type": "tcp", "address": f"127.0.0.1:{free_port()}"}],
                }
            ],
        }
    )
    clock = SystemClock()
    stalling = True

    async def stall() -> None:
        while stalling:
            time.sleep(0.15)  # noqa: ASYNC251 -- a decision cycle's worth of blocking
            await asyncio.sleep(0.35)

    async with Monitor(
        config,
        bus=EventBus(),
        clock=clock,
        metrics=MonitorMetrics(CollectorRegistry()),
        board=HeartbeatBoard(clock),
    ) as monitor:
        staller = asyncio.create_task(stall())
        try:
            await poll_until(
                lambda: asyncio.sleep(0, monitor.verdicts()["dead"] is Verdict.DOWN),
                within=10,
                what="dead node judged down through short stalls",
            )
            assert monitor.overloaded()  # the loop is late (the gauge says so) all the same
        finally:
            stalling = False
            await staller
