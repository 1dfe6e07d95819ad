"""The monitor's shared timer heap: due order, cancellation, reuse, and an injected clock."""

from __future__ import annotations

import asyncio

from monitor.timers import GRANULARITY, Timers, clock_timers, loop_timers
from nodevigil.core.clock import ManualClock, SystemClock


async def test_callbacks_run_in_due_order_and_cancelled_ones_never() -> None:
    timers = Timers(asyncio.get_running_loop().time, asyncio.get_running_loop().call_at)
    now = asyncio.get_running_loop().time()
    ran: list[str] = []
    done = asyncio.Event()
    timers.call_at(now + 0.06, lambda: ran.append("c") or done.set())
    timers.call_at(now + 0.02, lambda: ran.append("a"))
    cancelled = timers.call_at(now + 0.03, lambda: ran.append("never"))
    timers.call_at(now + 0.04, lambda: ran.append("b"))
    Timers.cancel(cancelled)
    async with asyncio.timeout(5):
        await done.wait()
    assert ran == ["a", "b", "c"]
    assert asyncio.get_running_loop().time() >= now + 0.06 - GRANULARITY
    assert len(timers) == 0


async def test_an_earlier_timer_rearms_and_an_entry_is_reused() -> None:
    loop = asyncio.get_running_loop()
    timers = Timers(loop.time, loop.call_at)
    fired: list[float] = []
    entry = timers.call_at(loop.time() + 10, lambda: fired.append(loop.time()))
    soon = asyncio.Event()
    timers.call_at(loop.time() + 0.01, soon.set)  # earlier than the armed 10 s
    async with asyncio.timeout(5):
        await soon.wait()
    Timers.cancel(entry)  # the 10 s one never fires
    entry = timers.call_at(loop.time() + 0.01, lambda: fired.append(loop.time()))
    await asyncio.sleep(0.05)
    assert len(fired) == 1
    timers.reschedule(entry, loop.time() + 0.01)  # a probe's entry goes back in after firing
    await asyncio.sleep(0.05)
    assert len(fired) == 2
    timers.close()


async def test_a_fake_clock_drives_its_timers() -> None:
    clock = ManualClock()
    timers = clock_timers(clock)
    woke = []

    async def sleeper() -> None:
        await timers.sleep_until(clock.monotonic() + 3600)
        woke.append(clock.monotonic())

    start = clock.monotonic()
    async with asyncio.timeout(5):
        await sleeper()  # an hour of fake time passes at once
    assert woke and woke[0] >= start + 3600 - GRANULARITY
    timers.close()
    assert clock_timers(SystemClock()) is loop_timers()  # the system clock is the loop's
