"""Overrides change atomically: racing undrains, drains and expiries (issue 12, item 4)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from failover.controller.state import OverrideKind
from failover.lb.base import ServerState
from nodevigil.app.daemon import Daemon
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.controller_helpers import Rig
from tests.failover.daemons import HAProxyInstance, poll_until
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config

TOKEN = "race-admin-token"
RACERS = 600
# Under the API's default connection cap (a quarter of the descriptor limit, at most 256), so
# no connection is shed: every request gets an answer to count.
CONNECTIONS = 200


class GatedStore(SqliteControllerStore):
    """The SQLite store whose override deletes wait at a gate the test opens."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def delete_override(self, kind: OverrideKind, name: str) -> None:
        """Wait for the gate, then delete."""
        self.waiting += 1
        await self.gate.wait()
        await super().delete_override(kind, name)


async def warm(http: aiohttp.ClientSession, url: str) -> None:
    """Open one more keep-alive connection (requests made together each take their own)."""
    async with http.get(url) as response:
        await response.read()


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[tuple[Rig, GatedStore]]:
    rig = Rig(tmp_path)
    await rig.store.close()
    store = GatedStore(tmp_path / "state" / "gated.db")
    rig.store = store
    rig.controller = rig.new_controller()
    yield rig, store
    await store.close()


async def test_an_override_expiring_while_an_undrain_races_does_not_abort_the_cycle(
    gated: tuple[Rig, GatedStore],
) -> None:
    rig, store = gated
    store.gate.set()
    await rig.controller.drain_node("sh-1", duration=60, reason="r", who="alice")
    await rig.cycle()
    assert rig.state("sh-1") is ServerState.MAINT
    store.gate.clear()
    rig.clock.advance(61)  # expired: the next cycle clears it while the operator undrains it
    undrain = asyncio.create_task(rig.controller.undrain_node("sh-1", who="alice"))
    cycle = asyncio.create_task(rig.controller.run_once())
    await poll_until(lambda: asyncio.sleep(0, store.waiting >= 1), within=5, what="a delete")
    for _ in range(20):  # let the cycle reach its expiry step too, if it can
        await asyncio.sleep(0)
    store.gate.set()
    cleared = await undrain
    decision = await cycle  # before the fix: KeyError out of run_once, the cycle aborted
    assert decision is not None
    assert rig.state("sh-1") is ServerState.READY
    assert rig.controller.overrides() == []
    ended = rig.kinds("override.cleared") + rig.kinds("override.expired")
    assert len(ended) == 1, ended  # one end, said once: by whichever came first
    assert cleared == (ended[0].kind == "override.cleared")
    assert (await rig.store.load()).overrides == {}


async def test_racing_undrains_clear_once_and_the_rest_are_no_ops(
    gated: tuple[Rig, GatedStore],
) -> None:
    rig, store = gated
    store.gate.set()
    await rig.controller.drain_node("sh-2", reason="r", who="bob")
    store.gate.clear()
    racers = [
        asyncio.create_task(rig.controller.undrain_node("sh-2", who="bob")) for _ in range(50)
    ]
    await poll_until(lambda: asyncio.sleep(0, store.waiting >= 1), within=5, what="a delete")
    store.gate.set()
    results = await asyncio.gather(*racers)  # before the fix: KeyError from all but one
    assert sorted(results) == [False] * 49 + [True]
    assert len(rig.kinds("override.cleared")) == 1


async def test_600_concurrent_undrains_of_a_real_daemon_answer_200_never_500(
    tmp_path: Path, haproxy: HAProxyInstance
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(path, haproxy, admin_token=TOKEN)
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())
    try:
        await poll_until(
            lambda: asyncio.sleep(0, daemon.api_port is not None and daemon.context.ready),
            within=15,
            what="daemon ready",
        )
        base = f"http://127.0.0.1:{daemon.api_port}/api/v1/nodes"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

            async def post(url: str) -> tuple[int, bool | None]:
                async with http.post(url) as response:
                    body = await response.json()
                    return response.status, body.get("cleared")

            async with http.post(f"{base}/sh-n1/drain", json={"reason": "race"}) as response:
                assert response.status == 200

            async def drained() -> bool:
                return (await admin_states(haproxy))["n1"] is ServerState.MAINT

            await poll_until(drained, within=10, what="n1 drained")
            # Every connection open first, so the undrains arrive together, not one per accept.
            root = f"http://127.0.0.1:{daemon.api_port}/healthz"
            await asyncio.gather(*(warm(http, root) for _ in range(CONNECTIONS)))
            answers = await asyncio.gather(*(post(f"{base}/sh-n1/undrain") for _ in range(RACERS)))
        statuses = Counter(status for status, _ in answers)
        # Before the fix: 500 for some (a KeyError at the override delete).
        assert statuses == Counter({200: RACERS}), statuses
        assert Counter(cleared for _, cleared in answers) == Counter({True: 1, False: RACERS - 1})
        assert daemon.controller.overrides() == []

        async def back() -> bool:
            return (await admin_states(haproxy))["n1"] is ServerState.READY

        await poll_until(back, within=10, what="n1 back in")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
