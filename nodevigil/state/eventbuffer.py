"""What every event log backend shares: the waiting buffer, batch writes and listing what waits.

An event is appended from the bus synchronously and written in batches every ``flush_every``
seconds. When the store refuses a batch (SQLite: a full or read-only disk; PostgreSQL: the server
away) the batch goes back to the front of the buffer and the next pass retries it; memory is
bounded by ``max_waiting``, past which the oldest waiting events are given up and counted. A
query lists the events still waiting as well, so nothing published is ever invisible.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from typing import Any

from nodevigil.core.errors import StateError
from nodevigil.core.events import Event

log = logging.getLogger(__name__)

MAX_WAITING = 200_000  # events kept in memory while the store refuses them (~100 MB at most)
WAKE_AT = 500  # a batch this large is written at once, not at the next tick


def event_row(event: Event) -> dict[str, Any]:
    """The event as the API lists it: ``Event.as_dict()`` through JSON (what a store gives back)."""
    row: dict[str, Any] = json.loads(json.dumps(event.as_dict(), default=str))
    return row


def matches(
    event: Event, since: float | None, until: float | None, kind: str | None, subject: str | None
) -> bool:
    """Whether ``event`` passes the query's filters (the same rule as the stores' SQL)."""
    return (
        (since is None or event.at >= since)
        and (until is None or event.at < until)
        and (not kind or event.kind.startswith(kind))
        and (not subject or event.subject == subject)
    )


class BatchedEventLog(ABC):
    """The buffering half of an event log (``nodevigil.core.eventlog.EventLog``); a backend
    supplies the schema, the batch write, the select, the delete and the release."""

    # What the backend raises when its store refuses for now: the batch waits for the next try.
    refusals: tuple[type[Exception], ...] = ()
    where = "event log"  # for messages: "event log", "event log (PostgreSQL)"

    def __init__(self, *, flush_every: float = 0.1, max_waiting: int = MAX_WAITING) -> None:
        self._buffer: list[Event] = []
        self._writing: list[Event] = []  # the batch on its way to the store
        self._flushing = asyncio.Lock()
        self._flush_every = flush_every
        self._max_waiting = max_waiting
        self._wake = asyncio.Event()
        self._refusing = False  # the last write failed: queries do not wait for another try
        self.write_errors = 0
        self.dropped = 0  # oldest waiting events given up when the store refused too long

    @property
    def waiting(self) -> int:
        """Events published but not yet written."""
        return len(self._buffer) + len(self._writing)

    @abstractmethod
    async def open(self) -> None:
        """Prepare the store (create or migrate the schema); a StateError when it cannot."""

    @abstractmethod
    async def _write(self, batch: list[Event]) -> None:
        """Write ``batch`` in one transaction; an event already stored (same id) is skipped."""

    @abstractmethod
    async def _select(
        self,
        since: float | None,
        until: float | None,
        kind: str | None,
        subject: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Stored events, newest first, filtered as ``query`` says, at most ``limit``."""

    @abstractmethod
    async def _delete(self, before: float) -> int:
        """Delete stored events older than ``before``; how many."""

    @abstractmethod
    async def _release(self) -> None:
        """Release what ``open`` took."""

    def append(self, event: Event) -> None:
        """Bus sink: queue the event for the next batch (never blocks)."""
        self._buffer.append(event)
        if len(self._buffer) >= WAKE_AT:
            self._wake.set()

    async def run(self) -> None:
        """Write batches until cancelled, then write what is left."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self._flush_every):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Write every buffered event; when the store refuses, keep them for the next try."""
        async with self._flushing:  # one batch at a time: query() sees it until it is readable
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            self._writing = batch
            try:
                await self._write(batch)
            except self.refusals as exc:
                self._keep(batch, exc)
            else:
                if self._refusing:
                    self._refusing = False
                    log.warning(
                        "the %s takes writes again (%d failed writes, %d events dropped)",
                        self.where,
                        self.write_errors,
                        self.dropped,
                    )
            finally:
                self._writing = []

    def _keep(self, batch: list[Event], exc: Exception) -> None:
        self.write_errors += 1
        self._refusing = True
        self._buffer[:0] = batch  # keep them; nothing is lost while the store refuses
        excess = len(self._buffer) - self._max_waiting
        if excess > 0:  # memory is finite: give up the oldest, and count them
            del self._buffer[:excess]
            self.dropped += excess
        if self.write_errors == 1 or self.write_errors % 100 == 0:
            log.error(
                "cannot write the %s (%d events waiting, %d dropped): %s",
                self.where,
                len(self._buffer),
                self.dropped,
                exc,
            )

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        subject: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events, newest first, filtered by time, kind prefix and subject."""
        if not self._refusing:  # else the run loop retries; a query need not wait for it
            await self.flush()
        # Taken before the read: an event is then either in this list or already readable.
        pending = [*self._writing, *self._buffer]
        try:
            rows = await self._select(since, until, kind, subject, limit)
        except self.refusals as exc:
            raise StateError(f"cannot read the {self.where}: {exc}") from exc
        found = {r["id"]: r for r in rows}
        # Events the store has not taken yet (disk full, server away) are listed all the same.
        for e in pending:
            if matches(e, since, until, kind, subject):
                found[e.id] = event_row(e)
        return sorted(found.values(), key=lambda r: r["at"], reverse=True)[:limit]

    async def prune(self, before: float) -> int:
        """Delete events older than ``before`` (wall time); return how many."""
        try:
            return await self._delete(before)
        except self.refusals as exc:
            raise StateError(f"cannot prune the {self.where}: {exc}") from exc

    async def close(self) -> None:
        """Write what is left and release the store."""
        await self.flush()
        if self.waiting:
            log.error("closing the %s with %d events never written", self.where, self.waiting)
        await self._release()
