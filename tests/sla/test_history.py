"""The ledger's daily history (the status page's bars): the very minutes the credits count."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from nodevigil.app.api.status_snapshot import service_history
from nodevigil.state.sqlite.ledger import open_sqlite_ledger
from tests.sla.helpers import charge


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


async def test_daily_minutes_are_the_minutes_the_credits_count(tmp_path: Path) -> None:
    clock = Clock(at(1, 6))  # opened on 2026-03-01 (Berlin): the ledger's first day
    async with await open_sqlite_ledger(
        tmp_path / "ledger.db", timezone="Europe/Berlin", now=clock
    ) as ledger:
        # An outage across Berlin's midnight (23:00Z), one cut by an announced maintenance,
        # one a customer caused (no credit), and unknown time nobody reviewed (no credit).
        await ledger.open_interval("web", at(1, 22, 50))
        clock.now = at(2, 0, 10, 30)
        await ledger.close_interval("web", at(2, 0, 10, 30))
        await ledger.open_interval("web", at(3, 10))
        await ledger.close_interval("web", at(3, 11))
        await ledger.add_exclusion(at(3, 10, 30), at(3, 12), "scheduled_maintenance")
        await ledger.open_interval("api", at(3, 9), cause="customer_action")
        await ledger.close_interval("api", at(3, 9, 30))
        await ledger.record_unknown(at(4, 2), at(4, 3), ["api"])
        await ledger.open_interval("api", at(5, 7, 59, 30))  # still open: counts up to now
        clock.now = at(5, 8, 3)
        days = [f"2026-03-0{d}" for d in range(1, 6)]
        await ledger.import_charges([charge(d, service=s) for d in days for s in ("web", "api")])
        credits = {
            (r.service, r.day): r.unavailable_minutes
            for r in await ledger.credits(date(2026, 3, 1), date(2026, 3, 5))
        }
        history = await ledger.daily_history(90)
    assert history.last == date(2026, 3, 5) and history.first == date(2026, 3, 5) - timedelta(89)
    assert history.since == date(2026, 3, 1)
    assert (
        {k: v for k, v in credits.items() if v}
        == history.minutes
        == {
            ("web", date(2026, 3, 1)): 10,
            ("web", date(2026, 3, 2)): 71,
            ("web", date(2026, 3, 3)): 30,
            ("api", date(2026, 3, 5)): 4,
        }
    )


async def test_the_service_history_has_no_data_before_the_ledger_and_today_so_far(
    tmp_path: Path,
) -> None:
    clock = Clock(at(3, 5))  # 06:00 in Berlin on 2026-03-03
    async with await open_sqlite_ledger(
        tmp_path / "ledger.db", timezone="Europe/Berlin", now=clock
    ) as ledger:
        await ledger.open_interval("web", at(3, 4, 0))
        history = await ledger.daily_history(5)
    assert history.since == date(2026, 3, 3)
    shown = service_history(history, "web", clock.now.timestamp())
    assert [d["date"] for d in shown["history"]] == [
        "2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02", "2026-03-03",
    ]  # fmt: skip
    assert [d["unavailable_minutes"] for d in shown["history"]] == [None, None, None, None, 60]
    assert shown["history"][-1]["minutes"] == 360  # midnight to 06:00 local
    assert shown["uptime"] == 83.33  # 300 of 360 minutes, rounded down
    assert service_history(history, "mail", clock.now.timestamp())["uptime"] == 100.0


async def test_a_later_open_keeps_the_first_day(tmp_path: Path) -> None:
    clock = Clock(at(1, 12))
    path = tmp_path / "ledger.db"
    async with await open_sqlite_ledger(path, timezone="UTC", now=clock):
        pass
    clock.now = at(9, 12)
    async with await open_sqlite_ledger(path, timezone="UTC", now=clock) as ledger:
        history = await ledger.daily_history(90)
    assert history.since == date(2026, 3, 1)
