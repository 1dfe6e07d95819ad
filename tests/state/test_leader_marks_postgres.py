"""Leader marks in a real PostgreSQL: two in-process leaders on one database book the time
without a leader as ``unknown`` in the shared ledger (no etcd: the takeover hook is driven
directly, each host's authority set by the test; their clocks are one manual clock)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from nodevigil.app.leader_marks import LeaderMarker
from nodevigil.app.sla_bridge import SlaBridge, utc
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Database
from nodevigil.core.events import EventBus
from nodevigil.core.leader_marks import LeaderMark
from nodevigil.state.backend import PostgresBackend
from nodevigil.state.postgres.leader_marks import COMPONENT, PostgresLeaderMarks
from sla.ledger import Ledger
from sla.model import Cause
from tests.postgres_server import PostgresAddress

SERVICES = ["web", "api"]


@dataclass
class Lease:
    """An Authority whose epoch and acting the test sets."""

    held: int
    acting: bool = False

    def may_act(self) -> bool:
        return self.acting

    @property
    def epoch(self) -> int | None:
        return self.held if self.acting else None

    def remaining(self) -> float:
        return math.inf if self.acting else 0.0


@dataclass
class Leader:
    """One host: its backend on the shared database, its ledger, marks and bridge."""

    lease: Lease
    backend: PostgresBackend
    ledger: Ledger
    marks: PostgresLeaderMarks
    marker: LeaderMarker


@dataclass
class Cluster:
    clock: ManualClock
    database: Database
    host: Callable[[str, int], Awaitable[Leader]]

    def sql(self, query: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.database.url, password=_password(self.database)) as conn:
            return list(conn.execute(query.encode()).fetchall())


def _password(database: Database) -> str:
    assert database.password_file is not None
    return database.password_file.read_text().strip()


@pytest.fixture
async def cluster(postgres: PostgresAddress) -> AsyncIterator[Cluster]:
    name = postgres.create_database()
    database = Database(url=postgres.url(name), password_file=postgres.password_file)
    clock = ManualClock()
    made: list[Leader] = []

    async def host(me: str, epoch: int) -> Leader:
        backend = PostgresBackend(database, None, owner=me)
        await backend.open()
        lease = Lease(epoch)
        backend.fence(lease)  # the ledger's writes carry the epoch, as in the daemon
        ledger = await Ledger.open(backend.ledger_store(), now=lambda: utc(clock.wall()))
        bridge = SlaBridge(
            ledger,
            bus=EventBus(),
            clock=clock,
            services=lambda: list(SERVICES),
            unavailable=lambda: None,
            state_dir=postgres.password_file.parent,
            registry=CollectorRegistry(),
            transient=backend.transient_errors,
            authority=lease,
            in_cluster=True,
        )
        marks = PostgresLeaderMarks(backend.pool)
        marker = LeaderMarker(
            marks,
            authority=lease,
            me=me,
            clock=clock,
            takeover=bridge.record_takeover,
            transient=backend.transient_errors,
        )
        leader = Leader(lease, backend, ledger, marks, marker)
        made.append(leader)
        return leader

    try:
        yield Cluster(clock, database, host)
    finally:
        for leader in made:
            await leader.ledger.close()
            await leader.backend.close()
        postgres.drop_database(name)


async def unknown(ledger: Ledger) -> list[tuple[str, datetime, datetime | None]]:
    return [(e.service, e.start, e.end) for e in await ledger.ledger() if e.cause is Cause.UNKNOWN]


async def test_an_unclean_loss_of_the_leader_books_the_gap_once(cluster: Cluster) -> None:
    a = await cluster.host("ops-1", 7)
    b = await cluster.host("ops-2", 9)
    a.lease.acting = True
    assert await a.marker.beat() == "leader at epoch 7: marked"  # the first leader: no gap
    cluster.clock.advance(1.0)
    await a.marker.beat()
    last = cluster.clock.wall()
    a.lease.acting = False  # SIGKILL: no clean mark, the lease runs out
    cluster.clock.advance(3.0)
    b.lease.acting = True
    assert await b.marker.beat() == "leader at epoch 9: marked"
    expected = [(s, utc(last), utc(last + 3.0)) for s in SERVICES]
    assert sorted(await unknown(b.ledger)) == sorted(expected)
    assert sorted(await unknown(a.ledger)) == sorted(expected)  # one ledger, shared
    cluster.clock.advance(1.0)
    await b.marker.beat()  # booked once
    assert len(await unknown(b.ledger)) == len(SERVICES)
    rows = cluster.sql("SELECT epoch, holder, clean FROM nodevigil_leader_marks ORDER BY epoch")
    assert rows == [(7, "ops-1", False), (9, "ops-2", False)]
    assert cluster.sql(f"SELECT version FROM nodevigil_schema WHERE component = '{COMPONENT}'") == [
        (1,)
    ]


async def test_a_clean_hand_over_books_nothing(cluster: Cluster) -> None:
    a = await cluster.host("ops-1", 7)
    b = await cluster.host("ops-2", 9)
    a.lease.acting = True
    await a.marker.beat()
    cluster.clock.advance(0.7)
    a.lease.acting = False  # a planned step-down: the lease's hook runs before the revoke
    await a.marker.stepping_down(7)
    # A renewal still in flight lands after the clean mark: it does not undo it.
    await a.marks.write(LeaderMark("ops-1", 7, cluster.clock.wall() + 0.1, clean=False))
    cluster.clock.advance(0.9)
    b.lease.acting = True
    await b.marker.beat()
    assert await unknown(b.ledger) == []
    assert cluster.sql("SELECT clean FROM nodevigil_leader_marks WHERE epoch = 7") == [(True,)]


async def test_an_outage_open_across_the_change_stays_one_interval(cluster: Cluster) -> None:
    a = await cluster.host("ops-1", 7)
    b = await cluster.host("ops-2", 9)
    a.lease.acting = True
    began = cluster.clock.wall()
    opened = await a.ledger.open_interval("web", utc(began))
    await a.marker.beat()
    cluster.clock.advance(5.0)
    await a.marker.beat()
    died = cluster.clock.wall()
    a.lease.acting = False
    cluster.clock.advance(3.0)
    b.lease.acting = True
    await b.marker.beat()
    assert await b.ledger.open_interval("web", utc(began)) == opened  # still the one
    web = await b.ledger.ledger("web")
    assert [(e.id, e.end) for e in web if e.cause is Cause.PROVIDER] == [(opened, None)]
    assert [(e.start, e.end) for e in web if e.cause is Cause.UNKNOWN] == [
        (utc(died), utc(died + 3.0))
    ]
