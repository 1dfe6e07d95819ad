"""The fencing epoch in a real PostgreSQL: a deposed leader's writes are refused by the database.

Two backends on one database stand for two hosts: the old leader (epoch 7) and the new one
(epoch 9). Once the new one has advanced the epoch row, every leader write of the old one fails
with EpochFenced and writes nothing, while its reads and operators' writes still work.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import psycopg
import pytest

from failover.controller.state import Book, Override
from failover.controller.store import ActionRecord
from nodevigil.core.authority import Fenced, Sole
from nodevigil.core.config.schema import Database
from nodevigil.state.backend import PostgresBackend
from nodevigil.state.postgres.epoch import EpochFenced
from nodevigil.state.postgres.ledger import PostgresLedgerStore
from sla.model import Cause
from tests.postgres_server import PostgresAddress


@dataclass
class Lease:
    """An Authority whose epoch and deadline the test sets."""

    epoch: int | None
    acting: bool = True

    def may_act(self) -> bool:
        return self.acting

    def remaining(self) -> float:
        return math.inf if self.acting else 0.0


@pytest.fixture
async def database(postgres: PostgresAddress) -> AsyncIterator[Database]:
    name = postgres.create_database()
    try:
        yield Database(url=postgres.url(name), password_file=postgres.password_file)
    finally:
        postgres.drop_database(name)


@pytest.fixture
async def hosts(database: Database) -> AsyncIterator[Callable[[str], PostgresBackend]]:
    """Backends on the same database, one per host name, closed at the end."""
    made: list[PostgresBackend] = []

    def host(name: str) -> PostgresBackend:
        backend = PostgresBackend(database, None, owner=name)
        made.append(backend)
        return backend

    yield host
    for backend in made:
        await backend.close()


def record(at: float) -> ActionRecord:
    return ActionRecord(at, "lb", "set_state", "web/n1", "ready", "drain", "test", "ok")


async def held_epoch(database: Database) -> int | None:
    async with await psycopg.AsyncConnection.connect(
        database.url,
        password=database.password_file.read_text().strip(),  # type: ignore[union-attr]
    ) as conn:
        found = await (await conn.execute("SELECT to_regclass('nodevigil_epoch')")).fetchone()
        if found is None or found[0] is None:
            return None
        row = await (await conn.execute("SELECT epoch FROM nodevigil_epoch")).fetchone()
        return None if row is None else int(row[0])


def ledger_of(backend: PostgresBackend) -> PostgresLedgerStore:
    store = backend.ledger_store()()
    assert isinstance(store, PostgresLedgerStore)
    return store


async def test_a_newer_epoch_refuses_the_old_leaders_writes(
    hosts: Callable[[str], PostgresBackend], database: Database
) -> None:
    old, new = hosts("ops-1"), hosts("ops-2")
    await old.open()
    await new.open()
    old_lease, new_lease = Lease(7), Lease(9)
    old.fence(old_lease)
    new.fence(new_lease)
    old_controller, new_controller = old.controller_store(), new.controller_store()
    old_incidents, new_incidents = old.incident_store(), new.incident_store()
    await old_incidents.open()
    await new_incidents.open()

    # Epoch 7 leads: its first leader write advances the row, its writes land.
    await old_controller.record_actions([record(1.0)])
    assert await held_epoch(database) == 7
    # Epoch 9 takes over and advances the row at once (before it writes anything).
    assert await new.advance_epoch() == 9
    assert await held_epoch(database) == 9

    # The old leader's writes are refused by the database, and nothing of them is written.
    with pytest.raises(EpochFenced) as refused:
        await old_controller.record_actions([record(2.0)])
    assert (refused.value.mine, refused.value.held) == (7, 9)
    assert isinstance(refused.value, Fenced)
    with pytest.raises(EpochFenced):
        await old_controller.save_book(Book())
    with pytest.raises(EpochFenced):
        await old_incidents.open_incident(
            "web",
            started_at=10.0,
            at=10.0,
            maintenance=False,
            cause="provider",
            message="down",
            outgoing=lambda _: [],
        )
    with pytest.raises(EpochFenced):
        await old_incidents.claim_due(100.0)
    old_ledger = ledger_of(old)
    try:
        with pytest.raises(EpochFenced):
            await asyncio.to_thread(
                old_ledger.insert_interval,
                "web",
                10_000_000,
                end_us=None,
                cause=Cause.PROVIDER,
                evidence="{}",
                at=10_000_000,
            )
        # Reads still work on the deposed leader.
        assert await asyncio.to_thread(old_ledger.intervals, None, None, None) == []
    finally:
        old_ledger.close()
    assert [r.at for r in await old_controller.actions()] == [1.0]
    assert await old_incidents.incidents() == []
    assert (await old_controller.load()).book == Book()

    # An operator's write through the old host still goes to the shared state.
    await old_controller.put_override(Override("node", "n1", "drain", "alice", 5.0, None))
    assert ("node", "n1") in (await new_controller.load()).overrides

    # The new leader writes; the row never moves back.
    await new_controller.record_actions([record(3.0)])
    incident = await new_incidents.open_incident(
        "web",
        started_at=10.0,
        at=10.0,
        maintenance=False,
        cause="provider",
        message="down",
        outgoing=lambda _: [],
    )
    assert [i.id for i in await old_incidents.incidents()] == [incident.id]
    new_ledger = ledger_of(new)
    try:
        await asyncio.to_thread(
            new_ledger.insert_interval,
            "web",
            10_000_000,
            end_us=None,
            cause=Cause.PROVIDER,
            evidence="{}",
            at=10_000_000,
        )
    finally:
        new_ledger.close()
    assert await old.advance_epoch() == 9
    assert await held_epoch(database) == 9
    for store in (old_controller, new_controller):
        await store.close()


async def test_a_host_without_the_lease_does_not_write_as_leader(
    hosts: Callable[[str], PostgresBackend], database: Database
) -> None:
    standby = hosts("ops-3")
    await standby.open()
    standby.fence(Lease(None, acting=False))
    controller = standby.controller_store()
    with pytest.raises(EpochFenced, match="does not hold the leader lease"):
        await controller.record_actions([record(1.0)])
    with pytest.raises(EpochFenced):
        await standby.advance_epoch()
    await controller.put_override(Override("node", "n1", "drain", "bob", 5.0, None))
    assert [r.at for r in await controller.actions()] == []
    await controller.close()


async def test_a_single_host_writes_as_today(
    hosts: Callable[[str], PostgresBackend], database: Database
) -> None:
    alone = hosts("ops-1")
    await alone.open()
    alone.fence(Sole())
    controller = alone.controller_store()
    await controller.record_actions([record(1.0)])
    assert await alone.advance_epoch() is None
    assert [r.at for r in await controller.actions()] == [1.0]
    # Without a cluster nothing reads or writes the epoch row.
    assert await held_epoch(database) is None
    await controller.close()
