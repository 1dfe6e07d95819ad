"""The durable ledger inside the daemon: intervals as they happen, settlement, adjustments.

Every store call runs on one worker thread, so the database never blocks the event loop and
one connection is used by one thread only; the store itself (``sla.store.LedgerStore``) is
built by whoever opens the ledger (the state layer: ``open_sqlite_ledger``). Credits are
always recomputed from the intervals; a day becomes final at local midnight +
``settlement_delay`` (clause V.4) and from then on a change to its credit is recorded as an
adjustment, never a silent rewrite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from sla.errors import SlaError, SlaInputError
from sla.ledger_core import DailyHistory, LedgerCore, LedgerEntry
from sla.model import Cause, Charge, CreditRow, Rounding
from sla.rule import load_zone
from sla.store import Adjustment, LedgerStore

P = ParamSpec("P")
T = TypeVar("T")

MIN_RETENTION = timedelta(days=90)  # clause IV.3


def _seconds(value: timedelta | float) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


class Ledger:
    """Async face of the ledger; open with ``await Ledger.open(store, ...)``, use ``async with``."""

    def __init__(self, core: LedgerCore, worker: ThreadPoolExecutor) -> None:
        self._core = core
        self._worker = worker

    @classmethod
    async def open(
        cls,
        store: Callable[[], LedgerStore],
        *,
        timezone: str = "UTC",
        rounding: Rounding = "per-outage",
        settlement_delay: timedelta | float = timedelta(hours=24),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> Ledger:
        """Open the ledger on the store ``store()`` builds, called on the worker thread (a
        backend's connection then belongs to the one thread that uses it)."""
        zone = load_zone(timezone)
        delay = _seconds(settlement_delay)
        if delay < timedelta(0):
            raise SlaInputError("settlement_delay must not be negative")
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sla-ledger")
        loop = asyncio.get_running_loop()
        try:
            opened = await loop.run_in_executor(worker, store)
        except BaseException:
            worker.shutdown(wait=False)
            raise
        core = LedgerCore(opened, zone, rounding, delay, now)
        try:
            await loop.run_in_executor(worker, core.mark_recording)
        except BaseException:
            await loop.run_in_executor(worker, opened.close)
            worker.shutdown(wait=False)
            raise
        return cls(core, worker)

    async def _run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, lambda: func(*args, **kwargs))

    async def close(self) -> None:
        """Close the store and stop the worker thread."""
        await self._run(self._core.store.close)
        self._worker.shutdown(wait=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open_interval(
        self,
        service: str,
        start: datetime,
        cause: Cause | str = Cause.PROVIDER,
        evidence: Mapping[str, Any] | None = None,
    ) -> int:
        """Record that ``service`` became unavailable; an already-open interval is returned."""
        text = json.dumps(dict(evidence or {}), sort_keys=True, default=str)
        return await self._run(self._core.open_interval, service, start, Cause(cause), text)

    async def close_interval(self, service: str, end: datetime) -> int | None:
        """Record that ``service`` is available again; returns the closed interval's id."""
        return await self._run(self._core.close_interval, service, end)

    async def open_intervals(self) -> list[LedgerEntry]:
        """Intervals still open (they survive a restart)."""
        return await self._run(self._core.entries, None, None, None, True)

    async def record_unknown(
        self, start: datetime, end: datetime, services: Iterable[str]
    ) -> list[int]:
        """Record time when nodevigil itself was not running: no credit until reviewed."""
        return await self._run(self._core.record_unknown, start, end, list(services))

    async def set_cause(self, interval_id: int, cause: Cause | str, who: str, note: str) -> None:
        """An operator tags an interval's cause; final days that change get adjustments."""
        await self._run(self._core.set_cause, interval_id, Cause(cause), who, note)

    async def set_cause_within(
        self,
        service: str,
        start: datetime,
        end: datetime,
        *,
        cause: Cause | str,
        who: str,
        note: str,
        key: str,
    ) -> list[int] | None:
        """Tag every interval of ``service`` overlapping ``[start, end)``, once per ``key``.

        The intervals changed, or None when a call with ``key`` was applied before.
        """
        return await self._run(
            self._core.set_cause_within,
            service,
            start,
            end,
            cause=Cause(cause),
            who=who,
            note=note,
            key=key,
        )

    async def add_exclusion(
        self,
        start: datetime,
        end: datetime,
        cause: Cause | str,
        *,
        services: Sequence[str] = (),
        note: str = "",
        who: str = "",
        key: str | None = None,
    ) -> int:
        """Declare an exclusion window (empty ``services`` = all); returns its id.

        With ``key``, once: a second call returns the first one's exclusion.
        """
        return await self._run(
            self._core.add_exclusion,
            start,
            end,
            Cause(cause),
            services=list(services),
            note=note,
            who=who,
            key=key,
        )

    async def import_charges(self, rows: Iterable[Charge], who: str = "import") -> int:
        """Insert or replace charges by (customer, service, day); returns how many."""
        return await self._run(self._core.import_charges, list(rows), who)

    async def credits(
        self, from_date: date, to_date: date, customer: str | None = None
    ) -> list[CreditRow]:
        """Credit rows for charges with ``from_date <= day <= to_date`` (final days frozen)."""
        return await self._run(self._core.credits, from_date, to_date, customer)

    async def ledger(
        self,
        service: str | None = None,
        from_: datetime | None = None,
        to: datetime | None = None,
        customer: str | None = None,
    ) -> list[LedgerEntry]:
        """Intervals overlapping ``[from_, to)``; ``customer`` limits them to its services."""
        return await self._run(self._core.entries, service, from_, to, False, customer)

    async def adjustments(self, customer: str | None = None) -> list[Adjustment]:
        """Changes to final days' credits, oldest first."""
        return await self._run(self._core.store.adjustments, customer)

    async def settle(self) -> list[CreditRow]:
        """Freeze days that became final; returns every row settled since the last call."""
        return await self._run(self._core.settle_now)

    async def unavailable_minutes_total(self, service: str | None = None) -> dict[str, int]:
        """Unavailable minutes per service over the retained ledger (for a metrics gauge)."""
        return await self._run(self._core.minutes_total, service)

    async def daily_history(self, days: int) -> DailyHistory:
        """The last ``days`` local days up to today: unavailable minutes per service and day,
        as the credits count them (the status page's history bars)."""
        return await self._run(self._history, days)

    def _history(self, days: int) -> DailyHistory:
        today = self._core.calendar.day_of(self._core.now_us())
        return self._core.daily_history(today - timedelta(days=days - 1), today)

    async def prune(self, now: datetime, retention: timedelta | float) -> dict[str, int]:
        """Delete records that ended before ``now - retention``; retention is at least 90 days."""
        keep = _seconds(retention)
        if keep < MIN_RETENTION:
            raise SlaError(f"retention {keep} is below the 90 days clause IV.3 requires")
        return await self._run(self._core.prune, now - keep)
