"""The whole daemon against a real HAProxy: a dead node drained, the CLI drains and undrains."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp

from failover.lb import ServerState
from nodevigil.app.daemon import Daemon
from tests.cli import run_cli
from tests.failover.daemons import HAProxyInstance, poll_until
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config

TOKEN = "e2e-admin-token"


async def cli(*args: str) -> tuple[int, str]:
    """``nodevigil ARGS`` with the admin token."""
    return await run_cli(*args, token=TOKEN)


async def test_killed_node_is_drained_and_requests_keep_succeeding(
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
        await haproxy.nodes["n2"].stop()

        async def n2_out() -> bool:
            return (await admin_states(haproxy))["n2"] is ServerState.MAINT

        await poll_until(n2_out, within=10, what="n2 in maint")
        seen: Counter[str] = Counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(30):
                async with http.get(haproxy.url) as response:
                    seen[str(response.status)] += 1
        assert seen == Counter({"200": 30})

        url = f"http://127.0.0.1:{daemon.api_port}"
        code, out = await cli("drain", "sh-n1", "--for", "10m", "--reason", "kernel", "--url", url)
        assert code == 0, out
        assert '"reason": "kernel"' in out

        async def n1_out() -> bool:
            return (await admin_states(haproxy))["n1"] is ServerState.MAINT

        await poll_until(n1_out, within=10, what="n1 drained by the operator")
        code, out = await cli("undrain", "sh-n1", "--url", url)
        assert code == 0 and '"cleared": true' in out

        async def n1_back() -> bool:
            return (await admin_states(haproxy))["n1"] is ServerState.READY

        await poll_until(n1_back, within=10, what="n1 back in")
        code, out = await cli("drain", "ghost", "--url", url)
        assert code == 1 and "no node is called 'ghost'" in out

        await haproxy.nodes["n2"].start()

        async def n2_back() -> bool:
            return (await admin_states(haproxy))["n2"] is ServerState.READY

        await poll_until(n2_back, within=15, what="n2 back after its hold-down")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
