"""The state directory's health: the ``alive`` mark, written every second, doubles as a probe.

A full or read-only disk does not stop failover (the controller keeps acting on the load
balancers; every store keeps what it could not write and retries), but an operator must know:
the first failed write publishes ``state.error`` and sets ``nodevigil_state_writable`` to 0,
and the first good write after it publishes ``state.recovered``. Events published meanwhile
wait in memory and reach the event log once the disk takes writes again.

The mark itself is written whole or not at all (a temporary file, fsync, rename), so the next
start reads the last time nodevigil was known to run and records the gap as ``unknown``. The
mark says whether the process stopped cleanly (the last one, written on a requested stop): after
a crash the gap is ``unknown`` however short, so a crash loop cannot hide an outage.

Each mark also compares the real wall clock with the process's timeline
(``nodevigil.core.clock``): a step is logged and published once (``clock.stepped``) and shown
as ``nodevigil_clock_offset_seconds``; it changes no duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from nodevigil.core.clock import Clock, SteppableClock
from nodevigil.core.events import (
    ClockStepped,
    EventBus,
    StateWritesFailed,
    StateWritesRecovered,
)

log = logging.getLogger(__name__)

ALIVE_EVERY = 1.0  # seconds between marks; the unknown-time threshold is a few of these
REMIND_EVERY = 300.0  # while the disk stays unwritable, the log says so again this often
STEP_REPORTED = 1.0  # a change of the wall clock's offset from the timeline worth reporting
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a reader sees the old content or the new, never a part.

    On failure the temporary file is removed, so a full disk is not filled further.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def boot_id() -> str:
    """This boot of the machine (the monotonic clock is comparable only within one)."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class AliveMark:
    """The last sign of life of a nodevigil process in a state directory."""

    wall: float  # on that process's timeline
    clean: bool  # written on a requested stop, after everything else had stopped
    monotonic: float | None = None  # the machine's monotonic clock then (same boot only)
    boot: str = ""
    pid: int = 0

    def to_text(self) -> str:
        """The file's content."""
        return json.dumps(
            {"wall": self.wall, "clean": self.clean, "monotonic": self.monotonic,
             "boot": self.boot, "pid": self.pid}
        )  # fmt: skip

    @classmethod
    def parse(cls, text: str) -> AliveMark:
        """Read a mark; the old format (a bare wall time) was always rewritten on a stop."""
        try:
            return cls(float(text), clean=True)
        except ValueError:
            pass
        data = json.loads(text)
        mono = data.get("monotonic")
        return cls(
            float(data["wall"]),
            clean=bool(data["clean"]),
            monotonic=None if mono is None else float(mono),
            boot=str(data.get("boot") or ""),
            pid=int(data.get("pid") or 0),
        )

    def elapsed(self, monotonic: float, boot: str) -> float | None:
        """Seconds since the mark on the monotonic clock, when it is comparable (same boot)."""
        if self.monotonic is None or not boot or boot != self.boot:
            return None
        return max(0.0, monotonic - self.monotonic)


def read_alive(state_dir: Path) -> AliveMark | None:
    """When nodevigil last marked itself alive in ``state_dir``, if it ever did."""
    try:
        return AliveMark.parse((state_dir / "alive").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StateDirWatch:
    """Writes the ``alive`` mark every second and reports when the state directory fails."""

    def __init__(
        self,
        state_dir: Path,
        *,
        bus: EventBus,
        clock: Clock,
        registry: CollectorRegistry,
        vantage: str,
        every: float = ALIVE_EVERY,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.path = state_dir / "alive"
        # Whether a stop was requested: only then is the last mark a clean one.
        self._stopping = stopping
        self._boot = boot_id()
        self._reported_offset = 0.0
        self._bus = bus
        self._clock = clock
        self._vantage = vantage
        self._every = every
        self.failing: str | None = None  # the error of the current streak of failed writes
        self._failing_since = 0.0
        self._reminded_at = 0.0
        self._writing: asyncio.Future[None] | None = None  # the periodic mark being written
        self.writable = Gauge(
            "nodevigil_state_writable",
            "1 while the state directory takes writes, 0 while it is full or read-only.",
            registry=registry,
        )
        self.writable.set(1)
        self.errors = Counter(
            "nodevigil_state_write_errors",
            "Failed writes of the liveness mark to the state directory.",
            registry=registry,
        )
        self.clock_offset = Gauge(
            "nodevigil_clock_offset_seconds",
            "The real wall clock minus nodevigil's timeline (monotonic time anchored at start); "
            "non-zero after the wall clock stepped. Durations are not affected.",
            registry=registry,
        )

    def _mark(self, *, clean: bool) -> str:
        return AliveMark(
            self._clock.wall(), clean, self._clock.monotonic(), self._boot, os.getpid()
        ).to_text()

    async def mark(self) -> bool:
        """Write the mark once; report a change of health. Whether the write succeeded."""
        self._check_step()
        # Shielded and remembered: a cancel must not leave this write running in its thread
        # behind the last, clean mark of ``run`` (it would land after it and undo it).
        writing = asyncio.ensure_future(
            asyncio.to_thread(write_atomic, self.path, self._mark(clean=False))
        )
        self._writing = writing
        try:
            await asyncio.shield(writing)
        except OSError as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def run(self) -> None:
        """Mark every second until cancelled; mark once more on the way out."""
        try:
            while True:
                await self.mark()
                await self._clock.sleep(self._every)
        finally:
            writing = self._writing
            if writing is not None and not writing.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await writing  # the periodic mark in flight lands first, not after
            # A stop leaves an exact mark, so a restart's gap is measured from here; only a
            # requested stop is clean (a task that crashed the process cancels this one too).
            with contextlib.suppress(OSError):
                write_atomic(self.path, self._mark(clean=self._stopping()))

    def _check_step(self) -> None:
        """Report once when the real wall clock parts from the timeline (or comes back)."""
        if not isinstance(self._clock, SteppableClock):
            return
        offset = self._clock.offset()
        self.clock_offset.set(round(offset, 3))
        if abs(offset - self._reported_offset) < STEP_REPORTED:
            return
        step, self._reported_offset = offset - self._reported_offset, offset
        log.warning(
            "the wall clock stepped %+.1fs (now %+.1fs from nodevigil's timeline): records and "
            "durations keep the monotonic timeline until the next start",
            step,
            offset,
        )
        self._bus.publish(
            ClockStepped(
                subject="clock",
                at=self._clock.wall(),
                vantage=self._vantage,
                step=round(step, 3),
                offset=round(offset, 3),
            )
        )

    def _failed(self, exc: OSError) -> None:
        self.errors.inc()
        error = exc.strerror or str(exc)
        now = self._clock.monotonic()
        if self.failing is None:
            self.failing, self._failing_since, self._reminded_at = error, now, now
            self.writable.set(0)
            log.error(
                "state_dir %s does not take writes (%s): failover goes on; events, incidents "
                "and ledger changes wait in memory and are retried",
                self.path.parent,
                error,
            )
            self._bus.publish(
                StateWritesFailed(
                    subject="state_dir",
                    at=self._clock.wall(),
                    vantage=self._vantage,
                    path=str(self.path.parent),
                    error=error,
                )
            )
        elif now - self._reminded_at >= REMIND_EVERY:
            self._reminded_at = now
            log.error(
                "state_dir %s still does not take writes (%s) after %.0fs",
                self.path.parent,
                error,
                now - self._failing_since,
            )

    def _succeeded(self) -> None:
        if self.failing is None:
            return
        seconds = self._clock.monotonic() - self._failing_since
        log.warning("state_dir %s takes writes again after %.0fs", self.path.parent, seconds)
        self._bus.publish(
            StateWritesRecovered(
                subject="state_dir",
                at=self._clock.wall(),
                vantage=self._vantage,
                path=str(self.path.parent),
                error=self.failing,
                seconds=round(seconds, 3),
            )
        )
        self.failing = None
        self.writable.set(1)
