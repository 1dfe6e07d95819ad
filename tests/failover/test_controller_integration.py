"""The controller driving the real programs: HAProxy through its runtime API, BIND by RFC 2136."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import dns.rdataclass
import dns.rdatatype

from failover.controller import Controller
from failover.lb import RetryPolicy, ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from monitor.verdicts import Verdict
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.controller_helpers import BJ, SH, FakeVerdicts
from tests.failover.daemons import BindInstance, HAProxyInstance, dns_query

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)
PROBE = [{"type": "tcp", "address": "127.0.0.1:9"}]


def _config(
    load_balancers: dict[str, Any], sites: list[dict[str, Any]], nodes: list[tuple[str, str]]
) -> Config:
    """A config over ``nodes`` given as (node name, server name in the local LB)."""
    return Config.model_validate(
        {
            "vantage": "test",
            "load_balancers": load_balancers,
            "sites": sites,
            "nodes": [
                {"name": n, "site": n.split("-", 1)[0], "lb_server": server, "probes": PROBE}
                for n, server in nodes
            ],
            "services": [
                {
                    "name": "web",
                    "sites": [s["name"] for s in sites],
                    "global_lb": "gslb",
                    "record": "www",
                }
            ]
            if "gslb" in load_balancers
            else [],
        }
    )


async def _answers(url: str, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(count):
            async with http.get(url) as response:
                seen[await response.text() if response.status == 200 else str(response.status)] += 1
    return seen


async def test_node_down_puts_it_in_maint_in_real_haproxy(
    haproxy: HAProxyInstance, tmp_path: Path
) -> None:
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=haproxy.socket_path, retry=FAST)
    config = _config(
        {"sh-haproxy": {"type": "haproxy", "socket": str(haproxy.socket_path), "backend": "web"}},
        [{"name": "sh", "address": SH, "local_lb": "sh-haproxy", "max_unavailable": 1}],
        [(f"sh-{server}", server) for server in ("n1", "n2", "n3")],  # the fixture's servers
    )
    source = FakeVerdicts()
    source.current = {"sh-n1": Verdict.UP, "sh-n2": Verdict.DOWN, "sh-n3": Verdict.UP}
    store = SqliteControllerStore(tmp_path / "state.db")
    controller = Controller(
        config=config,
        verdicts=source,
        bus=EventBus(),
        clock=ManualClock(),
        local_lbs={"sh-haproxy": lb},
        global_lbs={},
        store=store,
    )
    try:
        decision = await controller.run_once()
        assert [a.node for a in decision.actions] == ["sh-n2"]  # type: ignore[union-attr]
        servers = await lb.servers("web")
        assert servers["n2"].admin is ServerState.MAINT
        assert servers["n1"].admin is ServerState.READY
        seen = await _answers(haproxy.url, 12)
        assert set(seen) == {"n1", "n3"}
        # Level-triggered against the real thing: a manual `set server` is undone.
        await lb.set_state("web", "n2", ServerState.READY)
        await controller.run_once()
        assert (await lb.servers("web"))["n2"].admin is ServerState.MAINT
    finally:
        await lb.close()
        await store.close()


async def _published(bind: BindInstance) -> set[str]:
    answer = await dns_query(f"www.{bind.zone}", "A", bind.port)
    rrset = answer.get_rrset(
        answer.answer, answer.question[0].name, dns.rdataclass.IN, dns.rdatatype.A
    )
    return set() if rrset is None else {rdata.to_text() for rdata in rrset}


async def test_site_down_changes_the_real_dns_answer(
    bind_server: BindInstance, tmp_path: Path
) -> None:
    gslb = Rfc2136LoadBalancer(
        name="gslb",
        host="127.0.0.1",
        port=bind_server.port,
        zone=bind_server.zone,
        ttl=5,
        timeout=1.0,
        tsig_name=bind_server.key_name,
        tsig_secret=bind_server.key_file.read_text().strip(),
        tsig_algorithm=bind_server.key_algorithm,
        retry=FAST,
    )
    await gslb.set_addresses("www", {SH, BJ})
    config = _config(
        {"gslb": {"type": "rfc2136", "server": bind_server.server, "zone": bind_server.zone}},
        [{"name": "sh", "address": SH}, {"name": "bj", "address": BJ}],
        [("sh-1", "sh-1"), ("bj-1", "bj-1")],
    )
    source = FakeVerdicts()
    source.current = {"sh-1": Verdict.UP, "bj-1": Verdict.UP}
    store = SqliteControllerStore(tmp_path / "state.db")
    clock = ManualClock()
    controller = Controller(
        config=config,
        verdicts=source,
        bus=EventBus(),
        clock=clock,
        local_lbs={},
        global_lbs={"gslb": gslb},
        store=store,
    )
    try:
        await controller.run_once()
        assert await _published(bind_server) == {SH, BJ}
        source.current["bj-1"] = Verdict.DOWN
        await controller.run_once()
        assert await _published(bind_server) == {SH}
        source.current["bj-1"] = Verdict.UP
        clock.advance(1)
        await controller.run_once()
        clock.advance(config.failover.site_hold_down)
        await controller.run_once()
        assert await _published(bind_server) == {SH, BJ}
    finally:
        await gslb.close()
        await store.close()
