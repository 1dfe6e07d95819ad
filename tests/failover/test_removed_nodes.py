"""A reload resolves what removed nodes and sites leave behind (issue 12, item 5).

The rule (docs/operations.md): nodevigil undoes its own action and lets go. A server it held out
is set back to ready and never touched again; a server it had left in is not touched; the
overrides of removed nodes and sites are dropped, each with an ``override.dropped`` event and an
action-log entry, so a node added back later starts without a stale drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from failover.lb.base import ServerState
from nodevigil.app.daemon import Daemon
from tests.failover.controller_helpers import Rig, make_config
from tests.failover.daemons import HAProxyInstance, poll_until
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config

TOKEN = "removed-admin-token"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.store.close()


async def test_a_drained_node_removed_by_a_reload_is_put_back_and_its_drain_dropped(
    rig: Rig,
) -> None:
    await rig.controller.drain_node("sh-1", duration=3600, reason="disk", who="alice")
    rig.given(sh_2="down")
    await rig.cycle()
    assert rig.out() == {"sh-1", "sh-2"}
    rig.controller.update_config(make_config())  # nothing removed: nothing released
    await rig.cycle()
    assert rig.out() == {"sh-1", "sh-2"}
    config = make_config()
    kept = config.model_copy(
        update={"nodes": [n for n in config.nodes if n.name not in ("sh-1", "sh-2")]}
    )
    rig.controller.update_config(kept)
    await rig.cycle()
    assert rig.out() == set()  # both put back: nodevigil held them out (a drain, a verdict)
    assert rig.controller.overrides() == []
    [dropped] = rig.kinds("override.dropped")
    assert dropped.subject == "sh-1" and dropped.cleared_by == "reload"
    log = await rig.controller.actions()
    assert [(a.what, a.target) for a in log if a.what == "drop_override"] == [
        ("drop_override", "node sh-1")
    ]
    released = [a for a in log if a.what == "set_state" and a.new == "ready"]
    assert {a.target for a in released} == {"web/sh-1", "web/sh-2"}
    assert (await rig.store.load()).overrides == {}
    # They are no longer managed: a manual maint stays.
    await rig.local["sh-lb"].set_state("web", "sh-1", ServerState.MAINT)
    await rig.cycle()
    assert rig.state("sh-1") is ServerState.MAINT


async def test_a_removed_node_left_in_is_not_touched(rig: Rig) -> None:
    await rig.cycle()
    config = make_config()
    rig.controller.update_config(
        config.model_copy(update={"nodes": [n for n in config.nodes if n.name != "sh-4"]})
    )
    await rig.cycle()
    assert not [a for a in await rig.controller.actions() if a.target == "web/sh-4"]


async def test_a_removed_site_drain_is_dropped(rig: Rig) -> None:
    await rig.controller.drain_site("bj", duration=600, reason="fibre", who="carol")
    await rig.cycle()
    config = make_config()
    gone = config.model_copy(
        update={
            "sites": [s for s in config.sites if s.name != "bj"],
            "nodes": [n for n in config.nodes if n.site != "bj"],
            "services": [s.model_copy(update={"sites": ["sh"]}) for s in config.services],
        }
    )
    rig.controller.update_config(gone)
    await rig.cycle()
    assert rig.controller.overrides() == []
    assert [e.subject for e in rig.kinds("override.dropped")] == ["bj"]


def _without(path: Path, node: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["nodes"] = [n for n in data["nodes"] if n["name"] != node]
    return data


async def test_real_daemon_reload_puts_a_removed_drained_node_back_in_haproxy(
    tmp_path: Path, haproxy: HAProxyInstance
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(path, haproxy, admin_token=TOKEN)
    full = path.read_text()
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())
    try:
        await poll_until(
            lambda: asyncio.sleep(0, daemon.api_port is not None and daemon.context.ready),
            within=15,
            what="daemon ready",
        )
        api = f"http://127.0.0.1:{daemon.api_port}/api/v1"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:

            async def get(route: str) -> Any:
                async with http.get(f"{api}/{route}") as response:
                    assert response.status == 200
                    return await response.json()

            async def n1_is(state: ServerState) -> bool:
                return (await admin_states(haproxy))["n1"] is state

            async with http.post(f"{api}/nodes/sh-n1/drain", json={"reason": "rma"}) as response:
                assert response.status == 200
            await poll_until(lambda: n1_is(ServerState.MAINT), within=10, what="n1 drained")

            path.write_text(yaml.safe_dump(_without(path, "sh-n1")))
            assert daemon.reload()
            # Before the fix: n1 stayed in maint for ever and the drain stayed in force.
            await poll_until(lambda: n1_is(ServerState.READY), within=10, what="n1 put back")

            async def dropped() -> bool:
                return bool((await get("overrides"))["overrides"] == [])

            await poll_until(dropped, within=10, what="the drain dropped")
            events = (await get("events?kind=override.dropped"))["events"]
            assert [e["subject"] for e in events] == ["sh-n1"], events
            log = (await get("actions"))["actions"]
            assert [a["target"] for a in log if a["what"] == "drop_override"] == ["node sh-n1"]
            put_back = [a for a in log if a["target"] == f"{haproxy.backend}/n1"]
            assert [(a["old"], a["new"], a["result"]) for a in put_back[-1:]] == [
                ("maint", "ready", "ok")
            ]
            async with http.post(f"{api}/nodes/sh-n1/undrain") as response:
                assert response.status == 404  # no such node, and nothing left to undrain

            path.write_text(full)  # added back: no stale drain returns
            assert daemon.reload()
            reloaded_at = daemon.clock.wall()

            async def two_cycles_later() -> bool:
                last = daemon.controller.last_cycle_at
                return last is not None and last > reloaded_at + 0.4

            await poll_until(two_cycles_later, within=10, what="cycles after the reload")
            assert await n1_is(ServerState.READY)
            assert (await get("overrides"))["overrides"] == []
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)


async def test_a_reload_during_a_cycle_still_puts_the_removed_server_back(rig: Rig) -> None:
    """The cycle in flight began with the older configuration, which still named the server:
    judged against that one, the release was forgotten (the real daemon left n1 in maint)."""
    await rig.controller.drain_node("sh-1", duration=3600, reason="disk", who="alice")
    await rig.cycle()
    assert rig.out() == {"sh-1"}
    lb = rig.local["sh-lb"]
    reading, go_on = asyncio.Event(), asyncio.Event()
    read = lb.servers

    async def slow_read(backend: str) -> Any:
        reading.set()
        await go_on.wait()
        return await read(backend)

    lb.servers = slow_read  # type: ignore[method-assign]
    cycle = asyncio.create_task(rig.controller.run_once())
    await asyncio.wait_for(reading.wait(), 5)
    config = make_config()
    rig.controller.update_config(
        config.model_copy(update={"nodes": [n for n in config.nodes if n.name != "sh-1"]})
    )
    go_on.set()
    await asyncio.wait_for(cycle, 5)
    lb.servers = read  # type: ignore[method-assign]
    await rig.cycle()
    assert rig.out() == set()
