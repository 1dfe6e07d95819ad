"""A small world for the MQTT trust tests: nodes serving HTTP, agents, a broker, a monitor."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from monitor.agent import NodeAgent
from monitor.agentauth import derive_key, format_key
from monitor.heartbeat import HeartbeatBoard, HeartbeatListener
from monitor.metrics import AgentCollector, MonitorMetrics
from monitor.monitor import Monitor
from monitor.verdicts import Verdict
from nodevigil.app.demo.servers.httpnode import HttpNode
from nodevigil.core.clock import SystemClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.events import Event, EventBus
from tests.brokers import Broker
from tests.failover.daemons import poll_until
from tests.leakcheck import register


def new_secret() -> str:
    """An installation agent secret, declared to the secret-leak audit with its keys."""
    secret = secrets.token_hex(32)
    register("mqtt agent secret", secret)
    for node in ("n1", "n2", "n3"):
        register(f"agent key of {node}", format_key(derive_key(secret, node)))
    return secret


def trust_config(
    url: str, nodes: dict[str, HttpNode | None], *, fall: int = 3, **mqtt: Any
) -> Config:
    """Nodes with an http probe (when given a server) and an mqtt probe each."""
    specs = []
    for name, server in nodes.items():
        probes: list[dict[str, Any]] = [{"type": "mqtt", "max_silence": "60s"}]
        if server is not None:
            probes.insert(0, {"type": "http", "url": f"{server.url}healthz"})
        specs.append({"name": name, "site": "s", "fall": fall, "probes": probes})
    return parse_config(
        {
            "mqtt": {"url": url, **mqtt},
            "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 3},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": specs,
        }
    )


@contextlib.asynccontextmanager
async def background(*coros: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run coroutines as tasks for the block; cancel them after."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Watch:
    """A running monitor and listener, the board they share and what they published."""

    monitor: Monitor
    board: HeartbeatBoard
    bus: EventBus
    registry: CollectorRegistry
    downs: Any = None
    events: list[Event] = field(default_factory=list)

    def verdict(self, node: str) -> Verdict:
        """A node's verdict now."""
        return self.monitor.verdicts()[node]

    async def all_up(self, within: float = 20) -> None:
        """Wait until every node is up."""

        async def up() -> bool:
            return all(v is Verdict.UP for v in self.monitor.verdicts().values())

        await poll_until(up, within=within, what="every node up")

    async def rounds(self, count: int, within: float = 10) -> None:
        """Wait until ``count`` more probe results were recorded (time passing, measured)."""
        target = sum(self.monitor.outcomes.values()) + count

        async def done() -> bool:
            return sum(self.monitor.outcomes.values()) >= target

        await poll_until(done, within=within, what=f"{count} more probe results")

    def metrics_text(self) -> bytes:
        """What /metrics would serve of the monitor's and the agents' series."""
        return generate_latest(self.registry)


@contextlib.asynccontextmanager
async def watching(
    config: Config,
    *,
    secret: str | None,
    password: str | None = None,
    base_dir: Path | None = None,
) -> AsyncIterator[Watch]:
    """Monitor the config's nodes through a real listener, as the daemon wires them."""
    assert config.mqtt is not None
    board = HeartbeatBoard(SystemClock())
    # Without a secret or a base_dir only what nodevigil had before issue 12 is used, so the
    # unsigned variants of the tests run against the old code too (to show each defect).
    if secret is not None:
        board.trust(secret, max_clock_skew=config.mqtt.max_clock_skew)
    bus = EventBus()
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    registry.register(AgentCollector(board))
    extra = {"base_dir": base_dir} if base_dir is not None else {}
    listener = HeartbeatListener(config.mqtt, board, password, **extra)
    async with (
        Monitor(config, bus=bus, clock=SystemClock(), metrics=metrics, board=board) as monitor,
        background(listener.run()),
    ):
        watch = Watch(monitor, board, bus, registry)
        watch.downs = bus.subscribe(["node.down"])
        await poll_until(lambda: asyncio.sleep(0, board.connected), within=10, what="linked")
        yield watch


def agent(
    broker_url: str, node: str, secret: str | None, *, interval: float = 0.2, **kwargs: Any
) -> NodeAgent:
    """An in-process node agent, signing with its key when there is a secret."""
    if secret is not None:
        kwargs["key"] = derive_key(secret, node)
    return NodeAgent(url=broker_url, node=node, interval=interval, **kwargs)


@contextlib.asynccontextmanager
async def agent_process(
    broker: Broker, node: str, key_file: Path | None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``nodevigil agent`` as its own process (SIGKILL it to see its last-will)."""
    args = ["--mqtt", broker.url, "--node", node, "--interval", "200ms"]
    if key_file is not None:
        args += ["--key-file", str(key_file)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodevigil",
        "agent",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def write_key(path: Path, secret: str, node: str) -> Path:
    """A node's key file, as ``nodevigil agent-key --out`` writes it."""
    path.write_text(format_key(derive_key(secret, node)) + "\n")
    path.chmod(0o600)
    return path


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    """How long ``action`` took, in seconds."""
    started = time.monotonic()
    await action()
    return time.monotonic() - started
