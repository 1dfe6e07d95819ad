"""The backends open and close, and the configuration chooses between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodevigil.core.config import parse_config
from nodevigil.core.errors import ConfigError, StateError
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend, backend_for
from nodevigil.state.postgres.schema import migrate, version_of
from tests.postgres_server import PostgresAddress


def test_the_configuration_chooses_the_backend(tmp_path: Path) -> None:
    assert isinstance(backend_for(parse_config({"state_dir": str(tmp_path)})), SqliteBackend)
    config = parse_config({"database": {"url": "postgresql://nv@db1,db2/nv", "pool_size": 2}})
    chosen = backend_for(config)
    assert isinstance(chosen, PostgresBackend) and chosen.database.pool_size == 2


@pytest.mark.parametrize(
    ("database", "problem"),
    [
        ({"url": "postgresql://nv:secret@db/nv"}, "password"),
        ({"url": "mysql://db/nv"}, "url"),
        ({"url": "postgresql://db/nv", "password_file": "a", "password_env": "B"}, "not both"),
    ],
)
def test_a_bad_database_section_names_the_key(database: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": database})
    assert any("database" in p and problem in p for p in caught.value.problems), caught.value


async def test_an_unreachable_postgresql_is_a_state_error() -> None:
    config = parse_config(
        {"database": {"url": "postgresql://nv@127.0.0.1:1/nv", "connect_timeout": "1s"}}
    )
    with pytest.raises(StateError, match=r"database\.url: cannot connect to PostgreSQL"):
        await backend_for(config).open()


async def test_backend_opens(backend: Backend) -> None:
    assert backend.name in ("sqlite", "postgres")


async def test_migrations_apply_once_and_refuse_a_newer_schema(
    postgres: PostgresAddress,
) -> None:
    import psycopg

    name = postgres.create_database()
    dsn = postgres.admin_dsn.replace("dbname=postgres", f"dbname={name}")
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            steps = ["CREATE TABLE a (x int)", "ALTER TABLE a ADD COLUMN y int"]
            assert await version_of(conn, "demo") is None
            assert await migrate(conn, "demo", steps[:1]) == 1
            assert await migrate(conn, "demo", steps) == 1
            assert await migrate(conn, "demo", steps) == 0
            assert await version_of(conn, "demo") == 2
            with pytest.raises(StateError, match="newer than this nodevigil knows"):
                await migrate(conn, "demo", steps[:1])
    finally:
        postgres.drop_database(name)
