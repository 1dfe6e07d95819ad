"""The durable ledger: restarts, unknown time, settlement, adjustments, pruning, filtering."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from nodevigil.state.sqlite.ledger import SqliteLedgerStore, open_sqlite_ledger
from sla.errors import SlaError
from sla.ledger import Ledger
from sla.model import Cause
from tests.sla.helpers import charge

BERLIN_DAY = date(2026, 3, 1)
# Berlin is UTC+1 in March: the day 2026-03-01 runs 2026-02-28T23:00Z to 2026-03-01T23:00Z,
# so it becomes final at 2026-03-02T23:00Z with the default 24 h settlement delay.
FINAL_AT = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)


def at(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


class Clock:
    """Wall time that moves only when a test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(at(9))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


async def open_ledger(db: Path, clock: Clock, **kw: object) -> Ledger:
    return await open_sqlite_ledger(db, timezone="Europe/Berlin", now=clock, **kw)  # type: ignore[arg-type]


async def test_open_interval_is_idempotent_and_survives_a_restart(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        first = await ledger.open_interval("web", at(10), evidence={"sites": ["fra", "ams"]})
        again = await ledger.open_interval("web", at(10, 5))
        assert again == first
        await ledger.import_charges([charge("2026-03-01", "14.40")])
    clock.now = at(11)
    async with await open_ledger(db, clock) as ledger:  # the daemon restarted
        [still_open] = await ledger.open_intervals()
        assert (still_open.id, still_open.service, still_open.end) == (first, "web", None)
        assert still_open.evidence == {"sites": ["fra", "ams"]}
        assert await ledger.close_interval("web", at(10, 30)) == first
        assert await ledger.close_interval("web", at(10, 31)) is None  # nothing open any more
        assert await ledger.open_intervals() == []
        [row] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert (row.unavailable_minutes, row.credit) == (30, Decimal("0.30"))
        [entry] = await ledger.ledger("web")
        assert entry.as_dict()["end"] == "2026-03-01T11:30:00+01:00"


async def test_open_interval_counts_up_to_now(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.open_interval("web", at(8, 59, 30))
        await ledger.import_charges([charge("2026-03-01")])
        [row] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert row.unavailable_minutes == 1
        assert await ledger.unavailable_minutes_total() == {"web": 1}


async def test_unknown_time_counts_nothing_until_an_operator_decides(
    db: Path, clock: Clock
) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.import_charges([charge("2026-03-01", "14.40")])
        [unknown] = await ledger.record_unknown(at(6), at(6, 20), ["web"])
        [row] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert row.unavailable_minutes == 0
        [entry] = await ledger.ledger(from_=at(0), to=at(12))
        assert entry.cause is Cause.UNKNOWN
        await ledger.set_cause(unknown, "provider", who="ops:anna", note="checked the logs")
        [row] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert (row.unavailable_minutes, row.credit) == (20, Decimal("0.20"))
        assert await ledger.adjustments() == []  # the day was not final yet


async def test_settlement_is_at_local_midnight_plus_delay(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.import_charges([charge("2026-03-01")])
        clock.now = FINAL_AT - timedelta(microseconds=1)
        assert await ledger.settle() == []
        clock.now = FINAL_AT
        [settled] = await ledger.settle()
        assert settled.day == BERLIN_DAY
        assert await ledger.settle() == []  # settled once only
        # a day settled as a side effect of another call is still reported once
        await ledger.import_charges([charge("2026-03-02")])
        clock.now += timedelta(days=1)
        await ledger.credits(BERLIN_DAY, date(2026, 3, 2))
        assert [r.day for r in await ledger.settle()] == [date(2026, 3, 2)]
        assert await ledger.settle() == []


async def test_settlement_delay_is_configurable(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock, settlement_delay=3600.0) as ledger:
        await ledger.import_charges([charge("2026-03-01")])
        clock.now = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # local midnight + 1 h
        assert len(await ledger.settle()) == 1


async def test_change_to_a_final_day_is_an_adjustment(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.open_interval("web", at(10))
        clock.now = at(11)
        await ledger.close_interval("web", at(11))
        await ledger.import_charges([charge("2026-03-01", "14.40")])
        clock.now = FINAL_AT + timedelta(days=3)
        [before] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert before.credit == Decimal("0.60")
        await ledger.add_exclusion(
            at(10),
            at(10, 45),
            "third_party",
            services=["web"],
            note="DDoS on upstream",
            who="ops:bo",
        )
        [after] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert (after.unavailable_minutes, after.credit) == (15, Decimal("0.15"))
        [adj] = await ledger.adjustments()
        assert (adj.old_credit, adj.new_credit, adj.old_minutes, adj.new_minutes) == (
            Decimal("0.60"), Decimal("0.15"), 60, 15,
        )  # fmt: skip
        assert adj.who == "ops:bo"
        assert "DDoS on upstream" in adj.why
        assert adj.as_dict()["at"] == "2026-03-05T23:00:00+00:00"
        # an exclusion for another service leaves this day alone
        await ledger.add_exclusion(at(10), at(11), "third_party", services=["mail"], who="ops:bo")
        assert len(await ledger.adjustments()) == 1


async def test_changed_charge_of_a_final_day_is_an_adjustment(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.record_unknown(at(1), at(2), ["web"])
        [iv] = await ledger.ledger("web")
        await ledger.set_cause(iv.id, Cause.PROVIDER, who="ops", note="")
        await ledger.import_charges([charge("2026-03-01", "14.40")])
        clock.now = FINAL_AT
        await ledger.import_charges([charge("2026-03-01", "28.80")], who="billing")
        [adj] = await ledger.adjustments()
        assert (adj.old_credit, adj.new_credit, adj.who) == (
            Decimal("0.60"), Decimal("1.20"), "billing",
        )  # fmt: skip


async def test_rows_of_a_final_day_do_not_change_silently(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.open_interval("web", at(10))
        clock.now = at(10, 0, 30)
        await ledger.close_interval("web", at(10, 0, 30))
        await ledger.import_charges([charge("2026-03-01", "1440")])
        clock.now = FINAL_AT
        await ledger.settle()
    # reopened with the other rounding: the frozen figure stays until a recorded change
    async with await open_ledger(db, clock, rounding="minute-buckets") as ledger:
        [row] = await ledger.credits(BERLIN_DAY, BERLIN_DAY)
        assert row.credit == Decimal("1.00")


async def test_credits_filter_by_customer(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.import_charges(
            [charge("2026-03-01", customer="acme"), charge("2026-03-01", customer="beta")]
        )
        rows = await ledger.credits(BERLIN_DAY, BERLIN_DAY, customer="beta")
        assert [r.customer for r in rows] == ["beta"]
        await ledger.import_charges([charge("2026-03-01", customer="acme", service="mail")])
        await ledger.open_interval("mail", at(8))
        await ledger.open_interval("web", at(8))
        assert [e.service for e in await ledger.ledger(customer="beta")] == ["web"]
        assert len(await ledger.ledger(customer="acme")) == 2
        assert await ledger.ledger(customer="nobody") == []
        assert await ledger.credits(date(2026, 3, 2), date(2026, 3, 31)) == []


async def test_prune_keeps_at_least_ninety_days(db: Path, clock: Clock) -> None:
    async with await open_ledger(db, clock) as ledger:
        with pytest.raises(SlaError, match="90 days"):
            await ledger.prune(clock.now, timedelta(days=89))
        await ledger.record_unknown(at(1), at(2), ["web"])
        await ledger.open_interval("mail", at(3))
        await ledger.import_charges([charge("2026-03-01")])
        counts = await ledger.prune(at(1) + timedelta(days=90), timedelta(days=90))
        assert counts["intervals"] == counts["charges"] == 0  # ended after the cutoff
        counts = await ledger.prune(at(0, day=2) + timedelta(days=90), 90 * 86400.0)
        assert (counts["intervals"], counts["charges"]) == (1, 1)
        assert [e.service for e in await ledger.ledger()] == ["mail"]  # open: never pruned


async def test_store_calls_run_off_the_event_loop(db: Path, clock: Clock) -> None:
    threads: set[str] = set()

    class Watched(SqliteLedgerStore):
        @contextmanager
        def transaction(self) -> Iterator[None]:
            threads.add(threading.current_thread().name)
            with super().transaction():
                yield

    async with await open_ledger(db, clock, store=Watched) as ledger:
        await ledger.open_interval("web", at(8))
        await ledger.credits(BERLIN_DAY, BERLIN_DAY)
    assert threads and threading.current_thread().name not in threads
    assert all(name.startswith("sla-ledger") for name in threads)


async def test_newer_schema_is_refused(db: Path, clock: Clock) -> None:
    import sqlite3

    async with await open_ledger(db, clock):
        pass  # creates the file at the current schema
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version=99")
    con.close()
    with pytest.raises(SlaError, match="newer"):
        await open_ledger(db, clock)


async def test_charge_imported_late_for_a_final_day_is_frozen_at_once(
    db: Path, clock: Clock
) -> None:
    async with await open_ledger(db, clock) as ledger:
        await ledger.open_interval("web", at(9))
        await ledger.close_interval("web", at(9, 30))
        clock.now = FINAL_AT + timedelta(days=10)
        assert await ledger.settle() == []  # days are final, but nothing was charged yet
        await ledger.import_charges([charge("2026-03-01", "14.40")])
        [row] = await ledger.settle()
        assert (row.day, row.credit) == (BERLIN_DAY, Decimal("0.30"))
        await ledger.add_exclusion(at(9), at(9, 10), "customer_action", who="ops")
        [adj] = await ledger.adjustments()
        assert (adj.old_credit, adj.new_credit) == (Decimal("0.30"), Decimal("0.20"))
