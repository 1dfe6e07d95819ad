"""When the probes of a new fleet run first: at their own phases, at the pace connections open.

A first round opens a connection; 10,000 of them in the first second stalled the loop at start
and the rounds it shed opened more. The monitor spreads a large batch's first rounds over
``nodes / FIRST_ROUNDS_PER_SECOND`` seconds, each at its probe's own phase within an interval,
and a first round that comes due late (a busy start) takes a fresh phase instead of running in
a bunch with the others.
"""

from __future__ import annotations

import random
from collections import Counter

from prometheus_client import CollectorRegistry

from monitor.heartbeat import HeartbeatBoard
from monitor.metrics import MonitorMetrics
from monitor.monitor import FIRST_ROUNDS_PER_SECOND, Monitor
from nodevigil.core.clock import ManualClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.events import EventBus


def _fleet(nodes: int) -> Config:
    return parse_config(
        {
            "defaults": {"interval": "1s"},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {
                    "name": f"n{i}",
                    "site": "s",
                    "probes": [{"type": "tcp", "address": "127.0.0.1:9"}],
                }
                for i in range(nodes)
            ],
        }
    )


def _monitor(config: Config, clock: ManualClock) -> Monitor:
    return Monitor(
        config,
        bus=EventBus(),
        clock=clock,
        metrics=MonitorMetrics(CollectorRegistry()),
        board=HeartbeatBoard(clock),
        rng=random.Random(16),
    )


async def test_a_large_fleets_first_rounds_spread_at_their_own_phases() -> None:
    nodes = 3 * FIRST_ROUNDS_PER_SECOND
    clock = ManualClock()
    start = clock.monotonic()
    async with _monitor(_fleet(nodes), clock) as monitor:
        # Read before the loop turns: no timer has fired yet.
        firsts = [s.next_at - start for w in monitor._watched.values() for s in w.schedules]
    assert len(firsts) == nodes and all(0 <= t < 3 for t in firsts)
    per_second = Counter(int(t) for t in firsts)
    assert all(abs(per_second[k] - nodes / 3) < nodes / 10 for k in range(3)), per_second
    # Each probe's phase within its interval is its own: uniform over the whole second.
    tenths = Counter(int((t % 1) * 10) for t in firsts)
    assert all(abs(tenths[k] - nodes / 10) < nodes / 30 for k in range(10)), tenths


async def test_a_small_fleet_starts_within_one_interval() -> None:
    clock = ManualClock()
    start = clock.monotonic()
    async with _monitor(_fleet(50), clock) as monitor:
        firsts = [s.next_at - start for w in monitor._watched.values() for s in w.schedules]
    assert all(0 <= t < 1 for t in firsts)


async def test_a_late_first_round_takes_a_fresh_phase_and_a_timely_one_runs() -> None:
    clock = ManualClock()
    async with _monitor(_fleet(2), clock) as monitor:
        late, timely = (w.schedules[0] for w in monitor._watched.values())
        clock.advance(5.0)  # the loop was busy starting: both are long overdue
        timely.next_at = clock.monotonic()  # as if this one were due just now
        monitor._first_due(late)
        monitor._first_due(timely)
        assert late.task is None  # not run in the bunch...
        assert clock.monotonic() <= late.next_at < clock.monotonic() + 1  # ...but soon
        assert timely.task is not None  # on time: its round runs
        assert late.entry is not None and late.entry[2].func == monitor._due  # later rounds
        timely.task.cancel()
