"""Waiting for PostgreSQL at most so long, without cancelling what it is doing.

A server that is paused, frozen on its disk or partitioned while its kernel still acknowledges
keeps a query unanswered for ever: TCP keepalives do not fire, and a server-side
``statement_timeout`` needs the server. Cancelling the query is no cure either: psycopg then
sends a cancel request to the same unanswering server and waits up to 10 s for it. So a caller
that must not wait (the controller saves its bookkeeping on the failover path) waits for an
operation at most ``wait`` seconds and goes on with a StateError; the operation itself runs on
in the background until the server answers or the connection fails. While it does, the next
calls fail at once: one stuck operation at a time, and no later write can overtake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nodevigil.core.errors import StateError

T = TypeVar("T")

GIVE_UP_AFTER = 60.0  # a stuck operation is cancelled after this long (a primary that moved)


class Bounded:
    """Runs operations with a bounded wait; remembers the one that outlived it."""

    def __init__(self, what: str, *, wait: float, available: Callable[[], bool] = lambda: True):
        self._what = what
        self._wait = wait
        self._available = available  # False while the database watch sees it away
        self._stuck: asyncio.Task[Any] | None = None
        self._stuck_since = 0.0

    def _check_stuck(self) -> None:
        stuck = self._stuck
        if stuck is None:
            return
        if stuck.done():
            self._stuck = None
            return
        age = time.monotonic() - self._stuck_since
        if age >= GIVE_UP_AFTER:
            stuck.cancel()  # finishes in the background; the pool discards its connection
        raise StateError(
            f"{self._what}: PostgreSQL has not answered an earlier operation for {age:.0f}s"
        )

    async def run(self, operation: Callable[[], Awaitable[T]], *, what: str) -> T:
        """``operation()``, or a StateError once it has taken ``wait`` seconds (or at once while
        an earlier one is stuck or the database is known to be away)."""
        self._check_stuck()
        if not self._available():
            raise StateError(f"{self._what}: cannot {what}: PostgreSQL does not answer")
        task: asyncio.Task[T] = asyncio.ensure_future(operation())
        try:
            done, _ = await asyncio.wait({task}, timeout=self._wait)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            return task.result()
        self._stuck, self._stuck_since = task, time.monotonic()
        task.add_done_callback(_retrieve)
        raise StateError(
            f"{self._what}: cannot {what}: no answer from PostgreSQL within {self._wait:g}s "
            "(still trying in the background)"
        )

    async def close(self, within: float = 1.0) -> None:
        """Cancel a stuck operation and give it ``within`` seconds to unwind."""
        stuck, self._stuck = self._stuck, None
        if stuck is not None and not stuck.done():
            stuck.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait({stuck}, timeout=within)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A stuck operation's late error is known already (its caller had a StateError)."""
    if not task.cancelled():
        task.exception()
