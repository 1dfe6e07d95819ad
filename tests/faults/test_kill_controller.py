"""The daemon killed with SIGKILL between deciding and acting on a real HAProxy, then restarted.

A node is dead from the start. The first daemon judges it down, decides to take it out and
dies at a failpoint: just before the action reaches HAProxy, or just after, before the action
is published and logged. A second daemon (no failpoint) on the same state must bring HAProxy
to the right state, act once, never put the dead node back in on its way up, and say what it
did in its events and action log. It runs on both state backends (SQLite files in state_dir;
a PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from failover.controller import Book, NodeBook, Outage, SiteBook
from failover.lb import ServerState
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.conftest import StateBackend
from tests.daemon_process import spawn_daemon
from tests.failover.daemons import HAPROXY, HAProxyInstance, free_port, poll_until, run_haproxy
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config
from tests.faults.test_kill_outage import ts

TOKEN = "kill-admin-token"


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[HAProxyInstance]:
    """A real HAProxy over three HTTP nodes n1, n2, n3 (no health checks of its own)."""
    if not HAPROXY.exists():
        pytest.skip(f"{HAPROXY} is missing: install the Debian package haproxy")
    async with run_haproxy(tmp_path / "haproxy", ["n1", "n2", "n3"]) as instance:
        yield instance


async def api_get(port: int, route: str) -> Any:
    """GET an API route with the admin token; None while the daemon does not answer."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"http://127.0.0.1:{port}{route}", headers=headers) as response,
        ):
            return json.loads(await response.text()) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


class StateWatch:
    """Samples n2's admin state in HAProxy in the background, to catch a brief bounce."""

    def __init__(self, haproxy: HAProxyInstance) -> None:
        self.haproxy = haproxy
        self.seen: list[ServerState] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.seen.append((await admin_states(self.haproxy))["n2"])
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> StateWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def restart_and_settle(path: Path, log: Path, port: int) -> asyncio.subprocess.Process:
    """Start the daemon again and wait until it has judged sh-n2 down and cycled after that."""
    proc = await spawn_daemon(path, log)

    async def judged() -> bool:
        node = await api_get(port, "/api/v1/nodes/sh-n2")
        return node is not None and node.get("verdict") == "down"

    await poll_until(judged, within=20, what="the restarted daemon judges sh-n2 down")
    judged_at = time.time()

    async def cycled_after() -> bool:
        status = await api_get(port, "/api/v1/status")
        last = None if status is None else status.get("last_cycle_at")
        return last is not None and ts(last) > judged_at + 0.5

    await poll_until(cycled_after, within=10, what="controller cycles after the verdict")
    return proc


async def stop(proc: asyncio.subprocess.Process, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()


def n2_actions(actions: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """n2's state changes (the proofs that traffic followed them are records of their own)."""
    return [
        (a["old"], a["new"], a["result"])
        for a in actions
        if a["target"] == "web/n2" and a["what"] != "traffic_moved"
    ]


@pytest.mark.parametrize("state_backend", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("point", ["controller.before_apply", "controller.after_apply"])
async def test_killed_around_a_drain_converges_once_after_restart(
    tmp_path: Path, haproxy: HAProxyInstance, point: str, state_backend: StateBackend
) -> None:
    port = free_port()
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(path, haproxy, listen=f"127.0.0.1:{port}", admin_token=TOKEN)
    state_backend.configure(path)  # SQLite in state_dir, or a fresh PostgreSQL database
    log = tmp_path / "daemon.log"
    await haproxy.nodes["n2"].stop()  # dead from the start: the first decision drains it

    proc = await spawn_daemon(path, log, failpoints=point)
    code = await asyncio.wait_for(proc.wait(), 30)
    assert code == -signal.SIGKILL, log.read_text()
    expected_first = ServerState.READY if point.endswith("before_apply") else ServerState.MAINT
    assert await admin_states(haproxy) == {
        "n1": ServerState.READY,
        "n2": expected_first,
        "n3": ServerState.READY,
    }

    async with StateWatch(haproxy) as watch:
        proc = await restart_and_settle(path, log, port)
    try:
        assert await admin_states(haproxy) == {
            "n1": ServerState.READY,
            "n2": ServerState.MAINT,
            "n3": ServerState.READY,
        }
        if point.endswith("after_apply"):
            # Out since the first daemon acted: the restart never let the dead node back in.
            assert set(watch.seen) == {ServerState.MAINT}, watch.seen
        body = await api_get(port, "/api/v1/actions")
        events = await api_get(port, "/api/v1/events?kind=lb.action&subject=sh-n2")
        if point.endswith("before_apply"):
            assert n2_actions(body["actions"]) == [("ready", "maint", "ok")]
            (event,) = events["events"]
            assert event["data"]["old"] == "ready" and event["data"]["new"] == "maint"
            # The restart acts on the saved bookkeeping at once, or on its own verdict if the
            # monitor was quicker than the first cycle.
            why = event["data"]["why"]
            assert why == "held out; verdict unknown" or why.startswith("verdict down"), why
            decisions = await api_get(port, "/api/v1/events?kind=controller.decision")
            lines = [e["data"]["decision"] for e in decisions["events"]]
            assert [line for line in lines if "sh-n2 ready->maint" in line] == lines, lines
            assert len(lines) == 1, lines
        else:
            # The first daemon died before logging its action and the state was right on
            # restart, so nothing was done again.
            assert n2_actions(body["actions"]) == []
            assert events["events"] == []
    finally:
        await stop(proc, log)


async def test_bookkeeping_saved_as_changes_reloads_exactly(tmp_path: Path) -> None:
    """The store writes only what changed since the last save (it is on the drain path now);
    a new process must still load exactly the last book, removals and ended outages included."""
    path = tmp_path / "state" / "failover.db"
    nodes = {f"n{i}": NodeBook() for i in range(50)}
    sites = {"sh": SiteBook(), "bj": SiteBook()}
    store = SqliteControllerStore(path)
    await store.load()
    await store.save_book(Book(dict(nodes), dict(sites), {"web": Outage("web", 10.0, ("sh",))}))
    nodes["n3"] = NodeBook(down=True, held=True, down_since=20.0, failures=1, hold=60.0)
    del nodes["n7"]
    sites["bj"] = SiteBook(can_serve=False, up=False)
    last = Book(dict(nodes), dict(sites), {"api": Outage("api", 30.0, ("bj",), {"x": 1})})
    await store.save_book(last)
    await store.close()

    again = SqliteControllerStore(path)
    assert (await again.load()).book == last
    await again.save_book(Book(dict(nodes), {}, {}))  # after a load it also writes changes only
    await again.close()
    third = SqliteControllerStore(path)
    assert (await third.load()).book == Book(dict(nodes), {}, {})
    await third.close()
