"""The lag watch's arithmetic: late time over a probe's run, and the pending tick's lateness."""

from __future__ import annotations

import asyncio
import time

from monitor.looplag import LagWatch


class _Now:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_late_time_sums_over_a_probes_run_and_only_within_it() -> None:
    now = _Now()
    watch = LagWatch(now, period=0.05)
    # A loop 0.2 s late on every tick: each sample woke at ``at``, busy over [at - 0.2, at].
    for at in (100.25, 100.5, 100.75, 101.0):
        now.t = at
        watch.note(at, 0.2)
    # A probe that ran from 100.4 to 101.0 overlaps 0.1 + 0.2 + 0.2 of that late time...
    assert abs(watch.late_during(100.4) - 0.5) < 1e-9
    # ...though no single tick was late by more than 0.2.
    assert watch.worst_within(2.0) == 0.2
    # Lateness under the floor is jitter, not late time.
    now.t = 101.05
    watch.note(101.05, 0.01)
    assert abs(watch.late_during(101.0)) < 1e-9


def test_forgets_what_is_older_than_it_keeps() -> None:
    now = _Now()
    watch = LagWatch(now, period=0.05, keep=2.0)
    watch.note(100.0, 0.5)
    now.t = 103.0
    watch.note(103.0, 0.0)
    assert watch.worst_within(10.0) == 0.0
    assert watch.late_during(90.0) == 0.0
    assert watch.take() == [0.5, 0.0]
    assert watch.take() == []


async def test_a_stall_is_seen_before_the_tick_that_measures_it_has_run() -> None:
    """A probe judged in the loop turn that ends a stall runs before the ticker's wake-up."""
    watch = LagWatch(time.monotonic, period=0.05)
    ticker = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.01)  # the ticker is waiting on its next tick
        time.sleep(0.3)  # noqa: ASYNC251 -- the stall, seen at once after it
        assert watch.late_now() > 0.2
        assert watch.worst_within(2.0) > 0.2
        assert watch.late_during(time.monotonic() - 1.0) > 0.2
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
