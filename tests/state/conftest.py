"""Every port's contract runs against both backends: SQLite files, and a real PostgreSQL.

``backend`` is parametrized: each test using it runs twice, on a fresh SQLite state directory
and on a fresh database of one PostgreSQL server started for the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodevigil.core.config.schema import Database
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend
from tests.postgres_server import PostgresAddress

# ``postgres``, the session's server, is in tests/conftest.py (the crash tests use it too).


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """An opened backend with empty state."""
    made: Backend
    database: str | None = None
    if request.param == "sqlite":
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        made = SqliteBackend(state_dir, owner="test-host")
    else:
        address: PostgresAddress = request.getfixturevalue("postgres")
        database = address.create_database()
        settings = Database(url=address.url(database), password_file=address.password_file)
        made = PostgresBackend(settings, None, owner="test-host")
    await made.open()
    try:
        yield made
    finally:
        await made.close()
        if database is not None:
            request.getfixturevalue("postgres").drop_database(database)
