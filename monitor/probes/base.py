"""What a probe returns, and the hedged attempts that make one probe robust to packet loss."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from nodevigil.config.schema import ProbeBase as ProbeSpec


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One check of a node: passed (True), failed (False) or inconclusive (None).

    Inconclusive results (the daemon's own MQTT link is down, say) move no counter, so
    nodevigil's own trouble never judges a node. ``decisive`` failures (an agent's last-will)
    take the probe down at once instead of waiting for ``fall`` results.
    """

    ok: bool | None
    detail: str
    duration: float
    at: float
    vantage: str
    decisive: bool = False


class ProbeFailure(Exception):
    """A definitive answer that the check failed (wrong status, bad body): no retry."""


class Prober(Protocol):
    """Runs one configured probe once; never raises, always returns a result."""

    async def check(self) -> tuple[bool | None, str, bool]:
        """Return (ok, detail, decisive)."""
        ...


S = TypeVar("S", bound=ProbeSpec)


class HedgedProber(Generic[S]):
    """Base of the network probers: ``check()`` runs ``_attempt`` with hedged tries."""

    spec: S

    async def check(self) -> tuple[bool | None, str, bool]:
        """Run the probe's tries within its timeout."""
        assert self.spec.timeout is not None and self.spec.attempts is not None
        ok, detail = await hedged(
            self._attempt, budget=self.spec.timeout, attempts=self.spec.attempts
        )
        return ok, detail, False

    async def _attempt(self) -> str:
        raise NotImplementedError


def describe(exc: BaseException) -> str:
    """A short, log-safe description of a transport error."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.errno:  # aiohttp's connector errors carry errno too
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def hedged(
    attempt: Callable[[], Awaitable[str]], *, budget: float, attempts: int
) -> tuple[bool, str]:
    """Run ``attempt`` up to ``attempts`` times within ``budget`` seconds, hedging slow tries.

    A new try starts when the previous one failed, or every ``budget / attempts`` while
    earlier tries are still outstanding (a lost SYN is then covered by the next try instead
    of eating the whole budget). The first success wins; a ProbeFailure ends the round, and
    so does a refused connection: nothing listens, which no lost packet can fake.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    spacing = budget / attempts
    pending: set[asyncio.Task[str]] = set()
    launched = 0
    next_launch = loop.time()
    last_error = "timed out"
    try:
        while True:
            now = loop.time()
            if now >= deadline:
                return False, f"{last_error} (no answer within {budget * 1000:g}ms)"
            if launched < attempts and (not pending or now >= next_launch):
                pending.add(asyncio.ensure_future(attempt()))
                launched += 1
                next_launch = now + spacing
            if not pending:
                return False, last_error
            wake = deadline if launched >= attempts else min(deadline, next_launch)
            done, pending = await asyncio.wait(
                pending, timeout=max(wake - now, 0), return_when=asyncio.FIRST_COMPLETED
            )
            # Look at every finished try so no exception is left unretrieved.
            outcomes = [(task.exception(), task) for task in done]
            for exc, task in outcomes:
                if exc is None:
                    return True, task.result()
            for exc, _ in outcomes:
                if isinstance(exc, ProbeFailure):
                    return False, str(exc)
                if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
                    return False, describe(exc)
                last_error = describe(exc) if exc is not None else last_error
    finally:
        for task in pending:
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[str]) -> None:
    """Read an abandoned try's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
