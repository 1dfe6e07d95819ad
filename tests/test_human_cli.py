"""The human CLI against a real daemon and a real HAProxy, both as processes: ``nodevigil
status`` / ``nodes`` (tables and ``--output json``), ``events --follow`` until Ctrl-C, the
daemon's ``--log-format json`` and its start-up line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from nodevigil import __version__
from nodevigil.app.logs import JsonFormatter
from tests.cli import run_cli
from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import HAPROXY, HAProxyInstance, free_port, poll_until, run_haproxy
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config

TOKEN = "cli-admin-token"


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[HAProxyInstance]:
    if not HAPROXY.exists():
        pytest.skip(f"{HAPROXY} is missing: install the Debian package haproxy")
    async with run_haproxy(tmp_path / "haproxy", ["n1", "n2", "n3"]) as instance:
        yield instance


@pytest.fixture
async def daemon(tmp_path: Path, haproxy: HAProxyInstance) -> AsyncIterator[tuple[Path, Path]]:
    """``nodevigil --log-format json run`` over the HAProxy: (config path, log path)."""
    path = tmp_path / "nodevigil.yaml"
    port = free_port()
    write_haproxy_daemon_config(path, haproxy, listen=f"127.0.0.1:{port}", admin_token=TOKEN)
    log = tmp_path / "daemon.log"
    proc = await spawn_daemon(path, log, args=("--log-format", "json"))
    try:
        await wait_daemon_ready(proc, f"http://127.0.0.1:{port}", log)
        yield path, log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()


def log_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the daemon's output, each of which must be one JSON object."""
    lines = []
    for text in log.read_text().splitlines():
        line = json.loads(text)  # raises on a line that is not JSON
        assert set(line) >= {"time", "level", "logger", "message"}, line
        assert datetime.fromisoformat(line["time"]).utcoffset() is not None, line
        lines.append(line)
    return lines


async def cli(*args: str) -> str:
    code, out = await run_cli(*args, token=TOKEN)
    assert code == 0, out
    return out


async def test_status_and_nodes_show_a_drained_node(
    daemon: tuple[Path, Path], haproxy: HAProxyInstance
) -> None:
    path, log = daemon
    await haproxy.nodes["n2"].stop()

    async def drained() -> bool:
        return (await admin_states(haproxy))["n2"].value == "maint"

    await poll_until(drained, within=10, what="sh-n2 drained in HAProxy")

    async def decided() -> bool:
        view = json.loads(await cli("status", "-c", str(path), "--output", "json"))
        return bool(view["decisions"])

    await poll_until(decided, within=10, what="the decision in the event log")
    view = json.loads(await cli("status", "-c", str(path), "--output", "json"))
    assert (view["role"], view["leader"], view["mode"]) == ("leader", None, "act")
    [site] = view["sites"]
    assert site["name"] == "sh" and site["serving"] and site["nodes_out"] == 1
    nodes = {n["name"]: n for n in site["nodes"]}
    assert set(nodes) == {"sh-n1", "sh-n2", "sh-n3"}
    assert (nodes["sh-n2"]["verdict"], nodes["sh-n2"]["lb"]) == ("down", "maint")
    assert (nodes["sh-n1"]["verdict"], nodes["sh-n1"]["lb"]) == ("up", "ready")
    assert datetime.fromisoformat(nodes["sh-n2"]["since"]).utcoffset() is not None
    assert view["services"] == [{"name": "web", "available": True, "unavailable_since": None}]
    assert view["incidents"] == []
    assert any("sh-n2 ready->maint" in d["decision"] for d in view["decisions"]), view

    table = await cli("status", "-c", str(path))
    assert "nodevigil at http://127.0.0.1:" in table and "single host" in table
    lines = table.splitlines()
    [n2] = [line for line in lines if line.split()[:1] == ["sh-n2"]]
    assert "down" in n2 and "maint" in n2 and " ago)" in n2, table
    assert any(line.split()[:2] == ["web", "available"] for line in lines), table
    assert "open incidents: none" in table
    assert any("sh-n2 ready->maint" in line for line in lines), table

    nodes_json = json.loads(await cli("nodes", "-c", str(path), "-o", "json"))["nodes"]
    assert [n["name"] for n in nodes_json] == ["sh-n1", "sh-n2", "sh-n3"]
    [probe] = next(n for n in nodes_json if n["name"] == "sh-n2")["probes"]
    assert probe["state"] == "down" and probe["detail"], probe
    nodes_table = await cli("nodes", "-c", str(path), "--site", "sh")
    assert nodes_table.splitlines()[0].split() == [
        "NODE",
        "SITE",
        "VERDICT",
        "SINCE",
        "LB",
        "PROBES",
    ]
    code, out = await run_cli("nodes", "-c", str(path), "--site", "nowhere", token=TOKEN)
    assert code == 1 and "--site: no site is called nowhere" in out, out

    # The daemon's own log: JSON lines, and the start-up line names what HAProxy read back.
    lines = log_lines(log)
    [started] = [line for line in lines if "started: config" in line["message"]]
    assert started["message"] == (
        f"nodevigil {__version__} started: config {path} (3 nodes, 1 sites, 1 services, "
        "0 customers, 1 load balancers); sh-haproxy read back web: 3 ready"
    ), started
    assert started["level"] == "INFO" and started["logger"] == "nodevigil.app.daemon"
    assert any(
        line["level"] == "WARNING" and "node sh-n2 is down" in line["message"] for line in lines
    )


async def read_json_line(stream: asyncio.StreamReader, within: float) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), within)
    assert line, "the follower's output ended"
    event: dict[str, Any] = json.loads(line)
    return event


async def test_events_follow_prints_new_events_until_ctrl_c(
    daemon: tuple[Path, Path], haproxy: HAProxyInstance
) -> None:
    path, _ = daemon
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodevigil",
        "events",
        "-c",
        str(path),
        "--follow",
        "--kind",
        "node.",
        "--interval",
        "200ms",
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODEVIGIL_TOKEN": TOKEN},
        # A suite started in the background (``cmd &`` in a script) passes SIGINT on ignored,
        # and Python keeps it so: the Ctrl-C below would never arrive. As at a terminal:
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # The start: the nodes' first verdicts, oldest first, once each.
        first = [await read_json_line(proc.stdout, 10) for _ in range(3)]
        assert sorted(e["subject"] for e in first) == ["sh-n1", "sh-n2", "sh-n3"]
        assert {e["kind"] for e in first} == {"node.up"}
        # New events arrive as they happen, each once.
        await haproxy.nodes["n3"].stop()
        down = await read_json_line(proc.stdout, 10)
        assert (down["kind"], down["subject"]) == ("node.down", "sh-n3")
        assert datetime.fromisoformat(down["at"]).utcoffset() is not None
        await haproxy.nodes["n3"].start()
        up = await read_json_line(proc.stdout, 10)
        assert (up["kind"], up["subject"]) == ("node.up", "sh-n3")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, errors = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 130, errors
        assert rest == b"", rest  # nothing repeated, nothing invented
        assert b"Traceback" not in errors, errors.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_events_table_and_a_bad_since(daemon: tuple[Path, Path]) -> None:
    path, _ = daemon
    out = await cli("events", "-c", str(path), "--kind", "node.up", "--since", "1h")
    lines = out.splitlines()
    assert len(lines) == 3 and all("node.up" in line for line in lines), out
    assert all(datetime.fromisoformat(line.split()[0]) for line in lines)
    code, out = await run_cli(
        "events", "-c", str(path), "--since", "2026-12-05T13:09:00", token=TOKEN
    )
    assert code == 1 and "since: '2026-12-05T13:09:00' has no UTC offset" in out, out


async def test_the_cli_says_when_the_daemon_is_away(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out = await run_cli("status", "--url", url, token=TOKEN)
    assert code == 1 and f"cannot reach the daemon at {url}/api/v1/" in out, out


def test_a_json_log_line_carries_the_exception_on_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nodevigil.test.jsonlog")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("bad value \u2603")
        except ValueError:
            logger.error("API error on %s", "GET /x", exc_info=True)
    finally:
        logger.removeHandler(handler)
    [text] = stream.getvalue().splitlines()  # one line, traceback included
    line = json.loads(text)
    assert (line["level"], line["logger"], line["message"]) == (
        "ERROR",
        "nodevigil.test.jsonlog",
        "API error on GET /x",
    )
    assert (
        line["exception"].startswith("Traceback") and "ValueError: bad value" in line["exception"]
    )
    assert (
        line["time"].endswith("Z") and datetime.fromisoformat(line["time"]).utcoffset() is not None
    )
    assert text.isascii()
