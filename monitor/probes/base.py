"""What a probe returns, and the hedged attempts that make one probe robust to packet loss."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from monitor.timers import Timers, loop_timers
from nodevigil.core.config.schema import ProbeBase as ProbeSpec
from nodevigil.core.resources import PROBES, LocalTrouble, explain, local_errno


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


class ProbeError(Exception):
    """A failed try whose message already reads as a probe detail (a malformed answer)."""


class Try:
    """A try in flight that completes without the event loop's help (an HTTP exchange).

    It looks like an asyncio future to ``hedged`` but runs its done callbacks at once, inside
    the protocol callback that completed it: no task, no scheduled callback per try.
    """

    __slots__ = ("_callbacks", "_error", "_state", "_value")

    _PENDING, _DONE, _CANCELLED = range(3)

    def __init__(self) -> None:
        self._state = Try._PENDING
        self._value = ""
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Try], object]] = []

    def done(self) -> bool:
        """Whether it finished, failed or was cancelled."""
        return self._state != Try._PENDING

    def cancelled(self) -> bool:
        """Whether it was cancelled."""
        return self._state == Try._CANCELLED

    def result(self) -> str:
        """The try's detail, or its exception raised."""
        if self._state == Try._CANCELLED:
            raise asyncio.CancelledError
        if self._state == Try._PENDING:
            raise asyncio.InvalidStateError("the try is still running")
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        """The try's exception (None when it passed)."""
        if self._state == Try._CANCELLED:
            raise asyncio.CancelledError
        return self._error

    def add_done_callback(self, fn: Callable[[Try], object]) -> None:
        """Call ``fn(self)`` when it is done (now, if it already is)."""
        if self._state == Try._PENDING:
            self._callbacks.append(fn)
        else:
            fn(self)

    def remove_done_callback(self, fn: Callable[[Try], object]) -> int:
        """Forget ``fn``; return how many times it was registered."""
        before = len(self._callbacks)
        self._callbacks = [cb for cb in self._callbacks if cb != fn]
        return before - len(self._callbacks)

    def cancel(self) -> bool:
        """Abandon the try (``_abandon`` releases what it holds)."""
        if self._state != Try._PENDING:
            return False
        self._state = Try._CANCELLED
        self._abandon()
        self._run_callbacks()
        return True

    def set_result(self, value: str) -> None:
        """Finish with ``value`` (ignored once done)."""
        if self._state == Try._PENDING:
            self._state, self._value = Try._DONE, value
            self._run_callbacks()

    def set_exception(self, error: BaseException) -> None:
        """Finish with ``error`` (ignored once done)."""
        if self._state == Try._PENDING:
            self._state, self._error = Try._DONE, error
            self._run_callbacks()

    async def wait(self) -> str:
        """Await the try from a coroutine (cancelling the caller cancels the try)."""
        if self._state == Try._PENDING:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(_: Try) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.add_done_callback(wake)
            try:
                await waiter
            except asyncio.CancelledError:
                self.cancel()
                raise
        return self.result()

    def _abandon(self) -> None:
        """Release what a cancelled try holds (a connection); subclasses override."""

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)


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

    def _attempt(self) -> Awaitable[str] | Try:
        """One try: a coroutine, or a Try when the prober needs no task (http)."""
        raise NotImplementedError


def describe(exc: BaseException) -> str:
    """A short, log-safe description of a transport error."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ProbeError):
        return str(exc)
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):  # an OSError whose errno says nothing useful
        return f"TLS error: {exc.reason or exc}"
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
    attempt: Callable[[], Awaitable[str] | Try],
    *,
    budget: float,
    attempts: int,
    trouble: LocalTrouble = PROBES,
) -> tuple[bool | None, str]:
    """Run ``attempt`` up to ``attempts`` times within ``budget`` seconds, hedging slow tries.

    A new try starts when the previous one failed, or every ``budget / attempts`` while
    earlier tries are still outstanding (a lost SYN is then covered by the next try instead
    of eating the whole budget). The first success wins; a ProbeFailure ends the round, and
    so does a refused connection: nothing listens, which no lost packet can fake.

    A try that failed for want of nodevigil's own resources (EMFILE and the like, see
    ``nodevigil.core.resources``) never reached the node: the next try still runs, and a round
    without a definite answer that had such a try is inconclusive (None), not failed. Such
    errors are counted and logged by ``trouble``, once per episode.
    """
    # This runs 10,000 times a second at scale: one waiter future and one shared-heap timer
    # per wait, woken by the tries' done callbacks, cost a fraction of asyncio.wait's sets,
    # callbacks and timer handles.
    loop = asyncio.get_running_loop()
    timers = loop_timers()
    deadline = loop.time() + budget
    spacing = budget / attempts
    pending: list[asyncio.Future[str] | Try] = []
    launched = 0
    next_launch = loop.time()
    last_error = "timed out"
    local: str | None = None  # errno name of a try that failed for want of our own resources
    waiter: asyncio.Future[None] | None = None

    def undecided(error: str) -> tuple[bool | None, str]:
        if local is not None:
            return None, f"not judged: nodevigil is {explain(local)}"
        trouble.clear()  # every try had its socket: an episode of local trouble is over
        return False, error

    def wake(_: object = None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    try:
        while True:
            now = loop.time()
            if now >= deadline:
                return undecided(f"{last_error} (no answer within {budget * 1000:g}ms)")
            if launched < attempts and (not pending or now >= next_launch):
                made = attempt()
                started = made if isinstance(made, Try) else asyncio.ensure_future(made)
                started.add_done_callback(wake)
                pending.append(started)
                launched += 1
                next_launch = now + spacing
            if not pending:
                return undecided(last_error)
            wake_at = deadline if launched >= attempts else min(deadline, next_launch)
            waiter = loop.create_future()
            timer = timers.call_at(wake_at, wake)
            try:
                await waiter
            finally:
                Timers.cancel(timer)
            done = [task for task in pending if task.done()]
            if not done:
                continue
            pending = [task for task in pending if not task.done()]
            # Look at every finished try so no exception is left unretrieved.
            outcomes = [(task.exception(), task) for task in done]
            for exc, finished in outcomes:
                if exc is None:
                    trouble.clear()
                    return True, finished.result()
            for exc, _ in outcomes:
                if isinstance(exc, ProbeFailure):
                    trouble.clear()
                    return False, str(exc)
                if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
                    trouble.clear()
                    return False, describe(exc)
                name = local_errno(exc)
                if name is not None:
                    trouble.hit(name)
                    local = name
                else:
                    last_error = describe(exc) if exc is not None else last_error
    finally:
        for left in pending:
            left.remove_done_callback(wake)
            left.cancel()
            left.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[str] | Try) -> None:
    """Read an abandoned try's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
