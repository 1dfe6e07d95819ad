"""The real daemon under a stand-in for systemd: READY after the first reconcile, the watchdog
fed while the controller cycles, RELOADING/READY around SIGHUP, STOPPING on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import yaml

from tests.failover.daemons import free_port


async def collect(sock: socket.socket, wanted: str, seen: list[str], within: float = 15) -> None:
    """Read datagrams into ``seen`` until one contains ``wanted``."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        while not any(wanted in message for message in seen):
            seen.append((await loop.sock_recv(sock, 4096)).decode())


async def test_the_daemon_speaks_sd_notify(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "state_dir": "state",
        "api": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"interval": "200ms", "timeout": "100ms"},
        "failover": {"cycle": "200ms"},
        "sites": [{"name": "s", "address": "192.0.2.1"}],
        "nodes": [
            {
                "name": "self",
                "site": "s",
                "probes": [{"type": "tcp", "address": f"127.0.0.1:{port}"}],
            }
        ],
    }
    path = tmp_path / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(config))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="2000000")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodevigil", "run", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    seen: list[str] = []
    try:
        with sock:
            await collect(sock, "READY=1", seen)
            ready = next(m for m in seen if "READY=1" in m)
            assert "STATUS=1 nodes, 1 sites, 0 services" in ready
            seen.clear()
            await collect(sock, "WATCHDOG=1", seen)  # fed every second (half of 2 s)
            proc.send_signal(signal.SIGHUP)
            seen.clear()
            await collect(sock, "READY=1", seen)
            assert any("RELOADING=1" in m for m in seen)
            proc.send_signal(signal.SIGTERM)
            seen.clear()
            await collect(sock, "STOPPING=1", seen)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        errors = (await proc.stderr.read()).decode()
        assert "Traceback" not in errors, errors
