"""How late the event loop is: the overload guard's eyes, in the monitor and in each worker.

A ticker sleeps ``period`` and notes how late it woke. Two things make that alone blind to a
loop overloaded for good rather than stalled once (bench/load_bench.py ``--hog``):

- A probe whose deadline fires in the same late loop turn as the ticker's wake-up is judged
  before the ticker runs, so a sample noted afterwards never counts against it. The lateness
  of the pending tick (``late_now``) is read at judgement time instead.
- A loop that is a few hundred milliseconds late on every turn never has one sample over the
  guard's threshold, yet most of a probe's time is spent queued behind other work. What counts
  for a probe is the late time summed over its own run (``late_during``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

SAMPLE_FLOOR = 0.025  # lateness below this is jitter: not kept for the guard
KEEP = 60.0  # seconds of samples kept: the overload hold, and the longest probe's run
TAKE_LIMIT = 10_000  # samples kept for take() when nobody takes them


class LagWatch:
    """A ticker on the loop that keeps how late it woke, on the ``now`` clock (monotonic)."""

    def __init__(
        self, now: Callable[[], float], *, period: float = 0.05, keep: float = KEEP
    ) -> None:
        self._now = now
        self.period = period
        self._keep = keep
        self._due: float | None = None  # when the pending tick should wake
        # (woke at, lateness), lateness over SAMPLE_FLOOR, within ``keep``.
        self._samples: deque[tuple[float, float]] = deque()
        self._taken: list[float] = []  # every lateness, for take() (benchmarks read them)
        self.on_sample: Callable[[float], None] | None = None

    async def run(self) -> None:
        """Tick forever."""
        while True:
            self._due = self._now() + self.period
            await asyncio.sleep(self.period)
            woke = self._now()
            lag, self._due = max(woke - self._due, 0.0), None
            self.note(woke, lag)

    def note(self, at: float, lag: float) -> None:
        """Keep one sample (the ticker calls this)."""
        if lag > SAMPLE_FLOOR:
            self._samples.append((at, lag))
        self._forget(at)
        if len(self._taken) < TAKE_LIMIT:
            self._taken.append(lag)
        if self.on_sample is not None:
            self.on_sample(lag)

    def late_now(self) -> float:
        """How late the pending tick is at this moment (0 when it is not due yet)."""
        if self._due is None:
            return 0.0
        return max(self._now() - self._due, 0.0)

    def worst_within(self, hold: float) -> float:
        """The longest lateness seen in the last ``hold`` seconds, the pending tick's included."""
        horizon = self._now() - hold
        worst = self.late_now()
        for at, lag in reversed(self._samples):
            if at < horizon:
                break
            worst = max(worst, lag)
        return worst

    def late_during(self, since: float) -> float:
        """The loop's late time that overlaps ``[since, now]``, the pending tick's included.

        A sample that woke at ``at``, ``lag`` late, means the loop was busy elsewhere over
        ``[at - lag, at]``.
        """
        now = self._now()
        total = 0.0
        if self._due is not None and now > self._due:
            total += now - max(self._due, since)
        for at, lag in reversed(self._samples):
            if at <= since:
                break
            total += at - max(at - lag, since)
        return total

    def take(self) -> list[float]:
        """Every lateness since the last take (seconds)."""
        taken, self._taken = self._taken, []
        return taken

    def _forget(self, now: float) -> None:
        horizon = now - self._keep
        samples = self._samples
        while samples and samples[0][0] < horizon:
            samples.popleft()
