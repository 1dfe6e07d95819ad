"""Time, injected: timing runs on the monotonic clock, wall time is only for records.

Wall time is a *timeline*: the real wall clock is read once when the process starts, and every
wall time after that is that reading plus the monotonic time elapsed since. Durations (ledger
intervals, incident lengths, notification ages and due times) are then differences on a clock
that never steps: an NTP correction or an operator's ``date -s`` cannot add an hour to an
outage or take it away. A step of the real wall clock away from the timeline is measured
(``offset()``) and reported once (``clock.stepped``, see ``nodevigil.state.statedir``); the next
process anchors its timeline on the stepped clock, and the time between the two processes is
``unknown`` in the ledger anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


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


@runtime_checkable
class SteppableClock(Protocol):
    """A clock whose ``wall()`` is a timeline that can part from the real wall clock."""

    def offset(self) -> float:
        """The real wall clock minus the timeline, in seconds (0 until the clock steps)."""
        ...


class _Anchor:
    """One reading of both clocks: wall time at a known monotonic instant."""

    __slots__ = ("mono", "wall")

    def __init__(self, wall: float, mono: float) -> None:
        self.wall = wall
        self.mono = mono

    def at(self, mono: float) -> float:
        return self.wall + (mono - self.mono)


# Process-wide: every SystemClock in the process shares one timeline, read at import.
_PROCESS = _Anchor(time.time(), time.monotonic())


class SystemClock:
    """The real clocks; ``wall()`` is the process's timeline (see the module's docstring)."""

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch on the timeline: the start's reading plus monotonic time."""
        return _PROCESS.at(time.monotonic())

    def system_wall(self) -> float:
        """The real wall clock as it is now (stepped or not): only to measure a step."""
        return time.time()

    def offset(self) -> float:
        """The real wall clock minus the timeline."""
        mono = time.monotonic()
        return time.time() - _PROCESS.at(mono)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(seconds)


class Timeline:
    """Any clock's wall time carried by its monotonic clock from one reading.

    For a component that compares times across a long wait (the outbox's due times and ages)
    with a clock handed to it: whatever that clock's ``wall()`` does later, this one moves only
    with its ``monotonic()``. Over the SystemClock it reads exactly the same times.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._anchor = _Anchor(clock.wall(), clock.monotonic())

    def monotonic(self) -> float:
        """The underlying monotonic clock."""
        return self._clock.monotonic()

    def wall(self) -> float:
        """The anchored wall time."""
        return self._anchor.at(self._clock.monotonic())

    def offset(self) -> float:
        """The underlying clock's wall time minus this timeline."""
        return self._clock.wall() - self.wall()

    async def sleep(self, seconds: float) -> None:
        """The underlying clock's sleep."""
        await self._clock.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: for tests of pure logic."""

    def __init__(self, start: float = 1_000_000.0, wall_offset: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall_offset - start

    def monotonic(self) -> float:
        """The current fake monotonic time."""
        return self._now

    def wall(self) -> float:
        """The current fake wall time (monotonic plus a fixed offset unless stepped).

        Unlike the SystemClock this is a raw wall clock: ``step_wall`` moves it, so tests can
        check that a component does not trust it across a step.
        """
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
