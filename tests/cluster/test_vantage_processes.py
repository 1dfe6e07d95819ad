"""Three vantage processes vote, a quorum decides (``cluster.vantages``), through real programs.

Three ``nodevigil run`` processes with ``cluster: {vantages: [ops-1, ops-2, ops-3], quorum:
2}``, a 3-member etcd, PostgreSQL, real HAProxy for two sites (``sh`` and ``east``) and, where
a case needs DNS, a real BIND as the service's global load balancer (harness.py). A vantage is
cut off from nodes, sites or etcd by a per-process nftables cut (cuts.py); the member cut is
the *leader*, the one process that acts, so a cut that moved anything would show in HAProxy or
BIND:

- cut off from every node (not from etcd): HAProxy and the DNS record stay as they were, no
  node changes verdict, no incident opens, the vantage says ``vantage.isolated`` and, once
  healed, ``vantage.rejoined``;
- cut off from one site only: nothing is drained, and a node of that site that truly dies is
  still drained on the two others' word;
- a node truly dead is drained with all three vantages up, and with one cut off; the
  ``node.down`` event and the decision line name the votes (``down by 2 of 3 vantages``);
- a vantage SIGKILLed: its votes vanish at the others within its lease TTL + 1 s, and the two
  others go on deciding (a node stopped then is drained);
- the brake (``failover.brake``): a whole site fails at once, from every vantage: its nodes are
  not all drained, ``failover.brake`` says why, and the site leaves DNS all the same.

Only generous deadlines are asserted on drains: the time from a node's death to its drain is
measured in bench/vantage_bench.py. The votes' vanishing within TTL + 1 s is the issue's own
bound and is asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from failover.lb import ServerState
from tests.cluster.harness import EAST_NODES, LEASE_TTL, Harness, Member, run_cluster, until
from tests.cluster.test_cluster_fences import rrset
from tests.etcd_cluster import ETCD
from tests.failover.daemons import HAPROXY, NAMED
from tests.postgres_server import BINDIR, PostgresAddress

pytestmark = [
    pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server"),
    pytest.mark.skipif(not HAPROXY.exists(), reason="haproxy is missing"),
    pytest.mark.skipif(BINDIR is None, reason="PostgreSQL is missing"),
    pytest.mark.timeout(90),
]
needs_bind = pytest.mark.skipif(not NAMED.exists(), reason="BIND is missing: bind9")

NAMES = ("ops-1", "ops-2", "ops-3")
VOTING = {"vantages": list(NAMES), "quorum": 2}
# The nodes are served by this test process: a stall of it on a busy machine is seen by every
# vantage at once, a mass failure the brake (from 10 nodes) does not cover in this 7-node
# fleet. Three timeouts in a row (600 ms) ride over such a stall; a real death still drains.
STEADY = {"fall": 3}
SH_NODES = ("sh-n1", "sh-n2", "sh-n3")
EAST = tuple(f"east-{e}" for e in EAST_NODES)
SH, EAST_ADDR, FAR = "192.0.2.10", "192.0.2.30", "192.0.2.20"  # the sites' addresses in DNS
DRAIN = 15.0  # a generous deadline for a drain (the bench measures the time)
# Isolation takes two checks in a row a second apart, after the local verdicts fell (200 ms).
ISOLATED = 10.0


# --- helpers ----------------------------------------------------------------------------------


async def votes(cluster: Harness, member: Member | str, node: str) -> dict[str, str | None]:
    """``member``'s view of every vantage's vote on ``node``: vantage -> vote (None: none)."""
    view = await cluster.node(member, node)
    return {v["vantage"]: v["vote"] for v in view["votes"]}


async def all_votes(cluster: Harness, nodes: tuple[str, ...], want: str) -> None:
    """Wait until every running member sees every vantage vote ``want`` on every node."""

    async def agreed() -> bool:
        for member in cluster.members:
            if not member.running:
                continue
            for node in nodes:
                if set((await votes(cluster, member, node)).values()) != {want}:
                    return False
        return True

    await until(agreed, within=15, what=f"every vote {want} on {', '.join(nodes)}", every=0.1)


async def leader_of(cluster: Harness) -> Member:
    """The leader, once the other two say standby."""
    leader = await cluster.wait_leader(within=15)

    async def settled() -> bool:
        roles = await cluster.roles()
        return all(roles.get(m.name) == "standby" for m in cluster.members if m is not leader)

    await until(settled, within=15, what="the other members standbys")
    return leader


async def steady(
    cluster: Harness,
    seconds: float,
    admin: Mapping[str, ServerState],
    dns: set[str] | None = None,
) -> None:
    """For ``seconds``, HAProxy holds exactly ``admin`` (and BIND answers ``dns`` for www)."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        assert await cluster.admin() == admin, "HAProxy changed"
        if dns is not None:
            assert cluster.bind is not None
            assert await rrset(cluster.bind, "www", "A") == dns, "the DNS record changed"
        await asyncio.sleep(0.1)


async def nothing_happened(cluster: Harness, since: float) -> None:
    """No node changed its combined verdict, no load balancer was touched, no incident."""
    member = cluster.members[0]
    moved = await cluster.events(member, kind="node.", since=since)
    assert moved == [], f"a node's verdict moved: {moved}"
    actions = await cluster.events(member, kind="lb.", since=since)
    assert actions == [], f"a load balancer was changed: {actions}"
    status, body = await cluster.call(member, "GET", "/api/v1/incidents")
    assert status == 200 and body["incidents"] == [], body


async def in_dns(cluster: Harness, want: set[str]) -> None:
    """Wait until BIND answers ``want`` for the service's record."""
    assert cluster.bind is not None
    bind = cluster.bind

    async def there() -> bool:
        return await rrset(bind, "www", "A") == want

    await until(there, within=DRAIN, what=f"www = {sorted(want)}", every=0.1)


def rewrite(cluster: Harness, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to every member's configuration file (before they start)."""
    for member in cluster.members:
        data = yaml.safe_load(member.config.read_text())
        edit(data)
        member.config.write_text(yaml.safe_dump(data))


@pytest.fixture
async def cluster(tmp_path: Path, postgres: PostgresAddress) -> AsyncIterator[Harness]:
    """Three voting members, sites ``sh`` and ``east``, every member cuttable."""
    async with run_cluster(
        tmp_path,
        postgres,
        east=EAST_NODES,
        cluster_extra=VOTING,
        cuttable=NAMES,
        defaults_extra=STEADY,
    ) as harness:
        await all_votes(harness, SH_NODES + EAST, "up")
        yield harness


@pytest.fixture
async def dns_cluster(tmp_path: Path, postgres: PostgresAddress) -> AsyncIterator[Harness]:
    """As ``cluster``, with BIND as the global load balancer (sites sh, east and far)."""
    async with run_cluster(
        tmp_path,
        postgres,
        east=EAST_NODES,
        bind=True,
        cluster_extra=VOTING,
        cuttable=NAMES,
        defaults_extra=STEADY,
    ) as harness:
        await all_votes(harness, SH_NODES + EAST + ("far-f1",), "up")
        await in_dns(harness, {SH, EAST_ADDR, FAR})
        yield harness


# --- one vantage cut off ------------------------------------------------------------------------


@needs_bind
async def test_a_vantage_cut_off_from_every_node_moves_nothing_and_says_so(
    dns_cluster: Harness,
) -> None:
    cluster = dns_cluster
    leader = await leader_of(cluster)
    before = await cluster.admin()
    assert set(before.values()) == {ServerState.READY}
    began = time.time()
    await cluster.cut(leader, ["nodes"])  # every node of every site; etcd and peers stay
    event = await cluster.wait_event(
        leader, "vantage.isolated", subject=leader.name, since=began, within=ISOLATED
    )
    print(f"\n{leader.name} (the leader) cut off from every node: {event['data']}")
    # Isolated by the others' votes (its canaries, etcd and the peers, still answer).
    assert event["data"]["nodes_judged"] == 7 and event["data"]["nodes_disputed"] > 7 / 2
    assert "nodes down that" in event["data"]["reason"], event
    # Cut off, it votes unknown for everything, and the others' votes carry the verdicts.
    view = await cluster.node(leader, "sh-n1")
    assert view["local_verdict"] == "down" and view["verdict"] == "up", view
    mine = next(v for v in view["votes"] if v["vantage"] == leader.name)
    assert mine["vote"] == "unknown" and mine["isolated"], mine
    # A few more of its cycles: nothing moves.
    await steady(cluster, 2.0, before, dns={SH, EAST_ADDR, FAR})
    await nothing_happened(cluster, began)
    assert (await cluster.view(leader) or {})["vantages"]["isolated"] is True

    healed = time.time()
    await cluster.heal(leader)
    back = await cluster.wait_event(
        leader, "vantage.rejoined", subject=leader.name, since=healed, within=ISOLATED
    )
    print(f"healed: {back['data']}")
    await all_votes(cluster, SH_NODES + EAST + ("far-f1",), "up")
    assert await cluster.admin() == before
    await nothing_happened(cluster, began)


@pytest.mark.slow
async def test_a_vantage_cut_off_from_one_site_drains_nothing(cluster: Harness) -> None:
    leader = await leader_of(cluster)
    before = await cluster.admin()
    began = time.time()
    await cluster.cut(leader, ["east"])

    async def sees_east_down() -> bool:
        return all([(await votes(cluster, leader, n))[leader.name] == "down" for n in EAST])

    await until(sees_east_down, within=5, what=f"{leader.name} votes the east site down")
    # Half its nodes disputed is not isolation (more than isolation.share is): it keeps voting.
    await steady(cluster, 3.0, before)
    await nothing_happened(cluster, began)
    assert await cluster.events(leader, kind="vantage.", since=began) == []
    for node in EAST:
        view = await cluster.node(leader, node)
        assert view["verdict"] == "up" and view["local_verdict"] == "down", view

    # The two others still decide for the east site: a node of it that truly dies goes out.
    await cluster.stop_node("e1")
    await cluster.wait_admin("e1", ServerState.MAINT, within=DRAIN)
    event = await cluster.wait_event(leader, "node.down", subject="east-e1", within=5)
    print(f"\neast-e1 down with {leader.name} cut off from east: {event['data']['reason']}")
    assert event["data"]["reason"].startswith("down by 2 of 3 vantages (quorum 2)")
    await cluster.heal(leader)


# --- a node truly dead ---------------------------------------------------------------------------


async def test_a_dead_node_is_drained_on_the_quorums_word_and_the_votes_are_named(
    cluster: Harness,
) -> None:
    leader = await leader_of(cluster)
    began = time.time()
    stopped = time.monotonic()
    await cluster.stop_node("n2")
    drained = await cluster.wait_admin("n2", ServerState.MAINT, within=DRAIN)
    print(f"\nn2 stopped -> drained, three vantages up: {drained - stopped:.2f}s")
    event = await cluster.wait_event(leader, "node.down", subject="sh-n2", since=began, within=5)
    reason = event["data"]["reason"]
    print(f"node.down: {reason}")
    assert reason.startswith("down by 2 of 3 vantages (quorum 2); "), reason
    assert sum(f"{name}: down (http: " in reason for name in NAMES) >= 2, reason
    # The leader's decision line that drained n2 (the standbys log theirs as "would").
    lines = await cluster.events(leader, kind="controller.decision", since=began)
    drain = [
        e["data"]["decision"]
        for e in lines
        if e["vantage"] == leader.name and "sh-n2 ready->maint" in e["data"]["decision"]
    ]
    print(f"decision line: {drain}")
    assert len(drain) == 1 and "(verdict down: down by 2 of 3 vantages" in drain[0], drain
    assert (await cluster.admin())["n1"] is ServerState.READY

    # Now with the leader cut off from every node: the two others' votes still drain.
    cut_at = time.time()
    await cluster.cut(leader, ["nodes"])
    await cluster.wait_event(
        leader, "vantage.isolated", subject=leader.name, since=cut_at, within=ISOLATED
    )
    stopped = time.monotonic()
    await cluster.stop_node("e2")
    drained = await cluster.wait_admin("e2", ServerState.MAINT, within=DRAIN)
    print(f"e2 stopped -> drained, the leader cut off: {drained - stopped:.2f}s")
    event = await cluster.wait_event(leader, "node.down", subject="east-e2", within=5)
    reason = event["data"]["reason"]
    print(f"node.down: {reason}")
    assert reason.startswith("down by 2 of 3 vantages (quorum 2); "), reason
    assert f"{leader.name}: unknown (looks cut off)" in reason, reason
    others = {n: s for n, s in (await cluster.admin()).items() if n not in ("n2", "e2")}
    assert set(others.values()) == {ServerState.READY}, others
    await cluster.heal(leader)


# --- one vantage dead ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_dead_vantages_votes_vanish_and_the_others_decide(
    tmp_path: Path, postgres: PostgresAddress
) -> None:
    async with run_cluster(
        tmp_path, postgres, east=EAST_NODES, cluster_extra=VOTING, defaults_extra=STEADY
    ) as cluster:
        nodes = SH_NODES + EAST
        await all_votes(cluster, nodes, "up")
        dead = await leader_of(cluster)
        survivors = [m for m in cluster.members if m is not dead]
        killed = time.monotonic()
        await cluster.kill(dead)

        async def vanished() -> float | None:
            for member in survivors:
                for node in nodes:
                    if (await votes(cluster, member, node))[dead.name] is not None:
                        return None
            return time.monotonic()

        gone = await until(vanished, within=3 * LEASE_TTL, what=f"{dead.name}'s votes gone")
        print(f"\n{dead.name} (the leader) SIGKILLed -> its votes gone: {gone - killed:.2f}s")
        assert gone - killed <= LEASE_TTL + 1.0, f"{gone - killed:.2f}s"
        view = await cluster.node(survivors[0], "sh-n1")
        assert view["verdict"] == "up", view
        mine = next(v for v in view["votes"] if v["vantage"] == dead.name)
        assert mine["vote"] is None and mine["age"] is None, mine

        began = time.time()
        await cluster.stop_node("n3")
        await cluster.wait_admin("n3", ServerState.MAINT, within=DRAIN)
        new = await cluster.wait_leader()
        assert new is not dead
        event = await cluster.wait_event(new, "node.down", subject="sh-n3", since=began, within=5)
        print(f"n3 drained by {new.name}: {event['data']['reason']}")
        assert event["data"]["reason"].startswith("down by 2 of 2 vantages (quorum 2)")


# --- the brake ----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_bind
async def test_a_whole_site_failing_at_once_is_braked_and_leaves_dns(
    tmp_path: Path, postgres: PostgresAddress
) -> None:
    async with run_cluster(
        tmp_path, postgres, east=EAST_NODES, bind=True, cluster_extra=VOTING, start=False
    ) as cluster:

        def brake_on_east(data: dict[str, Any]) -> None:
            # Without the brake every east node would go: no floor, no cap.
            east = next(s for s in data["sites"] if s["name"] == "east")
            east.update(min_healthy=0, max_unavailable="100%")
            data["failover"]["brake"] = {"share": 0.5, "window": "1m", "rate": 0, "min_nodes": 3}

        rewrite(cluster, brake_on_east)
        await asyncio.gather(*(cluster.start(m) for m in cluster.members))
        await all_votes(cluster, SH_NODES + EAST + ("far-f1",), "up")
        await in_dns(cluster, {SH, EAST_ADDR, FAR})
        leader = await leader_of(cluster)
        began = time.time()
        await asyncio.gather(*(cluster.stop_node(e) for e in EAST_NODES))
        await all_votes(cluster, EAST, "down")  # from every vantage: a real outage
        event = await cluster.wait_event(
            leader, "failover.brake", subject="east", since=began, within=DRAIN
        )
        print(f"\n{event['data']['reason']}")
        assert event["data"]["scope"] == "site" and event["data"]["nodes"] == 3
        # A dead site still fails over: it leaves DNS under its own brake.
        await in_dns(cluster, {SH, FAR})
        # The brake holds: at most the node that fell before it engaged (share 0.5 of 3) went.
        admin = await cluster.admin()
        await steady(cluster, 2.0, admin)
        out = [e for e in EAST_NODES if admin[e] is not ServerState.READY]
        print(f"east drained under the brake: {out or 'none'}")
        assert len(out) <= 1, admin
        assert all(admin[n] is ServerState.READY for n in ("n1", "n2", "n3")), admin
        assert await cluster.events(leader, kind="failover.brake", subject="fleet") == []
