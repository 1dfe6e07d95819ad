"""The installation id (first part of every notice's id) on both backends: drawn once, kept,
and on PostgreSQL the same for every host of a cluster, even when they start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodevigil.core.config.schema import Database
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend
from tests.postgres_server import PostgresAddress


async def test_the_installation_id_is_drawn_once(backend: Backend) -> None:
    first = await backend.installation_id()
    assert len(first) == 12 and int(first, 16) >= 0
    assert await backend.installation_id() == first


async def test_every_host_of_a_cluster_reads_one_installation_id(
    postgres: PostgresAddress,
) -> None:
    database = postgres.create_database()
    settings = Database(url=postgres.url(database), password_file=postgres.password_file)
    hosts = [PostgresBackend(settings, None, owner=f"ops-{n}") for n in range(3)]
    try:
        for host in hosts:
            await host.open()
        # All start at once on an empty database: one draw wins, the others read it.
        ids = await asyncio.gather(*(host.installation_id() for host in hosts))
        assert len(set(ids)) == 1
    finally:
        for host in hosts:
            await host.close()
        postgres.drop_database(database)


async def test_two_state_directories_are_two_installations(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await SqliteBackend(tmp_path / "a").installation_id()
    b = await SqliteBackend(tmp_path / "b").installation_id()
    assert a != b
