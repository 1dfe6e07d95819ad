"""The state directory's health: the ``alive`` mark, written every second, doubles as a probe.

A full or read-only disk does not stop failover (the controller keeps acting on the load
balancers; every store keeps what it could not write and retries), but an operator must know:
the first failed write publishes ``state.error`` and sets ``nodevigil_state_writable`` to 0,
and the first good write after it publishes ``state.recovered``. Events published meanwhile
wait in memory and reach the event log once the disk takes writes again.

The mark itself is written whole or not at all (a temporary file, fsync, rename), so the next
start reads the last time nodevigil was known to run and records the gap as ``unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from nodevigil.clock import Clock
from nodevigil.events import Event, EventBus

log = logging.getLogger(__name__)

ALIVE_EVERY = 1.0  # seconds between marks; the unknown-time threshold is a few of these
REMIND_EVERY = 300.0  # while the disk stays unwritable, the log says so again this often


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


def read_alive(state_dir: Path) -> float | None:
    """When nodevigil last marked itself alive in ``state_dir`` (wall time), if it ever did."""
    try:
        return float((state_dir / "alive").read_text(encoding="utf-8"))
    except (OSError, ValueError):
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
    ) -> None:
        self.path = state_dir / "alive"
        self._bus = bus
        self._clock = clock
        self._vantage = vantage
        self._every = every
        self.failing: str | None = None  # the error of the current streak of failed writes
        self._failing_since = 0.0
        self._reminded_at = 0.0
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

    async def mark(self) -> bool:
        """Write the mark once; report a change of health. Whether the write succeeded."""
        wall = self._clock.wall()
        try:
            await asyncio.to_thread(write_atomic, self.path, repr(wall))
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
            # A clean stop leaves an exact mark, so a restart's gap is measured from here.
            with contextlib.suppress(OSError):
                write_atomic(self.path, repr(self._clock.wall()))

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
            self._publish("state.error", {"path": str(self.path.parent), "error": error})
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
        self._publish(
            "state.recovered",
            {"path": str(self.path.parent), "error": self.failing, "seconds": round(seconds, 3)},
        )
        self.failing = None
        self.writable.set(1)

    def _publish(self, kind: str, data: dict[str, object]) -> None:
        self._bus.publish(Event(kind, "state_dir", self._clock.wall(), self._vantage, data))
