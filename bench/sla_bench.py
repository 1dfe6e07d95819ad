"""SLA benchmark: the credit rule's cost grows with the number of outages, not the period.

Run: ``.venv/bin/python bench/sla_bench.py``. Prints medians of several runs and the ratios
that matter: a year against a day with the same outages (should be ~1) and twice the outages
against the same period (should be ~2). Then a year of SQLite ledger for 10,000 services.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from nodevigil.state.sqlite.ledger import open_sqlite_ledger
from sla.model import MINUTE_US, US, Cause, Charge, Exclusion, Interval, Rounding, to_us
from sla.rule import BillingCalendar, load_zone, unavailable_minutes

SERVICES = 10_000
ZONE = load_zone("Europe/Berlin")
YEAR_START = datetime(2026, 1, 1, tzinfo=ZONE)
RUNS = 5


def outages(count: int, period_days: int, seed: int = 1) -> list[Interval]:
    """``count`` outages of 10 s to 2 h on random services within the period."""
    rnd = random.Random(seed)
    start = to_us(YEAR_START)
    span = period_days * 86400 * US
    out = []
    for _ in range(count):
        begin = start + rnd.randrange(span)
        length = rnd.randrange(10 * US, 2 * 3600 * US)
        cause = Cause.PROVIDER if rnd.random() < 0.9 else Cause.THIRD_PARTY
        out.append(Interval(f"svc{rnd.randrange(SERVICES)}", begin, begin + length, cause))
    return out


def windows(count: int, period_days: int) -> list[Exclusion]:
    """A few maintenance windows for all services, as operators declare them."""
    rnd = random.Random(7)
    start = to_us(YEAR_START)
    out = []
    for _ in range(count):
        begin = start + rnd.randrange(period_days * 86400 * US)
        out.append(Exclusion(begin, begin + 30 * MINUTE_US, Cause.SCHEDULED_MAINTENANCE))
    return out


def median_seconds(func: Callable[[], object], runs: int = RUNS) -> float:
    """Median wall time of ``runs`` calls."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rule_case(count: int, period_days: int, rounding: Rounding) -> float:
    """Median time of steps 1-4 for ``count`` outages over ``period_days``."""
    ivs = outages(count, period_days)
    exs = windows(20, period_days)
    return median_seconds(lambda: unavailable_minutes(ivs, exs, BillingCalendar(ZONE), rounding))


def rule_benchmark() -> None:
    """Year against day, and doubling the outages, for both roundings."""
    print(f"credit rule over {SERVICES} services (median of {RUNS} runs)")
    for rounding in ("per-outage", "minute-buckets"):
        day = rule_case(20_000, 1, rounding)
        year = rule_case(20_000, 365, rounding)
        double = rule_case(40_000, 365, rounding)
        print(f"  {rounding}:")
        print(f"    20,000 outages in 1 day     {day * 1000:8.1f} ms")
        print(
            f"    20,000 outages in 365 days  {year * 1000:8.1f} ms   year/day   = {year / day:.2f}"
        )
        print(
            f"    40,000 outages in 365 days  {double * 1000:8.1f} ms"
            f"   double/single = {double / year:.2f}"
        )


async def ledger_case(db: Path, count: int, charged_services: int) -> tuple[float, float, int]:
    """Fill a year of ledger, then time the year's credits and per-service minutes."""
    clock = [datetime(2027, 1, 3, tzinfo=UTC)]  # the whole of 2026 is final
    async with await open_sqlite_ledger(db, timezone=ZONE.key, now=lambda: clock[0]) as ledger:
        store = ledger._core.store
        history = outages(count, 365)

        def fill() -> None:
            # setup only: write a year of history in bulk on the ledger's own worker thread
            with store.transaction():
                for iv in history:
                    store.insert_interval(
                        iv.service, iv.start_us, end_us=iv.end_us, cause=iv.cause, evidence="{}",
                        at=iv.start_us,
                    )  # fmt: skip

        await ledger._run(fill)
        charges = [
            Charge("cust", f"svc{s}", date(2026, 1, 1) + timedelta(days=d), Decimal("12.34"), "EUR")
            for s in range(charged_services)
            for d in range(365)
        ]
        await ledger.import_charges(charges)
        t0 = time.perf_counter()
        rows = await ledger.credits(date(2026, 1, 1), date(2026, 12, 31))
        credits_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await ledger.unavailable_minutes_total()
        minutes_s = time.perf_counter() - t0
    return credits_s, minutes_s, len(rows)


def ledger_benchmark() -> None:
    """A year of SQLite ledger for 10,000 services."""
    print(f"SQLite ledger, one year, {SERVICES} services")
    for count in (10_000, 20_000):
        results = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(asyncio.run(ledger_case(Path(tmp) / "l.db", count, 100)))
        credits_s = statistics.median(r[0] for r in results)
        minutes_s = statistics.median(r[1] for r in results)
        print(
            f"  {count:6,} outages: credits for {results[0][2]:,} charge rows (100 services x 365"
            f" days) {credits_s:6.2f} s; minutes of all services {minutes_s:6.2f} s"
        )


if __name__ == "__main__":
    started = time.perf_counter()
    rule_benchmark()
    ledger_benchmark()
    print(f"total {time.perf_counter() - started:.1f} s")
