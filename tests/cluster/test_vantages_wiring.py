"""The vantage wiring (nodevigil/app/vantages.py) on fakes of its store and monitor: what a
reload of ``cluster.isolation`` changes, and the default canaries. The processes themselves:
test_vantage_processes.py."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.verdicts import Verdict
from nodevigil.app.vantages import Vantages, default_canaries
from nodevigil.core.clock import Clock, ManualClock, SystemClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.events import EventBus
from nodevigil.state.etcd.votes import StoredVote, Subscriber
from tests.cluster.harness import until

NODES = ("web-1", "web-2", "web-3")


def config(**isolation: Any) -> Config:
    """ops-1 of three vantages, three nodes of one site; ``isolation`` as given."""
    return parse_config(
        {
            "vantage": "ops-1",
            "database": {"url": "postgresql://nodevigil@db/nodevigil"},
            "cluster": {
                "etcd": {"endpoints": ["http://127.0.0.1:2379"], "timeout": "300ms"},
                "lease_ttl": "2s",
                "renew_every": "500ms",
                "vantages": ["ops-1", "ops-2", "ops-3"],
                "isolation": {"canaries": [], **isolation},
            },
            "sites": [{"name": "sh", "address": "192.0.2.10"}],
            "nodes": [
                {"name": n, "site": "sh", "probes": [{"type": "tcp", "address": "10.0.0.1:80"}]}
                for n in NODES
            ],
        }
    )


class Monitor:
    """This vantage's own verdicts, as the monitor holds them, and whether its loop is late."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.late = False

    def overloaded(self) -> bool:
        return self.late

    def verdicts(self) -> dict[str, Verdict]:
        return dict.fromkeys(NODES, self.verdict)

    def node_status(self, name: str) -> dict[str, Any] | None:
        return {"verdict": self.verdict.value, "since": 1.0, "probes": []}

    def node_names(self) -> list[str]:
        return list(NODES)


class Store:
    """The vote store, reduced to what the wiring calls; ``cast`` plays another vantage."""

    healthy = True

    def __init__(self) -> None:
        self.published: list[StoredVote] = []
        self._subscribers: list[Subscriber] = []

    def publish(self, vote: StoredVote) -> None:
        self.published.append(vote)

    def withdraw(self, node: str) -> None:
        pass

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def cast(self, node: str, vantage: str, verdict: str) -> None:
        for callback in self._subscribers:
            callback(node, vantage, StoredVote(node, vantage, verdict, 1.0, "seen"))


def vantages(cfg: Config, clock: Clock, monitor: Monitor | None = None) -> tuple[Vantages, Store]:
    store = Store()
    made = Vantages(
        config=cfg,
        monitor=monitor or Monitor(Verdict.DOWN),  # type: ignore[arg-type]  # its reads only
        local_bus=EventBus(),
        bus=EventBus(),
        store=store,  # type: ignore[arg-type]  # the store's calls only
        canaries=lambda: (cfg.cluster.isolation.canaries if cfg.cluster else None) or [],
        clock=clock,
        registry=CollectorRegistry(),
    )
    for node in NODES:  # the others see every node up that this vantage sees down
        store.cast(node, "ops-2", "up")
    return made, store


def test_a_reload_of_the_isolation_thresholds_applies_at_the_next_check() -> None:
    lenient = config(min_nodes=10)  # three disputed nodes never count as isolation
    v, store = vantages(lenient, ManualClock())
    assert [v.check_isolation() for _ in range(3)] == [False, False, False]

    v.apply_config(config(min_nodes=3))
    assert [v.check_isolation() for _ in range(2)] == [False, True]  # enter_after: 2 checks
    assert {vote.verdict for vote in store.published} == {"unknown"}


async def test_a_reload_of_the_canaries_timing_restarts_them() -> None:
    clock = ManualClock()
    v, _ = vantages(config(interval="1s", timeout="1s"), clock)
    async with v:
        v.apply_config(config(interval="5s", timeout="2s"))
        for _ in range(50):  # the judgement loop runs on the manual clock: a few turns
            if v.canary_timing == (5.0, 2.0):
                break
            await asyncio.sleep(0)
        assert v.canary_timing == (5.0, 2.0)


def test_the_default_canaries_are_etcds_static_answer_and_the_peers_apis() -> None:
    cluster = config(canaries=None).cluster
    assert cluster is not None
    # Not etcd's /health: each call of it is a raft proposal and a WAL fsync on every member.
    assert default_canaries(cluster, lambda: ["http://ops-2:9470"]) == [
        "http://127.0.0.1:2379/version",
        "http://ops-2:9470/healthz",
    ]


def closed_port() -> int:
    """A loopback port nobody listens on (a connection to it is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_canaries_failing_while_the_monitor_is_late_prove_nothing() -> None:
    monitor = Monitor(Verdict.UP)  # it sees the nodes as the others do: only canaries count
    monitor.late = True
    dead = [f"tcp://127.0.0.1:{closed_port()}" for _ in range(2)]
    cfg = config(canaries=dead, interval="50ms", timeout="200ms", min_nodes=10)
    v, _ = vantages(cfg, SystemClock(), monitor)
    async with v:

        async def checked() -> bool:
            return v.view()["canaries"] != [] and all(
                c["up"] is False for c in v.view()["canaries"]
            )

        await until(checked, within=5, what="both canaries failed once")
        # Its own loop is late: a failed canary may have timed out here, not out there.
        assert [v.check_isolation() for _ in range(3)] == [False, False, False]
        monitor.late = False
        assert [v.check_isolation() for _ in range(2)] == [False, True]
