"""The PostgreSQL watch's pure parts: the URL it reports, and the bounded wait of the stores."""

from __future__ import annotations

import asyncio

import pytest

from nodevigil.core.errors import StateError
from nodevigil.state.postgres.bounded import Bounded
from nodevigil.state.postgres.watch import redacted


def test_the_reported_url_carries_no_password() -> None:
    assert redacted("postgresql://nv:s3cret@db1,db2/nv?target_session_attrs=read-write") == (
        "postgresql://nv@db1,db2/nv?target_session_attrs=read-write"
    )
    assert redacted("postgresql://nv@h/nv?sslmode=require&password=s3cret") == (
        "postgresql://nv@h/nv?sslmode=require&password=***"
    )
    assert redacted("postgresql://h/nv") == "postgresql://h/nv"


async def test_a_stuck_operation_is_waited_for_once_then_fails_fast_until_it_ends() -> None:
    bounded = Bounded("store", wait=0.05)
    answer = asyncio.Event()

    async def silent() -> str:
        await answer.wait()
        return "late"

    with pytest.raises(StateError, match=r"no answer from PostgreSQL within 0\.05s"):
        await bounded.run(silent, what="save")
    started = asyncio.get_running_loop().time()
    with pytest.raises(StateError, match="has not answered an earlier operation"):
        await bounded.run(silent, what="save")  # no second write overtakes the stuck one
    assert asyncio.get_running_loop().time() - started < 0.04
    answer.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)

    async def quick() -> str:
        return "ok"

    assert await bounded.run(quick, what="save") == "ok"
    await bounded.close()


async def test_a_database_known_away_is_not_waited_for() -> None:
    away = Bounded("store", wait=5, available=lambda: False)

    async def never() -> None:
        raise AssertionError("not called while the database is away")

    with pytest.raises(StateError, match="PostgreSQL does not answer"):
        await away.run(never, what="save")
