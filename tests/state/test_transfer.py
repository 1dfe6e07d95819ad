"""Moving one host's state between backends (``nodevigil.state.transfer``): nothing is lost.

A SQLite state directory is filled by the real stores, exported, imported into a fresh
PostgreSQL database, exported again, and imported into a fresh SQLite directory: every export
is byte-identical, and the ledger computes the same credits on all three.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from failover.controller.state import Book, NodeBook, Outage, Override, SiteBook
from failover.controller.store import ActionRecord
from failover.incidents.model import IncidentState
from failover.incidents.ports import LedgerChange
from nodevigil.core.config.schema import Database
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend
from nodevigil.state.lock import StateLock
from nodevigil.state.transfer import TABLES, export_state, import_state, tables_for
from sla.ledger import Ledger
from sla.model import Charge
from tests.postgres_server import PostgresAddress
from tests.state.helpers import event
from tests.state.incident_helpers import T0, plan

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # after the filled days became final
ALL_TABLES = [t.name for t in TABLES]


def _at(hours: float) -> datetime:
    return datetime.fromtimestamp(T0 + hours * 3600, tz=UTC)


async def fill(backend: Backend) -> None:
    """Every store's facts, written through the stores themselves."""
    log = backend.event_log()
    await log.open()
    for i in range(40):
        log.append(event("node.down", f"sh-{i % 3}", T0 + i * 0.125, n=i, note="ünïcode ✓"))
    await log.query(limit=1)  # writes what waits
    await log.close()

    controller = backend.controller_store()
    await controller.put_override(Override("node", "sh-1", "kernel", "alice", T0, T0 + 3600))
    await controller.put_override(Override("site", "bj", "fibre", "bob", T0 + 1.5))
    await controller.save_book(
        Book(
            nodes={"sh-1": NodeBook(down=True, held=True, down_since=T0 + 0.1, failures=2)},
            sites={"sh": SiteBook(), "bj": SiteBook(can_serve=False, up=False)},
            outages={"web": Outage("web", T0 + 0.3, ("sh", "bj"), {"sh-1": {"n": [1, 2]}})},
        )
    )
    await controller.record_actions(
        [
            ActionRecord(
                T0 + i, "sh-lb", "set_state", "web/sh-1", "ready", "maint", "down", "ok", None
            )
            for i in range(5)
        ]
    )
    await controller.prune_actions(T0 + 2)  # ids 1 and 2 gone: the next id is still 6
    await controller.close()

    incidents = backend.incident_store()
    await incidents.open()
    web = await incidents.open_incident(
        "web", started_at=T0 - 30, at=T0, maintenance=False, cause="provider",
        message="web is unavailable", outgoing=plan(("s0", 0), ("s1", 60), ("s2", 120)),
    )  # fmt: skip
    await incidents.add_update(
        web.id, at=T0 + 10, state=IncidentState.IDENTIFIED, message="a switch failed",
        author="alice", outgoing=plan(),
    )  # fmt: skip
    rows = await incidents.claim_due(T0 + 200)
    assert len(rows) == 3
    ids = sorted(r.message.id for r in rows)
    await incidents.mark_delivered(ids[0], T0 + 201, 1)
    await incidents.mark_dead(ids[1], 7, "HTTP 410 Gone")
    await incidents.mark_retry(ids[2], 2, T0 + 300, "timed out")  # pending, with its history
    await incidents.record_first_notice(web.id, T0 + 201)
    api = await incidents.open_incident(
        "api", started_at=T0, at=T0 + 1, maintenance=True, cause="provider",
        message="api down", outgoing=plan(),
    )  # fmt: skip
    await incidents.resolve_incident(
        api.id, resolved_at=T0 + 80, at=T0 + 90, message="api back", author="ops", outgoing=plan()
    )
    await incidents.disable_notifier("hook", T0 + 201, "HTTP 410 Gone")
    window = await incidents.add_window(
        start=T0 + 7200, end=T0 + 10800, services=["web", "api"], note="upgrade",
        source="api", who="ops", config_key=None,
        ledger=lambda w: LedgerChange(
            "change-window", "exclusion", w.services, w.start, w.end, "scheduled_maintenance",
            "upgrade", "ops", w.start, window=w.id,
        ),
    )  # fmt: skip
    await incidents.ledger_change_applied("change-window", exclusion_id=1)
    await incidents.set_cause(  # its ledger change stays pending: moved with the rest
        web.id,
        cause="third_party",
        note="the carrier",
        at=T0 + 30,
        author="alice",
        ledger=lambda i: LedgerChange(
            "change-cause",
            "cause",
            (i.service,),
            i.started_at,
            None,
            "third_party",
            "the carrier",
            "alice",
            T0 + 30,
            incident=i.id,
        ),
    )  # fmt: skip
    assert window.id == 1
    await incidents.close()

    async with await Ledger.open(backend.ledger_store(), now=lambda: NOW) as ledger:
        await ledger.import_charges(
            [Charge("acme", "web", date(2026, 1, d), Decimal("288.00"), "CNY") for d in (1, 2)]
            + [Charge("beta", "web", date(2026, 1, 1), Decimal("0.3333"), "EUR")]
        )
        first = await ledger.open_interval("web", _at(1), evidence={"sh-1": "down", "n": 1})
        await ledger.close_interval("web", _at(1.25))
        await ledger.open_interval("web", _at(26))
        await ledger.close_interval("web", _at(26 + 1 / 60))
        await ledger.add_exclusion(_at(2), _at(3), "scheduled_maintenance", services=["web"],
                                   note="announced", who="ops")  # fmt: skip
        assert len(await ledger.settle()) == 3
        await ledger.set_cause(first, "third_party", "ops:anna", "carrier")  # an adjustment
        await ledger.open_interval("web", NOW)  # still open when moved


async def credits(backend: Backend) -> list[Any]:
    """What the ledger says, through ``sla.ledger.Ledger``."""
    async with await Ledger.open(backend.ledger_store(), now=lambda: NOW) as ledger:
        return [
            [r.as_dict() for r in await ledger.credits(date(2026, 1, 1), date(2026, 1, 31))],
            [a.as_dict() for a in await ledger.adjustments()],
            [(e.id, e.start, e.end, e.cause) for e in await ledger.ledger()],
        ]


def export_to(backend: Backend, path: Path) -> dict[str, int]:
    with tables_for(backend) as source, path.open("w", encoding="ascii") as out:
        return export_state(source, out)


def import_from(backend: Backend, path: Path, *, force: bool = False) -> dict[str, int]:
    with tables_for(backend) as target:
        return import_state(target, path, force=force)


@dataclass
class Databases:
    """Fresh PostgreSQL databases for one test, dropped after it."""

    postgres: PostgresAddress
    made: list[str]

    def backend(self) -> PostgresBackend:
        name = self.postgres.create_database()
        self.made.append(name)
        database = Database(url=self.postgres.url(name), password_file=self.postgres.password_file)
        return PostgresBackend(database, None, owner="test-host")


@pytest.fixture
async def databases(postgres: PostgresAddress) -> AsyncIterator[Databases]:
    made = Databases(postgres, [])
    try:
        yield made
    finally:
        for name in made.made:
            postgres.drop_database(name)


def sqlite_at(path: Path) -> SqliteBackend:
    path.mkdir()
    return SqliteBackend(path, owner="test-host")


async def test_sqlite_to_postgresql_and_back_loses_nothing(
    tmp_path: Path, databases: Databases
) -> None:
    first = sqlite_at(tmp_path / "first")
    await fill(first)
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")

    counts = export_to(first, a)
    assert list(counts) == ALL_TABLES
    assert all(counts.values()), counts  # every table holds something
    assert counts["events.events"] == 40 and counts["incidents.outbox"] == 3
    assert counts["incidents.ledger_outbox"] == 2  # one applied, one pending

    pg = databases.backend()
    assert import_from(pg, a) == counts
    assert export_to(pg, b) == counts
    assert b.read_bytes() == a.read_bytes()

    last = sqlite_at(tmp_path / "last")
    assert import_from(last, b) == counts
    export_to(last, c)
    assert c.read_bytes() == a.read_bytes()

    expected = await credits(first)
    assert expected[0] and expected[1]  # credit rows and an adjustment to compare
    assert await credits(pg) == expected
    assert await credits(last) == expected

    # Ids are kept and never handed out again: the next incident follows the last one.
    await pg.open()
    try:
        store = pg.incident_store()
        await store.open()
        third = await store.open_incident(
            "db", started_at=T0, at=T0, maintenance=False, cause="provider", message="x",
            outgoing=plan(),
        )  # fmt: skip
        await store.close()
    finally:
        await pg.close()
    assert third.id == 3


def test_the_file_is_documented_json_lines(tmp_path: Path) -> None:
    state = sqlite_at(tmp_path / "s")
    path = tmp_path / "e.jsonl"
    export_to(state, path)  # an empty state: every table, no rows
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["format"] == "nodevigil-state" and lines[0]["version"] == 1
    assert [line["table"] for line in lines[1:]] == ALL_TABLES
    assert lines[1]["columns"] == ["id", "at", "kind", "subject", "vantage", "schema", "data"]


async def test_money_is_a_string_and_times_are_numbers_as_stored(tmp_path: Path) -> None:
    state = sqlite_at(tmp_path / "s")
    await fill(state)
    path = tmp_path / "e.jsonl"
    export_to(state, path)
    tables: dict[str, list[list[Any]]] = {}
    current: list[list[Any]] = []
    for line in path.read_text().splitlines()[1:]:
        value = json.loads(line)
        if isinstance(value, dict):
            current = tables.setdefault(value["table"], [])
        else:
            current.append(value)
    assert {row[3] for row in tables["ledger.charges"]} == {"288.00", "0.3333"}
    assert tables["events.events"][1][1] == T0 + 0.125
    assert isinstance(tables["ledger.intervals"][0][2], int)  # microseconds


async def test_a_non_empty_target_is_refused_unless_forced(
    tmp_path: Path, databases: Databases
) -> None:
    source = sqlite_at(tmp_path / "s")
    await fill(source)
    path = tmp_path / "e.jsonl"
    counts = export_to(source, path)
    pg = databases.backend()
    import_from(pg, path)
    with pytest.raises(StateError, match=r"is not empty: events\.events \(40\)"):
        import_from(pg, path)
    assert import_from(pg, path, force=True) == counts  # replaced, not doubled
    with pytest.raises(StateError, match="not empty"):
        import_from(source, path)
    assert import_from(source, path, force=True) == counts


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda lines: lines[:-3], "cut short"),
        (lambda lines: ['{"format": "other"}', *lines[1:]], "not a nodevigil state file"),
        (lambda lines: ['{"format": "nodevigil-state", "version": 9}', *lines[1:]], "version 9"),
    ],
)
async def test_a_damaged_file_changes_nothing(
    tmp_path: Path, edit: Callable[[list[str]], list[str]], problem: str
) -> None:
    source = sqlite_at(tmp_path / "s")
    await fill(source)
    path = tmp_path / "e.jsonl"
    export_to(source, path)
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    target = sqlite_at(tmp_path / "t")
    with pytest.raises(StateError, match=problem):
        import_from(target, path)
    with tables_for(target) as tables:
        assert not any(tables.counts().values())


async def test_a_running_daemon_is_never_moved_under(tmp_path: Path, databases: Databases) -> None:
    state = sqlite_at(tmp_path / "s")
    with StateLock(state.state_dir), pytest.raises(StateError, match="in use by another"):
        export_to(state, tmp_path / "e.jsonl")
    assert not (tmp_path / "e.jsonl").exists() or not (tmp_path / "e.jsonl").read_text()

    pg = databases.backend()
    await pg.open()  # the daemon's pool: connections named "nodevigil"
    try:
        with pytest.raises(StateError, match="in use by a running nodevigil"):
            export_to(pg, tmp_path / "e.jsonl")
    finally:
        await pg.close()


def test_the_transfer_covers_every_schema_version() -> None:
    """A new migration fails here until the file format carries what it adds."""
    from nodevigil.state.postgres import components as pg_components
    from nodevigil.state.postgres import transfer as pg_transfer
    from nodevigil.state.sqlite import components as sqlite_components
    from nodevigil.state.sqlite import transfer as sqlite_transfer

    files = sqlite_components.FILES
    assert {c: len(steps) for c, (_, steps) in files.items()} == sqlite_transfer.COVERED
    steps = pg_components.STEPS
    moved = {c: len(s) for c, s in steps.items() if c not in pg_transfer.NOT_MOVED}
    assert moved == pg_transfer.COVERED
    # Left out on purpose, not by oversight: the fencing epoch and the leaders' alive marks
    # belong to the cluster on that database, they are not state to move.
    assert set(pg_transfer.NOT_MOVED) == {"cluster", "leader_marks"}
    assert set(pg_transfer.NOT_MOVED) <= set(steps)
