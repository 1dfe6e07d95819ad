"""Load balancers in trouble, with the real programs: HAProxy gone or restarted, BIND refusing.

HAProxy: the whole daemon drains a dead node, then HAProxy is stopped, its stats socket deleted
and HAProxy started again from its config, which forgets the drain. BIND: the zone frozen
(REFUSED), the server's key changed (BADSIG), the server paused (no answer) and stopped. In each
case nodevigil must keep cycling, say once what is wrong (event, log line, metric) in words an
operator understands and without the TSIG secret, and converge once the program is healthy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
from prometheus_client import CollectorRegistry

from failover.controller import Controller
from failover.lb import (
    LoadBalancerRejected,
    LoadBalancerUnavailable,
    RetryPolicy,
    build_global,
)
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from monitor.verdicts import Verdict
from nodevigil.app.daemon import LB_RETRY, Daemon
from nodevigil.app.demo.servers.bind import RNDC, addresses_of
from nodevigil.core.clock import SystemClock
from nodevigil.core.config.schema import Config
from nodevigil.core.events import Event, EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.controller_helpers import FakeVerdicts
from tests.failover.daemons import (
    HAPROXY,
    NAMED,
    BindInstance,
    HAProxyInstance,
    dns_query,
    poll_until,
    run_bind,
    run_haproxy,
    tsig_secret,
)
from tests.failover.daemons.process import spawn, wait_ready
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config

A, B = "192.0.2.1", "192.0.2.2"


# --- HAProxy -------------------------------------------------------------------------------


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[HAProxyInstance]:
    """A real HAProxy over three HTTP nodes n1, n2, n3 (no health checks of its own)."""
    if not HAPROXY.exists():
        pytest.skip(f"{HAPROXY} is missing: install the Debian package haproxy")
    async with run_haproxy(tmp_path / "haproxy", ["n1", "n2", "n3"]) as instance:
        yield instance


async def restart_haproxy(h: HAProxyInstance) -> None:
    """Start HAProxy again from its config file: every runtime change (a drain) is lost."""
    workdir = h.config_path.parent
    h.daemon = await spawn(
        "haproxy", [str(HAPROXY), "-db", "-f", str(h.config_path)], workdir / "haproxy.log", workdir
    )

    async def ready() -> bool:
        _, writer = await asyncio.open_unix_connection(h.socket_path)
        writer.close()
        return True

    await wait_ready(h.daemon, ready)


def of_kind(events: list[Event], kind: str, **data: object) -> list[Event]:
    """Events of ``kind`` whose fields have every value of ``data``."""
    return [
        e
        for e in events
        if e.kind == kind and all(getattr(e, k, None) == v for k, v in data.items())
    ]


async def until(predicate: Callable[[], bool], what: str, within: float = 15) -> None:
    await poll_until(lambda: asyncio.sleep(0, predicate()), within=within, what=what)


async def test_haproxy_gone_then_restarted_without_its_drains_is_repaired(
    tmp_path: Path, haproxy: HAProxyInstance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failover.controller.loop")
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(path, haproxy)
    daemon = Daemon(path)
    events: list[Event] = []
    daemon.bus.add_sink(events.append)
    task = asyncio.create_task(daemon.run())

    def metric(name: str) -> float | None:
        return daemon.registry.get_sample_value(name, {"lb": "sh-haproxy"})

    def cycled() -> float:
        return daemon.controller.status().last_cycle_at or 0.0

    try:
        await until(lambda: daemon.api_port is not None and cycled() > 0, "daemon ready")
        await until(lambda: metric("nodevigil_lb_up") == 1, "lb up")
        await haproxy.nodes["n2"].stop()

        async def drained() -> bool:
            states = await admin_states(haproxy)
            return states == {"n1": "ready", "n2": "maint", "n3": "ready"}

        await poll_until(drained, within=10, what="sh-n2 drained")

        await haproxy.daemon.stop()
        haproxy.socket_path.unlink(missing_ok=True)  # gone, as after a crash and a cleanup
        await until(lambda: bool(of_kind(events, "failover.failed", lb="sh-haproxy")), "failure")
        (failed,) = of_kind(events, "failover.failed", lb="sh-haproxy")
        assert failed.what == "read" and failed.target == "backend web"
        assert failed.failure == "unreachable"
        assert str(haproxy.socket_path) in failed.error
        assert "(is HAProxy running?)" in failed.error
        await until(lambda: metric("nodevigil_lb_up") == 0, "lb down (set at the cycle's end)")
        errors = metric("nodevigil_lb_errors_total") or 0
        assert errors >= 1
        # It keeps cycling (and counting) while HAProxy is away, and says so only once.
        seen = cycled()
        await until(lambda: cycled() > seen, "cycles while HAProxy is away")
        await until(lambda: (metric("nodevigil_lb_errors_total") or 0) > errors, "more errors")
        assert not task.done()
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "sh-haproxy: read backend web failed" in r.message
        ]
        assert len(warnings) == 1 and "(retrying every cycle)" in warnings[0], warnings
        assert len(of_kind(events, "failover.failed", lb="sh-haproxy")) == 1

        restarted_at = daemon.clock.wall()
        await restart_haproxy(haproxy)  # from its config: every server ready, n2 included
        await poll_until(drained, within=10, what="sh-n2 drained again after the restart")
        await until(lambda: metric("nodevigil_lb_up") == 1, "lb up again")
        assert of_kind(events, "lb.recovered", lb="sh-haproxy", what="read")
        redone = [
            e
            for e in of_kind(events, "lb.action", node="sh-n2", old="ready", new="maint")
            if e.at >= restarted_at
        ]
        assert len(redone) == 1 and redone[0].why.startswith("verdict down"), redone
        assert any("read backend web works again" in r.message for r in caplog.records)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)


# --- BIND ----------------------------------------------------------------------------------


@pytest.fixture
async def bind(tmp_path: Path) -> AsyncIterator[BindInstance]:
    """A real BIND serving example.test. with an rndc control channel."""
    for program, package in ((NAMED, "bind9"), (RNDC, "bind9-utils")):
        if not program.exists():
            pytest.skip(f"{program} is missing: install the Debian package {package}")
    async with run_bind(tmp_path / "bind", control=True) as instance:
        yield instance


async def restart_bind(b: BindInstance) -> None:
    """Start ``named`` again on the same port and configuration (its journal keeps updates)."""
    conf = b.directory / "named.conf"
    b.daemon = await spawn(
        "named",
        [str(NAMED), "-g", "-n", "1", "-c", str(conf)],
        b.directory / "named.log",
        b.directory,
    )

    async def ready() -> bool:
        answer = await dns_query(b.zone, "SOA", b.port, limit=0.3)
        return answer.rcode() == dns.rcode.NOERROR

    await wait_ready(b.daemon, ready)


def dns_config(b: BindInstance) -> Config:
    """Two sites of one node each, publishing ``www`` through BIND (updates signed with TSIG)."""
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"cycle": "100ms", "hold_down": "1s", "site_hold_down": "0s"},
            "load_balancers": {
                "gslb": {
                    "type": "rfc2136",
                    "server": b.server,
                    "zone": b.zone,
                    "ttl": 5,
                    "timeout": "300ms",
                    "tsig": {
                        "name": b.key_name,
                        "algorithm": b.key_algorithm,
                        "secret_file": b.key_file.name,
                    },
                }
            },
            "sites": [{"name": "a", "address": A}, {"name": "b", "address": B}],
            "nodes": [
                {"name": "a-1", "site": "a", "probes": probe},
                {"name": "b-1", "site": "b", "probes": probe},
            ],
            "services": [
                {"name": "web", "sites": ["a", "b"], "global_lb": "gslb", "record": "www"}
            ],
        }
    )


class DnsRig:
    """A running controller publishing ``www`` through the real BIND, verdicts set by hand."""

    def __init__(self, b: BindInstance, tmp_path: Path) -> None:
        self.bind = b
        self.secret = b.key_file.read_text().strip()
        config = dns_config(b)
        self.source = FakeVerdicts()
        self.source.current = {"a-1": Verdict.UP, "b-1": Verdict.UP}
        self.events: list[Event] = []
        bus = EventBus()
        bus.add_sink(self.events.append)
        self.registry = CollectorRegistry()
        # The adapter as the daemon builds it: the key from its file, the daemon's retries.
        lb = build_global("gslb", config.load_balancers["gslb"], b.directory, retry=LB_RETRY)
        self.controller = Controller(
            config=config,
            verdicts=self.source,
            bus=bus,
            clock=SystemClock(),
            local_lbs={},
            global_lbs={"gslb": lb},
            store=SqliteControllerStore(tmp_path / "state" / "failover.db"),
            registry=self.registry,
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"lb": "gslb", **labels}) or 0.0

    async def published(self) -> set[str]:
        """What a resolver is told for www now."""
        return await addresses_of(f"www.{self.bind.zone}", self.bind.port)

    async def until_published(self, addresses: set[str], what: str) -> None:
        async def check() -> bool:
            return await self.published() == addresses

        await poll_until(check, within=15, what=what)

    async def failure(self, **data: object) -> Event:
        """The one failover.failed event with ``data`` (waits for it)."""
        await until(lambda: bool(of_kind(self.events, "failover.failed", **data)), f"{data}")
        (event,) = of_kind(self.events, "failover.failed", **data)
        return event

    async def keeps_cycling(self) -> None:
        seen = self.controller.status().last_cycle_at or 0.0
        await until(lambda: (self.controller.status().last_cycle_at or 0.0) > seen, "a cycle")

    def assert_no_secret(self, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
        dumped = json.dumps([e.payload() for e in self.events])
        for secret in (self.secret, *secrets):
            assert secret not in dumped
            assert secret not in caplog.text


@pytest.fixture
async def rig(bind: BindInstance, tmp_path: Path) -> AsyncIterator[DnsRig]:
    """The rig with its controller running, both sites published."""
    rig = DnsRig(bind, tmp_path)
    async with rig.controller:
        await rig.until_published({A, B}, "both sites published")
        yield rig


async def test_frozen_zone_refuses_updates_until_thawed(
    rig: DnsRig, caplog: pytest.LogCaptureFixture
) -> None:
    zone = rig.bind.zone.rstrip(".")
    await rig.bind.rndc("freeze", zone)
    rig.source.current["b-1"] = Verdict.DOWN
    failed = await rig.failure(lb="gslb", what="set")
    assert failed.failure == "rejected" and failed.code == "REFUSED"
    assert "answered REFUSED" in failed.error and "zone is frozen" in failed.error
    await rig.keeps_cycling()
    await until(
        lambda: (
            rig.metric("nodevigil_lb_actions_total", action="set_addresses", result="error") >= 2
        ),
        "the update retried on later cycles",
    )
    assert rig.metric("nodevigil_lb_up") == 1  # reachable: it answers, it refuses
    assert await rig.published() == {A, B}  # frozen: nothing changed
    assert len(of_kind(rig.events, "failover.failed", lb="gslb")) == 1  # said once

    await rig.bind.rndc("thaw", zone)
    await rig.until_published({A}, "site b withdrawn after the thaw")
    await until(lambda: bool(of_kind(rig.events, "lb.recovered", lb="gslb", what="set")), "ok")
    (done,) = of_kind(rig.events, "lb.action", what="set_addresses")[-1:]
    assert list(done.new) == [A] and "b" in done.why
    rig.assert_no_secret(caplog)


async def test_key_changed_on_the_server_is_named_and_healed_by_its_reload(
    rig: DnsRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    conf = rig.bind.directory / "named.conf"
    original = conf.read_text()
    other = tsig_secret()
    conf.write_text(original.replace(rig.secret, other))  # the server's key was rotated
    await rig.bind.rndc("reconfig")
    rig.source.current["b-1"] = Verdict.DOWN
    failed = await rig.failure(lb="gslb", what="set")
    assert failed.failure == "rejected" and failed.code == "BADSIG"
    assert f"TSIG key '{rig.bind.key_name}' refused by the DNS server" in failed.error
    assert "BADSIG: the secret does not match" in failed.error
    assert any("BADSIG" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    await rig.keeps_cycling()
    assert await rig.published() == {A, B}

    conf.write_text(original)  # the operator puts the key back and reloads BIND
    await rig.bind.rndc("reconfig")
    await rig.until_published({A}, "site b withdrawn once the key matches")
    rig.assert_no_secret(caplog, other)


async def test_bind_paused_then_stopped_then_back(
    rig: DnsRig, caplog: pytest.LogCaptureFixture
) -> None:
    process = rig.bind.daemon.process
    process.send_signal(signal.SIGSTOP)  # alive but silent: every query times out
    try:
        timeout = await rig.failure(lb="gslb", what="read")
        assert timeout.failure == "timeout"
        assert "did not answer in 0.3s" in timeout.error
        await until(lambda: rig.metric("nodevigil_lb_up") == 0, "lb down")
        await rig.keeps_cycling()
    finally:
        process.send_signal(signal.SIGCONT)
    await until(lambda: rig.metric("nodevigil_lb_up") == 1, "reads work again")
    assert of_kind(rig.events, "lb.recovered", lb="gslb", what="read")

    await rig.bind.daemon.stop()
    rig.source.current["b-1"] = Verdict.DOWN  # decided while BIND is away: never written blind
    await until(lambda: rig.metric("nodevigil_lb_up") == 0, "reads fail with BIND stopped")
    await rig.keeps_cycling()
    assert not of_kind(rig.events, "failover.failed", lb="gslb", what="set")
    await restart_bind(rig.bind)
    await rig.until_published({A}, "site b withdrawn once BIND is back")
    assert rig.metric("nodevigil_lb_up") == 1
    rig.assert_no_secret(caplog)


class CountingRfc2136(Rfc2136LoadBalancer):
    """The real adapter, counting the messages it sends."""

    sent = 0

    async def _send(self, message: Any, *, tcp: bool) -> Any:
        self.sent += 1
        return await super()._send(message, tcp=tcp)


def counting(b: BindInstance, retry: RetryPolicy, secret: str | None = None) -> CountingRfc2136:
    return CountingRfc2136(
        name="gslb",
        host="127.0.0.1",
        port=b.port,
        zone=b.zone,
        timeout=0.3,
        tsig_name=b.key_name,
        tsig_secret=secret or b.key_file.read_text().strip(),
        tsig_algorithm=b.key_algorithm,
        retry=retry,
    )


async def test_an_update_is_retried_across_a_bind_restart_but_a_bad_key_is_not(
    bind: BindInstance,
) -> None:
    patient = RetryPolicy(attempts=40, total=10.0, initial=0.02, maximum=0.2)
    lb = counting(bind, patient)
    await bind.daemon.stop()
    update = asyncio.create_task(lb.set_addresses("www", {A}))
    await until(lambda: lb.sent >= 2, "retries while BIND is down")
    assert not update.done()
    await restart_bind(bind)
    await asyncio.wait_for(update, 10)  # the same call succeeds once BIND is back
    assert await addresses_of(f"www.{bind.zone}", bind.port) == {A}

    forged = counting(bind, patient, secret=tsig_secret())
    with pytest.raises(LoadBalancerRejected, match="BADSIG"):
        await forged.set_addresses("www", {B})
    assert forged.sent == 1  # a refused key never heals by itself: not retried
    assert await addresses_of(f"www.{bind.zone}", bind.port) == {A}

    await bind.daemon.stop()
    hasty = counting(bind, RetryPolicy(attempts=3, total=5.0, initial=0.01, maximum=0.02))
    with pytest.raises(LoadBalancerUnavailable, match="refused the connection"):
        await hasty.set_addresses("www", {B})
    assert hasty.sent == 3
