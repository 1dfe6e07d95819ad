"""The PostgreSQL fixture itself: a real server, a password login, a restart that keeps data."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.postgres_server import run_postgres


async def test_a_real_server_that_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    async with run_postgres(tmp_path) as pg:
        async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE t (x int)")
            await conn.execute("INSERT INTO t VALUES (42)")
        bad = pg.dsn.replace("password=", "password=wrong")
        try:
            await psycopg.AsyncConnection.connect(bad)
        except psycopg.OperationalError as exc:
            assert "password authentication failed" in str(exc)
        else:
            raise AssertionError("a wrong password was accepted")
        await pg.restart()
        async with await psycopg.AsyncConnection.connect(pg.dsn) as conn:
            row = await (await conn.execute("SELECT x FROM t")).fetchone()
        assert row == (42,)
        assert (tmp_path / "db.password").read_text().strip()
