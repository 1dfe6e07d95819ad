"""The daemon in-process: HTTP API, auth, metrics checked by promtool, reload, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from nodevigil.app.api.auth import token_digest
from nodevigil.app.daemon import Daemon
from tests.failover.daemons import free_port, poll_until

ADMIN = "admin-secret-token"
READER = "reader-secret-token"
CUSTOMER = "customer-secret-token"
PROMTOOL = shutil.which("promtool")


def write_config(path: Path, target: str, nodes: list[str], **extra: Any) -> None:
    data: dict[str, Any] = {
        "state_dir": str(path.parent / "state"),
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [
                {"name": "ops", "role": "admin", "sha256": token_digest(ADMIN)},
                {"name": "noc", "role": "read", "sha256": token_digest(READER)},
                {
                    "name": "acme",
                    "role": "customer",
                    "customer": "acme",
                    "sha256": token_digest(CUSTOMER),
                },
            ],
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 2},
        "sites": [{"name": "s", "address": "192.0.2.1"}],
        "nodes": [
            {"name": n, "site": "s", "probes": [{"type": "http", "url": f"{target}/{n}"}]}
            for n in nodes
        ],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [{"id": "acme", "services": ["web"]}],
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))


@dataclass
class Running:
    daemon: Daemon
    base: str
    config_path: Path
    target: str

    async def get(self, path: str, token: str | None = ADMIN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.get(self.base + path, headers=headers) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """Nodes a and b answer 200; anything else 503."""

    async def handle(request: web.Request) -> web.Response:
        ok = request.match_info["name"] in ("a", "b", "c")
        return web.Response(status=200 if ok else 503, text="ok")

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def running(tmp_path: Path, target: str) -> AsyncIterator[Running]:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, target, ["a", "zz"])
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()  # raise the daemon's own error
        return daemon.api_port is not None and daemon.context.ready

    await poll_until(ready, within=10, what="daemon ready")
    yield Running(daemon, f"http://127.0.0.1:{daemon.api_port}", path, target)
    daemon.request_stop()
    await asyncio.wait_for(task, 10)


async def test_health_and_readiness_need_no_token(running: Running) -> None:
    assert await running.get("/healthz", token=None) == (200, {"status": "ok"})
    assert await running.get("/readyz", token=None) == (200, {"status": "ready"})


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_api_refuses_missing_or_wrong_tokens(running: Running, token: str | None) -> None:
    for path in ("/api/v1/nodes", "/api/v1/nodes/a", "/api/v1/events", "/api/v1/nope"):
        status, body = await running.get(path, token=token)
        assert status == 401 and "error" in body, path


async def test_customer_token_cannot_read_the_fleet(running: Running) -> None:
    status, body = await running.get("/api/v1/nodes", token=CUSTOMER)
    assert status == 403 and body["error"] == "this route needs an operator token"


async def test_nodes_api_shows_verdicts_and_last_results(running: Running) -> None:
    async def judged() -> bool:
        _, body = await running.get("/api/v1/nodes", token=READER)
        return {n["name"]: n["verdict"] for n in body["nodes"]} == {"a": "up", "zz": "down"}

    await poll_until(judged, within=10, what="a up and zz down")
    status, node = await running.get("/api/v1/nodes/zz")
    assert status == 200
    assert node["site"] == "s" and node["since"] is not None
    last = node["probes"][0]["last"]
    assert last["ok"] is False and last["detail"] == "HTTP 503, expected [200]"
    assert last["vantage"] == running.daemon.config.vantage
    status, body = await running.get("/api/v1/nodes/ghost")
    assert status == 404 and body == {"error": "no node is called 'ghost'"}
    status, body = await running.get("/api/v1/events?kind=node.down")
    assert status == 200 and [e["subject"] for e in body["events"]] == ["zz"]
    status, body = await running.get("/api/v1/events?limit=abc")
    assert status == 400 and "limit" in body["error"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: install Debian's prometheus")
async def test_metrics_pass_promtool(running: Running, tmp_path: Path) -> None:
    async def judged() -> bool:
        _, text = await running.get("/metrics", token=None)
        verdicts = (
            'nodevigil_node_up{node="zz",site="s"} 0.0',
            'nodevigil_node_up{node="a",site="s"} 1.0',
        )
        return all(line in text for line in verdicts)

    await poll_until(judged, within=10, what="verdict gauge")
    _, text = await running.get("/metrics", token=None)
    for name in (
        "nodevigil_probe_results_total",
        "nodevigil_probe_duration_by_type_seconds_bucket",
        'nodevigil_probe_success{node="zz",probe="http"} 0.0',
        'nodevigil_probe_success{node="a",probe="http"} 1.0',
        'nodevigil_probe_duration_seconds{node="a",probe="http"}',
        'nodevigil_nodes{site="s",verdict="down"} 1.0',
        'nodevigil_nodes{site="s",verdict="unknown"} 0.0',
        "nodevigil_verdict_changes_total",
        "nodevigil_event_loop_lag_seconds",
        "nodevigil_build_info",
    ):
        assert name in text, name
    assert PROMTOOL is not None
    check = await asyncio.to_thread(
        subprocess.run,
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_reload_adds_and_removes_nodes_and_rejects_a_bad_file(running: Running) -> None:
    write_config(running.config_path, running.target, ["a", "b", "c"])
    assert running.daemon.reload() is True
    assert running.daemon.monitor.node_names() == ["a", "b", "c"]

    async def all_up() -> bool:
        _, body = await running.get("/api/v1/nodes")
        return all(n["verdict"] == "up" for n in body["nodes"])

    await poll_until(all_up, within=10, what="b and c up")
    running.config_path.write_text("nodes: [{name: broken}]\n")
    assert running.daemon.reload() is False
    assert running.daemon.monitor.node_names() == ["a", "b", "c"]


async def test_reload_says_which_changes_wait_for_a_restart(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(
        running.config_path,
        running.target,
        ["a", "zz"],
        timezone="Asia/Shanghai",
        api={
            "listen": "127.0.0.1:1",
            "tokens": running.daemon.config.model_dump()["api"]["tokens"],
        },
    )
    with caplog.at_level(logging.WARNING, logger="nodevigil.app.daemon"):
        assert running.daemon.reload() is True
    [line] = [r.getMessage() for r in caplog.records if "next restart" in r.getMessage()]
    assert "timezone" in line and "api (listen address, limits and tls" in line, line
    assert "state_dir" not in line and "load_balancers" not in line, line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nodevigil.app.daemon"):
        assert running.daemon.reload() is True  # nothing changed this time
    assert not [r for r in caplog.records if "next restart" in r.getMessage()]


async def test_a_second_daemon_on_the_same_state_dir_refuses(running: Running) -> None:
    from nodevigil.core.errors import StateError

    with pytest.raises(StateError, match="in use by another nodevigil"):
        await Daemon(running.config_path).run()


def test_sigterm_stops_and_sighup_reloads_the_real_process(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "nodevigil.yaml"
    write_config(path, "http://127.0.0.1:9", ["a"], api={"listen": f"127.0.0.1:{port}"})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodevigil.app.cli", "run", "-c", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "API listening" in line:
                break
        write_config(path, "http://127.0.0.1:9", ["a", "b"], api={"listen": f"127.0.0.1:{port}"})
        proc.send_signal(signal.SIGHUP)
        for line in proc.stderr:
            lines.append(line)
            if "configuration reloaded" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        rest = proc.stderr.read()
        assert "Traceback" not in "".join(lines) + rest
        assert "configuration reloaded: 2 nodes" in "".join(lines)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
