"""The whole daemon against a real HAProxy: an operator's drain is proved, and the proof is in
the event log, the action log and /metrics, all read through the API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from failover.lb import ServerState
from nodevigil.app.daemon import Daemon
from tests.failover.daemons import HAProxyInstance, poll_until
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config

TOKEN = "proof-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_a_drain_through_the_api_is_proved_in_events_actions_and_metrics(
    tmp_path: Path, haproxy: HAProxyInstance
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(
        path, haproxy, admin_token=TOKEN, defaults={"interval": "200ms", "timeout": "150ms"}
    )
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())
    try:
        await poll_until(
            lambda: asyncio.sleep(0, daemon.api_port is not None and daemon.context.ready),
            within=15,
            what="daemon ready",
        )
        url = f"http://127.0.0.1:{daemon.api_port}"
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{url}/api/v1/nodes/sh-n1/drain", json={}) as response:
                assert response.status in (200, 201), await response.text()

            async def n1_out() -> bool:
                return (await admin_states(haproxy))["n1"] is ServerState.MAINT

            await poll_until(n1_out, within=10, what="n1 drained")
            proofs: list[dict[str, Any]] = []

            async def proved() -> bool:
                async with http.get(f"{url}/api/v1/events?kind=lb.proof") as response:
                    proofs[:] = (await response.json())["events"]
                return bool(proofs)

            await poll_until(proved, within=10, what="the drain's proof in the event log")
            data = proofs[0]["data"]
            assert (proofs[0]["subject"], data["outcome"], data["direction"]) == (
                "sh-n1",
                "proved",
                "drain",
            )
            assert (
                data["text"].startswith("traffic left sh-n1 in ") and data["lb_type"] == "haproxy"
            )
            async with http.get(f"{url}/api/v1/actions") as response:
                actions = (await response.json())["actions"]
            moved = [a for a in actions if a["what"] == "traffic_moved"]
            assert [(a["target"], a["new"], a["result"]) for a in moved] == [
                ("web/n1", "proved", "ok")
            ]
            async with http.get(f"{url}/metrics") as response:
                metrics = await response.text()
            assert (
                'nodevigil_traffic_moved_seconds_count{direction="drain",lb_type="haproxy"} 1.0'
                in metrics
            )
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
