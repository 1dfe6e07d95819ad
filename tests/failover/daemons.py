"""Start real HAProxy, BIND and PowerDNS on loopback for tests and benchmarks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
from aiohttp import web

HAPROXY = Path("/usr/sbin/haproxy")
NAMED = Path("/usr/sbin/named")
PDNS_SERVER = Path("/usr/sbin/pdns_server")
PDNS_SQLITE_SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)
ZONE = "example.test."
T = TypeVar("T")
STARTUP_TIMEOUT = 15.0
# Words the daemons print when a port was taken between our probe and their bind.
_PORT_TAKEN = ("address already in use", "cannot bind", "unable to bind", "eaddrinuse")


class DaemonError(RuntimeError):
    """A daemon did not start or did not become ready; the message carries its log."""


class PortTaken(DaemonError):
    """The daemon lost the race for its ephemeral port; start again with new ports."""


def free_port() -> int:
    """Return a TCP port that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_tcp_port() -> int:
    """Return a port free for both UDP and TCP, as a DNS server needs."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise DaemonError("no port free for both UDP and TCP")


async def poll_until(
    check: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.02, what: str
) -> None:
    """Await ``check()`` until it is true, or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {within:g}s")
        await asyncio.sleep(interval)


@dataclass
class Daemon:
    """A started program: its process and its log file (stdout and stderr)."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log_tail(self, limit: int = 3000) -> str:
        """The end of the daemon's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.returncode is None

    async def stop(self) -> None:
        """Terminate the process, killing it when it does not exit within 5 s."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def _spawn(name: str, argv: list[str], log_path: Path, cwd: Path) -> Daemon:
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd
        )
    return Daemon(name, process, log_path)


async def _wait_ready(daemon: Daemon, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until ready; a daemon that exits or stays unready raises with its log."""

    async def ready_or_dead() -> bool:
        if not daemon.running:
            return True
        try:
            return await check()
        except (OSError, TimeoutError, aiohttp.ClientError, dns.exception.DNSException):
            return False

    try:
        await poll_until(ready_or_dead, within=STARTUP_TIMEOUT, what=f"{daemon.name} ready")
    except TimeoutError:
        await daemon.stop()
        raise DaemonError(f"{daemon.name} did not become ready:\n{daemon.log_tail()}") from None
    if not daemon.running:
        await daemon.process.wait()
        tail = daemon.log_tail()
        error = PortTaken if any(w in tail.lower() for w in _PORT_TAKEN) else DaemonError
        raise error(f"{daemon.name} exited with {daemon.process.returncode}:\n{tail}")


async def _start_with_retries(start: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
    for attempt in range(attempts):
        try:
            return await start()
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# --- HTTP nodes ------------------------------------------------------------------------------


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
        daemon = await _spawn(
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

        await _wait_ready(daemon, ready)
        return HAProxyInstance(daemon, socket_path, admin_port, port, config_path, "web", nodes)

    try:
        instance = await _start_with_retries(start)
        try:
            yield instance
        finally:
            await instance.daemon.stop()
    finally:
        for node in nodes.values():
            await node.stop()


# --- BIND ------------------------------------------------------------------------------------


@dataclass
class BindInstance:
    """A running ``named`` serving ZONE, updatable with the TSIG key in ``key_file``."""

    daemon: Daemon
    port: int
    zone: str
    key_name: str
    key_algorithm: str
    key_file: Path
    directory: Path

    @property
    def server(self) -> str:
        """``host:port`` as the rfc2136 configuration writes it."""
        return f"127.0.0.1:{self.port}"


def tsig_secret() -> str:
    """A random base64 TSIG secret (32 bytes, as tsig-keygen makes for hmac-sha256)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


async def dns_query(
    name: str, rdtype: str, port: int, *, host: str = "127.0.0.1", limit: float = 1.0
) -> dns.message.Message:
    """One real DNS query over UDP (TCP when truncated), bounded by ``limit`` seconds."""
    query = dns.message.make_query(name, rdtype)
    response, _ = await dns.asyncquery.udp_with_fallback(query, host, timeout=limit, port=port)
    return response


def _prepare_bind(workdir: Path, secret: str, key_file: Path, zone_file: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    zone_file.write_text(
        f"$TTL 60\n@ IN SOA ns1.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 60\n"
        f"@ IN NS ns1.{ZONE}\nns1 IN A 127.0.0.1\n"
    )


@contextlib.asynccontextmanager
async def run_bind(
    workdir: Path, *, key_name: str = "nodevigil", algorithm: str = "hmac-sha256"
) -> AsyncIterator[BindInstance]:
    """Start ``named -g`` for ZONE with dynamic updates allowed for one TSIG key."""
    secret = tsig_secret()
    key_file = workdir / "tsig.key"
    zone = ZONE.rstrip(".")
    zone_file = workdir / f"{zone}.db"
    await asyncio.to_thread(_prepare_bind, workdir, secret, key_file, zone_file)
    conf = workdir / "named.conf"

    async def start() -> BindInstance:
        port = free_udp_tcp_port()
        text = f"""options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    session-keyfile "{workdir}/session.key";
    managed-keys-directory "{workdir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
}};
controls {{ }};
key "{key_name}" {{ algorithm {algorithm}; secret "{secret}"; }};
zone "{zone}" {{
    type primary;
    file "{zone_file}";
    allow-update {{ key "{key_name}"; }};
}};
"""
        await asyncio.to_thread(conf.write_text, text)
        daemon = await _spawn(
            "named",
            [str(NAMED), "-g", "-n", "1", "-c", str(conf)],
            workdir / "named.log",
            workdir,
        )

        async def ready() -> bool:
            answer = await dns_query(ZONE, "SOA", port, limit=0.3)
            return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)

        await _wait_ready(daemon, ready)
        return BindInstance(daemon, port, ZONE, key_name, algorithm, key_file, workdir)

    instance = await _start_with_retries(start)
    try:
        yield instance
    finally:
        await instance.daemon.stop()


# --- PowerDNS --------------------------------------------------------------------------------


@dataclass
class PowerDnsInstance:
    """A running ``pdns_server`` (gsqlite3) with ZONE created through its HTTP API."""

    daemon: Daemon
    dns_port: int
    api_port: int
    api_key: str
    api_key_file: Path
    zone: str
    directory: Path

    @property
    def url(self) -> str:
        """The base URL of the webserver (the API lives under /api/v1)."""
        return f"http://127.0.0.1:{self.api_port}"


def pdns_schema() -> Path | None:
    """The gsqlite3 schema shipped by pdns-backend-sqlite3, if installed."""
    return next((path for path in PDNS_SQLITE_SCHEMAS if path.exists()), None)


def _prepare_powerdns(
    workdir: Path, database: Path, schema: Path, api_key_file: Path, api_key: str
) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    api_key_file.write_text(api_key + "\n")
    (workdir / "pdns.conf").write_text("")  # --config-dir points here: no system config
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.executescript(schema.read_text())  # sqlite3 CLI may be absent: use Python's
        db.commit()


@contextlib.asynccontextmanager
async def run_powerdns(workdir: Path) -> AsyncIterator[PowerDnsInstance]:
    """Start ``pdns_server`` in the foreground and create ZONE through the API."""
    schema = pdns_schema()
    if schema is None:
        raise DaemonError("the gsqlite3 schema of pdns-backend-sqlite3 is not installed")
    database = workdir / "pdns.sqlite3"
    api_key = secrets.token_urlsafe(24)
    api_key_file = workdir / "pdns-api.key"
    await asyncio.to_thread(_prepare_powerdns, workdir, database, schema, api_key_file, api_key)
    headers = {"X-API-Key": api_key}

    async def start() -> PowerDnsInstance:
        dns_port = free_udp_tcp_port()
        api_port = free_port()
        argv = [
            str(PDNS_SERVER),
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            "--write-pid=no",
            f"--config-dir={workdir}",
            f"--socket-dir={workdir}",
            "--launch=gsqlite3",
            f"--gsqlite3-database={database}",
            "--local-address=127.0.0.1",
            f"--local-port={dns_port}",
            "--webserver=yes",
            "--webserver-address=127.0.0.1",
            f"--webserver-port={api_port}",
            "--webserver-allow-from=127.0.0.1",
            "--api=yes",
            f"--api-key={api_key}",
            "--loglevel=4",
        ]
        daemon = await _spawn("pdns_server", argv, workdir / "pdns.log", workdir)
        base = f"http://127.0.0.1:{api_port}/api/v1/servers/localhost"

        async def ready() -> bool:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
                http.get(base, headers=headers) as response,
            ):
                return response.status == 200

        await _wait_ready(daemon, ready)
        async with aiohttp.ClientSession() as http:
            body = {"name": ZONE, "kind": "Native", "nameservers": [f"ns1.{ZONE}"]}
            async with http.post(f"{base}/zones", json=body, headers=headers) as response:
                if response.status != 201:
                    await daemon.stop()
                    raise DaemonError(f"creating {ZONE}: {response.status} {await response.text()}")
        return PowerDnsInstance(daemon, dns_port, api_port, api_key, api_key_file, ZONE, workdir)

    instance = await _start_with_retries(start)
    try:
        yield instance
    finally:
        await instance.daemon.stop()
