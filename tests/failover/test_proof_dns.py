"""Proof that a DNS change reached every authoritative server: a real BIND primary updated by
RFC 2136 and a real BIND secondary that follows by zone transfer after NOTIFY, made to lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import pytest
from prometheus_client import CollectorRegistry

from failover.controller.lbio import Applied
from failover.controller.state import SetAddresses
from failover.lb import RetryPolicy
from failover.lb.errors import LoadBalancerRejected
from failover.lb.powerdns import PowerDnsLoadBalancer
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from failover.proof.runner import ProofRunner
from nodevigil.core.clock import SystemClock
from nodevigil.core.config.schema import FailoverProof
from tests.failover.conftest import require_program
from tests.failover.daemons import NAMED, BindInstance, PowerDnsInstance, poll_until
from tests.failover.proof_dns import HOST, KEY, ZONE, ZonePair, run_zone_pair
from tests.failover.proof_helpers import FlipAuthority, Recorded

FAST = RetryPolicy(attempts=1, total=0.5, initial=0.01, maximum=0.05)
OLD, NEW = frozenset({"192.0.2.1", "192.0.2.2"}), frozenset({"192.0.2.1"})


@pytest.fixture
async def zone_pair(tmp_path: Path) -> AsyncIterator[ZonePair]:
    """A BIND primary (127.0.0.1) and secondary (127.0.0.2) of example.test."""
    require_program(NAMED, "bind9")
    async with run_zone_pair(tmp_path / "dns") as pair:
        yield pair


def gslb(pair: ZonePair) -> Rfc2136LoadBalancer:
    return Rfc2136LoadBalancer(
        name="gslb",
        host=HOST,
        port=pair.port,
        zone=ZONE,
        ttl=30,
        timeout=0.3,  # a paused secondary costs a poll this much, not the adapter's 2 s
        tsig_name=KEY,
        tsig_secret=pair.key_secret,
        retry=FAST,
        proof_servers=[(HOST, pair.port), (HOST, pair.secondary_port)],
    )


def runner(
    lb: Rfc2136LoadBalancer | PowerDnsLoadBalancer, recorded: Recorded, registry: CollectorRegistry
) -> ProofRunner:
    return ProofRunner(
        clock=SystemClock(),
        authority=FlipAuthority(),
        local_lbs={},
        global_lbs={"gslb": lb},
        lb_types=lambda name: "rfc2136",
        emit=recorded.emit,
        record=recorded.record,
        vantage=lambda: "test",
        registry=registry,
    )


def withdrawal() -> Applied:
    return Applied(SetAddresses("gslb", "www", "web", OLD, NEW, "site bj down"), None, 7)


async def secondary_answers(pair: ZonePair) -> frozenset[str] | None:
    """What the secondary answers for www now (None: no answer within 0.3 s)."""
    query = dns.message.make_query(f"www.{ZONE}", "A")
    try:
        response = await dns.asyncquery.udp(query, HOST, timeout=0.3, port=pair.secondary_port)
    except dns.exception.Timeout:
        return None
    return frozenset(r.to_text() for rrset in response.answer for r in rrset)


async def test_without_proof_servers_the_zones_ns_set_is_asked(bind_server: BindInstance) -> None:
    # The fixture's zone names one NS, ns1 -> 127.0.0.1 (its glue), on the primary's port.
    secret = (await asyncio.to_thread(bind_server.key_file.read_text)).strip()
    lb = Rfc2136LoadBalancer(
        name="gslb",
        host="127.0.0.1",
        port=bind_server.port,
        zone=bind_server.zone,
        tsig_name=bind_server.key_name,
        tsig_secret=secret,
        retry=FAST,
    )
    await lb.set_addresses("www", {"192.0.2.7"})
    [answer] = await lb.published("www")
    assert str(answer.server) == f"ns1.{bind_server.zone} (127.0.0.1:{bind_server.port})"
    assert answer.server.port == bind_server.port
    assert (answer.addresses, answer.ttl, answer.error) == (frozenset({"192.0.2.7"}), 30, None)
    assert answer.serial is not None and answer.serial >= 2  # the update bumped it


async def test_each_proof_server_is_asked(zone_pair: ZonePair) -> None:
    answers = await gslb(zone_pair).published("www")
    assert [(a.server.port, a.serial, a.addresses, a.ttl, a.error) for a in answers] == [
        (zone_pair.port, 1, OLD, 30, None),
        (zone_pair.secondary_port, 1, OLD, 30, None),
    ]


async def test_the_proof_waits_for_a_lagging_secondary_then_records(zone_pair: ZonePair) -> None:
    pair, recorded, registry = zone_pair, Recorded(), CollectorRegistry()
    lb = gslb(pair)
    proofs = runner(lb, recorded, registry)
    pair.pause_secondary()
    try:
        await lb.set_addresses("www", set(NEW))
        changed_at = time.monotonic()
        proofs.start([withdrawal()], FailoverProof(timeout="20s", interval="100ms"))
        assert await lb.addresses("www") == set(NEW)  # the primary has it at once
        # The secondary, paused, still answers nothing: the proof must not be given.
        assert await secondary_answers(pair) is None
        assert recorded.events == [] and proofs.in_flight == 1
    finally:
        resumed_at = time.monotonic()
        pair.resume_secondary()

    async def proved() -> bool:
        return bool(recorded.events)

    await poll_until(proved, within=15, what="the DNS proof after the secondary resumed")
    assert await secondary_answers(pair) == NEW  # the transfer really happened
    proof = recorded.events[0]
    assert (proof.outcome, proof.direction, proof.ttl, proof.epoch) == (
        "proved",
        "withdraw",
        30,
        7,
    )
    assert proof.seconds is not None and proof.seconds >= resumed_at - changed_at - 0.1
    assert proof.text.startswith("all 2 authoritative servers answer [192.0.2.1] for web (www)")
    assert "(serial 2)" in proof.text and "up to 30 s more (its TTL)" in proof.text
    labels = {"lb_type": "rfc2136", "direction": "withdraw"}
    assert registry.get_sample_value("nodevigil_traffic_moved_seconds_count", labels) == 1
    assert recorded.records[0].target == "www" and recorded.records[0].result == "ok"


async def test_a_secondary_that_never_catches_up_times_out_and_is_counted(
    zone_pair: ZonePair,
) -> None:
    pair, recorded, registry = zone_pair, Recorded(), CollectorRegistry()
    lb = gslb(pair)
    proofs = runner(lb, recorded, registry)
    pair.pause_secondary()
    await lb.set_addresses("www", set(NEW))
    proofs.start([withdrawal()], FailoverProof(timeout="1500ms", interval="100ms"))

    async def ended() -> bool:
        return bool(recorded.events)

    await poll_until(ended, within=15, what="the DNS proof's timeout")
    proof = recorded.events[0]
    assert (proof.outcome, proof.seconds) == ("timeout", None)
    assert f"{HOST}:{pair.secondary_port}: did not answer in 0.3s" in proof.text
    assert f"{HOST}:{pair.port}:" not in proof.text  # the primary was not the one lagging
    labels = {"lb_type": "rfc2136", "direction": "withdraw", "outcome": "timeout"}
    assert registry.get_sample_value("nodevigil_traffic_proofs_total", labels) == 1
    assert recorded.records[0].result == "error"


async def test_a_powerdns_change_is_proved_by_its_dns_answers(
    powerdns_server: PowerDnsInstance,
) -> None:
    pdns, recorded, registry = powerdns_server, Recorded(), CollectorRegistry()
    lb = PowerDnsLoadBalancer(
        name="gslb",
        url=pdns.url,
        zone=pdns.zone,
        api_key=pdns.api_key,
        ttl=17,
        timeout=1.0,
        retry=FAST,
        proof_servers=[("127.0.0.1", pdns.dns_port)],
    )
    try:
        await lb.set_addresses("www", set(OLD))
        proofs = runner(lb, recorded, registry)
        await lb.set_addresses("www", set(NEW))
        proofs.start([withdrawal()], FailoverProof(timeout="20s", interval="100ms"))

        async def proved() -> bool:
            return bool(recorded.events)

        await poll_until(proved, within=15, what="the PowerDNS proof")
        proof = recorded.events[0]
        assert (proof.outcome, proof.ttl) == ("proved", 17)
        assert proof.text.startswith("all 1 authoritative servers answer [192.0.2.1] for web")
        # Without proof_servers the NS set comes from the API; this test zone's NS names do
        # not resolve here, and the proof's read says so.
        bare = PowerDnsLoadBalancer(
            name="gslb", url=pdns.url, zone=pdns.zone, api_key=pdns.api_key, retry=FAST
        )
        try:
            with pytest.raises(
                LoadBalancerRejected, match=r"gslb: (NS .* has no address|the zone)"
            ):
                await bare.published("www")
        finally:
            await bare.close()
    finally:
        await lb.close()
