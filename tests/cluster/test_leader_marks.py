"""Unknown time in a cluster is time without a leader: the leader's marks and the takeover.

A fake marks store (the port's contract, in memory), a manual clock shared by the "hosts" (their
clocks in sync), the real leader lease on a fake etcd, and a real ledger on SQLite. The same
against a real PostgreSQL: tests/state/test_leader_marks_postgres.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nodevigil.app.leader_marks import LeaderMarker
from nodevigil.app.sla_bridge import CLEAN_HANDOVER, SlaBridge, leaderless, utc
from nodevigil.core.clock import ManualClock
from nodevigil.core.errors import StateError
from nodevigil.core.events import Event, EventBus
from nodevigil.core.leader_marks import LeaderMark
from nodevigil.state.backend import SqliteBackend
from sla.events import SlaUnknown
from sla.ledger import Ledger
from sla.model import Cause
from tests.cluster.fake_etcd import FakeEtcd
from tests.cluster.test_leader_lease import TTL, Host

SERVICES = ["web", "api"]


@dataclass
class FakeMarks:
    """``LeaderMarks`` in memory; ``failing`` makes the next reads raise (PostgreSQL away)."""

    rows: dict[int, LeaderMark] = field(default_factory=dict)
    failing: int = 0
    writes: list[LeaderMark] = field(default_factory=list)

    async def write(self, mark: LeaderMark) -> None:
        self.writes.append(mark)
        old = self.rows.get(mark.epoch)
        if old is None or not old.clean:  # a clean mark is final
            self.rows[mark.epoch] = mark

    async def latest(self, *, before: int) -> LeaderMark | None:
        if self.failing:
            self.failing -= 1
            raise StateError("leader marks: cannot read: the database is away")
        older = [e for e in self.rows if e < before]
        return self.rows[max(older)] if older else None

    async def prune(self, *, below: int) -> None:
        self.rows = {e: m for e, m in self.rows.items() if e >= below}


@dataclass
class Lease:
    """An Authority whose epoch and acting the test sets."""

    epoch_held: int | None
    acting: bool = True

    def may_act(self) -> bool:
        return self.acting

    @property
    def epoch(self) -> int | None:
        return self.epoch_held if self.acting else None

    def remaining(self) -> float:
        return math.inf if self.acting else 0.0


@dataclass
class Shared:
    """What the hosts share: the clock, the marks, the ledger (one database)."""

    clock: ManualClock
    marks: FakeMarks
    ledger: Ledger
    tmp_path: Path
    events: list[Event] = field(default_factory=list)

    def host(self, me: str, authority: Lease | object) -> tuple[LeaderMarker, SlaBridge]:
        bus = EventBus()
        bus.add_sink(self.events.append)
        bridge = SlaBridge(
            self.ledger,
            bus=bus,
            clock=self.clock,
            services=lambda: list(SERVICES),
            unavailable=lambda: None,
            state_dir=self.tmp_path / me,
            registry=CollectorRegistry(),
            authority=authority,  # type: ignore[arg-type]
            in_cluster=True,
        )
        marker = LeaderMarker(
            self.marks,
            authority=authority,  # type: ignore[arg-type]
            me=me,
            clock=self.clock,
            takeover=bridge.record_takeover,
        )
        return marker, bridge

    async def unknown(self) -> list[tuple[str, datetime, datetime | None]]:
        return [
            (e.service, e.start, e.end)
            for e in await self.ledger.ledger()
            if e.cause is Cause.UNKNOWN
        ]


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Shared]:
    clock = ManualClock()
    backend = SqliteBackend(tmp_path, owner="test")
    ledger = await Ledger.open(backend.ledger_store(), now=lambda: utc(clock.wall()))
    try:
        yield Shared(clock, FakeMarks(), ledger, tmp_path)
    finally:
        await ledger.close()


def mark(wall: float, *, clean: bool) -> LeaderMark:
    return LeaderMark("ops-1", 7, wall, clean)


def test_the_rule_is_the_single_hosts_applied_to_leadership() -> None:
    assert leaderless(mark(100.0, clean=False), 100.3) == (100.0, 100.3)  # however short
    assert leaderless(mark(100.0, clean=True), 100.0 + CLEAN_HANDOVER) is None
    assert leaderless(mark(100.0, clean=True), 110.0) == (100.0, 110.0)  # nobody took over
    assert leaderless(mark(100.0, clean=False), 99.0) is None  # a clock behind: nothing


async def test_an_unclean_loss_books_the_whole_gap_for_every_service(shared: Shared) -> None:
    a_lease, b_lease = Lease(7), Lease(9, acting=False)
    a, _ = shared.host("ops-1", a_lease)
    b, _ = shared.host("ops-2", b_lease)
    assert await a.beat() == "leader at epoch 7: marked"
    assert await b.beat() == "not leading: no mark"
    shared.clock.advance(1.0)
    await a.beat()
    last = shared.clock.wall()
    a_lease.acting = False  # killed: no clean mark
    shared.clock.advance(3.0)
    b_lease.acting = True
    await b.beat()
    assert await shared.unknown() == [(s, utc(last), utc(last + 3.0)) for s in SERVICES]
    [event] = [e for e in shared.events if isinstance(e, SlaUnknown)]
    assert event.clean is False and event.end - event.start == pytest.approx(3.0)
    # Its own marks follow; the older epoch's but one are pruned, the gap is booked once.
    assert shared.marks.rows[9].who == "ops-2" and not shared.marks.rows[9].clean
    shared.clock.advance(1.0)
    await b.beat()
    assert len(await shared.unknown()) == 2


async def test_a_clean_hand_over_books_nothing_and_a_long_one_does(shared: Shared) -> None:
    a_lease, b_lease, c_lease = Lease(7), Lease(9, acting=False), Lease(12, acting=False)
    a, _ = shared.host("ops-1", a_lease)
    b, _ = shared.host("ops-2", b_lease)
    c, _ = shared.host("ops-3", c_lease)
    await a.beat()
    shared.clock.advance(0.5)
    a_lease.acting = False
    await a.stepping_down(7)  # the lease's hook, before the revoke
    assert shared.marks.rows[7].clean
    shared.clock.advance(0.8)  # the next leader acts within about a second
    b_lease.acting = True
    await b.beat()
    assert await shared.unknown() == []
    # ops-2 stops cleanly and nobody leads for a minute: that minute is unknown.
    await b.beat()
    stopped = shared.clock.wall()
    b_lease.acting = False
    await b.stepping_down(9)
    shared.clock.advance(60.0)
    c_lease.acting = True
    await c.beat()
    assert await shared.unknown() == [(s, utc(stopped), utc(stopped + 60)) for s in SERVICES]


async def test_a_renewal_after_the_clean_mark_does_not_undo_it(shared: Shared) -> None:
    lease = Lease(7)
    a, _ = shared.host("ops-1", lease)
    await a.beat()
    await a.stepping_down(7)
    await shared.marks.write(LeaderMark("ops-1", 7, shared.clock.wall() + 1, clean=False))
    assert shared.marks.rows[7].clean


async def test_a_failed_takeover_is_retried_from_the_same_moment(shared: Shared) -> None:
    await shared.marks.write(LeaderMark("ops-1", 7, shared.clock.wall(), clean=False))
    shared.clock.advance(4.0)
    took_over = shared.clock.wall()
    shared.marks.failing = 1
    b_lease = Lease(9)
    b, _ = shared.host("ops-2", b_lease)
    with pytest.raises(StateError):
        await b.beat()
    assert 9 not in shared.marks.rows  # no mark of its own before the gap is booked
    await b.stepping_down(9)  # a clean mark now would hide the unbooked gap: none
    assert 9 not in shared.marks.rows
    shared.clock.advance(2.0)
    await b.beat()
    assert await shared.unknown() == [(s, utc(took_over - 4), utc(took_over)) for s in SERVICES]


async def test_the_first_leader_ever_books_nothing(shared: Shared) -> None:
    a, _ = shared.host("ops-1", Lease(7))
    assert await a.beat() == "leader at epoch 7: marked"
    assert await shared.unknown() == []


async def test_an_outage_open_across_the_gap_stays_one_interval(shared: Shared) -> None:
    a_lease, b_lease = Lease(7), Lease(9, acting=False)
    a, _ = shared.host("ops-1", a_lease)
    b, b_bridge = shared.host("ops-2", b_lease)
    began = shared.clock.wall()
    opened = await shared.ledger.open_interval("web", utc(began))
    shared.clock.advance(10.0)
    await a.beat()
    died = shared.clock.wall()
    a_lease.acting = False
    shared.clock.advance(3.0)
    b_lease.acting = True
    await b.beat()
    # The new leader's reconcile finds the outage still open: the same interval goes on.
    b_bridge._unavailable = lambda: {"web": began}
    assert await b_bridge.reconcile()
    web = await shared.ledger.ledger("web")
    assert [(e.id, e.cause, e.end) for e in web if e.cause is Cause.PROVIDER] == [
        (opened, Cause.PROVIDER, None)
    ]
    assert [(e.start, e.end) for e in web if e.cause is Cause.UNKNOWN] == [
        (utc(died), utc(died + 3))
    ]


async def test_a_hosts_own_restart_in_a_cluster_books_nothing(shared: Shared) -> None:
    """The alive file of this host says it was down ten minutes; in a cluster that is not the
    service's unknown time (another host led), whether this one is a standby or leads now."""
    state_dir = shared.tmp_path / "ops-2"
    state_dir.mkdir()
    stale = {"wall": shared.clock.wall() - 600, "clean": False, "monotonic": None}
    (state_dir / "alive").write_text(json.dumps(stale))
    for acting in (False, True):
        _, bridge = shared.host("ops-2", Lease(9, acting=acting))
        await bridge.record_downtime()
    assert await shared.unknown() == []


async def test_the_lease_hands_over_with_a_clean_mark_or_none_on_a_crash(
    shared: Shared,
) -> None:
    """The real lease on a fake etcd drives the hook: a planned step-down writes the last,
    clean mark before the revoke; a crash (``halt``, or leaving on an error) writes none."""
    etcd = FakeEtcd(shared.clock)
    one, two = Host(etcd, "ops-1"), Host(etcd, "ops-2")
    a, _ = shared.host("ops-1", one.lease)
    b, _ = shared.host("ops-2", two.lease)
    one.lease.on_step_down(a.stepping_down)
    two.lease.on_step_down(b.stepping_down)
    await one.lease.tick()
    await two.lease.tick()
    await a.beat()
    epoch_a = one.lease.epoch
    assert epoch_a is not None
    shared.clock.advance(0.5)
    assert await one.lease.step_down()
    assert shared.marks.rows[epoch_a].clean
    await two.lease.tick()
    assert two.lease.may_act()
    await b.beat()
    assert await shared.unknown() == []  # a hand-over within a second
    # ops-2 crashes: no clean mark; ops-1 takes over after the lease ran out.
    epoch_b = two.lease.epoch
    assert epoch_b is not None
    crashed = shared.clock.wall()
    await two.lease.halt()
    with pytest.raises(RuntimeError):
        async with two.lease:
            raise RuntimeError("the daemon crashed")
    assert not shared.marks.rows[epoch_b].clean
    shared.clock.advance(TTL)
    await one.lease.tick()
    assert one.lease.may_act()
    await a.beat()
    assert await shared.unknown() == [(s, utc(crashed), utc(crashed + TTL)) for s in SERVICES]
