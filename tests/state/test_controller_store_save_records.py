"""``Store.save_book(book, records)`` on SQLite and PostgreSQL: the controller's action
records ride in its book save, one transaction (failover/controller/loop.py, ``_record``)."""

from __future__ import annotations

from failover.controller import ActionRecord, Book, NodeBook
from nodevigil.state.backend import Backend


def _action(at: float, target: str) -> ActionRecord:
    return ActionRecord(at, "sh-lb", "set_state", target, "ready", "maint", "down", "ok")


async def test_a_save_appends_its_records_after_those_before(backend: Backend) -> None:
    store = backend.controller_store()
    try:
        await store.load()
        await store.record_actions([_action(1.0, "web/sh-1")])
        book = Book(nodes={"sh-2": NodeBook(down=True, held=True, down_since=2.0)})
        await store.save_book(book, [_action(2.0, "web/sh-2"), _action(3.0, "web/sh-3")])
        await store.save_book(book)  # nothing changed, no records: nothing written
        assert [r.target for r in await store.actions()] == ["web/sh-1", "web/sh-2", "web/sh-3"]
    finally:
        await store.close()
    fresh = backend.controller_store()
    try:
        assert (await fresh.load()).book == book
        assert len(await fresh.actions()) == 3
    finally:
        await fresh.close()
