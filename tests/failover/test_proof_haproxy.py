"""Proof that traffic moved, against a real HAProxy carrying live client traffic: long-lived
sessions held open by the nodes and a steady stream of new connections through the frontend."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from failover.controller import Controller
from failover.controller.lbio import Applied
from failover.controller.state import SetServerState
from failover.events import TrafficProof
from failover.lb import RetryPolicy, ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from failover.proof.runner import ProofRunner
from monitor.verdicts import Verdict
from nodevigil.core.clock import SystemClock
from nodevigil.core.config.schema import Config, FailoverProof
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.conftest import require_program
from tests.failover.controller_helpers import SH, FakeVerdicts
from tests.failover.daemons import HAPROXY, HAProxyInstance, poll_until
from tests.failover.daemons.haproxy import start_haproxy
from tests.failover.proof_helpers import FlipAuthority, Recorded, SlowNode, Traffic, slow_sessions

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)
QUICK = FailoverProof(timeout="20s", interval="100ms")


@pytest.fixture
async def slow_haproxy(tmp_path: Path) -> AsyncIterator[HAProxyInstance]:
    """A real HAProxy over two nodes n1, n2 that can hold sessions open (``/slow``)."""
    require_program(HAPROXY, "haproxy")
    nodes = {name: SlowNode(name) for name in ("n1", "n2")}
    try:
        for node in nodes.values():
            await node.start()
        async with start_haproxy(tmp_path / "haproxy", nodes) as instance:
            yield instance
    finally:
        for node in nodes.values():
            node.release.set()
            await node.stop()


def runner(
    instance: HAProxyInstance,
    recorded: Recorded,
    authority: FlipAuthority | None = None,
    registry: CollectorRegistry | None = None,
) -> ProofRunner:
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=instance.socket_path, retry=FAST)
    return ProofRunner(
        clock=SystemClock(),
        authority=authority or FlipAuthority(),
        local_lbs={"sh-haproxy": lb},
        global_lbs={},
        lb_types=lambda name: "haproxy",
        emit=recorded.emit,
        record=recorded.record,
        vantage=lambda: "test",
        registry=registry or CollectorRegistry(),
    )


def action(server: str, old: ServerState, new: ServerState) -> Applied:
    return Applied(
        SetServerState("sh-haproxy", "web", server, server, "sh", old, new, "test"), None
    )


async def set_state(instance: HAProxyInstance, server: str, state: ServerState) -> None:
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=instance.socket_path, retry=FAST)
    await lb.set_state("web", server, state)


async def open_on_n1(instance: HAProxyInstance, sessions: list[asyncio.Task[str]]) -> SlowNode:
    """Wait until the long-lived ``sessions`` are open on n1."""
    n1 = instance.nodes["n1"]
    assert isinstance(n1, SlowNode)
    count = len(sessions)

    async def opened() -> bool:
        ended = [t for t in sessions if t.done()]
        assert not ended, f"a long-lived session ended early: {ended[0]!r}"
        return n1.open_slow == count

    await poll_until(opened, within=10, what=f"{count} long-lived sessions on n1")
    return n1


async def test_a_drain_is_proved_once_the_long_sessions_end_with_their_count_and_time(
    slow_haproxy: HAProxyInstance,
) -> None:
    h = slow_haproxy
    recorded, registry = Recorded(), CollectorRegistry()
    proofs = runner(h, recorded, registry=registry)
    # Three long-lived sessions on n1 (n2 out meanwhile so all three land there).
    await set_state(h, "n2", ServerState.MAINT)
    async with slow_sessions(h.url, 3) as sessions:
        n1 = await open_on_n1(h, sessions)
        await set_state(h, "n2", ServerState.READY)
        async with Traffic(h.url).running() as traffic:
            await set_state(h, "n1", ServerState.MAINT)
            drained_at = time.monotonic()
            proofs.start([action("n1", ServerState.READY, ServerState.MAINT)], QUICK)
            # New connections all go to n2 now, while n1's three sessions stay open: no proof.
            after = traffic.answers["n2"]

            async def n2_took_more() -> bool:
                return traffic.answers["n2"] >= after + 20

            await poll_until(n2_took_more, within=10, what="20 new sessions on n2")
            assert recorded.events == [] and proofs.in_flight == 1
            assert n1.open_slow == 3
            released_at = time.monotonic()
            n1.release.set()
            assert await asyncio.gather(*sessions) == ["n1"] * 3

            async def proved() -> bool:
                return bool(recorded.events)

            await poll_until(proved, within=10, what="the drain proof")
    proof = recorded.events[0]
    assert proof.outcome == "proved" and proof.direction == "drain"
    assert proof.sessions == 3
    # It waited for the sessions: not before they were released, within a few polls after.
    assert proof.seconds is not None
    assert released_at - drained_at - 0.1 <= proof.seconds <= time.monotonic() - drained_at
    assert proof.text.startswith("traffic left n1 in ") and "(3 sessions drained)" in proof.text
    assert proof.target == "web/n1" and proof.lb_type == "haproxy" and proof.epoch is None
    [record] = recorded.records
    assert (record.what, record.target, record.new, record.result) == (
        "traffic_moved",
        "web/n1",
        "proved",
        "ok",
    )
    labels = {"lb_type": "haproxy", "direction": "drain"}
    assert registry.get_sample_value("nodevigil_traffic_moved_seconds_count", labels) == 1
    assert registry.get_sample_value("nodevigil_traffic_moved_seconds_sum", labels) == (
        pytest.approx(proof.seconds, abs=0.001)
    )
    outcome = {**labels, "outcome": "proved"}
    assert registry.get_sample_value("nodevigil_traffic_proofs_total", outcome) == 1


async def test_a_restore_is_proved_when_the_server_takes_new_sessions(
    slow_haproxy: HAProxyInstance,
) -> None:
    h = slow_haproxy
    recorded = Recorded()
    proofs = runner(h, recorded)
    await set_state(h, "n1", ServerState.MAINT)
    async with Traffic(h.url).running() as traffic:
        await set_state(h, "n1", ServerState.READY)
        proofs.start([action("n1", ServerState.MAINT, ServerState.READY)], QUICK)

        async def proved() -> bool:
            return bool(recorded.events)

        await poll_until(proved, within=10, what="the restore proof")
        assert traffic.answers["n1"] >= 1  # the client saw it too
    proof = recorded.events[0]
    assert (proof.outcome, proof.direction) == ("proved", "restore")
    assert proof.sessions is not None and proof.sessions >= 1
    assert proof.text.startswith("n1 takes traffic again after ")


async def test_a_drain_whose_session_outlives_the_timeout_is_recorded_and_counted(
    slow_haproxy: HAProxyInstance,
) -> None:
    h = slow_haproxy
    recorded, registry = Recorded(), CollectorRegistry()
    proofs = runner(h, recorded, registry=registry)
    await set_state(h, "n2", ServerState.MAINT)
    async with slow_sessions(h.url, 1) as sessions:
        await open_on_n1(h, sessions)
        await set_state(h, "n1", ServerState.MAINT)
        proofs.start(
            [action("n1", ServerState.READY, ServerState.MAINT)],
            FailoverProof(timeout="1s", interval="100ms"),
        )

        async def ended() -> bool:
            return bool(recorded.events)

        await poll_until(ended, within=10, what="the drain proof's timeout")
    proof = recorded.events[0]
    assert (proof.outcome, proof.seconds) == ("timeout", None)
    assert "did not leave n1 within" in proof.text and "1 sessions still open" in proof.text
    assert recorded.records[0].result == "error"
    labels = {"lb_type": "haproxy", "direction": "drain", "outcome": "timeout"}
    assert registry.get_sample_value("nodevigil_traffic_proofs_total", labels) == 1
    # A proof that never came is no figure of how long traffic took to move.
    moved = {"lb_type": "haproxy", "direction": "drain"}
    assert registry.get_sample_value("nodevigil_traffic_moved_seconds_count", moved) in (None, 0)


async def test_a_server_missing_from_the_stats_is_named_when_the_proof_times_out(
    slow_haproxy: HAProxyInstance,
) -> None:
    recorded = Recorded()
    proofs = runner(slow_haproxy, recorded)
    proofs.start(
        [action("n9", ServerState.READY, ServerState.MAINT)],
        FailoverProof(timeout="500ms", interval="100ms"),
    )

    async def ended() -> bool:
        return bool(recorded.events)

    await poll_until(ended, within=10, what="the drain proof's timeout")
    proof = recorded.events[0]
    assert proof.outcome == "timeout"
    assert "backend web has no server n9 in `show stat`" in proof.text, proof.text


async def test_a_quiet_restore_says_no_traffic_came(slow_haproxy: HAProxyInstance) -> None:
    h = slow_haproxy
    recorded = Recorded()
    proofs = runner(h, recorded)
    await set_state(h, "n1", ServerState.MAINT)
    await set_state(h, "n1", ServerState.READY)
    proofs.start(
        [action("n1", ServerState.MAINT, ServerState.READY)],
        FailoverProof(timeout="600ms", interval="100ms"),
    )

    async def ended() -> bool:
        return bool(recorded.events)

    await poll_until(ended, within=10, what="the restore proof's end")
    proof = recorded.events[0]
    assert proof.outcome == "no_traffic"
    assert proof.text.startswith("no traffic came to n1 within ")


async def test_a_proof_in_flight_is_abandoned_when_leadership_is_lost(
    slow_haproxy: HAProxyInstance,
) -> None:
    h = slow_haproxy
    recorded = Recorded()
    lease = FlipAuthority()
    proofs = runner(h, recorded, lease)
    await set_state(h, "n2", ServerState.MAINT)
    async with slow_sessions(h.url, 1) as sessions:
        await open_on_n1(h, sessions)
        await set_state(h, "n1", ServerState.MAINT)
        proofs.start([action("n1", ServerState.READY, ServerState.MAINT)], QUICK)
        lease.leading = False

        async def ended() -> bool:
            return bool(recorded.events)

        await poll_until(ended, within=10, what="the abandoned proof")
    proof = recorded.events[0]
    assert proof.outcome == "abandoned"
    assert "abandoned after" in proof.text and "this host stopped leading" in proof.text
    assert proofs.in_flight == 0
    assert recorded.records == []  # no longer the leader: nothing in the shared action log


@contextlib.asynccontextmanager
async def controller_for(
    h: HAProxyInstance, tmp_path: Path, bus: EventBus, **kw: Any
) -> AsyncIterator[Controller]:
    """A controller over n1, n2 whose verdicts say n1 is down; its store closed at the end."""
    config = Config.model_validate(
        {
            "vantage": "test",
            "failover": {"proof": {"timeout": "20s", "interval": "100ms"}},
            "load_balancers": {
                "sh-haproxy": {"type": "haproxy", "socket": str(h.socket_path), "backend": "web"}
            },
            "sites": [{"name": "sh", "address": SH, "local_lb": "sh-haproxy"}],
            "nodes": [
                {"name": n, "site": "sh", "probes": [{"type": "tcp", "address": "127.0.0.1:9"}]}
                for n in ("n1", "n2")
            ],
        }
    )
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=h.socket_path, retry=FAST)
    verdicts = FakeVerdicts()
    verdicts.current = {"n1": Verdict.DOWN, "n2": Verdict.UP}
    store = SqliteControllerStore(tmp_path / "state.db")
    controller = Controller(
        config=config,
        verdicts=verdicts,
        bus=bus,
        clock=SystemClock(),
        local_lbs={"sh-haproxy": lb},
        global_lbs={},
        store=store,
        **kw,
    )
    try:
        yield controller
    finally:
        await controller.__aexit__(None, None, None)  # cancels proofs still in flight
        await store.close()


async def test_the_controller_proves_its_drain_in_the_background(
    slow_haproxy: HAProxyInstance, tmp_path: Path
) -> None:
    h, bus = slow_haproxy, EventBus()
    proofs = bus.subscribe(("lb.proof",))
    await set_state(h, "n2", ServerState.MAINT)
    async with controller_for(h, tmp_path, bus) as controller, slow_sessions(h.url, 1) as sessions:
        n1 = await open_on_n1(h, sessions)
        await set_state(h, "n2", ServerState.READY)
        decision = await controller.run_once()
        assert [a.describe().split()[0] for a in decision.actions] == ["n1"]
        # The cycle is over while n1's session is still open: the proof runs on its own.
        assert controller.proofs.in_flight == 1 and proofs.drain() == []
        await controller.run_once()  # and the next decision does not wait for it either
        assert controller.proofs.in_flight == 1
        n1.release.set()
        await asyncio.gather(*sessions)
        async with asyncio.timeout(10):
            event = await proofs.get()
        assert isinstance(event, TrafficProof)
        assert (event.subject, event.outcome, event.sessions, event.vantage) == (
            "n1",
            "proved",
            1,
            "test",
        )
        logged = [r for r in await controller.actions() if r.what == "traffic_moved"]
        assert [(r.target, r.new, r.result) for r in logged] == [("web/n1", "proved", "ok")]
        sample = controller.metrics.registry.get_sample_value(
            "nodevigil_traffic_moved_seconds_count", {"lb_type": "haproxy", "direction": "drain"}
        )
        assert sample == 1


async def test_a_standby_proves_nothing(slow_haproxy: HAProxyInstance, tmp_path: Path) -> None:
    lease = FlipAuthority()
    lease.leading = False
    async with controller_for(slow_haproxy, tmp_path, EventBus(), authority=lease) as controller:
        decision = await controller.run_once()
        assert decision.actions  # it would drain n1...
        assert controller.proofs.in_flight == 0  # ...but sends nothing: nothing to prove
    lb = HAProxyLoadBalancer(name="x", socket_path=slow_haproxy.socket_path)
    assert (await lb.servers("web"))["n1"].admin is ServerState.READY


async def test_a_newer_action_on_the_server_supersedes_the_proof_in_flight(
    slow_haproxy: HAProxyInstance,
) -> None:
    h = slow_haproxy
    recorded = Recorded()
    proofs = runner(h, recorded)
    await set_state(h, "n2", ServerState.MAINT)
    async with slow_sessions(h.url, 1) as sessions, Traffic(h.url).running():
        await open_on_n1(h, sessions)
        await set_state(h, "n1", ServerState.MAINT)
        proofs.start([action("n1", ServerState.READY, ServerState.MAINT)], QUICK)
        await set_state(h, "n1", ServerState.READY)  # put back before its sessions ended
        proofs.start([action("n1", ServerState.MAINT, ServerState.READY)], QUICK)

        async def both() -> bool:
            return len(recorded.events) == 2

        await poll_until(both, within=10, what="both proofs")
    drain, restore = sorted(recorded.events, key=lambda e: e.direction)
    assert (drain.direction, drain.outcome) == ("drain", "abandoned")
    assert "a newer action on web/n1 superseded it" in drain.text
    assert (restore.direction, restore.outcome) == ("restore", "proved")
    assert proofs.in_flight == 0
