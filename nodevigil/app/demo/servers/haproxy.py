"""A real HAProxy in front of HTTP nodes, without health checks: only nodevigil moves traffic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodevigil.app.demo.servers.httpnode import HttpNode
from nodevigil.app.demo.servers.process import (
    Program,
    ProgramError,
    free_port,
    spawn,
    start_with_retries,
    wait_ready,
)

HAPROXY = Path("/usr/sbin/haproxy")
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; HAProxy refuses long paths


@dataclass
class HAProxyInstance:
    """A running HAProxy with one frontend and one backend over the HTTP nodes."""

    daemon: Program
    socket_path: Path
    admin_port: int  # the same runtime API over TCP
    frontend_port: int
    config_path: Path
    backend: str = "web"
    nodes: dict[str, HttpNode] = field(default_factory=dict)
    frontend_host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """The frontend's URL."""
        return f"http://{self.frontend_host}:{self.frontend_port}/"


def haproxy_config(
    socket_path: Path,
    admin_port: int,
    frontend_port: int,
    nodes: Mapping[str, HttpNode],
    *,
    redispatch: bool = False,
    retries: int = 1,
    frontend_host: str = "127.0.0.1",
    backend: str = "web",
) -> str:
    """An HAProxy config without health checks: only nodevigil moves traffic."""
    servers = "\n".join(
        f"    server {node.name} {node.host}:{node.port}" for node in nodes.values()
    )
    # noreuseport: HAProxy binds with SO_REUSEPORT by default, so another HAProxy on this host
    # (a concurrent test) that drew the same free port would silently share it, answering
    # HTTP with its CLI; without it the second bind fails and start_with_retries draws again.
    return f"""global
    noreuseport
    stats socket {socket_path} level admin
    stats socket ipv4@127.0.0.1:{admin_port} level admin
    stats timeout 10s
defaults
    mode http
    timeout connect 500ms
    timeout client 5s
    timeout server 5s
    retries {retries}
    {"option redispatch" if redispatch else "no option redispatch"}
frontend fe
    bind {frontend_host}:{frontend_port}
    default_backend {backend}
backend {backend}
    balance roundrobin
{servers}
"""


@contextlib.asynccontextmanager
async def start_haproxy(
    workdir: Path,
    nodes: Mapping[str, HttpNode],
    *,
    redispatch: bool = False,
    retries: int = 1,
    frontend_host: str = "127.0.0.1",
    program: Path = HAPROXY,
) -> AsyncIterator[HAProxyInstance]:
    """Start ``haproxy -db`` in front of already started ``nodes``; stop it at exit."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    socket_path = workdir / "admin.sock"
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise ProgramError(f"unix socket path too long (use a shorter directory): {socket_path}")
    config_path = workdir / "haproxy.cfg"

    async def start() -> HAProxyInstance:
        port = free_port(frontend_host)
        admin_port = free_port()
        while admin_port == port:  # a port released by the first draw is often drawn again
            admin_port = free_port()
        text = haproxy_config(
            socket_path,
            admin_port,
            port,
            nodes,
            redispatch=redispatch,
            retries=retries,
            frontend_host=frontend_host,
        )
        await asyncio.to_thread(config_path.write_text, text)
        daemon = await spawn(
            "haproxy",
            [str(program), "-db", "-f", str(config_path)],
            workdir / "haproxy.log",
            workdir,
        )

        async def ready() -> bool:
            _, writer = await asyncio.open_unix_connection(socket_path)
            writer.close()
            _, writer = await asyncio.open_connection(frontend_host, port)
            writer.close()
            return True

        await wait_ready(daemon, ready)
        return HAProxyInstance(
            daemon, socket_path, admin_port, port, config_path, "web", dict(nodes), frontend_host
        )

    instance = await start_with_retries(start)
    try:
        yield instance
    finally:
        await instance.daemon.stop()


@contextlib.asynccontextmanager
async def run_haproxy(
    workdir: Path, node_names: list[str], *, redispatch: bool = False
) -> AsyncIterator[HAProxyInstance]:
    """Start HTTP nodes and an HAProxy in front of them; stop all at exit."""
    nodes = {name: HttpNode(name) for name in node_names}
    try:
        for node in nodes.values():
            await node.start()
        async with start_haproxy(workdir, nodes, redispatch=redispatch) as instance:
            yield instance
    finally:
        for node in nodes.values():
            await node.stop()
