"""Start-up under signals and a taken port, with the real ``nodevigil run`` process.

A SIGHUP sent while the daemon imports its modules and reads its configuration used to end it
(SIGHUP's default action): the loop's handler came ~0.7 s after the process began, and much
later for a large fleet. The configuration file here is a named pipe, so the test holds the
daemon inside that window for as long as it needs: the handler must already be in place while
the daemon waits for its configuration, and the reload asked for there happens once it runs.

An API port that is already taken must stop the start with one clear line before anything is
acted on or written: no traceback, no state opened.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodevigil.app.demo.servers.process import free_port, poll_until
from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.test_sla_daemon import Target


def config(port: int, url: str) -> dict[str, Any]:
    return {
        "state_dir": "state",
        "api": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"interval": "200ms", "timeout": "150ms"},
        "failover": {"cycle": "200ms"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [{"name": "a", "site": "s", "probes": [{"type": "http", "url": url}]}],
        "services": [{"name": "web", "sites": ["s"]}],
    }


def until(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def polled() -> bool:
        return check()

    return polled


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (the SigCgt mask of /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    made = Target()
    await made.start()
    yield made
    await made.stop()


async def test_sighup_while_the_configuration_loads_reloads_after_start(
    tmp_path: Path, target: Target
) -> None:
    port = free_port()
    path = tmp_path / "nodevigil.yaml"
    os.mkfifo(path)
    log = tmp_path / "daemon.log"
    proc = await spawn_daemon(path, log)
    try:
        # The daemon is now blocked reading the pipe: inside start-up, before its configuration.
        await poll_until(
            until(lambda: proc.returncode is None and catches(proc.pid, signal.SIGHUP)),
            within=10,
            what="a SIGHUP handler while the configuration is still unread",
        )
        for _ in range(3):
            proc.send_signal(signal.SIGHUP)
        assert proc.returncode is None

        text = yaml.safe_dump(config(port, target.url))
        regular = tmp_path / "regular.yaml"
        regular.write_text(text)

        def feed() -> None:
            with path.open("w") as pipe:  # blocks until the daemon opens its end
                pipe.write(text)
            os.replace(regular, path)  # the reload reads an ordinary file

        await asyncio.to_thread(feed)
        await wait_daemon_ready(proc, f"http://127.0.0.1:{port}", log)
        await poll_until(
            until(lambda: "configuration reloaded" in log.read_text()),
            within=10,
            what="the reload asked for during start-up",
        )
        assert proc.returncode is None
        assert "Traceback" not in log.read_text()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0, log.read_text()


async def test_sigterm_while_the_configuration_loads_stops_cleanly(
    tmp_path: Path, target: Target
) -> None:
    path = tmp_path / "nodevigil.yaml"
    os.mkfifo(path)
    log = tmp_path / "daemon.log"
    proc = await spawn_daemon(path, log)
    await poll_until(
        until(lambda: proc.returncode is None and catches(proc.pid, signal.SIGTERM)),
        within=10,
        what="a SIGTERM handler while the configuration is still unread",
    )
    proc.send_signal(signal.SIGTERM)
    text = yaml.safe_dump(config(free_port(), target.url))

    def feed() -> None:
        with path.open("w") as pipe:
            pipe.write(text)

    await asyncio.to_thread(feed)
    assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
    assert not (tmp_path / "state").exists(), "a stop asked for before start must start nothing"


async def test_a_taken_api_port_stops_the_start_before_anything_acts(
    tmp_path: Path, target: Target
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        path = tmp_path / "nodevigil.yaml"
        path.write_text(yaml.safe_dump(config(port, target.url)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nodevigil",
            "run",
            "-c",
            str(path),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text, text
    assert f"api.listen: cannot listen on 127.0.0.1:{port}" in text
    assert "in use" in text
    # Nothing was opened, let alone acted on: no event log, no failover state, no ledger.
    state = tmp_path / "state"
    assert not any(state.glob("*.db")), sorted(p.name for p in state.iterdir())


async def test_an_unreadable_mqtt_secret_stops_the_start_naming_its_key(
    tmp_path: Path, target: Target
) -> None:
    data = config(free_port(), target.url)
    data["mqtt"] = {
        "url": "mqtt://127.0.0.1:1",
        "agent_secret": {"secret_file": "missing-agent.secret"},
    }
    path = tmp_path / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodevigil", "run", "-c", str(path),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text, text
    assert "mqtt.agent_secret: cannot read secret file" in text, text
    state = tmp_path / "state"
    assert not any(state.glob("*.db")), "a bad secret must stop the start before anything acts"
