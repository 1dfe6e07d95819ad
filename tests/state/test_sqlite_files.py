"""SQLite files written before the stores were versioned by ``migrate`` still open, whole, and
an event log on a full disk keeps its events in memory until the disk takes them again."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from failover.controller import ActionRecord, Book, NodeBook, Outage, Override
from nodevigil.core.errors import StateError
from nodevigil.state.sqlite.controller import STEPS as CONTROLLER_STEPS
from nodevigil.state.sqlite.controller import SqliteControllerStore
from nodevigil.state.sqlite.eventlog import STEPS as EVENT_STEPS
from nodevigil.state.sqlite.eventlog import SqliteEventLog
from tests.state.helpers import event

# What the previous code created, verbatim: events.db never set a user_version (it stays 0).
OLD_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    vantage TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE INDEX IF NOT EXISTS events_subject ON events (subject, at);
"""
# ... and failover.db, with PRAGMA user_version=1.
OLD_CONTROLLER = """
CREATE TABLE IF NOT EXISTS overrides (
    kind TEXT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL, who TEXT NOT NULL,
    since REAL NOT NULL, until REAL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS books (
    kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS outages (
    service TEXT PRIMARY KEY, started_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_at ON actions (at);
"""


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def test_an_events_db_of_the_previous_code_opens_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_EVENTS)
        db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            ("old-1", 10.0, "node.down", "sh-1", "sh-probe", json.dumps({"reason": "timeout"})),
        )
        db.commit()
    assert user_version(path) == 0

    log = SqliteEventLog(path)
    await log.open()
    new = event("node.up", "sh-1", 20.0, after=5.0)
    log.append(new)
    rows = await log.query()
    await log.close()
    assert rows == [
        {"id": new.id, "kind": "node.up", "subject": "sh-1", "at": 20.0, "vantage": "sh-probe",
         "data": {"after": 5.0}},
        {"id": "old-1", "kind": "node.down", "subject": "sh-1", "at": 10.0, "vantage": "sh-probe",
         "data": {"reason": "timeout"}},
    ]  # fmt: skip
    assert user_version(path) == len(EVENT_STEPS)


async def test_a_failover_db_of_the_previous_code_opens_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "failover.db"
    node = {"down": True, "held": True, "down_since": 5.0, "up_since": None, "back_at": None,
            "failures": 2, "hold": 120.0}  # fmt: skip
    record = ActionRecord(1.0, "sh-lb", "set_state", "web/sh-1", "ready", "maint", "why", "ok")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_CONTROLLER)
        db.execute("PRAGMA user_version=1")
        db.execute("INSERT INTO overrides VALUES ('node', 'sh-1', 'disk', 'alice', 100.0, NULL)")
        db.execute("INSERT INTO books VALUES ('node', 'sh-1', ?)", (json.dumps(node),))
        db.execute(
            "INSERT INTO outages VALUES ('web', 50.0, ?)",
            (json.dumps({"sites": ["sh"], "evidence": {"sh-1": "down"}}),),
        )
        db.execute(
            "INSERT INTO actions (at, body) VALUES (1.0, ?)",
            (json.dumps({f: getattr(record, f) for f in record.__slots__}),),
        )
        db.commit()

    store = SqliteControllerStore(path)
    loaded = await store.load()
    assert loaded.overrides == {("node", "sh-1"): Override("node", "sh-1", "disk", "alice", 100.0)}
    assert loaded.book == Book(
        nodes={"sh-1": NodeBook(down=True, held=True, down_since=5.0, failures=2, hold=120.0)},
        outages={"web": Outage("web", 50.0, ("sh",), {"sh-1": "down"})},
    )
    assert await store.actions() == [record]
    await store.close()
    assert user_version(path) == len(CONTROLLER_STEPS) == 1


async def test_the_controller_store_makes_its_directory(tmp_path: Path) -> None:
    store = SqliteControllerStore(tmp_path / "new" / "dir" / "failover.db")
    assert await store.load() == await store.load()
    await store.close()
    await store.close()  # a second close does nothing


async def test_an_unopenable_controller_file_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "failover.db").mkdir()  # a directory where the file should be
    store = SqliteControllerStore(tmp_path / "failover.db")
    with pytest.raises(StateError, match=r"failover\.db: cannot open the state database"):
        await store.load()
    await store.close()


async def test_events_wait_in_memory_while_the_disk_is_full(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db", max_waiting=300)
    await log.open()
    # The file may not grow past its present size: SQLite answers SQLITE_FULL, as on a full disk.
    db = log._db  # the log's own connection: the limit is per connection
    pages = await db.call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await db.call(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))
    big = "x" * 2000
    first = [event("node.down", f"sh-{i}", float(i), blob=big) for i in range(200)]
    for e in first:
        log.append(e)
    await log.flush()
    assert (log.write_errors, log.waiting, log.dropped) == (1, 200, 0)
    # Still listed, with the filters applied, while they wait.
    rows = await log.query(kind="node.", subject="sh-7")
    assert [r["id"] for r in rows] == [first[7].id]
    assert len(await log.query(limit=500)) == 200

    more = [event("node.up", f"sh-{i}", 1000.0 + i) for i in range(150)]
    for e in more:
        log.append(e)
    await log.flush()
    assert (log.write_errors, log.waiting, log.dropped) == (2, 300, 50)  # the oldest given up
    listed = await log.query(limit=1000)
    assert {r["id"] for r in listed} == {e.id for e in [*first[50:], *more]}

    await db.call(lambda c: c.execute("PRAGMA max_page_count=1073741823"))  # room again
    await log.flush()
    assert (log.waiting, log.dropped) == (0, 50)
    await log.close()

    again = SqliteEventLog(tmp_path / "events.db")
    await again.open()
    assert {r["id"] for r in await again.query(limit=1000)} == {r["id"] for r in listed}
    await again.close()
