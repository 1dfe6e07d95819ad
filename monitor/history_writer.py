"""Saving the probe history: the recorder's runs go to the store in batches, off the probes' path.

Every half ``save_every`` the writer takes the runs closed since the last save and a snapshot
of the open runs that grew, and saves them in one batch (the store builds its rows on a thread
of its own or in one statement). A crash then loses at most ``save_every`` of history: the
open runs' results since their last snapshot, and in a sharded monitor what a worker had not
yet sent (it sends every half ``save_every`` too). At close everything is saved, the open runs
closed.

A store that refuses (a full disk, PostgreSQL away) costs no result: the runs wait in memory,
a later copy of a run replacing the earlier, and go with the next save. The wait is bounded
(``MAX_WAITING`` runs; beyond it the oldest are given up and counted) and the failure is
logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from monitor.history import HistoryStore, ProbeRun, RunRecorder, run_key

log = logging.getLogger(__name__)

MAX_WAITING = 1_000_000  # runs kept while the store refuses (~200 MB at worst)
CLOSE_WITHIN = 10.0  # seconds the last save at shutdown may take


class HistoryWriter:
    """Takes the recorder's runs every half ``every()`` seconds and saves them to ``store``."""

    def __init__(
        self,
        recorder: RunRecorder,
        store: HistoryStore,
        *,
        every: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.recorder = recorder
        self._store = store
        self._every = every  # read at each pass: a reload may change it
        self._sleep = sleep
        self._max_waiting = max_waiting
        self._waiting: dict[tuple[str, str, str, float], ProbeRun] = {}
        self._failing = False
        self._lock = asyncio.Lock()  # one save at a time: a later copy never goes first
        self.saved = 0  # runs written (copies of open runs included)
        self.given_up = 0  # runs dropped while the store refused for too long

    async def run(self) -> None:
        """Save every half ``every()`` seconds until cancelled."""
        while True:
            await self._sleep(self._every() / 2)
            await self.save()

    async def save(self) -> int:
        """Save what the recorder has now, and whatever an earlier save could not; how many."""
        async with self._lock:
            return await self._save(self.recorder.take())

    async def close(self) -> None:
        """Save everything, the open runs closed (at shutdown: after the monitor stopped)."""
        async with self._lock:
            runs = self.recorder.close_all()
            try:
                async with asyncio.timeout(CLOSE_WITHIN):
                    await self._save(runs)
            except TimeoutError:
                log.error(
                    "probe history: the last save took over %gs; %d runs not saved",
                    CLOSE_WITHIN,
                    len(self._waiting),
                )
            if self._waiting:
                log.error("probe history: %d runs could not be saved", len(self._waiting))

    async def _save(self, runs: list[ProbeRun]) -> int:
        waiting = self._waiting
        for run in runs:  # a later copy of a run (a longer snapshot, or closed) replaces it
            waiting[run_key(run)] = run
        if len(waiting) > self._max_waiting:
            drop = len(waiting) - self._max_waiting
            for key in list(waiting)[:drop]:  # the oldest first (dicts keep insertion order)
                del waiting[key]
            self.given_up += drop
            log.error("probe history: the store refuses; %d oldest runs given up", drop)
        if not waiting:
            return 0
        batch = list(waiting.values())
        try:
            await self._store.save(batch)
        except Exception as exc:  # the store's own error: kept, tried again at the next save
            if not self._failing:
                log.error("probe history cannot be saved (kept in memory, retried): %s", exc)
                self._failing = True
            return 0
        for run in batch:  # what arrived while saving stays (the lock keeps takes out anyway)
            if waiting.get(run_key(run)) is run:
                del waiting[run_key(run)]
        if self._failing:
            log.info("probe history saved again (%d runs caught up)", len(batch))
            self._failing = False
        self.saved += len(batch)
        return len(batch)
