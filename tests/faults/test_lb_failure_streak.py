"""A load-balancer action that keeps failing is logged once per streak, not once per cycle,
and its end once, with how long it lasted (Home Assistant's update coordinator habit).

Against a real HAProxy whose runtime API answers reads but refuses changes (``level user``:
"Permission denied"), with the daemon as a process: before, its log said the same failing
decision every 200 ms cycle.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import HAPROXY, HAProxyInstance, free_port, poll_until, run_haproxy
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config
from tests.faults.test_kill_outage import metric
from tests.faults.test_lb_faults import restart_haproxy
from tests.test_incidents_daemon import Api


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[HAProxyInstance]:
    if not HAPROXY.exists():
        pytest.skip(f"{HAPROXY} is missing: install the Debian package haproxy")
    async with run_haproxy(tmp_path / "haproxy", ["n1", "n2", "n3"]) as instance:
        yield instance


async def set_socket_level(haproxy: HAProxyInstance, level: str) -> None:
    """Restart HAProxy with its unix socket at ``level`` (user: it reads, it refuses changes)."""
    await haproxy.daemon.stop()
    text = haproxy.config_path.read_text()
    text = re.sub(r"(admin\.sock) level \w+", rf"\1 level {level}", text)
    haproxy.config_path.write_text(text)
    haproxy.socket_path.unlink(missing_ok=True)
    await restart_haproxy(haproxy)


def messages(log: Path) -> list[str]:
    return [json.loads(line)["message"] for line in log.read_text().splitlines()]


async def test_a_refused_drain_is_logged_once_and_its_recovery_once(
    tmp_path: Path, haproxy: HAProxyInstance
) -> None:
    await set_socket_level(haproxy, "user")
    path = tmp_path / "nodevigil.yaml"
    port = free_port()
    write_haproxy_daemon_config(path, haproxy, listen=f"127.0.0.1:{port}")
    log = tmp_path / "daemon.log"
    proc = await spawn_daemon(path, log, args=("--log-format", "json"))
    api = Api(f"http://127.0.0.1:{port}")
    try:
        await wait_daemon_ready(proc, api.base, log)
        await haproxy.nodes["n2"].stop()

        async def refused_cycles() -> bool:
            errors = await metric(api, 'nodevigil_lb_errors_total{lb="sh-haproxy"}')
            return errors is not None and errors >= 10  # ten cycles of 200 ms refused it

        await poll_until(refused_cycles, within=15, what="ten refused drains")
        said = messages(log)
        failed = [m for m in said if "set web/n2 failed" in m]
        assert len(failed) == 1 and "Permission denied" in failed[0], failed
        decisions = [m for m in said if m.startswith("failover: sh-n2 ready->maint")]
        assert len(decisions) == 1 and decisions[0].endswith("[1 failed, retrying]"), decisions

        await set_socket_level(haproxy, "admin")  # the operator fixes the socket

        async def drained() -> bool:
            return (await admin_states(haproxy))["n2"].value == "maint"

        await poll_until(drained, within=10, what="sh-n2 drained once HAProxy allows it")

        async def recovered() -> bool:
            return any("set web/n2 works again" in m for m in messages(log))

        await poll_until(recovered, within=5, what="the recovery line")
        said = messages(log)
        [back] = [m for m in said if "set web/n2 works again" in m]
        streak = re.search(r"after (\d+) failed attempts over [0-9.]+s\)", back)
        assert streak is not None and int(streak[1]) >= 10, back
        assert len([m for m in said if "set web/n2 failed" in m]) == 1
        # The decision that finally went through is said once more, without "failed".
        decisions = [m for m in said if m.startswith("failover: sh-n2 ready->maint")]
        assert len(decisions) == 2 and "failed" not in decisions[1], decisions
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
