"""The demo's world on loopback: nodes, agents, HAProxy per site, BIND, Mosquitto, nodevigil."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from failover.controller.status import ControllerStatus
from failover.events import AddressesSet
from failover.lb.haproxy import HAProxyLoadBalancer
from monitor.agent import NodeAgent
from monitor.agentauth import derive_key
from nodevigil.app.daemon import Daemon
from nodevigil.app.demo.receiver import CustomerReceiver
from nodevigil.app.demo.servers import (
    BindInstance,
    Broker,
    HAProxyInstance,
    HttpNode,
    addresses_of,
    locate,
    run_bind,
    run_mosquitto,
    start_haproxy,
)
from nodevigil.app.demo.servers.mosquitto import AGENT_ACL, DAEMON_USER
from nodevigil.app.demo.settings import (
    CONFIG_HEADER,
    RECORD,
    SITES,
    ZONE,
    Endpoints,
    Timings,
    demo_config,
    node_names,
)
from nodevigil.core.errors import NodevigilError
from nodevigil.core.events import Event

log = logging.getLogger(__name__)


class DemoError(NodevigilError):
    """The demo world could not be built or a story step missed its deadline."""


# --without key: the program, its Debian package, its name, and what the demo does without it
_OPTIONAL = {
    "haproxy": ("haproxy", "haproxy", "HAProxy", "using the in-process recording load balancer"),
    "bind": ("named", "bind9", "BIND", "using the in-process recording DNS load balancer"),
    "mosquitto": ("mosquitto", "mosquitto", "Mosquitto", "no node agents (http probes only)"),
}


@dataclass(frozen=True, slots=True)
class Programs:
    """The real servers found (None: absent or left out) and one plain line per absence."""

    haproxy: Path | None
    named: Path | None
    mosquitto: Path | None
    notes: tuple[str, ...]

    @classmethod
    def detect(cls, without: frozenset[str]) -> Programs:
        """Look the programs up; ``without`` leaves some out on purpose."""
        notes = []
        found: dict[str, Path | None] = {}
        for key, (program, package, title, instead) in _OPTIONAL.items():
            path = None if key in without else locate(program)
            found[key] = path
            if key in without:
                notes.append(f"{title} left out (--without {key}): {instead}")
            elif path is None:
                notes.append(f"{title} not found (apt-get install {package}): {instead}")
        return cls(found["haproxy"], found["bind"], found["mosquitto"], tuple(notes))


class World:
    """Everything the story acts on; ``async with World(...)`` builds it and tears it down."""

    def __init__(self, workdir: Path, timings: Timings, programs: Programs) -> None:
        self.workdir = workdir
        self.timings = timings
        self.programs = programs
        self.admin_token = secrets.token_urlsafe(24)
        self.config_path = workdir / "nodevigil.yaml"
        self.nodes: dict[str, HttpNode] = {}
        self.site_of: dict[str, str] = {}
        self.haproxies: dict[str, HAProxyInstance] = {}
        self.bind: BindInstance | None = None
        self.broker: Broker | None = None
        self.receiver = CustomerReceiver()
        self.daemon: Daemon | None = None
        self._agents: dict[str, asyncio.Task[None]] = {}
        self._readers: dict[str, HAProxyLoadBalancer] = {}
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._standin_dns: set[str] = set()  # the recording global LB's record, from its events
        self._agent_secret = secrets.token_hex(32)  # every node agent's key derives from it
        self._mqtt_users = {DAEMON_USER: secrets.token_urlsafe(16)}
        for site in SITES:
            self._mqtt_users.update({n: secrets.token_urlsafe(16) for n in node_names(site)})

    # --- building and tearing down ------------------------------------------------------------

    async def __aenter__(self) -> World:
        try:
            await self._build()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _build(self) -> None:
        stack = self._stack
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        await stack.enter_async_context(self.receiver)
        for site in SITES:
            for name in node_names(site):
                node = HttpNode(name)
                self.nodes[name] = node
                self.site_of[name] = site
                stack.push_async_callback(node.stop)
                await node.start()
        if self.programs.haproxy is not None:
            for site, address in SITES.items():
                members = {n: self.nodes[n] for n in node_names(site)}
                self.haproxies[site] = await stack.enter_async_context(
                    start_haproxy(
                        self.workdir / site,
                        members,
                        redispatch=True,
                        retries=2,
                        frontend_host=address,
                        program=self.programs.haproxy,
                    )
                )
                reader = HAProxyLoadBalancer(
                    name=f"{site}-reader", socket_path=self.haproxies[site].socket_path
                )
                self._readers[site] = reader
                stack.push_async_callback(reader.close)
        if self.programs.named is not None:
            self.bind = await stack.enter_async_context(
                run_bind(self.workdir / "bind", zone=ZONE, program=self.programs.named)
            )
        if self.programs.mosquitto is not None:
            # As docs/operations.md sets a broker up: a login per node agent and one for
            # nodevigil, the agents' ACL, and heartbeats signed with per-node keys.
            login = self._mqtt_users if self._can_make_passwords() else None
            self.broker = await stack.enter_async_context(
                run_mosquitto(
                    self.workdir / "mosquitto",
                    program=self.programs.mosquitto,
                    users=login,
                    acl=AGENT_ACL.format(prefix="nodevigil", daemon=DAEMON_USER) if login else None,
                )
            )
            stack.push_async_callback(self._stop_agents)
            for name in self.nodes:
                self._start_agent(name)
        await asyncio.to_thread(self._write_config)
        self.daemon = Daemon(self.config_path)
        self.daemon.bus.add_sink(self._follow_standin)
        self._task = asyncio.create_task(self.daemon.run(), name="nodevigil-daemon")
        stack.push_async_callback(self._stop_daemon)

    def _can_make_passwords(self) -> bool:
        assert self.programs.mosquitto is not None
        beside = self.programs.mosquitto.with_name("mosquitto_passwd")
        return beside.exists() or shutil.which("mosquitto_passwd") is not None

    def _write_secret(self, name: str, value: str) -> str:
        path = self.workdir / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path.name

    def _write_config(self) -> None:
        secret_file = self.workdir / "acme.whsec"
        secret_file.write_text(self.receiver.secret + "\n")
        secret_file.chmod(0o600)
        users = self.broker.users if self.broker is not None else None
        endpoints = Endpoints(
            node_ports={name: node.port for name, node in self.nodes.items()},
            haproxy_sockets=(
                {site: h.socket_path for site, h in self.haproxies.items()}
                if self.haproxies
                else None
            ),
            bind_server=self.bind.server if self.bind else None,
            tsig_key_file=self.bind.key_file if self.bind else None,
            mqtt_url=self.broker.url if self.broker else None,
            webhook_url=self.receiver.url,
            mqtt_username=DAEMON_USER if users else None,
            mqtt_password_file=self._write_secret("mqtt-password", users[DAEMON_USER])
            if users
            else None,
            agent_secret_file=self._write_secret("agent-secret", self._agent_secret)
            if self.broker
            else None,
        )
        data = demo_config(endpoints, self.timings, self.admin_token, secret_file.name)
        header = CONFIG_HEADER.format(
            mqtt=" and an mqtt probe fed by its node agent" if self.broker else "",
            local="a real HAProxy" if self.haproxies else "the in-process recording stand-in",
            record=RECORD,
            global_="a real BIND (RFC 2136 updates with TSIG)"
            if self.bind
            else "the in-process recording stand-in",
            path=self.config_path,
        )
        self.config_path.write_text(header + yaml.safe_dump(data, sort_keys=False))

    def _follow_standin(self, event: Event) -> None:
        if isinstance(event, AddressesSet):
            self._standin_dns = set(event.new)

    async def _stop_daemon(self) -> None:
        if self.daemon is None or self._task is None:
            return
        self.daemon.request_stop()
        try:
            await asyncio.wait_for(self._task, 15)
        except TimeoutError:
            log.error("nodevigil did not stop within 15s; cancelling it")
        except Exception:
            log.exception("nodevigil stopped with an error")

    async def _stop_agents(self) -> None:
        for name in list(self._agents):
            await self._stop_agent(name)

    # --- what the story does -----------------------------------------------------------------

    def _start_agent(self, name: str) -> None:
        if self.broker is None or name in self._agents:
            return
        users = self.broker.users or {}
        agent = NodeAgent(
            url=self.broker.url,
            node=name,
            interval=self.timings.agent_interval,
            username=name if name in users else None,
            password=users.get(name),
            key=derive_key(self._agent_secret, name),
            disk_path=str(self.workdir),
        )
        self._agents[name] = asyncio.create_task(agent.run(), name=f"agent-{name}")

    async def _stop_agent(self, name: str) -> None:
        task = self._agents.pop(name, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def has_agents(self) -> bool:
        """Whether every node runs a node agent (Mosquitto is there)."""
        return self.broker is not None

    async def kill(self, name: str) -> None:
        """Stop a node's HTTP server and its node agent, as if the machine died."""
        await asyncio.gather(self.nodes[name].stop(), self._stop_agent(name))

    async def revive(self, name: str) -> None:
        """Start the node's HTTP server (same port) and its agent again."""
        await self.nodes[name].start()
        self._start_agent(name)

    def check_daemon(self) -> None:
        """Raise if nodevigil itself has stopped."""
        if self._task is not None and self._task.done():
            error = self._task.exception() if not self._task.cancelled() else None
            raise DemoError(f"nodevigil stopped unexpectedly: {error!r}")

    @property
    def api_url(self) -> str | None:
        """The daemon's base URL once it listens."""
        port = self.daemon.api_port if self.daemon else None
        return None if port is None else f"http://127.0.0.1:{port}"

    def status(self) -> ControllerStatus | None:
        """The controller's snapshot, once the daemon runs."""
        controller = getattr(self.daemon, "controller", None)
        return None if controller is None else controller.status()

    async def lb_state(self, node: str) -> str | None:
        """The node's admin state in its site's load balancer (HAProxy's, read back)."""
        reader = self._readers.get(self.site_of[node])
        if reader is not None:
            servers = await reader.servers("web")
            server = servers.get(node)
            return None if server is None else server.admin.value
        status = self.status()
        found = next((n for n in status.nodes if n.name == node), None) if status else None
        return None if found is None else found.actual

    async def published(self) -> set[str]:
        """The addresses DNS publishes for the service (BIND's answer, or the stand-in's)."""
        if self.bind is not None:
            return await addresses_of(RECORD, self.bind.port)
        return set(self._standin_dns)

    def verdict(self, node: str) -> str:
        """The node's verdict as the controller last saw it."""
        status = self.status()
        found = next((n for n in status.nodes if n.name == node), None) if status else None
        return "unknown" if found is None else found.verdict


def _claim(given: Path) -> Path:
    if given.exists() and any(given.iterdir()):
        raise DemoError(f"--workdir {given} is not empty: give an empty or new directory")
    given.mkdir(parents=True, exist_ok=True)
    return given.resolve()


@contextlib.asynccontextmanager
async def temporary_workdir(given: Path | None) -> AsyncIterator[Path]:
    """``given`` (must be empty or absent), or a fresh temporary directory removed at exit."""
    if given is not None:
        yield await asyncio.to_thread(_claim, given)
        return
    name = await asyncio.to_thread(tempfile.mkdtemp, prefix="nodevigil-demo-")
    try:
        yield Path(name)
    finally:
        await asyncio.to_thread(shutil.rmtree, name, True)
