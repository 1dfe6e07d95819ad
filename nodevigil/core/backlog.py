"""Work a store could not take yet (a full or read-only disk), kept in order and retried.

A periodic reconcile repairs what is missing, but only approximately: an outage whose end could
not be written would be closed at the time of the repair. Keeping the refused events and
replaying them in their order, before any reconcile, records them exactly once the disk takes
writes again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Backlog(Generic[T]):
    """Items applied in order; an item failing with a ``transient`` error waits for ``replay``.

    Other errors cannot be helped by retrying: they are logged with their traceback and the
    item is dropped. While the oldest item waits, newer ones queue behind it. At most
    ``limit`` items wait; beyond that the oldest are given up and counted in ``dropped``.
    """

    def __init__(
        self,
        what: str,
        apply: Callable[[T], Awaitable[object]],
        *,
        transient: tuple[type[BaseException], ...],
        describe: Callable[[T], str] = repr,
        log: logging.Logger,
        limit: int = 100_000,
    ) -> None:
        self._what = what
        self._apply = apply
        self._transient = transient
        self._describe = describe
        self._log = log
        self._limit = limit
        self._items: deque[T] = deque()
        self._lock = asyncio.Lock()
        self.failing = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    async def add(self, item: T) -> bool:
        """Queue ``item`` behind any waiting ones and try them all; whether none waits now."""
        self._items.append(item)
        if len(self._items) > self._limit:
            self._items.popleft()
            self.dropped += 1
        return await self.replay()

    async def replay(self) -> bool:
        """Apply the waiting items in order, stopping at a transient failure; whether all went."""
        async with self._lock:
            while self._items:
                item = self._items[0]
                try:
                    await self._apply(item)
                except self._transient as exc:
                    if not self.failing:
                        self.failing = True
                        self._log.error(
                            "%s: %s not recorded yet, %d waiting, retried in order: %s",
                            self._what,
                            self._describe(item),
                            len(self._items),
                            exc,
                        )
                    return False
                except Exception:
                    self._log.exception("%s: %s dropped", self._what, self._describe(item))
                self._items.popleft()
            if self.failing:
                self.failing = False
                self._log.warning("%s: storage works again; everything waiting is recorded",
                                  self._what)  # fmt: skip
            return True
