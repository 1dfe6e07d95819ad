"""A real HAProxy over small aiohttp nodes, without health checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.failover.daemons.process import (
    Daemon,
    DaemonError,
    free_port,
    spawn,
    start_with_retries,
    wait_ready,
)

HAPROXY = Path("/usr/sbin/haproxy")


@dataclass
class HttpNode:
    """A small aiohttp server standing in for a cloud node; it answers its own name."""

    name: str
    port: int = 0
    runner: web.AppRunner | None = None
    hits: int = 0

    async def start(self) -> None:
        """Start serving (on the same port when restarted)."""
        app = web.Application()
        app.router.add_get("/", self._answer)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.05)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self.runner = runner

    async def stop(self) -> None:
        """Stop abruptly: close the listener and every open connection."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.name)


# --- HAProxy ---------------------------------------------------------------------------------


@dataclass
class HAProxyInstance:
    """A running HAProxy with one frontend and the backend ``web`` over the HTTP nodes."""

    daemon: Daemon
    socket_path: Path
    admin_port: int  # the same runtime API over TCP
    frontend_port: int
    config_path: Path
    backend: str = "web"
    nodes: dict[str, HttpNode] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The frontend's URL."""
        return f"http://127.0.0.1:{self.frontend_port}/"


def haproxy_config(
    socket_path: Path,
    admin_port: int,
    frontend_port: int,
    nodes: dict[str, HttpNode],
    *,
    redispatch: bool = False,
) -> str:
    """An HAProxy config without health checks: only nodevigil moves traffic."""
    servers = "\n".join(f"    server {node.name} 127.0.0.1:{node.port}" for node in nodes.values())
    return f"""global
    stats socket {socket_path} level admin
    stats socket ipv4@127.0.0.1:{admin_port} level admin
    stats timeout 10s
defaults
    mode http
    timeout connect 500ms
    timeout client 5s
    timeout server 5s
    retries 1
    {"option redispatch" if redispatch else "no option redispatch"}
frontend fe
    bind 127.0.0.1:{frontend_port}
    default_backend web
backend web
    balance roundrobin
{servers}
"""


@contextlib.asynccontextmanager
async def run_haproxy(
    workdir: Path, node_names: list[str], *, redispatch: bool = False
) -> AsyncIterator[HAProxyInstance]:
    """Start HTTP nodes and an HAProxy in front of them; stop all at exit."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    nodes = {name: HttpNode(name) for name in node_names}
    for node in nodes.values():
        await node.start()
    socket_path = workdir / "admin.sock"
    if len(str(socket_path)) > 100:
        raise DaemonError(f"unix socket path too long: {socket_path}")
    config_path = workdir / "haproxy.cfg"

    async def start() -> HAProxyInstance:
        port = free_port()
        admin_port = free_port()
        text = haproxy_config(socket_path, admin_port, port, nodes, redispatch=redispatch)
        await asyncio.to_thread(config_path.write_text, text)
        daemon = await spawn(
            "haproxy",
            [str(HAPROXY), "-db", "-f", str(config_path)],
            workdir / "haproxy.log",
            workdir,
        )

        async def ready() -> bool:
            _, writer = await asyncio.open_unix_connection(socket_path)
            writer.close()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True

        await wait_ready(daemon, ready)
        return HAProxyInstance(daemon, socket_path, admin_port, port, config_path, "web", nodes)

    try:
        instance = await start_with_retries(start)
        try:
            yield instance
        finally:
            await instance.daemon.stop()
    finally:
        for node in nodes.values():
            await node.stop()
