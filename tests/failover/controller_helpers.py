"""Fakes and a small rig for the controller's unit tests (recording LBs, manual clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from failover.controller import Controller, Decision
from failover.lb.base import ServerState
from failover.lb.recording import RecordingGlobalLoadBalancer, RecordingLocalLoadBalancer
from monitor.verdicts import Verdict
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config
from nodevigil.core.events import Event, EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore

SH, BJ = "203.0.113.10", "203.0.113.20"


def make_config(
    *,
    sh: dict[str, Any] | None = None,
    bj: dict[str, Any] | None = None,
    sh_nodes: int = 4,
    bj_nodes: int = 2,
    mode: str = "maint",
    failover: dict[str, Any] | None = None,
) -> Config:
    """Two sites (sh with 4 nodes, bj with 2) serving one service ``web`` behind ``gslb``."""
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    nodes = [{"name": f"sh-{i}", "site": "sh", "probes": probe} for i in range(1, sh_nodes + 1)]
    nodes += [{"name": f"bj-{i}", "site": "bj", "probes": probe} for i in range(1, bj_nodes + 1)]
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": failover
            or {
                "cycle": "1s",
                "hold_down": "30s",
                "hold_down_max": "240s",
                "site_hold_down": "20s",
            },
            "load_balancers": {
                "sh-lb": {"type": "haproxy", "socket": "/x", "backend": "web", "mode": mode},
                "bj-lb": {"type": "haproxy", "socket": "/y", "backend": "web"},
                "gslb": {"type": "recording"},
            },
            "sites": [
                {"name": "sh", "address": SH, "local_lb": "sh-lb", **(sh or {})},
                {"name": "bj", "address": BJ, "local_lb": "bj-lb", **(bj or {})},
            ],
            "nodes": nodes,
            "services": [
                {"name": "web", "sites": ["sh", "bj"], "global_lb": "gslb", "record": "www"}
            ],
        }
    )


class FakeVerdicts:
    """A VerdictSource backed by a dict the test edits."""

    def __init__(self) -> None:
        self.current: dict[str, Verdict] = {}

    def verdicts(self) -> Mapping[str, Verdict]:
        """The current verdicts."""
        return self.current


class WakeOnlyClock(ManualClock):
    """A manual clock whose sleep never ends by itself: the loop runs only when woken."""

    async def sleep(self, seconds: float) -> None:
        """Wait until cancelled (the loop's wait is then woken by an event or a poke)."""
        await asyncio.Event().wait()


class Rig:
    """A controller over recording LBs, with its bus, clock, store and event log at hand."""

    def __init__(
        self,
        tmp_path: Path,
        config: Config | None = None,
        *,
        clock: ManualClock | None = None,
        local: dict[str, RecordingLocalLoadBalancer] | None = None,
        glob: RecordingGlobalLoadBalancer | None = None,
    ) -> None:
        self.config = config or make_config()
        self.clock = clock or ManualClock()
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.add_sink(self.events.append)
        self.source = FakeVerdicts()
        for node in self.config.nodes:
            self.source.current[node.name] = Verdict.UP
        if local is None:
            local = {}
            for lb_name in ("sh-lb", "bj-lb"):
                lb = RecordingLocalLoadBalancer(lb_name, clock=self.clock.monotonic)
                for node in self.config.nodes:
                    if f"{node.site}-lb" == lb_name:
                        lb.add_server("web", node.server_name)
                local[lb_name] = lb
        self.local = local
        if glob is None:
            glob = RecordingGlobalLoadBalancer("gslb", clock=self.clock.monotonic)
            glob.records["www"] = {SH, BJ}
        self.glob = glob
        self.store = SqliteControllerStore(tmp_path / "state" / "nodevigil.db")
        self.controller = self.new_controller()

    def new_controller(self) -> Controller:
        """A controller on this rig's store, LBs and bus (as a restarted daemon would build)."""
        self.registry = CollectorRegistry()  # a new process starts with fresh metrics
        return Controller(
            config=self.config,
            verdicts=self.source,
            bus=self.bus,
            clock=self.clock,
            local_lbs=self.local,
            global_lbs={"gslb": self.glob},
            store=self.store,
            registry=self.registry,
        )

    def given(self, **verdicts: str) -> None:
        """Set verdicts, e.g. ``rig.given(sh_1="down")`` (underscores stand for dashes)."""
        for name, value in verdicts.items():
            self.source.current[name.replace("_", "-")] = Verdict(value)

    def state(self, node: str) -> ServerState:
        """The admin state the recording local LB has for ``node``."""
        lb = self.local[f"{node.split('-', maxsplit=1)[0]}-lb"]
        return lb.backends["web"][node].admin

    def out(self) -> set[str]:
        """Every node not ready in its local LB."""
        return {
            server
            for lb in self.local.values()
            for server, status in lb.backends["web"].items()
            if status.admin is not ServerState.READY
        }

    def record(self) -> set[str]:
        """The addresses published for ``www``."""
        return set(self.glob.records.get("www", set()))

    def kinds(self, kind: str) -> list[Event]:
        """Events of one kind, in order."""
        return [e for e in self.events if e.kind == kind]

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample value from the rig's registry."""
        return self.registry.get_sample_value(name, labels)

    async def cycle(self, advance: float = 0.0) -> Decision:
        """Advance the clock, then run one controller cycle."""
        self.clock.advance(advance)
        return await self.controller.run_once()


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    """Poll ``predicate`` until it is true or the deadline passes (never a fixed sleep)."""
    async with asyncio.timeout(within):
        # Polling with a deadline: the state watched belongs to other objects, no event to await.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
