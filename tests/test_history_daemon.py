"""The daemon records the probe history: a real HTTP node going down then up gives the runs
expected, on both backends and through monitor worker processes; a SIGKILL loses at most
``records.history_save_every``; the upkeep prunes past ``records.retention``."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from monitor.history import Outcome, ProbeRun
from nodevigil.app.daemon import Daemon
from nodevigil.core.config.schema import Database
from nodevigil.state.backend import Backend, PostgresBackend, SqliteBackend
from tests.conftest import StateBackend
from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import free_port, poll_until
from tests.postgres_server import PostgresAddress

INTERVAL = 0.3


class Target:
    """A real HTTP node whose answer the test switches: 200, or 503."""

    def __init__(self) -> None:
        self.healthy = True
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503, text="ok")


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    made = Target()
    app = web.Application()
    app.router.add_get("/{name}", made.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    made.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield made
    await runner.cleanup()


def write_config(path: Path, target: str, nodes: list[str], **extra: Any) -> None:
    data: dict[str, Any] = {
        "state_dir": str(path.parent / "state"),
        "vantage": "here",
        "api": {"listen": "127.0.0.1:0"},
        "defaults": {
            "interval": f"{INTERVAL * 1000:g}ms",
            "timeout": "250ms",  # below the interval; a loaded machine still answers in time
            "rise": 1,
            "fall": 2,
        },
        "sites": [{"name": "s", "address": "192.0.2.1"}],
        "nodes": [
            {"name": n, "site": "s", "probes": [{"type": "http", "url": f"{target}/{n}"}]}
            for n in nodes
        ],
        "services": [{"name": "web", "sites": ["s"]}],
        "records": {"history_save_every": "1s"},
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))


def backend_of(path: Path, request: pytest.FixtureRequest) -> Backend:
    """The backend the daemon's configuration at ``path`` names, for reading its history."""
    data = yaml.safe_load(path.read_text())
    if "database" not in data:
        return SqliteBackend(Path(data["state_dir"]))
    address: PostgresAddress = request.getfixturevalue("postgres")
    settings = Database(url=data["database"]["url"], password_file=address.password_file)
    return PostgresBackend(settings, None, owner="reader")


async def stored(backend: Backend, node: str) -> list[ProbeRun]:
    await backend.open()
    try:
        store = backend.history_store()
        await store.open()
        try:
            return await store.runs(0.0, time.time() + 60, nodes=[node])
        finally:
            await store.close()
    finally:
        await backend.close()


async def down_then_up(daemon: Daemon, target: Target, node: str) -> None:
    async def verdict(want: str) -> bool:
        return daemon.monitor.verdicts().get(node, None) is not None and (
            daemon.monitor.verdicts()[node].value == want
        )

    await poll_until(lambda: verdict("up"), within=20, what=f"{node} up")
    target.healthy = False
    await poll_until(lambda: verdict("down"), within=10, what=f"{node} down")
    target.healthy = True
    await poll_until(lambda: verdict("up"), within=10, what=f"{node} up again")


async def started(daemon: Daemon) -> asyncio.Task[None]:
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()  # the daemon's own error
        return daemon.started

    await poll_until(ready, within=20, what="daemon started")
    return task


@pytest.mark.parametrize("state_backend", ["sqlite", "postgres"], indirect=True)
async def test_a_node_going_down_then_up_is_three_runs(
    tmp_path: Path, target: Target, state_backend: StateBackend, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, target.url, ["a", "gone"])
    state_backend.configure(path)
    daemon = Daemon(path)
    task = await started(daemon)
    try:
        await down_then_up(daemon, target, "a")
        # A node removed from the configuration: its runs end at the reload.
        write_config(path, target.url, ["a"])
        state_backend.configure(path)
        assert daemon.reload()
        removed_at = time.time()

        async def a_few_more() -> bool:
            return daemon.monitor.stats()["success"] > 0 and (
                (await daemon.history_writer.save()) >= 0 and time.time() > removed_at + 0.5
            )

        await poll_until(a_few_more, within=10, what="a save after the reload")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
    stats = daemon.monitor.stats()
    judged = stats["success"] + stats["failure"] + stats["inconclusive"]

    runs = await stored(backend_of(path, request), "a")
    outcomes = [r.outcome for r in runs]
    assert outcomes == [Outcome.PASS, Outcome.FAIL, Outcome.PASS], runs
    assert all(r.probe == "http" and r.vantage == "here" for r in runs)
    assert runs[1].count >= 2  # fall: 2 failures took it down
    assert "503" in runs[1].detail
    for before, after in itertools.pairwise(runs):
        assert before.last < after.first  # one after another, no overlap
    gone = await stored(backend_of(path, request), "gone")
    assert gone and all(r.last < removed_at + INTERVAL for r in gone), (gone, removed_at)
    # Every result the monitor judged is in a run: nothing lost at a clean stop.
    assert sum(r.count for r in runs + gone) == judged


async def test_monitor_workers_send_their_runs_to_the_main_process(
    tmp_path: Path, target: Target, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "nodevigil.yaml"
    # Saved every 60 s: what a worker folded reaches the store only by its last message.
    write_config(
        path, target.url, ["a", "b"], monitor={"workers": 2}, records={"history_save_every": "60s"}
    )
    daemon = Daemon(path)
    task = await started(daemon)
    try:
        await down_then_up(daemon, target, "a")

        async def steady() -> bool:  # the counters a worker pushes every 2 s
            status = daemon.monitor.node_status("a")
            return status is not None and status["probes"][0]["consecutive_successes"] >= 5

        await poll_until(steady, within=15, what="a up for five rounds")
    finally:
        stop_at = time.time()
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert daemon.monitor.stats()["worker_restarts"] == 0
    runs = await stored(backend_of(path, request), "a")
    assert [r.outcome for r in runs] == [Outcome.PASS, Outcome.FAIL, Outcome.PASS], runs
    assert runs[-1].count >= 5
    assert runs[-1].last >= stop_at - INTERVAL - 0.5  # results up to the stop
    b = await stored(backend_of(path, request), "b")  # the same target: down and up too
    assert b and b[-1].outcome is Outcome.PASS and b[-1].last >= stop_at - INTERVAL - 0.5, b


async def test_a_sigkill_loses_at_most_the_save_period(tmp_path: Path, target: Target) -> None:
    path = tmp_path / "nodevigil.yaml"
    port = free_port()
    write_config(path, target.url, ["a"], api={"listen": f"127.0.0.1:{port}"})
    log = tmp_path / "daemon.log"
    proc = await spawn_daemon(path, log)
    db = tmp_path / "state" / "history.db"

    def last_saved() -> float:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT max(last_at) FROM probe_runs").fetchone()
        return float(row[0] or 0.0)

    try:
        await wait_daemon_ready(proc, f"http://127.0.0.1:{port}", log)
        began = time.time()

        async def saving() -> bool:  # snapshots of the open run keep coming
            return db.exists() and last_saved() > began + 2.0

        await poll_until(saving, within=20, what="open runs saved as they grow")
        killed = time.time()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lost = killed - last_saved()
    # history_save_every 1s; a probe every 0.2s; and the write of the last snapshot itself.
    assert lost <= 1.0 + INTERVAL + 0.5, f"{lost:.2f}s of history lost"


async def test_the_upkeep_prunes_history_past_the_retention(
    tmp_path: Path, target: Target, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, target.url, ["a"], records={"retention": "100d"})
    now = time.time()
    day = 86400.0
    seed = SqliteBackend(tmp_path / "state")
    (tmp_path / "state").mkdir()
    store = seed.history_store()
    await store.open()
    await store.save(
        [
            ProbeRun("old", "http", "here", Outcome.PASS, now - 120 * day, now - 101 * day, 9, ""),
            ProbeRun("kept", "http", "here", Outcome.FAIL, now - 120 * day, now - 99 * day, 9, ""),
        ]
    )
    await store.close()
    daemon = Daemon(path)
    task = await started(daemon)
    try:

        async def pruned() -> bool:
            left = await daemon.history_store.runs(0.0, now, nodes=["old", "kept"])
            return [r.node for r in left] == ["kept"]

        await poll_until(pruned, within=10, what="the run older than 100 days pruned")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
