"""A whole nodevigil cluster of real programs on loopback, for tests and the benchmark.

Three etcd members (tests/etcd_cluster.py), one PostgreSQL database, a real HAProxy over small
HTTP nodes, a webhook receiver (the customer) and N ``python -m nodevigil run`` processes with
the same configuration except ``vantage`` and ``api.listen``. The lease is short (2 s TTL,
renewed every 500 ms, 300 ms per etcd call: 0.5 + 2 x 0.3 <= 2, the timing rule) so a
take-over costs about two seconds. The global load balancer is the ``recording`` type: BIND's
fencing is tested on its own (tests/failover/test_rfc2136_fence.py) and would add a program
start to every test here without telling anything more about the lease. ``run_cluster(...,
bind=True)`` adds a real BIND as the service's global load balancer (``rfc2136``, TSIG) and a
second site ``far`` (one HTTP node, no local load balancer) so there is something to withdraw:
the test of the DNS and PostgreSQL fences through the real processes uses it.

Helpers find the leader (``GET /api/v1/cluster`` on every daemon), SIGKILL, SIGSTOP/SIGCONT and
restart a daemon, and read HAProxy's admin states back from HAProxy itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psycopg
import yaml

from failover.lb import ServerState
from nodevigil.app.api.auth import token_digest
from nodevigil.app.demo.servers.process import PortTaken, Program, spawn, wait_ready
from tests.etcd_cluster import EtcdCluster
from tests.failover.daemons import BindInstance, HAProxyInstance, HttpNode, run_bind, run_haproxy
from tests.failover.haproxy_daemon import admin_states
from tests.notify.receivers import WebhookReceiver
from tests.postgres_server import PostgresAddress

TOKEN = "cluster-harness-admin-token"  # a test token on loopback, gone after the test
LEASE_TTL, RENEW_EVERY, ETCD_TIMEOUT = 2.0, 0.5, 0.3
NODES = ("n1", "n2", "n3")
T = TypeVar("T")
# A decision line of a process that believed it could act (a standby's read "standby: would").
_ACTING_LINE = re.compile(r"failover: (?!standby: would)")


@dataclass
class Member:
    """One nodevigil daemon: its name, configuration, API port, log and (when running) process."""

    name: str
    config: Path
    port: int
    log: Path
    process: asyncio.subprocess.Process | None = None
    paused: bool = False

    @property
    def base(self) -> str:
        """The daemon's API root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process lives (paused counts as running)."""
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        """The process id (the daemon must be running)."""
        assert self.process is not None
        return self.process.pid

    def log_size(self) -> int:
        """The log's length now: an offset to read only what comes later."""
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        """What the daemon logged after ``offset``."""
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def acting_lines(self, offset: int = 0) -> list[str]:
        """Decision lines (after ``offset``) of cycles that acted, or believed they could."""
        text = self.log_since(offset)
        return [line for line in text.splitlines() if _ACTING_LINE.search(line)]


@dataclass
class Harness:
    """The running programs, and what a test does to them."""

    root: Path
    etcd: EtcdCluster
    haproxy: HAProxyInstance
    hook: WebhookReceiver
    members: list[Member]
    database: str
    http: aiohttp.ClientSession
    extra_env: dict[str, str] = field(default_factory=dict)
    postgres: PostgresAddress | None = None
    bind: BindInstance | None = None  # the global load balancer, with ``bind=True``
    far: HttpNode | None = None  # the ``far`` site's one node, with ``bind=True``

    # --- PostgreSQL -----------------------------------------------------------------------

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql``'s rows, read from the cluster's database on a connection of the test's."""
        assert self.postgres is not None
        dsn = self.postgres.admin_dsn.replace("dbname=postgres", f"dbname={self.database}")

        def run() -> list[tuple[Any, ...]]:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                return list(conn.execute(sql).fetchall())

        return await asyncio.to_thread(run)

    # --- the daemons ----------------------------------------------------------------------

    def member(self, name: str) -> Member:
        """The member called ``name``."""
        return next(m for m in self.members if m.name == name)

    async def start(self, member: Member) -> None:
        """Start ``member`` (again) and wait until its ``/readyz`` answers 200; on a new API
        port when another program took its port meanwhile."""
        for attempt in range(4):
            try:
                await self._start_once(member)
                return
            except PortTaken:
                if attempt == 3:
                    raise
                taken = {m.port for m in self.members}
                member.port = next(p for p in distinct_ports(8) if p not in taken)
                data = yaml.safe_load(member.config.read_text())
                data["api"]["listen"] = f"127.0.0.1:{member.port}"
                member.config.write_text(yaml.safe_dump(data))

    async def _start_once(self, member: Member) -> None:
        argv = [sys.executable, "-m", "nodevigil", "run", "-c", str(member.config)]
        program = await spawn(member.name, argv, member.log, member.config.parent, self.extra_env)
        member.process, member.paused = program.process, False

        async def ready() -> bool:
            async with self.http.get(f"{member.base}/readyz") as response:
                return response.status == 200

        await wait_ready(Program(member.name, program.process, member.log), ready)
        # Another daemon on the same port would have answered for it: ask who answered.
        view = await self.view(member, within=2.0)
        if not member.running or view is None or view.get("me") != member.name:
            await self.kill(member)
            raise PortTaken(f"{member.name}: port {member.port} answered as {view}")

    async def kill(self, member: Member) -> None:
        """SIGKILL ``member`` and reap it."""
        if member.process is not None and member.running:
            member.process.send_signal(signal.SIGKILL)
            await member.process.wait()
        member.paused = False

    def pause(self, member: Member) -> None:
        """SIGSTOP ``member``: its sockets stay open, it does nothing at all."""
        assert member.running
        member.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        member.paused = True

    def resume(self, member: Member) -> None:
        """SIGCONT ``member`` after ``pause``."""
        if member.paused and member.running:
            member.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        member.paused = False

    async def restart(self, member: Member) -> None:
        """SIGKILL ``member`` (if it runs) and start it again on the same configuration."""
        await self.kill(member)
        await self.start(member)

    async def stop_all(self) -> None:
        """Resume paused daemons and stop every one (SIGTERM, SIGKILL after 5 s)."""
        for member in self.members:
            self.resume(member)
            if member.process is not None and member.running:
                await Program(member.name, member.process, member.log).stop()

    # --- the API --------------------------------------------------------------------------

    async def call(
        self, member: Member, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """``method path`` on ``member``'s API with the admin token: (status, JSON body)."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.http.request(
            method, member.base + path, json=body, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def view(self, member: Member, within: float = 0.5) -> dict[str, Any] | None:
        """``member``'s ``/api/v1/cluster``, or None when it does not answer in time."""
        if not member.running or member.paused:
            return None
        try:
            async with asyncio.timeout(within):
                status, body = await self.call(member, "GET", "/api/v1/cluster")
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    async def roles(self) -> dict[str, str]:
        """Every answering daemon's role, by name."""
        views = await asyncio.gather(*(self.view(m) for m in self.members))
        return {m.name: v["role"] for m, v in zip(self.members, views, strict=True) if v}

    async def leaders(self, among: list[Member] | None = None) -> list[Member]:
        """The daemons (of ``among``, default all) that say they lead right now."""
        roles = await self.roles()
        return [m for m in among or self.members if roles.get(m.name) == "leader"]

    async def wait_leader(self, *, within: float = 10.0, excluding: Member | None = None) -> Member:
        """The one daemon that says it leads (another than ``excluding``), waiting for it."""
        among = [m for m in self.members if m is not excluding]

        async def one() -> Member | None:
            found = await self.leaders(among)
            return found[0] if len(found) == 1 else None

        return await until(one, within=within, what="exactly one leader")

    # --- HAProxy and the HTTP nodes -------------------------------------------------------

    async def admin(self) -> dict[str, ServerState]:
        """Every HAProxy server's admin state, read from HAProxy."""
        return await admin_states(self.haproxy)

    async def wait_admin(self, server: str, state: ServerState, *, within: float) -> float:
        """Wait until HAProxy holds ``server`` in ``state``; the monotonic time it was seen."""

        async def there() -> float | None:
            return time.monotonic() if (await self.admin())[server] is state else None

        return await until(there, within=within, what=f"{server} {state.value} in HAProxy")

    async def stop_node(self, name: str) -> None:
        """Stop HTTP node ``name``: its probes fail from now on."""
        await self.haproxy.nodes[name].stop()

    async def start_node(self, name: str) -> None:
        """Start HTTP node ``name`` again."""
        if not self.haproxy.nodes[name].running:
            await self.haproxy.nodes[name].start()


async def until(
    probe: Callable[[], Awaitable[T | bool | None]],
    *,
    within: float,
    what: str,
    every: float = 0.05,
) -> T:
    """Await ``probe()`` until it returns something other than None or False; its value."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None and found is not False:
            return found  # type: ignore[return-value]  # True only where T is bool
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:g}s")
        await asyncio.sleep(every)


def daemon_config(
    *,
    vantage: str,
    port: int,
    state_dir: Path,
    haproxy: HAProxyInstance,
    etcd: list[str],
    prefix: str,
    database_url: str,
    password_file: Path,
    hook: WebhookReceiver,
    secret_file: Path,
    nodes: int = 0,
    bind: BindInstance | None = None,
    far: HttpNode | None = None,
) -> dict[str, Any]:
    """One member's configuration: everything but ``vantage`` and ``api.listen`` is shared.

    ``nodes`` adds that many extra nodes in a second site without a load balancer (a TCP
    probe of HAProxy's frontend every 10 s each), for the benchmark's CPU figures. ``bind``
    (with ``far``, an HTTP node) makes BIND the service's global load balancer (record
    ``www``) over two sites, ``sh`` and ``far`` (``far-f1``, probing ``far``).
    """
    data: dict[str, Any] = {
        "timezone": "UTC",
        "vantage": vantage,
        "state_dir": str(state_dir),
        "api": {
            "listen": f"127.0.0.1:{port}",
            "tokens": [{"name": "ops", "role": "admin", "sha256": token_digest(TOKEN)}],
        },
        # No flap damping (monitor or controller): the benchmark kills a node every few
        # seconds, round after round, and each must come back within a second.
        "defaults": {
            "interval": "200ms",
            "timeout": "150ms",
            "rise": 1,
            "fall": 1,
            "flap": {"window": "10s", "max_changes": 100, "hold": "1s"},
        },
        "failover": {
            "cycle": "200ms",
            "hold_down": "1s",
            "hold_down_max": "1s",
            "site_hold_down": "1s",
        },
        "load_balancers": {
            "sh-haproxy": {
                "type": "haproxy",
                "socket": str(haproxy.socket_path),
                "backend": haproxy.backend,
                # A command is sent only while the lease outlasts its timeout (the HAProxy
                # fence): the default 2 s never fits in a 2 s lease. Loopback answers in 1 ms.
                "timeout": "500ms",
            },
            "gslb": {"type": "recording"},
        },
        "sites": [{"name": "sh", "address": "192.0.2.10", "local_lb": "sh-haproxy"}],
        "nodes": [
            {
                "name": f"sh-{name}",
                "site": "sh",
                "lb_server": name,
                "probes": [{"type": "http", "url": f"http://127.0.0.1:{node.port}/"}],
            }
            for name, node in haproxy.nodes.items()
        ],
        "services": [{"name": "web", "sites": ["sh"]}],
        "customers": [{"id": "acme", "services": ["web"], "plan": "gold"}],
        "contingency_plans": {
            "gold": {
                "steps": [{"after": "0s", "notify": ["acme-hook"]}],
                "on_resolve": ["acme-hook"],
            }
        },
        "notifiers": {
            "acme-hook": {"type": "webhook", "url": hook.url, "secret_file": str(secret_file)}
        },
        "notifications": {"backoff_initial": "50ms", "backoff_max": "200ms"},
        "database": {
            "url": database_url,
            "password_file": str(password_file),
            "connect_timeout": "2s",
        },
        "cluster": {
            "etcd": {"endpoints": etcd, "prefix": prefix, "timeout": f"{ETCD_TIMEOUT}s"},
            "lease_ttl": f"{LEASE_TTL}s",
            "renew_every": f"{RENEW_EVERY}s",
        },
    }
    if bind is not None:
        assert far is not None and not nodes
        data["load_balancers"]["gslb"] = {
            "type": "rfc2136",
            "server": bind.server,
            "zone": bind.zone,
            "ttl": 5,
            "timeout": "500ms",  # like HAProxy's: a command must fit in the lease
            "tsig": {
                "name": bind.key_name,
                "algorithm": bind.key_algorithm,
                "secret_file": str(bind.key_file),
            },
        }
        data["sites"].append({"name": "far", "address": "192.0.2.20"})
        data["nodes"].append(
            {"name": "far-f1", "site": "far", "probes": [{"type": "http", "url": far.url}]}
        )
        data["services"] = [
            {"name": "web", "sites": ["sh", "far"], "global_lb": "gslb", "record": "www"}
        ]
    if nodes:
        frontend = f"127.0.0.1:{haproxy.frontend_port}"
        data["sites"].append({"name": "far", "address": "192.0.2.20"})
        data["nodes"] += [
            {
                "name": f"far-{i}",
                "site": "far",
                "probes": [
                    {"type": "tcp", "address": frontend, "interval": "10s", "timeout": "1s"}
                ],
            }
            for i in range(nodes)
        ]
    return data


def distinct_ports(count: int) -> list[int]:
    """``count`` different free ports: all bound at once, so the kernel cannot hand one out
    twice (it does, one at a time, when loopback is crowded with TIME_WAIT sockets)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def start_etcd(root: Path, attempts: int = 3) -> EtcdCluster:
    """A healthy 3-member etcd with a raft leader under ``root``; started again (new ports)
    when a member lost its port. Ports come from ``distinct_ports``: ``free_port``, one at a
    time, can hand out one port twice, and ``EtcdCluster.wait_healthy`` counts only the
    members still running, so a cluster whose members all exited passes it."""
    for attempt in range(attempts):
        cluster = EtcdCluster(root / f"etcd-{attempt}")
        ports = distinct_ports(2 * cluster.size)
        for member in cluster.members:
            member.client_port, member.peer_port = ports.pop(), ports.pop()
        try:
            for index in range(cluster.size):
                cluster.start(index)
            cluster.wait_healthy()
            if all(m.running for m in cluster.members):
                cluster.leader()
                return cluster
        except (RuntimeError, TimeoutError):
            pass
        cluster.close()
    raise RuntimeError(f"etcd did not start in {attempts} attempts: see {root}/etcd-*/*.log")


@contextlib.asynccontextmanager
async def run_cluster(
    root: Path,
    postgres: PostgresAddress,
    *,
    daemons: int = 3,
    nodes: tuple[str, ...] = NODES,
    start: bool = True,
    bind: bool = False,
) -> AsyncIterator[Harness]:
    """Start the whole cluster under ``root`` (logs and state) and stop everything afterwards.

    HAProxy lives in a short temporary directory of its own: a unix socket path has to fit in
    108 bytes and pytest's directories are long. With ``start=False`` the daemons are
    configured but not started (the benchmark starts them itself). ``bind=True``: a real BIND
    as the global load balancer and a second site (see ``daemon_config``).
    """
    short = Path(tempfile.mkdtemp(prefix="nvc-"))
    database = await asyncio.to_thread(postgres.create_database)
    try:
        async with contextlib.AsyncExitStack() as stack:
            etcd = await asyncio.to_thread(start_etcd, root)
            stack.callback(etcd.close)
            haproxy = await stack.enter_async_context(run_haproxy(short / "haproxy", list(nodes)))
            hook = await stack.enter_async_context(WebhookReceiver())
            bind_server, far = None, None
            if bind:
                bind_server = await stack.enter_async_context(run_bind(root / "bind"))
                far = HttpNode("far-f1")
                await far.start()
                stack.push_async_callback(far.stop)
            http = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            )
            secret_file = root / "acme.whsec"
            secret_file.write_text(hook.secret + "\n")
            members = []
            ports = distinct_ports(daemons)
            for index in range(1, daemons + 1):
                name = f"ops-{index}"
                home = root / name
                (home / "state").mkdir(parents=True, exist_ok=True)
                port = ports.pop()
                data = daemon_config(
                    vantage=name,
                    port=port,
                    state_dir=home / "state",
                    haproxy=haproxy,
                    etcd=etcd.endpoints,
                    prefix="/nodevigil/test/",
                    database_url=postgres.url(database),
                    password_file=postgres.password_file,
                    hook=hook,
                    secret_file=secret_file,
                    bind=bind_server,
                    far=far,
                )
                config = home / "nodevigil.yaml"
                config.write_text(yaml.safe_dump(data))
                members.append(Member(name, config, port, home / "daemon.log"))
            harness = Harness(root, etcd, haproxy, hook, members, database, http)
            harness.postgres, harness.bind, harness.far = postgres, bind_server, far
            stack.push_async_callback(harness.stop_all)
            if start:
                await asyncio.gather(*(harness.start(m) for m in members))
            yield harness
    finally:
        await asyncio.to_thread(postgres.drop_database, database)
        shutil.rmtree(short, ignore_errors=True)
