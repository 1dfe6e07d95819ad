"""PostgreSQL stopped under the stores and started again: the event log keeps its events in
memory and writes them when the server is back; the controller store says what it could not
do (a StateError the controller retries) and works again afterwards. Nothing crashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from failover.controller import Override
from nodevigil.core.config.schema import Database
from nodevigil.core.errors import StateError
from nodevigil.state.backend import PostgresBackend
from tests.failover.daemons import poll_until
from tests.postgres_server import PostgresServer, run_postgres
from tests.state.helpers import event


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[PostgresServer]:
    """A server of this test's own, to stop and start."""
    async with run_postgres(tmp_path) as running:
        yield running


@pytest.fixture
async def backend(server: PostgresServer) -> AsyncIterator[PostgresBackend]:
    """The PostgreSQL backend on ``server``, giving up on a connection after a second."""
    settings = Database(url=server.url, password_file=server.password_file, connect_timeout="1s")
    opened = PostgresBackend(settings, None, owner="test-host")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_events_wait_in_memory_while_postgresql_is_down(
    server: PostgresServer, backend: PostgresBackend
) -> None:
    log = backend.event_log()
    await log.open()
    runner = asyncio.create_task(log.run(), name="event-log")
    try:
        before = [event("node.down", f"sh-{i}", float(i)) for i in range(3)]
        for e in before:
            log.append(e)

        async def written() -> bool:
            return log.waiting == 0

        await poll_until(written, within=10, what="events written")

        await server.stop()
        during = [event("node.up", f"sh-{i}", 100.0 + i) for i in range(50)]
        for e in during:
            log.append(e)

        async def refused() -> bool:
            return log.write_errors > 0

        await poll_until(refused, within=15, what="a refused write")
        assert log.waiting == 50 and log.dropped == 0
        with pytest.raises(StateError, match=r"cannot read the event log \(PostgreSQL\)"):
            await log.query()
        assert not runner.done()  # the loop keeps trying

        await server.start()
        await poll_until(written, within=30, what="the waiting events written after the restart")
        rows = await log.query(limit=100)
        assert {r["id"] for r in rows} == {e.id for e in [*before, *during]}
        assert log.dropped == 0
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await log.close()


async def test_the_controller_store_fails_readably_and_recovers(
    server: PostgresServer, backend: PostgresBackend
) -> None:
    store = backend.controller_store()
    await store.load()
    drain = Override("node", "sh-1", "disk", "alice", 100.0)
    await server.stop()
    with pytest.raises(
        StateError, match=r"controller store \(PostgreSQL\): cannot save the override"
    ):
        await store.put_override(drain)

    await server.start()

    async def saved() -> bool:
        try:
            await store.put_override(drain)
        except StateError:  # a connection the pool held from before the restart
            return False
        return True

    await poll_until(saved, within=30, interval=0.2, what="the override saved after the restart")
    assert (await store.load()).overrides == {("node", "sh-1"): drain}
    await store.close()
