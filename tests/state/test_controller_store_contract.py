"""The controller store's contract (``failover.controller.store.Store``), on SQLite and
PostgreSQL: overrides, the book of hold-downs saved by difference, the action log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from failover.controller import ActionRecord, Book, NodeBook, Outage, Override, SiteBook
from failover.controller.store import Store, StoredState
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend
from nodevigil.state.controller_rows import action_from
from tests.state.helpers import set_schema_version


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An empty controller store."""
    made = backend.controller_store()
    try:
        yield made
    finally:
        await made.close()


async def reloaded(backend: Backend) -> StoredState:
    """What a fresh store of the same backend loads (as after a restart)."""
    fresh = backend.controller_store()
    try:
        return await fresh.load()
    finally:
        await fresh.close()


def action(
    at: float, target: str = "web/sh-1", *, result: str = "ok", error: str | None = None
) -> ActionRecord:
    """One action record."""
    return ActionRecord(at, "sh-lb", "set_state", target, "ready", "maint", "down", result, error)


BOOK = Book(
    nodes={
        "sh-1": NodeBook(down=True, held=True, down_since=5.5, failures=2, hold=120.0),
        "sh-2": NodeBook(),
        "bj-1": NodeBook(held=True, up_since=7.25, back_at=3.0, failures=1, hold=60.0),
    },
    sites={"sh": SiteBook(), "bj": SiteBook(can_serve=False, up=False, recovering_since=9.0)},
    outages={
        "web": Outage("web", 50.0, ("sh", "bj"), {"sh-1": {"verdict": "down", "n": [1, 2]}}),
    },
)


async def test_an_empty_store_loads_nothing(store: Store) -> None:
    loaded = await store.load()
    assert loaded.overrides == {}
    assert loaded.book == Book()
    assert await store.actions() == []
    assert await store.prune_actions(1e12) == 0


async def test_overrides_put_replace_and_delete_idempotently(
    store: Store, backend: Backend
) -> None:
    drain = Override("node", "sh-1", "disk", "alice", 100.0, 200.0)
    await store.put_override(drain)
    await store.put_override(drain)  # the same twice: still one
    site = Override("site", "sh-1", "net", "bob", 110.0)  # same name, other kind: distinct
    await store.put_override(site)
    assert (await reloaded(backend)).overrides == {("node", "sh-1"): drain, ("site", "sh-1"): site}

    replaced = Override("node", "sh-1", "kernel update", "carol", 150.0, None)
    await store.put_override(replaced)
    assert (await store.load()).overrides == {("node", "sh-1"): replaced, ("site", "sh-1"): site}

    await store.delete_override("site", "sh-1")
    await store.delete_override("site", "sh-1")  # absent: no error
    await store.delete_override("node", "nobody")
    assert (await reloaded(backend)).overrides == {("node", "sh-1"): replaced}


async def test_the_book_round_trips(store: Store, backend: Backend) -> None:
    await store.save_book(BOOK)
    loaded = (await reloaded(backend)).book
    assert loaded == BOOK
    assert loaded.outages["web"].sites == ("sh", "bj")  # a tuple again, not a list


async def test_saves_by_difference_end_in_the_latest_book(store: Store, backend: Backend) -> None:
    assert (await store.load()).book == Book()
    await store.save_book(BOOK)
    changed = Book(
        nodes={
            "sh-1": NodeBook(down=False, held=True, up_since=60.0, failures=2, hold=120.0),
            "sh-2": NodeBook(),  # unchanged
            "sh-3": NodeBook(down=True, held=True, down_since=61.0),  # new
        },  # bj-1 removed from the configuration
        sites={"sh": SiteBook(can_serve=False, up=False)},  # bj removed, sh changed
        outages={"api": Outage("api", 62.0)},  # web ended, api began
    )
    await store.save_book(changed)
    assert (await reloaded(backend)).book == changed
    await store.save_book(changed)  # nothing changed: nothing to write, still the same
    await store.save_book(Book())
    assert (await reloaded(backend)).book == Book()


async def test_a_store_that_never_loaded_replaces_the_whole_book(backend: Backend) -> None:
    first = backend.controller_store()
    await first.save_book(BOOK)
    await first.close()
    second = backend.controller_store()  # never loaded: it cannot know what is stored
    only = Book(nodes={"sh-9": NodeBook(held=True)}, outages={"db": Outage("db", 1.0)})
    await second.save_book(only)
    await second.close()
    assert (await reloaded(backend)).book == only


async def test_a_large_book_saves_and_loads(store: Store, backend: Backend) -> None:
    book = Book(nodes={f"n-{i}": NodeBook(down=i % 3 == 0, failures=i % 5) for i in range(3000)})
    await store.load()
    await store.save_book(book)
    one_changed = Book(nodes={**book.nodes, "n-7": NodeBook(held=True)})
    await store.save_book(one_changed)
    assert (await reloaded(backend)).book == one_changed


async def test_actions_are_appended_and_listed_latest_last(store: Store) -> None:
    records = [action(float(i), target=f"web/sh-{i}") for i in range(5)]
    await store.record_actions(records[:2])
    await store.record_actions([])
    failed = action(5.0, result="error", error="connection refused")
    await store.record_actions([*records[2:], failed])
    assert await store.actions() == [*records, failed]
    assert await store.actions(limit=3) == [records[3], records[4], failed]
    assert await store.actions(limit=1) == [failed]


async def test_actions_keep_the_order_they_were_recorded_in_not_their_time(store: Store) -> None:
    # A record's time is the wall clock's: a step back must not reorder the log.
    late, early = action(100.0), action(50.0, target="web/sh-2")
    await store.record_actions([late])
    await store.record_actions([early])
    assert await store.actions() == [late, early]


async def test_an_action_names_the_vantage_and_epoch_it_was_taken_under(
    store: Store, backend: Backend
) -> None:
    by_leader = ActionRecord(
        1.0,
        "sh-lb",
        "set_state",
        "web/sh-1",
        "ready",
        "maint",
        "down",
        "ok",
        vantage="ops-2",
        epoch=7,
    )
    alone = ActionRecord(
        2.0, "sh-lb", "set_state", "web/sh-2", "ready", "maint", "down", "ok", vantage="ops-1"
    )
    await store.record_actions([by_leader, alone])
    again = backend.controller_store()
    try:
        assert await again.actions() == [by_leader, alone]
    finally:
        await again.close()


def test_an_action_recorded_before_vantage_and_epoch_reads_back_without_them() -> None:
    old = '{"at": 1.0, "lb": "sh-lb", "what": "set_state", "target": "web/sh-1", "old": "ready", '
    old += '"new": "maint", "why": "down", "result": "ok", "error": null}'
    record = action_from(old)
    assert (record.target, record.vantage, record.epoch) == ("web/sh-1", "", None)


async def test_prune_actions_deletes_what_is_older_than_the_cutoff(store: Store) -> None:
    records = [action(at) for at in (10.0, 20.0, 30.0)]
    await store.record_actions(records)
    assert await store.prune_actions(20.0) == 1  # strictly older: the record at 20 stays
    assert await store.prune_actions(20.0) == 0
    assert await store.actions() == records[1:]


async def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    store = backend.controller_store()
    drain = Override("node", "sh-1", "disk", "alice", 100.0, 200.0)
    await store.put_override(drain)
    await store.save_book(BOOK)
    records = [action(1.0), action(2.0, result="error", error="timeout")]
    await store.record_actions(records)
    await store.close()

    again = backend.controller_store()
    loaded = await again.load()
    assert loaded.overrides == {("node", "sh-1"): drain}
    assert loaded.book == BOOK
    assert await again.actions() == records
    await again.close()


async def test_a_newer_schema_is_refused(backend: Backend) -> None:
    store = backend.controller_store()
    await store.load()
    await store.close()
    await set_schema_version(backend, file="failover.db", component="controller", version=99)
    newer = backend.controller_store()
    with pytest.raises(StateError, match=r"schema.*99.*newer than this nodevigil knows"):
        await newer.load()
    with pytest.raises(StateError, match="newer than this nodevigil knows"):
        await newer.put_override(Override("node", "sh-1", "disk", "alice", 1.0))
    await newer.close()
