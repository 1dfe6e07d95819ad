"""The timeline clock, the clean-stop mark and the report of a wall-clock step."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from prometheus_client import CollectorRegistry

from nodevigil.core.clock import ManualClock, SystemClock, Timeline
from nodevigil.core.events import EventBus
from nodevigil.state.statedir import AliveMark, StateDirWatch, read_alive


def test_the_timeline_moves_with_the_monotonic_clock_only() -> None:
    raw = ManualClock()
    timeline = Timeline(raw)
    start = timeline.wall()
    raw.step_wall(3600)
    raw.advance(10)
    assert timeline.wall() == start + 10
    assert timeline.offset() == 3600
    system = SystemClock()
    assert abs(system.offset()) < 1.0  # nobody stepped the test machine's clock


def test_the_alive_mark_reads_old_and_new_forms() -> None:
    assert AliveMark.parse("1767225600.5") == AliveMark(1767225600.5, clean=True)
    mark = AliveMark(1767225600.5, False, 12.0, "boot-1", 42)
    assert AliveMark.parse(mark.to_text()) == mark
    assert mark.elapsed(20.0, "boot-1") == 8.0
    assert mark.elapsed(20.0, "boot-2") is None  # another boot: monotonic clocks differ


async def test_a_step_is_reported_once_and_only_a_requested_stop_is_clean(tmp_path: Path) -> None:
    raw = ManualClock()
    clock = Timeline(raw)
    bus = EventBus()
    sub = bus.subscribe(["clock."])
    stopping = False
    registry = CollectorRegistry()
    watch = StateDirWatch(
        tmp_path,
        bus=bus,
        clock=clock,
        registry=registry,
        vantage="test",
        stopping=lambda: stopping,
    )
    await watch.mark()
    raw.step_wall(-3600)
    await watch.mark()
    await watch.mark()  # the same offset: not reported again
    [event] = sub.drain()
    assert (event.kind, event.offset) == ("clock.stepped", -3600.0)
    assert registry.get_sample_value("nodevigil_clock_offset_seconds") == -3600.0
    mark = read_alive(tmp_path)
    assert mark is not None and not mark.clean and mark.wall == clock.wall()

    for requested in (False, True):
        stopping = requested
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        mark = read_alive(tmp_path)
        assert mark is not None and mark.clean is requested
