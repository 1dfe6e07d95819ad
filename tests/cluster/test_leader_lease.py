"""The leader lease as logic: a fake etcd and a manual clock (the real etcd: test_election)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from nodevigil.app.cluster_events import ClusterFenced, ClusterLeader, ClusterStandby
from nodevigil.app.leadership import LEADER_KEY, LeaderLease, Role, deadline_margin
from nodevigil.core.clock import ManualClock
from nodevigil.core.events import Event, EventBus
from tests.cluster.fake_etcd import FakeEtcd, View

TTL, RENEW, TIMEOUT = 5.0, 1.5, 1.0
MARGIN = deadline_margin(TTL, TIMEOUT)


class Host:
    """One process: its view of etcd, its lease, its events and metrics."""

    def __init__(self, etcd: FakeEtcd, me: str) -> None:
        self.view = View(etcd)
        self.events: list[Event] = []
        bus = EventBus()
        bus.add_sink(self.events.append)
        self.registry = CollectorRegistry()
        self.lease = LeaderLease(
            self.view,
            me=me,
            ttl=TTL,
            renew_every=RENEW,
            timeout=TIMEOUT,
            clock=etcd.clock,
            bus=bus,
            registry=self.registry,
        )

    def metric(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def etcd(clock: ManualClock) -> FakeEtcd:
    return FakeEtcd(clock)


def test_the_margin_is_a_tenth_of_the_ttl_at_most_the_timeout() -> None:
    assert deadline_margin(5.0, 1.0) == 0.5
    assert deadline_margin(30.0, 1.0) == 1.0  # never more than a call may take
    assert MARGIN == 0.5


async def test_exactly_one_leader_and_the_epoch_is_the_keys_create_revision(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a, b = Host(etcd, "ops-1"), Host(etcd, "ops-2")
    assert a.lease.role is Role.FENCED and not a.lease.may_act()  # before any round
    assert await a.lease.tick() is Role.LEADER
    assert await b.lease.tick() is Role.STANDBY
    epoch = etcd.keys[LEADER_KEY].create_revision
    assert a.lease.may_act() and a.lease.epoch == epoch
    assert not b.lease.may_act() and b.lease.epoch is None and b.lease.remaining() == 0
    view = b.lease.view()
    assert view["me"] == "ops-2" and view["role"] == "standby"
    assert view["leader"] == "ops-1" and view["epoch"] == epoch
    assert [m["name"] for m in view["members"]] == ["ops-2", "ops-1"]
    assert all(m["alive"] for m in view["members"])
    assert a.metric("nodevigil_cluster_leader") == 1 and b.metric("nodevigil_cluster_leader") == 0
    assert b.metric("nodevigil_cluster_epoch") == epoch
    assert a.kinds() == ["cluster.leader"] and b.kinds() == ["cluster.standby"]
    leader = a.events[0]
    assert isinstance(leader, ClusterLeader) and leader.epoch == epoch
    standby = b.events[0]
    assert isinstance(standby, ClusterStandby) and standby.leader == "ops-1"
    # Renewals that change nothing say nothing.
    for _ in range(3):
        clock.advance(RENEW)
        await a.lease.tick()
        await b.lease.tick()
    assert a.kinds() == ["cluster.leader"] and b.kinds() == ["cluster.standby"]


async def test_the_deadline_counts_from_when_the_renewal_was_sent(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a = Host(etcd, "ops-1")
    t0 = clock.monotonic()
    await a.lease.tick()
    assert a.lease.deadline == t0 + TTL - MARGIN
    assert a.lease.remaining() == pytest.approx(TTL - MARGIN)
    clock.advance(RENEW)
    await a.lease.tick()
    assert a.lease.deadline == t0 + RENEW + TTL - MARGIN


async def test_a_failed_renewal_stops_acting_at_the_deadline_not_before_not_after(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a, b = Host(etcd, "ops-1"), Host(etcd, "ops-2")
    t0 = clock.monotonic()
    await a.lease.tick()
    await b.lease.tick()
    a.view.reachable = False  # ops-1 is cut off from etcd; ops-2 is not
    deadline = t0 + TTL - MARGIN
    while clock.monotonic() + RENEW < deadline:
        clock.advance(RENEW)
        await a.lease.tick()
        await b.lease.tick()
        assert a.lease.may_act(), "still before the deadline: the lease cannot have expired"
        assert a.lease.role is Role.LEADER and "etcd unreachable" in a.lease.reason()
    clock.advance(deadline - clock.monotonic() - 1e-6)
    assert a.lease.may_act()
    clock.advance(1e-6)
    assert clock.monotonic() == deadline
    assert not a.lease.may_act() and a.lease.remaining() == 0 and a.lease.epoch is None
    assert a.lease.role is Role.FENCED
    await a.lease.tick()  # the loop wakes at the deadline to say so (``_pause``)
    assert a.kinds() == ["cluster.leader", "cluster.fenced"]
    # Nobody else could have taken over yet: the lease lives until t0 + TTL in etcd.
    await b.lease.tick()
    assert b.lease.role is Role.STANDBY and etcd.keys[LEADER_KEY].value == b"ops-1"
    clock.advance(t0 + TTL - clock.monotonic())
    assert await b.lease.tick() is Role.LEADER
    assert not a.lease.may_act()
    # ops-1 comes back: its lease is gone, so it finds ops-2 leading and stands by.
    a.view.reachable = True
    assert await a.lease.tick() is Role.STANDBY
    assert a.lease.view()["leader"] == "ops-2"
    assert a.kinds() == ["cluster.leader", "cluster.fenced", "cluster.standby"]


async def test_a_lost_leader_key_means_stepping_down_at_once(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a, b = Host(etcd, "ops-1"), Host(etcd, "ops-2")
    await a.lease.tick()
    first = a.lease.epoch
    etcd.delete(LEADER_KEY)  # an operator, or a bug: the key is gone under the leader
    await b.lease.tick()  # ops-2 takes it before ops-1 renews
    assert b.lease.may_act()
    clock.advance(RENEW)
    assert await a.lease.tick() is Role.STANDBY
    assert not a.lease.may_act()
    assert b.lease.epoch is not None and first is not None and b.lease.epoch > first


async def test_a_deleted_key_is_not_retaken_in_the_same_round(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a = Host(etcd, "ops-1")
    await a.lease.tick()
    first = a.lease.epoch
    etcd.delete(LEADER_KEY)
    assert await a.lease.tick() is Role.STANDBY
    assert not a.lease.may_act()
    clock.advance(RENEW)
    assert await a.lease.tick() is Role.LEADER  # alone: it campaigns again, in a new epoch
    assert a.lease.epoch is not None and first is not None and a.lease.epoch > first


async def test_an_expired_lease_means_stepping_down(etcd: FakeEtcd, clock: ManualClock) -> None:
    a = Host(etcd, "ops-1")
    await a.lease.tick()
    first = a.lease.epoch
    clock.advance(TTL + 1)  # paused past its TTL: etcd let the lease go
    assert not a.lease.may_act()
    etcd.expire()
    await a.lease.tick()  # keepalive finds no lease: a new lease, a new campaign, a new epoch
    assert a.lease.may_act() and a.lease.epoch != first


async def test_etcd_away_from_the_start_means_fenced_and_never_acting(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a = Host(etcd, "ops-1")
    a.view.reachable = False
    for _ in range(5):
        assert await a.lease.tick() is Role.FENCED
        assert not a.lease.may_act() and a.lease.epoch is None
        clock.advance(RENEW)
    assert a.kinds() == ["cluster.fenced"]
    fenced = a.events[0]
    assert isinstance(fenced, ClusterFenced) and "etcd unreachable" in fenced.reason
    assert a.lease.view()["role"] == "fenced"
    a.view.reachable = True  # recovered by itself
    assert await a.lease.tick() is Role.LEADER
    assert a.kinds() == ["cluster.fenced", "cluster.leader"]


async def test_quorum_lost_for_everyone_then_back(etcd: FakeEtcd, clock: ManualClock) -> None:
    hosts = [Host(etcd, f"ops-{i}") for i in (1, 2, 3)]
    for h in hosts:
        await h.lease.tick()
    for h in hosts:
        h.view.reachable = False
    for _ in range(6):
        clock.advance(RENEW)
        for h in hosts:
            await h.lease.tick()
    assert [h.lease.may_act() for h in hosts] == [False, False, False]
    assert {h.lease.role for h in hosts} == {Role.FENCED}
    for h in hosts:
        h.view.reachable = True
    for h in hosts:
        await h.lease.tick()
    assert sum(h.lease.may_act() for h in hosts) == 1


async def test_step_down_revokes_so_another_takes_over_at_once(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a, b = Host(etcd, "ops-1"), Host(etcd, "ops-2")
    await a.lease.tick()
    await b.lease.tick()
    assert await a.lease.step_down() is True
    assert not a.lease.may_act() and LEADER_KEY not in etcd.keys
    assert await b.lease.tick() is Role.LEADER  # no TTL to wait for
    assert await a.lease.tick() is Role.STANDBY
    assert await b.lease.step_down() is True
    clock.advance(TTL)  # ops-1 stepped down itself one TTL ago: it campaigns again
    assert await a.lease.tick() is Role.LEADER
    assert await a.lease.step_down() is True and await a.lease.step_down() is False


async def test_a_lone_host_that_stepped_down_leads_again_after_one_ttl(
    etcd: FakeEtcd, clock: ManualClock
) -> None:
    a = Host(etcd, "ops-1")
    await a.lease.tick()
    await a.lease.step_down()
    assert await a.lease.tick() is Role.STANDBY
    clock.advance(TTL)
    assert await a.lease.tick() is Role.LEADER


async def test_members_that_left_are_shown_not_alive(etcd: FakeEtcd, clock: ManualClock) -> None:
    a, b = Host(etcd, "ops-1"), Host(etcd, "ops-2")
    await a.lease.tick()
    await b.lease.tick()
    await a.lease.tick()
    await b.lease.step_down(hold_off=math.inf)  # a standby leaving: its members key goes
    b.view.reachable = False
    clock.advance(RENEW)
    await a.lease.tick()
    members = {m["name"]: m for m in a.lease.view()["members"]}
    assert members["ops-1"]["alive"] and not members["ops-2"]["alive"]
    assert members["ops-2"]["last_seen"] == pytest.approx(clock.wall() - RENEW)
