"""Three nodevigil processes, a 3-member etcd, PostgreSQL and a real HAProxy (harness.py).

Exactly one daemon acts; a SIGKILLed leader is replaced within ``lease_ttl`` and a bit; a
paused (SIGSTOP) leader, once resumed, sends nothing; without etcd quorum nobody acts and
nothing is lost; an outage open across a change of leader stays one incident, one notice per
webhook-id and one ledger interval; a drain written on a standby is acted on by the leader.
Take-over times are printed (``-s``); only generous bounds are asserted: timing goals are
measured in bench/cluster_bench.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from failover.lb import ServerState
from tests.cluster.harness import LEASE_TTL, Harness, Member, run_cluster, until
from tests.etcd_cluster import ETCD
from tests.failover.daemons import HAPROXY
from tests.postgres_server import BINDIR, PostgresAddress

pytestmark = [
    pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server"),
    pytest.mark.skipif(not HAPROXY.exists(), reason="haproxy is missing"),
    pytest.mark.skipif(BINDIR is None, reason="PostgreSQL is missing"),
    pytest.mark.timeout(90),
]

TAKEOVER = LEASE_TTL + 2.0  # the goal; asserted three times over, measured in bench


@pytest.fixture
async def cluster(tmp_path: Path, postgres: PostgresAddress) -> AsyncIterator[Harness]:
    async with run_cluster(tmp_path, postgres) as harness:
        yield harness


async def standbys(cluster: Harness, leader: Member) -> list[Member]:
    """The other daemons, once each says ``standby``."""

    async def all_standby() -> bool:
        roles = await cluster.roles()
        return all(roles.get(m.name) == "standby" for m in cluster.members if m is not leader)

    await until(all_standby, within=10, what="every other daemon a standby")
    return [m for m in cluster.members if m is not leader]


async def test_one_leader_and_a_killed_leader_is_replaced(cluster: Harness) -> None:
    leader = await cluster.wait_leader()
    others = await standbys(cluster, leader)
    for _ in range(6):  # and it stays one over several renewals
        assert await cluster.leaders() == [leader]
        await asyncio.sleep(0.25)
    view = await cluster.view(others[0])
    assert view is not None and view["leader"] == leader.name and view["epoch"]

    killed = time.monotonic()
    await cluster.kill(leader)
    await cluster.stop_node("n2")  # just after: only the next leader can drain it
    drained = await cluster.wait_admin("n2", ServerState.MAINT, within=3 * TAKEOVER)
    took = drained - killed
    print(f"\nSIGKILL of the leader -> n2 drained by the next leader: {took:.2f}s")
    assert took <= 3 * TAKEOVER
    new = await cluster.wait_leader()
    assert new is not leader
    new_view = await cluster.view(new)
    assert new_view is not None and new_view["epoch"] > view["epoch"]
    assert (await cluster.admin())["n1"] is ServerState.READY


async def test_a_paused_leader_sends_nothing_when_it_resumes(cluster: Harness) -> None:
    old = await cluster.wait_leader()
    await standbys(cluster, old)
    offset = old.log_size()
    paused = time.monotonic()
    cluster.pause(old)
    new = await cluster.wait_leader(within=3 * TAKEOVER, excluding=old)
    print(f"\nSIGSTOP of the leader -> another says leader: {time.monotonic() - paused:.2f}s")
    # n3 dies while the old leader sleeps: when it wakes, its view says n3 is up and HAProxy
    # says n3 is out, so a leader that did not know it was deposed would put n3 back in.
    await cluster.stop_node("n3")
    await cluster.wait_admin("n3", ServerState.MAINT, within=3 * TAKEOVER)
    before = await cluster.admin()
    cluster.resume(old)
    watch_until = time.monotonic() + 3.0  # several of its cycles, probes and renewals
    while time.monotonic() < watch_until:
        assert await cluster.admin() == before, "HAProxy changed after the old leader resumed"
        await asyncio.sleep(0.02)
    view = await cluster.view(old)
    assert view is not None and view["role"] in ("standby", "fenced")
    assert view["leader"] == new.name
    assert old.acting_lines(offset) == [], "the deposed leader acted (or believed it could)"
    assert "acting from now on" not in old.log_since(offset)


async def test_without_etcd_quorum_nobody_acts_and_it_converges(cluster: Harness) -> None:
    leader = await cluster.wait_leader()
    await standbys(cluster, leader)
    before = await cluster.admin()
    await asyncio.to_thread(cluster.etcd.stop_quorum)

    async def all_fenced() -> bool:
        roles = await cluster.roles()
        return len(roles) == 3 and set(roles.values()) == {"fenced"}

    await until(all_fenced, within=LEASE_TTL + 3, what="every daemon fenced")
    await cluster.stop_node("n2")  # a node dies while nobody may act
    watch_until = time.monotonic() + 2.5  # fall 1 at 200 ms: every daemon has seen n2 down
    while time.monotonic() < watch_until:
        assert await cluster.admin() == before, "a load balancer changed without quorum"
        assert set((await cluster.roles()).values()) == {"fenced"}
        await asyncio.sleep(0.05)
    view = await cluster.view(cluster.members[0])
    assert view is not None and view["role"] == "fenced" and view.get("reason")

    restored = time.monotonic()
    await asyncio.to_thread(cluster.etcd.restore)
    await cluster.wait_leader(within=3 * TAKEOVER)
    await cluster.wait_admin("n2", ServerState.MAINT, within=3 * TAKEOVER)  # nothing lost
    print(f"\nquorum back -> n2 drained: {time.monotonic() - restored:.2f}s")
    assert len(await cluster.leaders()) == 1


@pytest.mark.slow
async def test_an_outage_across_a_change_of_leader_is_one_incident(cluster: Harness) -> None:
    leader = await cluster.wait_leader()
    await standbys(cluster, leader)
    for name in ("n1", "n2", "n3"):
        await cluster.stop_node(name)  # the whole service is out
    hook = cluster.hook
    await hook.wait_for(
        lambda: any(d.type == "incident.opened" for d in hook.accepted), what="opened notice"
    )
    await cluster.kill(leader)
    new = await cluster.wait_leader(within=3 * TAKEOVER, excluding=leader)
    await asyncio.sleep(1.0)  # the new leader carries the outage on for a few cycles
    for name in ("n1", "n2", "n3"):
        await cluster.start_node(name)
    await hook.wait_for(
        lambda: any(d.type == "incident.resolved" for d in hook.accepted),
        timeout=15,
        what="resolved notice",
    )
    await asyncio.sleep(1.0)  # a duplicate would come now, from a resend or the other side
    # At least once, each under one webhook-id: the old leader was killed right after the
    # receiver took the opened notice, perhaps before it could mark it delivered, and the new
    # leader sends what is not marked delivered again under the same id, which the receiver
    # deduplicates (Standard Webhooks). No second notice under another id, ever.
    unique = {d.id: d for d in hook.accepted}
    assert Counter(d.type for d in unique.values()) == Counter(
        {"incident.opened": 1, "incident.resolved": 1}
    ), Counter(d.id for d in hook.accepted)
    resent = len(hook.accepted) - len(unique)
    print(f"\nnotices resent under the same webhook-id across the leader change: {resent}")
    assert resent <= 1  # at most the one in flight when the leader died
    status, body = await cluster.call(new, "GET", "/api/v1/incidents")
    assert status == 200 and len(body["incidents"]) == 1, body
    [incident] = body["incidents"]
    assert incident["state"] == "resolved"

    async def closed_intervals() -> list[dict[str, object]] | None:
        _, ledger = await cluster.call(new, "GET", "/api/v1/sla/ledger?service=web")
        intervals: list[dict[str, object]] = ledger["intervals"]
        return intervals if intervals and all(i["end"] for i in intervals) else None

    intervals = await until(closed_intervals, within=10, what="the ledger intervals closed")
    outage = [i for i in intervals if i["cause"] != "unknown"]
    assert len(outage) == 1, f"the ledger interval broke at the change of leader: {intervals}"
    # The time nobody held the lease is recorded as ``unknown`` besides it (issue 14), even
    # though every standby saw the service down meanwhile: printed, not asserted (a gap).
    print(f"\nledger: {outage[0]['start']} .. {outage[0]['end']} ({outage[0]['cause']}); ")
    print(f"unknown: {[(i['start'], i['end']) for i in intervals if i['cause'] == 'unknown']}")


@pytest.mark.slow
async def test_a_drain_written_on_a_standby_is_acted_on_by_the_leader(cluster: Harness) -> None:
    leader = await cluster.wait_leader()
    standby = (await standbys(cluster, leader))[0]
    status, body = await cluster.call(
        standby, "POST", "/api/v1/nodes/sh-n1/drain", {"for": "10m", "reason": "kernel"}
    )
    assert status == 200, body
    written = time.monotonic()
    await cluster.wait_admin("n1", ServerState.MAINT, within=15)
    print(f"\ndrain on a standby -> acted on by the leader: {time.monotonic() - written:.2f}s")
    _, overrides = await cluster.call(leader, "GET", "/api/v1/overrides")
    assert [o["name"] for o in overrides["overrides"]] == ["sh-n1"]
    status, body = await cluster.call(standby, "POST", "/api/v1/nodes/sh-n1/undrain")
    assert status == 200, body
    await cluster.wait_admin("n1", ServerState.READY, within=15)
    assert await cluster.leaders() == [leader]  # the leader did it, nobody else
