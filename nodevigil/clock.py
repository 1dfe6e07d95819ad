"""Time, injected: timing runs on the monotonic clock, wall time is only for records."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """What nodevigil asks of time; tests pass a fake to control it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (for intervals, timeouts and hold-downs)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (for records, events and the ledger)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of monotonic time."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: for tests of pure logic."""

    def __init__(self, start: float = 1_000_000.0, wall_offset: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall_offset - start

    def monotonic(self) -> float:
        """The current fake monotonic time."""
        return self._now

    def wall(self) -> float:
        """The current fake wall time (monotonic plus a fixed offset unless stepped)."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds

    def step_wall(self, seconds: float) -> None:
        """Step only the wall clock (as NTP or an operator might), not the monotonic one."""
        self._wall_offset += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance instantly and yield once to the loop."""
        self._now += max(seconds, 0.0)
        await asyncio.sleep(0)
