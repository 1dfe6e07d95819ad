"""The SQLite store and the state_dir lock."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from failover.controller import ActionRecord, Book, NodeBook, Outage, Override, SiteBook
from nodevigil.core.errors import StateError
from nodevigil.state.lock import StateLock
from nodevigil.state.sqlite.controller import SqliteControllerStore


async def test_store_round_trip(tmp_path: Path) -> None:
    store = SqliteControllerStore(tmp_path / "s" / "nodevigil.db")
    override = Override("node", "sh-1", "disk", "alice", 100.0, 200.0)
    await store.put_override(override)
    await store.put_override(Override("site", "bj", "net", "bob", 100.0))
    await store.delete_override("site", "bj")
    book = Book(
        nodes={"sh-1": NodeBook(down=True, held=True, down_since=5.0, failures=2, hold=120.0)},
        sites={"bj": SiteBook(can_serve=False, up=False)},
        outages={"web": Outage("web", 50.0, ("sh", "bj"), {"sh-1": {"verdict": "down"}})},
    )
    await store.save_book(book)
    record = ActionRecord(1.0, "sh-lb", "set_state", "web/sh-1", "ready", "maint", "why", "ok")
    await store.record_actions([record])
    await store.close()

    again = SqliteControllerStore(tmp_path / "s" / "nodevigil.db")
    loaded = await again.load()
    assert loaded.overrides == {("node", "sh-1"): override}
    assert loaded.book == book
    assert await again.actions() == [record]
    assert await again.prune_actions(before=2.0) == 1
    assert await again.actions() == []
    await again.close()
    with sqlite3.connect(tmp_path / "s" / "nodevigil.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


async def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "nodevigil.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    store = SqliteControllerStore(path)
    with pytest.raises(StateError, match="schema version 99"):
        await store.load()
    await store.close()


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    first = StateLock(tmp_path)
    first.acquire()
    second = StateLock(tmp_path)
    with pytest.raises(StateError, match=rf"another nodevigil \(pid {os.getpid()}\)"):
        second.acquire()
    first.release()
    with second:
        assert (tmp_path / "nodevigil.lock").read_text().strip().isdigit()
    first.acquire()  # free again after the context manager released it
    first.release()
