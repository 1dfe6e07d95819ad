"""The brake against the real programs: HAProxy through its runtime API, BIND by RFC 2136.

A whole site's nodes are judged down at once (as when every vantage sees them fail): none of
them leaves HAProxy beyond the brake's rate, yet the site leaves the service's DNS record, since
a dead site must fail over. A single failure in the same big site drains as ever, and recovery
releases the brake without taking the recovered nodes out.
"""

from __future__ import annotations

from pathlib import Path

import dns.rdataclass
import dns.rdatatype

from failover.controller import Controller
from failover.lb import RetryPolicy, ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from monitor.verdicts import Verdict
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config
from nodevigil.core.events import Event, EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.conftest import require_program
from tests.failover.controller_helpers import FakeVerdicts
from tests.failover.daemons import HAPROXY, BindInstance, dns_query, run_haproxy

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)
PROBE = [{"type": "tcp", "address": "127.0.0.1:9"}]
WEST, EAST = "203.0.113.10", "203.0.113.20"
SERVERS = [f"w{i}" for i in range(1, 11)]  # ten: the default min_nodes


def _config(haproxy_socket: Path, bind: BindInstance) -> Config:
    """West (10 nodes behind the real HAProxy) and east (4 nodes), one service over both,
    the brake at its defaults."""
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"hold_down": "30s", "site_hold_down": "20s"},
            "load_balancers": {
                "west-haproxy": {
                    "type": "haproxy",
                    "socket": str(haproxy_socket),
                    "backend": "web",
                },
                "gslb": {"type": "rfc2136", "server": bind.server, "zone": bind.zone},
            },
            "sites": [
                {"name": "west", "address": WEST, "local_lb": "west-haproxy"},
                {"name": "east", "address": EAST},
            ],
            "nodes": [
                {"name": f"west-{s}", "site": "west", "lb_server": s, "probes": PROBE}
                for s in SERVERS
            ]
            + [{"name": f"east-{i}", "site": "east", "probes": PROBE} for i in range(1, 5)],
            "services": [
                {"name": "web", "sites": ["west", "east"], "global_lb": "gslb", "record": "www"}
            ],
        }
    )


async def _published(bind: BindInstance) -> set[str]:
    answer = await dns_query(f"www.{bind.zone}", "A", bind.port)
    rrset = answer.get_rrset(
        answer.answer, answer.question[0].name, dns.rdataclass.IN, dns.rdatatype.A
    )
    return set() if rrset is None else {rdata.to_text() for rdata in rrset}


async def _out(lb: HAProxyLoadBalancer) -> set[str]:
    """Servers not ready, as HAProxy itself has them."""
    return {n for n, s in (await lb.servers("web")).items() if s.admin is not ServerState.READY}


async def test_a_whole_site_failing_at_once_is_braked_and_still_leaves_dns(
    bind_server: BindInstance, tmp_path: Path
) -> None:
    require_program(HAPROXY, "haproxy")
    async with run_haproxy(tmp_path / "haproxy", SERVERS) as haproxy:
        lb = HAProxyLoadBalancer(name="west-haproxy", socket_path=haproxy.socket_path, retry=FAST)
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
        await gslb.set_addresses("www", {WEST, EAST})
        config = _config(haproxy.socket_path, bind_server)
        source = FakeVerdicts()
        source.current = {n.name: Verdict.UP for n in config.nodes}
        bus = EventBus()
        events: list[Event] = []
        bus.add_sink(events.append)
        clock = ManualClock()
        store = SqliteControllerStore(tmp_path / "state.db")
        controller = Controller(
            config=config,
            verdicts=source,
            bus=bus,
            clock=clock,
            local_lbs={"west-haproxy": lb},
            global_lbs={"gslb": gslb},
            store=store,
        )

        def kinds(kind: str) -> list[Event]:
            return [e for e in events if e.kind == kind]

        try:
            await controller.run_once()
            # One node of the big site fails: drained as ever.
            source.current["west-w3"] = Verdict.DOWN
            clock.advance(1)
            await controller.run_once()
            assert await _out(lb) == {"w3"}
            assert kinds("failover.brake") == []
            source.current["west-w3"] = Verdict.UP
            clock.advance(1)
            await controller.run_once()
            clock.advance(30)
            await controller.run_once()
            assert await _out(lb) == set()

            # The whole site at once: no drain (rate 0), but west leaves DNS.
            for server in SERVERS:
                source.current[f"west-{server}"] = Verdict.DOWN
            clock.advance(60)
            decision = await controller.run_once()
            assert await _out(lb) == set()
            assert await _published(bind_server) == {EAST}
            assert {e.subject for e in kinds("failover.brake")} == {"west", "fleet"}
            assert "would drain west-w1" in decision.text
            assert "(braked: 10 of 10 nodes of site west went down within 1m)" in decision.text
            for _ in range(5):  # minutes later, still braked
                clock.advance(60)
                await controller.run_once()
            assert await _out(lb) == set()
            assert {b.scope for b in controller.status().brakes} == {"site", "fleet"}

            # Recovery releases both brakes; the nodes it kept in never left.
            for server in SERVERS:
                source.current[f"west-{server}"] = Verdict.UP
            clock.advance(1)
            await controller.run_once()
            assert {e.subject for e in kinds("failover.brake_released")} == {"west", "fleet"}
            assert controller.status().brakes == []
            assert await _out(lb) == set()
            clock.advance(20)  # site_hold_down
            await controller.run_once()
            assert await _published(bind_server) == {WEST, EAST}
        finally:
            await lb.close()
            await gslb.close()
            await store.close()
