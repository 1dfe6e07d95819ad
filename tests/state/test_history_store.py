"""The probe history's store (``monitor.history.HistoryStore``) on both backends: the SQLite
file in state_dir and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.history import DurableHistoryStore, Outcome, ProbeRun
from nodevigil.core.errors import StateError
from nodevigil.state.backend import Backend, SqliteBackend
from nodevigil.state.sqlite.history import SqliteHistoryStore


def run(
    node: str,
    first: float,
    last: float,
    *,
    probe: str = "http",
    vantage: str = "v1",
    outcome: Outcome = Outcome.PASS,
    count: int = 1,
    detail: str = "ok",
) -> ProbeRun:
    return ProbeRun(node, probe, vantage, outcome, first, last, count, detail)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[DurableHistoryStore]:
    made = backend.history_store()
    await made.open()
    yield made
    await made.close()


async def test_saved_runs_are_read_back_in_order(store: DurableHistoryStore) -> None:
    runs = [
        run("b", 20.0, 30.0, count=6),
        run("a", 10.0, 19.0, outcome=Outcome.FAIL, count=4, detail="timeout"),
        run("a", 20.0, 20.0, probe="tcp", vantage="v2", outcome=Outcome.DECISIVE),
        run("c", 5.0, 9.0, outcome=Outcome.INCONCLUSIVE, detail="nul\x00byte"),
    ]
    await store.save(runs)
    found = await store.runs(0.0, 100.0)
    assert [(r.node, r.first) for r in found] == [("c", 5.0), ("a", 10.0), ("a", 20.0),
                                                  ("b", 20.0)]  # fmt: skip
    assert found[1] == runs[1]
    assert found[2] == runs[2]
    assert found[0].detail in ("nul\x00byte", "nul\ufffdbyte")  # PostgreSQL text holds no NUL


async def test_a_run_saved_again_replaces_its_earlier_copy(store: DurableHistoryStore) -> None:
    await store.save([run("a", 10.0, 12.0, count=2)])
    await store.save([run("a", 10.0, 40.0, count=16), run("a", 50.0, 50.0)])
    # The same run twice in one batch (a snapshot, then closed): the last copy wins.
    await store.save([run("b", 1.0, 2.0, count=2), run("b", 1.0, 3.0, count=3)])
    found = {(r.node, r.first): r for r in await store.runs(0.0, 100.0)}
    assert len(found) == 3
    assert (found[("a", 10.0)].last, found[("a", 10.0)].count) == (40.0, 16)
    assert found[("b", 1.0)].count == 3


async def test_reads_take_the_runs_that_overlap_the_window(store: DurableHistoryStore) -> None:
    await store.save(
        [
            run("before", 0.0, 9.0),
            run("into", 5.0, 12.0),
            run("inside", 12.0, 15.0),
            run("across", 1.0, 100.0),
            run("out", 15.0, 25.0),
            run("after", 21.0, 30.0),
            run("edge", 20.0, 20.0),
        ]
    )
    found = await store.runs(10.0, 20.0)
    assert sorted(r.node for r in found) == ["across", "edge", "inside", "into", "out"]
    some = await store.runs(10.0, 20.0, nodes=["into", "out", "nobody"])
    assert [r.node for r in some] == ["into", "out"]
    assert await store.runs(10.0, 20.0, nodes=[]) == []


async def test_prune_drops_the_runs_that_ended_before(store: DurableHistoryStore) -> None:
    await store.save([run("old", 0.0, 50.0), run("long", 0.0, 150.0), run("new", 120.0, 130.0)])
    assert await store.prune(100.0) == 1
    assert sorted(r.node for r in await store.runs(0.0, 1000.0)) == ["long", "new"]
    assert await store.prune(100.0) == 0


async def test_a_large_batch_is_saved_whole(store: DurableHistoryStore) -> None:
    runs = [run(f"node-{i:05d}", float(i), float(i) + 5.0, count=3) for i in range(25_000)]
    await store.save(runs)  # more than one PostgreSQL statement (10,000 a chunk)
    found = await store.runs(0.0, 1e9)
    assert len(found) == 25_000
    assert found[-1] == runs[-1]


async def test_sqlite_keeps_its_own_file_and_refuses_a_newer_one(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    store = backend.history_store()
    await store.open()
    await store.save([run("a", 1.0, 2.0)])
    await store.close()
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM probe_runs").fetchone() == (1,)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM probe_runs WHERE last_at >= 1 AND first_at <= 2"
        ).fetchall()
        assert "probe_runs_last" in str(plan)  # a time range reads the index, not the table
        conn.execute("PRAGMA user_version=99")
    newer = SqliteHistoryStore(path)
    with pytest.raises(StateError, match="newer than this nodevigil knows"):
        await newer.open()
    await newer.close()


async def test_whole_second_times_mix_with_fractions(store: DurableHistoryStore) -> None:
    """A time that happens to be an int (a caller's round()) is saved as the float it is."""
    await store.save([run("a", 10, 20, count=11), run("b", 10.5, 20.25)])
    found = await store.runs(0.0, 100.0)
    assert [(r.node, r.first, r.last) for r in found] == [("a", 10.0, 20.0), ("b", 10.5, 20.25)]
