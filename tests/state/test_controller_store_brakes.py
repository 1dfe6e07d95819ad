"""The controller store keeps engaged brakes (``Book.brakes``), on SQLite and PostgreSQL: an
engaged brake survives a restart and a change of leader, and a released one is forgotten."""

from __future__ import annotations

from failover.controller import Book, BrakeBook, NodeBook
from nodevigil.state.backend import Backend


async def test_brakes_are_saved_by_difference_and_read_back(backend: Backend) -> None:
    site = BrakeBook(since=5.0, nodes=8, went_down=6, tokens=0.5, refilled_at=7.0, held=("a",))
    fleet = BrakeBook(since=6.0, nodes=30, went_down=16, held_sites=("west", "east"))
    nodes = {"sh-1": NodeBook(down=True, held=True, down_since=5.0)}
    store = backend.controller_store()
    try:
        await store.save_book(Book(nodes=nodes, brakes={"site:sh": site, "fleet": fleet}))
        await store.save_book(Book(nodes=nodes, brakes={"fleet": fleet}))  # sh's released
    finally:
        await store.close()
    again = backend.controller_store()
    try:
        book = (await again.load()).book
        assert book.brakes == {"fleet": fleet}
        assert book.nodes == nodes
        await again.save_book(Book(nodes=nodes))  # the fleet's released too
    finally:
        await again.close()
    last = backend.controller_store()
    try:
        assert (await last.load()).book == Book(nodes=nodes)
    finally:
        await last.close()
