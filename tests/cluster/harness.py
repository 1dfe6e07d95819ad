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

For the vantage tests: ``run_cluster(..., east=EAST_NODES)`` adds a second site ``east``
(nodes ``east-e1`` .. ``east-e3``) behind an HAProxy of its own, so one site can be cut off
alone (the service then spans both sites through the ``recording`` global load balancer, or
BIND with ``bind=True``); ``cluster_extra`` is merged into every member's ``cluster:`` section
(``{"vantages": [...], "quorum": 2}``); ``cuttable=["ops-3"]`` runs that member under a cut
identity of its own (tests/cluster/cuts.py), so ``cut(member, targets)`` black-holes its
packets to nodes, sites, etcd members or other daemons while every other process still
reaches them, until ``heal(member)``. ``node(...)`` and ``events(...)`` read a member's
``GET /api/v1/nodes/{name}`` and ``GET /api/v1/events``.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import aiohttp
import psycopg
import yaml

from failover.lb import ServerState
from nodevigil.app.api.auth import token_digest
from nodevigil.app.demo.servers.process import PortTaken, Program, spawn, wait_ready
from tests.cluster.cuts import ProcessCut, Target, process_cut, require_cuts
from tests.etcd_cluster import EtcdCluster
from tests.failover.daemons import BindInstance, HAProxyInstance, HttpNode, run_bind, run_haproxy
from tests.failover.haproxy_daemon import admin_states
from tests.notify.receivers import WebhookReceiver
from tests.postgres_server import PostgresAddress

TOKEN = "cluster-harness-admin-token"  # a test token on loopback, gone after the test
LEASE_TTL, RENEW_EVERY, ETCD_TIMEOUT = 2.0, 0.5, 0.3
NODES = ("n1", "n2", "n3")
EAST_NODES = ("e1", "e2", "e3")  # the second site's servers, with ``east=EAST_NODES``
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
    cut: ProcessCut | None = None  # its cut identity, with ``run_cluster(cuttable=...)``

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
    east: HAProxyInstance | None = None  # the ``east`` site's HAProxy, with ``east=...``

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
        launch = spawn if member.cut is None else member.cut.spawn
        program = await launch(member.name, argv, member.log, member.config.parent, self.extra_env)
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

    async def node(self, member: Member | str, name: str) -> dict[str, Any]:
        """``GET /api/v1/nodes/{name}`` on ``member``: that daemon's view of node ``name``."""
        status, body = await self.call(self._member(member), "GET", f"/api/v1/nodes/{name}")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET /api/v1/nodes/{name}: {status} {body}")
        return body

    async def events(
        self,
        member: Member | str,
        *,
        kind: str | None = None,
        subject: str | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /api/v1/events`` on ``member``, newest first: ``kind`` is a prefix
        (``node.``, ``vantage.isolated``); ``since`` and ``before`` (the API's ``until``) are
        seconds since the epoch."""
        query = {"kind": kind, "subject": subject, "since": since, "until": before, "limit": limit}
        given = urlencode({k: v for k, v in query.items() if v is not None})
        path = "/api/v1/events" + (f"?{given}" if given else "")
        status, body = await self.call(self._member(member), "GET", path)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET {path}: {status} {body}")
        events: list[dict[str, Any]] = body["events"]
        return events

    async def wait_event(
        self,
        member: Member | str,
        kind: str,
        *,
        subject: str | None = None,
        since: float | None = None,
        within: float,
    ) -> dict[str, Any]:
        """The newest event of ``kind`` (and ``subject``) on ``member``, waiting for one."""

        async def newest() -> dict[str, Any] | None:
            found = await self.events(member, kind=kind, subject=subject, since=since, limit=1)
            return found[0] if found else None

        name = member if isinstance(member, str) else member.name
        return await until(newest, within=within, what=f"a {kind} event on {name}")

    # --- cuts (run_cluster(cuttable=...)) -------------------------------------------------

    def _member(self, member: Member | str) -> Member:
        return self.member(member) if isinstance(member, str) else member

    def targets_of(self, name: str) -> set[Target]:
        """The (address, port) pairs behind ``name``: a node (its configured name, ``sh-n1``,
        or its HAProxy server, ``n1``), a site (all its nodes' probe targets), ``nodes`` (every
        node), ``etcd`` (every member) or ``etcd-<i>`` (member i), a daemon (its API, as a
        canary), ``postgres`` or ``bind``. Read now: a daemon restarted on a new port is
        found there."""
        config = yaml.safe_load(self.members[0].config.read_text())
        nodes = [
            n
            for n in config["nodes"]
            if name in ("nodes", n["name"], n.get("lb_server"), n["site"])
        ]
        if nodes:
            return {t for n in nodes for t in probe_targets(n)}
        etcd = [f"etcd-{i}" for i in range(len(self.etcd.members))]
        if name in ("etcd", *etcd):
            chosen = self.etcd.members if name == "etcd" else [self.etcd.members[etcd.index(name)]]
            return {("127.0.0.1", m.client_port) for m in chosen}
        daemons = {m.name: m for m in self.members}
        if name in daemons:
            return {("127.0.0.1", daemons[name].port)}
        if name == "postgres" and self.postgres is not None:
            return {("127.0.0.1", self.postgres.port)}
        if name == "bind" and self.bind is not None:
            return {("127.0.0.1", self.bind.port)}
        known = sorted({n["name"] for n in config["nodes"]} | {s["name"] for s in config["sites"]})
        raise ValueError(
            f"no cut target is called {name!r}: a node or site ({', '.join(known)}), nodes, "
            f"etcd, etcd-<i>, a daemon ({', '.join(daemons)}), postgres or bind"
        )

    def _pairs(self, targets: Iterable[str | Target]) -> set[Target]:
        return {p for t in targets for p in (self.targets_of(t) if isinstance(t, str) else {t})}

    async def cut(self, member: Member | str, targets: Iterable[str | Target]) -> set[Target]:
        """Black-hole ``member``'s packets to ``targets`` (names for ``targets_of`` or
        (address, port) pairs) from now on, on top of what is cut already; everyone else
        still reaches them. The pairs cut now. It outlives a restart of the member."""
        identity = self._identity(member)
        await asyncio.to_thread(identity.cut, self._pairs(targets))
        return await asyncio.to_thread(identity.targets)

    async def heal(
        self, member: Member | str, targets: Iterable[str | Target] | None = None
    ) -> set[Target]:
        """Lift ``member``'s cut from ``targets`` (all when None); the pairs still cut."""
        identity = self._identity(member)
        pairs = None if targets is None else self._pairs(targets)
        await asyncio.to_thread(identity.heal, pairs)
        return await asyncio.to_thread(identity.targets)

    def _identity(self, member: Member | str) -> ProcessCut:
        found = self._member(member)
        if found.cut is None:
            raise ValueError(
                f"{found.name} runs without a cut identity: run_cluster(cuttable=[{found.name!r}])"
            )
        return found.cut

    # --- HAProxy and the HTTP nodes -------------------------------------------------------

    @property
    def haproxies(self) -> list[HAProxyInstance]:
        """Every HAProxy: the ``sh`` site's, then the ``east`` site's when there is one."""
        return [self.haproxy] if self.east is None else [self.haproxy, self.east]

    async def admin(self) -> dict[str, ServerState]:
        """Every HAProxy server's admin state (of both sites' HAProxies), read from HAProxy."""
        states: dict[str, ServerState] = {}
        for haproxy in self.haproxies:
            states.update(await admin_states(haproxy))
        return states

    async def wait_admin(self, server: str, state: ServerState, *, within: float) -> float:
        """Wait until HAProxy holds ``server`` in ``state``; the monotonic time it was seen."""

        async def there() -> float | None:
            return time.monotonic() if (await self.admin())[server] is state else None

        return await until(there, within=within, what=f"{server} {state.value} in HAProxy")

    def http_node(self, name: str) -> HttpNode:
        """The HTTP node behind HAProxy server ``name`` (``n1``, or ``e1`` of ``east``)."""
        for haproxy in self.haproxies:
            if name in haproxy.nodes:
                return haproxy.nodes[name]
        raise KeyError(f"no HAProxy has a server {name!r}")

    async def stop_node(self, name: str) -> None:
        """Stop HTTP node ``name``: its probes fail from now on."""
        await self.http_node(name).stop()

    async def start_node(self, name: str) -> None:
        """Start HTTP node ``name`` again."""
        if not self.http_node(name).running:
            await self.http_node(name).start()


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


def probe_targets(node: Mapping[str, Any]) -> set[Target]:
    """The (address, port) pairs a configured node's probes connect to (http and tcp)."""
    found: set[Target] = set()
    for probe in node.get("probes", []):
        if "url" in probe:
            url = urlsplit(probe["url"])
            default = 443 if url.scheme == "https" else 80
            found.add((str(url.hostname), url.port or default))
        elif "address" in probe:
            host, _, port = str(probe["address"]).rpartition(":")
            found.add((host, int(port)))
    return found


def merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


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
    east: HAProxyInstance | None = None,
    cluster_extra: Mapping[str, Any] | None = None,
    defaults_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One member's configuration: everything but ``vantage`` and ``api.listen`` is shared.

    ``nodes`` adds that many extra nodes in a second site without a load balancer (a TCP
    probe of HAProxy's frontend every 10 s each), for the benchmark's CPU figures. ``bind``
    (with ``far``, an HTTP node) makes BIND the service's global load balancer (record
    ``www``) over two sites, ``sh`` and ``far`` (``far-f1``, probing ``far``). ``east`` adds
    a site ``east`` behind that HAProxy (its servers as nodes ``east-<server>``) to the
    service, whose global load balancer is then ``gslb`` (``recording`` unless ``bind``).
    ``cluster_extra`` is merged into the ``cluster`` section as given (mappings key by key).
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
    if east is not None:
        data["load_balancers"]["east-haproxy"] = {
            **data["load_balancers"]["sh-haproxy"],
            "socket": str(east.socket_path),
            "backend": east.backend,
        }
        data["sites"].insert(
            1, {"name": "east", "address": "192.0.2.30", "local_lb": "east-haproxy"}
        )
        data["nodes"] += [
            {
                "name": f"east-{name}",
                "site": "east",
                "lb_server": name,
                "probes": [{"type": "http", "url": f"http://127.0.0.1:{node.port}/"}],
            }
            for name, node in east.nodes.items()
        ]
        service = data["services"][0]
        service["sites"].insert(1, "east")
        service.setdefault("global_lb", "gslb")
        service.setdefault("record", "www")
    if cluster_extra:
        data["cluster"] = merged(data["cluster"], cluster_extra)
    if defaults_extra:
        data["defaults"] = merged(data["defaults"], defaults_extra)
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
    east: tuple[str, ...] = (),
    cluster_extra: Mapping[str, Any] | None = None,
    cuttable: Collection[str] = (),
    defaults_extra: Mapping[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    """Start the whole cluster under ``root`` (logs and state) and stop everything afterwards.

    HAProxy lives in a short temporary directory of its own: a unix socket path has to fit in
    108 bytes and pytest's directories are long. With ``start=False`` the daemons are
    configured but not started (the benchmark starts them itself). ``bind=True``: a real BIND
    as the global load balancer and a second site (see ``daemon_config``). ``east`` (server
    names, e.g. ``EAST_NODES``): a site ``east`` over those HTTP nodes behind an HAProxy of its
    own. ``cluster_extra``: merged into every member's ``cluster:`` section
    (``defaults_extra`` into ``defaults:``, e.g. a higher ``fall``). ``cuttable``
    (member names, ``ops-<i>``): those run under a cut identity of their own, for ``cut`` and
    ``heal``; the test is skipped where cuts cannot be made (not root, no nft).
    """
    names = [f"ops-{index}" for index in range(1, daemons + 1)]
    if unknown := set(cuttable) - set(names):
        raise ValueError(f"cuttable: no member is called {sorted(unknown)} (members: {names})")
    if clash := set(east) & set(nodes):
        raise ValueError(f"east: servers {sorted(clash)} are also the sh site's")
    if cuttable:
        require_cuts()  # skip before anything starts
    short = Path(tempfile.mkdtemp(prefix="nvc-"))
    database = await asyncio.to_thread(postgres.create_database)
    try:
        async with contextlib.AsyncExitStack() as stack:
            etcd = await asyncio.to_thread(start_etcd, root)
            stack.callback(etcd.close)
            haproxy = await stack.enter_async_context(run_haproxy(short / "haproxy", list(nodes)))
            east_haproxy = None
            if east:
                east_haproxy = await stack.enter_async_context(
                    run_haproxy(short / "haproxy-east", list(east))
                )
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
            # Entered before the daemons start and left after they stop (the stack unwinds).
            cuts = {name: stack.enter_context(process_cut()) for name in cuttable}
            members = []
            ports = distinct_ports(daemons)
            for name in names:
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
                    east=east_haproxy,
                    cluster_extra=cluster_extra,
                    defaults_extra=defaults_extra,
                )
                config = home / "nodevigil.yaml"
                config.write_text(yaml.safe_dump(data))
                members.append(Member(name, config, port, home / "daemon.log", cut=cuts.get(name)))
            harness = Harness(root, etcd, haproxy, hook, members, database, http)
            harness.postgres, harness.bind, harness.far = postgres, bind_server, far
            harness.east = east_haproxy
            stack.push_async_callback(harness.stop_all)
            if start:
                await asyncio.gather(*(harness.start(m) for m in members))
            yield harness
    finally:
        await asyncio.to_thread(postgres.drop_database, database)
        shutil.rmtree(short, ignore_errors=True)
