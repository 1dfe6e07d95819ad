"""The leader lease against a real 3-member etcd (tests/etcd_cluster.py), three processes'
leases in this one: one leader; hand-over by revoke and by expiry; a paused leader stops
acting before anyone else starts; no quorum, nobody acts; quorum back, one leader again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack

import pytest

from nodevigil.app.cluster_events import ClusterLeader
from nodevigil.app.leadership import LeaderLease, Role
from nodevigil.core.clock import SystemClock
from nodevigil.core.events import Event, EventBus
from nodevigil.state.etcd.client import EtcdClient
from tests.etcd_cluster import ETCD, EtcdCluster, etcd_cluster

# The smallest timing the configuration allows: renew_every + 2 x timeout <= lease_ttl.
TTL, RENEW, TIMEOUT = 2.0, 0.5, 0.5

pytestmark = pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


class Hosts:
    """Three leases on one prefix, each with its own client, and when each became leader."""

    def __init__(self, leases: list[LeaderLease], became: dict[str, list[float]]) -> None:
        self.leases = leases
        self.became = became

    def leaders(self) -> list[LeaderLease]:
        return [lease for lease in self.leases if lease.may_act()]


async def poll(what: str, check: Callable[[], bool], within: float) -> float:
    """Wait until ``check()``; the monotonic time it first held."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


@pytest.fixture
async def hosts(etcd: EtcdCluster) -> AsyncIterator[Hosts]:
    await asyncio.to_thread(etcd.restore)  # whatever the previous test stopped
    prefix = f"/nodevigil-test/{uuid.uuid4().hex[:8]}/"
    became: dict[str, list[float]] = {}
    async with AsyncExitStack() as stack:
        leases = []
        for name in ("ops-1", "ops-2", "ops-3"):
            client = await stack.enter_async_context(
                EtcdClient(etcd.endpoints, prefix=prefix, timeout=TIMEOUT)
            )
            bus = EventBus()

            def sink(event: Event, name: str = name) -> None:
                if isinstance(event, ClusterLeader):  # published as it starts to act
                    became.setdefault(name, []).append(time.monotonic())

            bus.add_sink(sink)
            lease = LeaderLease(
                client,
                me=name,
                ttl=TTL,
                renew_every=RENEW,
                timeout=TIMEOUT,
                clock=SystemClock(),
                bus=bus,
            )
            leases.append(await stack.enter_async_context(lease))
        yield Hosts(leases, became)


async def test_exactly_one_leader_and_the_others_know_it(hosts: Hosts) -> None:
    await poll("a leader", lambda: len(hosts.leaders()) == 1, within=5)
    [leader] = hosts.leaders()
    await poll(
        "every standby knows the leader",
        lambda: all(h.view()["leader"] == leader.me for h in hosts.leases if h is not leader),
        within=3,
    )
    for _ in range(20):  # and it stays that way over several renewals
        assert hosts.leaders() == [leader]
        await asyncio.sleep(RENEW / 4)
    view = hosts.leases[0].view()
    assert view["epoch"] == leader.epoch
    assert sorted(m["name"] for m in view["members"]) == ["ops-1", "ops-2", "ops-3"]
    assert all(m["alive"] for m in view["members"])


async def test_step_down_hands_over_within_a_second(hosts: Hosts) -> None:
    await poll("a leader", lambda: len(hosts.leaders()) == 1, within=5)
    [old] = hosts.leaders()
    started = time.monotonic()
    assert await old.step_down()
    assert not old.may_act()
    taken = await poll("another leader", lambda: len(hosts.leaders()) == 1, within=3)
    [new] = hosts.leaders()
    assert new is not old and taken - started < 1.0  # the watch wakes the standbys
    assert old.epoch is None and new.epoch is not None


async def test_a_paused_leader_stops_acting_before_another_starts(hosts: Hosts) -> None:
    await poll("a leader", lambda: len(hosts.leaders()) == 1, within=5)
    [old] = hosts.leaders()
    halted = time.monotonic()
    await old.halt()  # as SIGSTOP would: no more renewals, nothing revoked
    deadline = old.deadline
    gone = await poll("the paused leader stops", lambda: not old.may_act(), within=TTL)
    await poll("another leader", lambda: len(hosts.leaders()) == 1, within=TTL + RENEW + 1)
    [new] = hosts.leaders()
    assert new is not old and not old.may_act()
    took_over = hosts.became[new.me][-1]
    # The ordering that matters: the old leader's deadline passed before the new one acted,
    # by at least the margin (the lease in etcd outlives the deadline by that much).
    assert gone <= took_over and deadline + old.margin <= took_over
    assert took_over - halted <= TTL + RENEW + 0.5  # expiry, then one renewal round at most


@pytest.mark.slow
async def test_no_quorum_nobody_acts_and_quorum_back_one_leader(
    hosts: Hosts, etcd: EtcdCluster
) -> None:
    await poll("a leader", lambda: len(hosts.leaders()) == 1, within=5)
    stopped = time.monotonic()
    await asyncio.to_thread(etcd.stop_quorum)
    await poll("nobody acts", lambda: not hosts.leaders(), within=TTL + 1)
    assert time.monotonic() - stopped <= TTL + 0.5  # at the old leader's deadline
    for _ in range(10):  # and nobody can win while the quorum is away
        assert hosts.leaders() == []
        await asyncio.sleep(RENEW / 2)
    assert {h.role for h in hosts.leases} == {Role.FENCED}
    await asyncio.to_thread(etcd.restore)
    await poll("one leader again", lambda: len(hosts.leaders()) == 1, within=TTL * 3)
    for _ in range(8):
        assert len(hosts.leaders()) == 1
        await asyncio.sleep(RENEW / 2)
