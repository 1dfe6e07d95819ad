"""Observe mode and read-back against the real programs: HAProxy (runtime API) and BIND (RFC 2136).

Observing, the controller decides as ever and writes nothing: the gate every adapter holds
(``TrafficGate``) refuses a command even when it is called directly. A load balancer that cannot
be read keeps the controller not ready, naming it and the error, until it reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from failover.controller import Controller
from failover.events import ControllerDecision, FailoverModeChanged
from failover.lb import RetryPolicy, ServerState
from failover.lb.errors import LoadBalancerFenced
from failover.lb.haproxy import HAProxyLoadBalancer
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from monitor.verdicts import Verdict
from nodevigil.core.authority import OBSERVING, Sole, TrafficGate
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config
from nodevigil.core.events import Event, EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.controller_helpers import BJ, SH, FakeVerdicts
from tests.failover.daemons import BindInstance, HAProxyInstance
from tests.failover.test_controller_integration import _published

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)
PROBE = [{"type": "tcp", "address": "127.0.0.1:9"}]


def _haproxy_config(haproxy: HAProxyInstance, *, mode: str, backend: str = "web") -> Config:
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"mode": mode},
            "load_balancers": {
                "sh-haproxy": {
                    "type": "haproxy",
                    "socket": str(haproxy.socket_path),
                    "backend": backend,
                }
            },
            "sites": [{"name": "sh", "address": SH, "local_lb": "sh-haproxy"}],
            "nodes": [
                {"name": f"sh-{s}", "site": "sh", "lb_server": s, "probes": PROBE}
                for s in ("n1", "n2", "n3")
            ],
            "services": [{"name": "web", "sites": ["sh"]}],
        }
    )


class Holder:
    """The configuration in force, as the daemon holds it: the gate reads its mode."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def observing(self) -> bool:
        return self.config.failover.mode == "observe"


async def test_observe_mode_drains_nothing_in_real_haproxy_until_a_reload_to_act(
    haproxy: HAProxyInstance, tmp_path: Path
) -> None:
    held = Holder(_haproxy_config(haproxy, mode="observe"))
    gate = TrafficGate(Sole(), held.observing)
    lb = HAProxyLoadBalancer(
        name="sh-haproxy", socket_path=haproxy.socket_path, retry=FAST, authority=gate
    )
    source = FakeVerdicts()
    source.current = {"sh-n1": Verdict.UP, "sh-n2": Verdict.DOWN, "sh-n3": Verdict.UP}
    bus, events = EventBus(), list[Event]()
    bus.add_sink(events.append)
    registry = CollectorRegistry()
    store = SqliteControllerStore(tmp_path / "state.db")
    controller = Controller(
        config=held.config,
        verdicts=source,
        bus=bus,
        clock=ManualClock(),
        local_lbs={"sh-haproxy": lb},
        global_lbs={},
        store=store,
        registry=registry,
        traffic=gate,
    )
    try:
        for _ in range(3):  # the same decision each cycle; said once
            decision = await controller.run_once()
            assert [a.node for a in decision.actions] == ["sh-n2"]  # type: ignore[union-attr]
            assert (await lb.servers("web"))["n2"].admin is ServerState.READY
        lines = [e.decision for e in events if isinstance(e, ControllerDecision)]
        assert len(lines) == 1, lines
        assert lines[0].startswith("observe: would drain sh-n2 from sh-haproxy/web (")
        status = controller.status()
        assert status.mode == "observe"
        assert [w.text.split(" (")[0] for w in status.would] == ["drain sh-n2 from sh-haproxy/web"]
        assert registry.get_sample_value("nodevigil_failover_observe") == 1
        assert not [e for e in events if e.kind == "lb.action"]

        # The choke point: the adapter itself refuses, whoever calls it.
        with pytest.raises(LoadBalancerFenced, match=OBSERVING):
            await lb.set_state("web", "n2", ServerState.MAINT)
        assert (await lb.servers("web"))["n2"].admin is ServerState.READY

        # A reload to act: the next cycle drains.
        held.config = _haproxy_config(haproxy, mode="act")
        controller.update_config(held.config)
        await controller.run_once()
        assert (await lb.servers("web"))["n2"].admin is ServerState.MAINT
        changed = [e for e in events if isinstance(e, FailoverModeChanged)]
        assert [(e.previous, e.mode) for e in changed] == [("observe", "act")]
        assert controller.status().would == []
        assert registry.get_sample_value("nodevigil_failover_observe") == 0
    finally:
        await lb.close()
        await store.close()


def _gslb(bind: BindInstance, gate: TrafficGate | None = None, zone: str | None = None) -> Any:
    return Rfc2136LoadBalancer(
        name="gslb",
        host="127.0.0.1",
        port=bind.port,
        zone=zone or bind.zone,
        ttl=5,
        timeout=1.0,
        tsig_name=bind.key_name,
        tsig_secret=bind.key_file.read_text().strip(),
        tsig_algorithm=bind.key_algorithm,
        retry=FAST,
        authority=gate,
    )


def _dns_config(bind: BindInstance, *, mode: str = "act") -> Config:
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"mode": mode},
            "load_balancers": {
                "gslb": {"type": "rfc2136", "server": bind.server, "zone": bind.zone}
            },
            "sites": [{"name": "sh", "address": SH}, {"name": "bj", "address": BJ}],
            "nodes": [
                {"name": "sh-1", "site": "sh", "probes": PROBE},
                {"name": "bj-1", "site": "bj", "probes": PROBE},
            ],
            "services": [
                {"name": "web", "sites": ["sh", "bj"], "global_lb": "gslb", "record": "www"}
            ],
        }
    )


async def test_observe_mode_leaves_real_bind_alone_and_status_shows_what_it_read_back(
    bind_server: BindInstance, tmp_path: Path
) -> None:
    setup = _gslb(bind_server)
    await setup.set_addresses("www", {SH, BJ})
    await setup.close()
    held = Holder(_dns_config(bind_server, mode="observe"))
    gate = TrafficGate(Sole(), held.observing)
    gslb = _gslb(bind_server, gate)
    source = FakeVerdicts()
    source.current = {"sh-1": Verdict.UP, "bj-1": Verdict.DOWN}
    store = SqliteControllerStore(tmp_path / "state.db")
    controller = Controller(
        config=held.config,
        verdicts=source,
        bus=EventBus(),
        clock=ManualClock(),
        local_lbs={},
        global_lbs={"gslb": gslb},
        store=store,
        traffic=gate,
    )
    try:
        await controller.run_once()
        assert await _published(bind_server) == {SH, BJ}
        status = controller.status()
        assert [w.text.split(" (")[0] for w in status.would] == [
            "withdraw site bj in gslb record www"
        ]
        with pytest.raises(LoadBalancerFenced, match=OBSERVING):
            await gslb.set_addresses("www", {SH})
        assert await _published(bind_server) == {SH, BJ}
        # What BIND answered, per record and site: both sites still published.
        (view,) = status.load_balancers
        assert (view.name, view.kind, view.read_back, view.errors) == ("gslb", "global", True, [])
        (record,) = view.records
        assert record.record == "www" and record.service == "web"
        assert record.addresses == sorted({SH, BJ})
        assert record.sites == {"sh": True, "bj": True}
        assert controller.not_ready() == []

        held.config = _dns_config(bind_server, mode="act")
        controller.update_config(held.config)
        await controller.run_once()
        assert await _published(bind_server) == {SH}
        (record,) = controller.status().load_balancers[0].records
        assert record.sites == {"sh": True, "bj": False}
    finally:
        await gslb.close()
        await store.close()


async def test_a_wrong_backend_name_keeps_the_controller_not_ready_naming_it(
    haproxy: HAProxyInstance, tmp_path: Path
) -> None:
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=haproxy.socket_path, retry=FAST)
    source = FakeVerdicts()
    source.current = {f"sh-{s}": Verdict.UP for s in ("n1", "n2", "n3")}
    store = SqliteControllerStore(tmp_path / "state.db")
    registry = CollectorRegistry()
    controller = Controller(
        config=_haproxy_config(haproxy, mode="act", backend="wbe"),  # a typo
        verdicts=source,
        bus=EventBus(),
        clock=ManualClock(),
        local_lbs={"sh-haproxy": lb},
        global_lbs={},
        store=store,
        registry=registry,
    )
    try:
        assert controller.not_ready() == ["the controller has not read the load balancers back yet"]
        await controller.run_once()
        (problem,) = controller.not_ready()
        assert problem.startswith("sh-haproxy: cannot read backend wbe: ")
        assert "wbe" in problem.removeprefix("sh-haproxy: cannot read backend wbe: ")
        assert registry.get_sample_value("nodevigil_lb_up", {"lb": "sh-haproxy"}) == 0
        (view,) = controller.status().load_balancers
        assert (view.kind, view.read_back, view.backends) == ("local", False, ["wbe"])
        assert view.errors == [problem.removeprefix("sh-haproxy: ")]

        controller.update_config(_haproxy_config(haproxy, mode="act"))
        await controller.run_once()
        assert controller.not_ready() == []
        assert controller.status().load_balancers[0].read_back
    finally:
        await lb.close()
        await store.close()


async def test_an_unreadable_dns_zone_keeps_the_controller_not_ready_naming_it(
    bind_server: BindInstance, tmp_path: Path
) -> None:
    config = _dns_config(bind_server)
    gslb = _gslb(bind_server, zone="nothere.test.")  # BIND serves no such zone
    source = FakeVerdicts()
    source.current = {"sh-1": Verdict.UP, "bj-1": Verdict.UP}
    store = SqliteControllerStore(tmp_path / "state.db")
    controller = Controller(
        config=config,
        verdicts=source,
        bus=EventBus(),
        clock=ManualClock(),
        local_lbs={},
        global_lbs={"gslb": gslb},
        store=store,
    )
    try:
        await controller.run_once()
        (problem,) = controller.not_ready()
        assert problem.startswith("gslb: cannot read record www: "), problem
        (record,) = controller.status().load_balancers[0].records
        assert record.addresses is None and record.sites == {"sh": None, "bj": None}
    finally:
        await gslb.close()
        await store.close()
