"""nodevigil's own descriptor exhaustion never judges a node (issue 12, item 3).

The daemon runs as a real process under a 1,024 descriptor limit (hard and soft, so it cannot
raise it), watching four healthy nodes over real sockets (an HTTP server that closes every
connection, so each probe needs a new descriptor, and a TCP probe). The test then holds 2,000
idle connections to its API. Before the fix the API accepted until the process ran out of
descriptors: every probe failed with EMFILE, the nodes were judged down, /healthz stopped
answering and the log filled with accept tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from nodevigil.app.api.auth import token_digest
from nodevigil.app.demo.servers.process import spawn
from tests.daemon_process import wait_daemon_ready
from tests.failover.daemons import free_port
from tests.http_target import healthy_target

ADMIN = "fd-test-admin-token"
LIMIT = 1024  # descriptors, soft and hard, as in the report
ATTACK = 2000  # idle connections held open to the API
NODES = 4
ROUNDS = 6  # probe rounds per node the attack must last (500 ms apart: 3 s)


def write_config(path: Path, *, listen: str, target: int, api: dict[str, Any]) -> None:
    nodes = [
        {
            "name": f"n{i}",
            "site": "s",
            "probes": [
                {"type": "http", "url": f"http://127.0.0.1:{target}/n{i}"},
                {"type": "tcp", "address": f"127.0.0.1:{target}"},
            ],
        }
        for i in range(NODES)
    ]
    data: dict[str, Any] = {
        "timezone": "UTC",
        "state_dir": "state",
        "api": {
            "listen": listen,
            "tokens": [{"name": "ops", "role": "admin", "sha256": token_digest(ADMIN)}],
            **api,
        },
        "defaults": {"interval": "500ms", "timeout": "400ms", "rise": 1, "fall": 2},
        "failover": {"cycle": "200ms", "hold_down": "1s", "site_hold_down": "1s"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": nodes,
        "services": [{"name": "web", "sites": ["s"]}],
    }
    path.write_text(yaml.safe_dump(data))


async def get(base: str, path: str, *, within: float = 2.0) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as http,
        http.get(base + path, headers=headers) as response,
    ):
        return response.status, await response.text()


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family in a Prometheus exposition."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            found[key[len(name) :]] = float(value)
    return found


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Open up to ``count`` connections that never send a byte; keep those that connected."""

    async def one() -> asyncio.StreamWriter | None:
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError):
            return None
        return writer

    opened = await asyncio.gather(*(one() for _ in range(count)))
    return [w for w in opened if w is not None]


async def run_attack(tmp_path: Path, api: dict[str, Any]) -> dict[str, Any]:
    """Start the daemon under the limit, attack its API, and return what was seen."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= ATTACK + 500, "the test itself needs descriptors for the attack"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, ATTACK + 500), hard))
    async with healthy_target() as target:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        path = tmp_path / "nodevigil.yaml"
        write_config(path, listen=f"127.0.0.1:{port}", target=target, api=api)
        log = tmp_path / "daemon.log"
        argv = ["sh", "-c", f'ulimit -n {LIMIT} && exec "$@"', "sh"]
        argv += [sys.executable, "-m", "nodevigil", "run", "-c", str(path)]
        proc = (await spawn("nodevigil", argv, log, tmp_path)).process
        attackers: list[asyncio.StreamWriter] = []
        try:
            await wait_daemon_ready(proc, base, log)

            async def all_up() -> bool:
                _, text = await get(base, "/metrics")
                up = samples(text, "nodevigil_node_up{")
                return sum(up.values()) == NODES

            deadline = time.monotonic() + 10
            while not await all_up():
                assert time.monotonic() < deadline, "the nodes never came up"
                await asyncio.sleep(0.05)
            log_before = log.stat().st_size

            attackers = await open_idle(port, ATTACK)
            started = time.monotonic()
            # The attack lasts until every node has had ROUNDS probe rounds under it, or 15 s.
            # Meanwhile /healthz must answer every time it is asked.
            healthz: list[float] = []
            healthz_failed = 0
            rounds_under_attack = 0.0
            first: float | None = None
            while time.monotonic() - started < 15:
                asked = time.monotonic()
                try:
                    status, _ = await get(base, "/healthz", within=2.0)
                    healthz.append(time.monotonic() - asked)
                    assert status == 200
                    _, text = await get(base, "/metrics", within=2.0)
                except (aiohttp.ClientError, TimeoutError):
                    healthz_failed += 1
                    continue
                results = samples(text, "nodevigil_probe_results_total")
                total = sum(results.values())
                first = total if first is None else first
                rounds_under_attack = (total - first) / (2 * NODES)
                if rounds_under_attack >= ROUNDS:
                    break
            attack_seconds = time.monotonic() - started
            connected = len(attackers)
            for writer in attackers:
                writer.close()
            attackers = []

            _, events = await get(base, "/api/v1/events?kind=node.&limit=1000", within=5)
            _, text = await get(base, "/metrics", within=5)
            log_text = log.read_text(errors="replace")[log_before:]
            return {
                "connected": connected,
                "attack_seconds": attack_seconds,
                "rounds_under_attack": rounds_under_attack,
                "healthz_answers": len(healthz),
                "healthz_failed": healthz_failed,
                "healthz_slowest": max(healthz, default=None),
                "node_down_events": events.count('"node.down"'),
                "metrics": text,
                "log": log_text,
            }
        finally:
            for writer in attackers:
                writer.close()
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def report(seen: dict[str, Any]) -> str:
    shown = {k: v for k, v in seen.items() if k not in ("metrics", "log")}
    return f"{shown}; log {len(seen['log'])} bytes:\n{seen['log'][-3000:]}"


async def test_idle_connections_to_the_api_judge_no_node_and_healthz_answers(
    tmp_path: Path,
) -> None:
    seen = await run_attack(tmp_path, api={})
    assert seen["node_down_events"] == 0, report(seen)
    assert seen["healthz_failed"] == 0, report(seen)
    assert seen["rounds_under_attack"] >= ROUNDS, report(seen)
    assert "Traceback" not in seen["log"], report(seen)
    assert len(seen["log"]) < 4096, report(seen)
    metrics = seen["metrics"]
    refused = samples(metrics, "nodevigil_api_connections_refused_total")
    evicted = samples(metrics, "nodevigil_api_connections_evicted_total")
    # All but the 256 it may hold were shed, almost all as idle ones closed for newer ones.
    assert sum(refused.values()) + sum(evicted.values()) >= seen["connected"] - 256, report(seen)
    assert samples(metrics, "nodevigil_api_connections_limit") == {"": 256.0}


@pytest.mark.slow
async def test_a_cap_over_the_descriptor_limit_makes_probes_inconclusive_not_failed(
    tmp_path: Path,
) -> None:
    """A cap set too high lets the API exhaust the descriptors: probes cannot open sockets.
    That is nodevigil's trouble: inconclusive, counted, logged once; no node goes down."""
    seen = await run_attack(tmp_path, api={"max_connections": 4000})
    assert seen["node_down_events"] == 0, report(seen)
    local = samples(seen["metrics"], "nodevigil_probe_local_errors_total")
    assert local.get('{errno="EMFILE"}', 0) > 0, report(seen)
    assert "Traceback" not in seen["log"], report(seen)
    assert len(seen["log"]) < 4096, report(seen)
    assert seen["log"].count("out of file descriptors") <= 2, report(seen)
