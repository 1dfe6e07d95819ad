"""PostgreSQL's health as the daemon sees it: a short query through the shared pool every second.

A database that stops answering (stopped, restarting, paused, partitioned) does not stop
failover: the controller keeps acting on the load balancers and retries its bookkeeping each
cycle, events wait in memory, the outbox and the ledger retry. But an operator must know, once:
the first failed check publishes ``state.error`` (subject ``database``, the URL without any
password as ``path``), sets ``nodevigil_database_up{backend="postgres"}`` to 0 and makes
``/readyz`` answer 503; the first good check after it publishes ``state.recovered`` with the
seconds the database was away, and the gauge and ``/readyz`` come back.

The gauge exists on SQLite too (``database_up_gauge``), always 1 with ``backend="sqlite"``: the
files are local, and a full or read-only disk is ``nodevigil_state_writable``'s. So one alert
rule serves both backends and never fires on a single host.

This module imports no database library: a SQLite process may import it for the gauge.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge

from nodevigil.core.clock import Clock
from nodevigil.core.events import EventBus, StateWritesFailed, StateWritesRecovered

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between checks
CHECK_TIMEOUT = 2.0  # a check that takes longer is a failure (a paused or partitioned server)
GIVE_UP_AFTER = 30.0  # an unanswered probe is replaced by a new one (a new connection) then
REMIND_EVERY = 300.0  # while the database stays away, the log says so again this often


def database_up_gauge(registry: CollectorRegistry, backend: str) -> Gauge:
    """``nodevigil_database_up{backend}``, set to 1: the watch (PostgreSQL) moves it."""
    gauge = Gauge(
        "nodevigil_database_up",
        "1 while the state database answers, 0 while it does not (PostgreSQL: a query through "
        "the pool every second; SQLite: always 1, see nodevigil_state_writable).",
        ["backend"],
        registry=registry,
    )
    gauge.labels(backend).set(1)
    return gauge


def redacted(url: str) -> str:
    """The URL without a password, in its user part or its parameters (none belongs there)."""
    url = re.sub(r"(?<=://)([^:@/]*):[^@/]*@", r"\1@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


class DatabaseWatch:
    """Checks the pool every second; reports when PostgreSQL stops and starts answering."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        url: str,
        bus: EventBus,
        clock: Clock,
        gauge: Gauge,
        vantage: str,
        every: float = CHECK_EVERY,
        timeout: float = CHECK_TIMEOUT,
        on_change: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._pool = pool
        self.url = redacted(url)
        self._bus = bus
        self._clock = clock
        self._up = gauge.labels("postgres")
        self._up.set(1)
        self._on_change = on_change  # the backend's stores fail fast while it is away
        self._vantage = vantage
        self._every = every
        self._timeout = timeout
        self.failing: str | None = None  # the error of the current streak of failed checks
        self._probe: asyncio.Task[None] | None = None  # the query in flight, maybe unanswered
        self._probe_since = 0.0
        self._answered_at = clock.monotonic()  # the last check the database answered
        self._failing_since = 0.0
        self._reminded_at = 0.0

    @property
    def up(self) -> bool:
        """Whether the latest check succeeded (for ``/readyz``)."""
        return self.failing is None

    async def check(self) -> bool:
        """One query, waited for at most the timeout; report a change of health. Whether the
        database answered. A query left unanswered is not cancelled (psycopg would wait for the
        same silent server to take the cancel request): it stays the probe until it ends."""
        now = self._clock.monotonic()
        if self._probe is None or now - self._probe_since >= GIVE_UP_AFTER:
            if self._probe is not None:
                self._probe.cancel()  # stuck on a connection to a server that moved or froze
            self._probe = asyncio.ensure_future(self._query())
            self._probe.add_done_callback(_retrieve)
            self._probe_since = now
        probe = self._probe
        done, _ = await asyncio.wait({probe}, timeout=self._timeout)
        if not done:
            self._failed(f"no answer within {now - self._probe_since + self._timeout:.0f}s")
            return False
        self._probe = None
        error = None if probe.cancelled() else probe.exception()
        if error is not None or probe.cancelled():
            self._failed(_first_line(error) if error is not None else "cancelled")
            return False
        self._succeeded()
        return True

    async def _query(self) -> None:
        async with self._pool.connection(timeout=self._timeout) as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        """Cancel a probe still waiting for the server."""
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.cancel()
            await asyncio.wait({probe}, timeout=1.0)

    async def run(self) -> None:
        """Check every second until cancelled."""
        try:
            while True:
                await self.check()
                await self._clock.sleep(self._every)
        finally:
            await self.close()

    def _failed(self, error: str) -> None:
        now = self._clock.monotonic()
        if self.failing is not None:
            if now - self._reminded_at >= REMIND_EVERY:
                self._reminded_at = now
                log.error(
                    "PostgreSQL %s still does not answer (%s) after %.0fs",
                    self.url,
                    error,
                    now - self._failing_since,
                )
            return
        # Away since it last answered: the first check fails only after its timeout.
        self.failing, self._failing_since, self._reminded_at = error, self._answered_at, now
        self._up.set(0)
        self._on_change(False)
        log.error(
            "PostgreSQL %s does not answer (%s): failover goes on; events, incidents, notices "
            "and ledger changes wait and are retried",
            self.url,
            error,
        )
        self._bus.publish(
            StateWritesFailed(
                subject="database",
                at=self._clock.wall(),
                vantage=self._vantage,
                path=self.url,
                error=error,
            )
        )

    def _succeeded(self) -> None:
        self._answered_at = self._clock.monotonic()
        if self.failing is None:
            return
        seconds = self._answered_at - self._failing_since
        log.warning("PostgreSQL %s answers again after %.1fs", self.url, seconds)
        self._bus.publish(
            StateWritesRecovered(
                subject="database",
                at=self._clock.wall(),
                vantage=self._vantage,
                path=self.url,
                error=self.failing,
                seconds=round(seconds, 3),
            )
        )
        self.failing = None
        self._up.set(1)
        self._on_change(True)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A probe's error is read by ``check``; one it gave up on must not warn when collected."""
    if not task.cancelled():
        task.exception()


def _first_line(exc: BaseException) -> str:
    """libpq's messages run over several lines; the first names the trouble."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
