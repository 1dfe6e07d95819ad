"""Many timers on one: probe schedules and hedge timers for 10,000 probes a second.

asyncio keeps its timers in a heap of ``TimerHandle`` objects compared by a Python ``__lt__``:
at 10,000 probes a second (two timers each) that comparison alone cost about a tenth of the
monitor's CPU. Here the heap holds plain lists ``[when, seq, callback]``, compared in C, and
only the earliest is an asyncio timer. Callbacks due within GRANULARITY of each other run
together, in due order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from nodevigil.core.clock import Clock, SystemClock

GRANULARITY = 0.001  # a millisecond early is within any event loop's own jitter

Entry = list[Any]  # [when, seq, callback or None when cancelled]


class _Cancellable(Protocol):
    def cancel(self) -> Any: ...


class Timers:
    """A heap of callbacks behind one underlying timer (``arm``), on the time of ``now``."""

    def __init__(
        self,
        now: Callable[[], float],
        arm: Callable[[float, Callable[[], None]], _Cancellable],
    ) -> None:
        self._now = now
        self._arm = arm
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self._armed: _Cancellable | None = None
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> Entry:
        """Run ``callback`` at ``when``; ``cancel(entry)`` stops it."""
        entry: Entry = [when, next(self._seq), callback]
        heapq.heappush(self._heap, entry)
        if when < self._armed_at - GRANULARITY:
            self._rearm(when)
        return entry

    def reschedule(self, entry: Entry, when: float) -> None:
        """Put a fired entry back for ``when``: a probe reuses one entry for every round."""
        entry[0], entry[1] = when, next(self._seq)
        heapq.heappush(self._heap, entry)
        if when < self._armed_at - GRANULARITY:
            self._rearm(when)

    @staticmethod
    def cancel(entry: Entry) -> None:
        """Forget a callback (its entry leaves the heap when it falls due)."""
        entry[2] = None

    async def sleep_until(self, when: float) -> None:
        """Wait until ``when``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self.call_at(when, lambda: _wake(waiter))
        try:
            await waiter
        finally:
            entry[2] = None

    def close(self) -> None:
        """Drop every timer."""
        if self._armed is not None:
            self._armed.cancel()
        self._armed, self._armed_at = None, float("inf")
        self._heap.clear()

    def _rearm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = when
        self._armed = self._arm(when, self._fire)

    def _fire(self) -> None:
        self._armed, self._armed_at = None, float("inf")
        heap = self._heap
        end = self._now() + GRANULARITY
        while heap and heap[0][0] <= end:
            callback = heapq.heappop(heap)[2]
            if callback is not None:
                callback()
        while heap and heap[0][2] is None:  # cancelled ones need no wake-up of their own
            heapq.heappop(heap)
        if heap and self._armed is None:
            self._rearm(heap[0][0])


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_LOOP_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Timers] = (
    weakref.WeakKeyDictionary()
)


def loop_timers() -> Timers:
    """The running loop's shared Timers, on the loop's own clock (for hedge timers)."""
    loop = asyncio.get_running_loop()
    timers = _LOOP_TIMERS.get(loop)
    if timers is None:
        timers = _LOOP_TIMERS[loop] = Timers(loop.time, loop.call_at)
    return timers


def clock_timers(clock: Clock) -> Timers:
    """Timers on an injected clock: the one underlying timer is a ``clock.sleep`` task, so a
    test's fake clock drives them as it drives everything else. The system clock is the
    loop's own clock: it shares ``loop_timers``."""
    if type(clock) is SystemClock:
        return loop_timers()

    def arm(when: float, fire: Callable[[], None]) -> asyncio.Task[None]:
        async def wait() -> None:
            await clock.sleep(max(when - clock.monotonic(), 0.0))
            fire()

        return asyncio.get_running_loop().create_task(wait(), name="monitor-timers")

    return Timers(clock.monotonic, arm)
