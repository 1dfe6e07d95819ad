"""Outbox claims carry an owner and an expiry: several hosts share one outbox, never sending
the same row twice, and a crash mid-delivery leads to exactly one re-delivery, same id.

Each test runs on SQLite (two stores on one file, as two processes would be) and on
PostgreSQL (two stores on one database, as two hosts are).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from failover.incidents.ports import CLAIM_LEASE, IncidentStore
from failover.notify.base import Delivery, Message
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import SEND_LIMIT, Dispatcher
from nodevigil.core.clock import ManualClock, SystemClock
from nodevigil.core.config.schema import Notifications
from nodevigil.core.events import EventBus
from nodevigil.state.backend import Backend
from tests.failover.daemons import poll_until
from tests.state.incident_helpers import T0, outgoing, store_on


@asynccontextmanager
async def stores(backend: Backend, *owners: str) -> AsyncIterator[list[IncidentStore]]:
    """One opened store per owner, all on the backend's state."""
    made = [store_on(backend, owner) for owner in owners]
    try:
        for store in made:
            await store.open()
        yield made
    finally:
        for store in made:
            await store.close()


def ids(rows: list[object]) -> list[str]:
    """Message ids of outbox rows."""
    return sorted(r.message.id for r in rows)  # type: ignore[attr-defined]


async def test_the_lease_outlives_one_delivery() -> None:
    assert CLAIM_LEASE >= 2 * SEND_LIMIT


async def test_a_claimed_row_is_handed_to_no_one_else_until_its_claim_expires(
    backend: Backend,
) -> None:
    async with stores(backend, "a", "b") as (a, b):
        await a.enqueue([outgoing("m1", T0), outgoing("m2", T0 + 5)])
        assert ids(await a.claim_due(T0 + 10, limit=1, lease=60)) == ["m1"]
        assert ids(await a.claim_due(T0 + 10, lease=60)) == ["m2"]  # not m1 again, even to a
        assert await b.claim_due(T0 + 69) == [] and await b.due(T0 + 69) == []
        # a's own claims are in flight in a; b waits for the first to expire.
        assert await a.next_due_at() is None
        assert await b.next_due_at() == T0 + 70
        assert ids(await b.due(T0 + 70)) == ["m1", "m2"]


async def test_two_owners_claiming_at_once_never_get_the_same_row(backend: Backend) -> None:
    async with stores(backend, "a", "b", "c") as hosts:
        await hosts[0].enqueue([outgoing(f"m{n:03}", T0 + n / 1000) for n in range(300)])
        taken: dict[str, list[str]] = {}

        async def claim(store: IncidentStore, owner: str) -> None:
            while rows := await store.claim_due(T0 + 1, limit=7):
                taken.setdefault(owner, []).extend(r.message.id for r in rows)

        await asyncio.gather(*(claim(s, o) for s, o in zip(hosts, "abc", strict=True)))
        every = [m for got in taken.values() for m in got]
        assert len(every) == len(set(every)) == 300, {o: len(got) for o, got in taken.items()}


async def test_an_expired_claim_of_a_dead_owner_is_taken_over_once(backend: Backend) -> None:
    async with stores(backend, "dead", "b", "c") as (dead, b, c):
        await dead.enqueue([outgoing("m1", T0)])
        [claimed] = await dead.claim_due(T0)  # then "dead" dies mid-delivery
        assert await b.claim_due(T0 + CLAIM_LEASE - 1) == []
        [taken] = await b.claim_due(T0 + CLAIM_LEASE)
        assert taken.message == claimed.message and taken.attempts == 0
        assert await c.claim_due(T0 + CLAIM_LEASE + 1) == []  # b holds it now
        # The dead owner's late words change nothing: the row is b's.
        assert not await dead.extend_claim("m1", T0 + CLAIM_LEASE + 2)
        await dead.mark_retry("m1", 1, T0 + CLAIM_LEASE + 2, "late")
        await dead.mark_dead("m1", 1, "late")
        await dead.release_claims("m1")
        await dead.release_claims()
        [row] = await b.notifications()
        assert (row.state, row.attempts, row.last_error) == ("pending", 0, "")
        assert await c.claim_due(T0 + CLAIM_LEASE + 3) == []
        assert await b.extend_claim("m1", T0 + CLAIM_LEASE + 3)
        await b.mark_delivered("m1", T0 + CLAIM_LEASE + 4, 1)
        assert await c.claim_due(T0 + 10 * CLAIM_LEASE) == []
        assert not await b.extend_claim("m1", T0 + CLAIM_LEASE + 5)  # delivered: nothing to hold


async def test_a_store_frees_only_its_own_claims_at_start(backend: Backend) -> None:
    async with stores(backend, "a", "b") as (a, b):
        await a.enqueue([outgoing("mine", T0), outgoing("theirs", T0 + 1)])
        await a.claim_due(T0, limit=1)
        await b.claim_due(T0 + 1)
    # "a" restarts (a new process, the same host): its crash's claims are due again at once.
    async with stores(backend, "a") as (restarted,):
        await restarted.release_claims()
        assert await restarted.next_due_at() == T0  # mine, free again
        [again] = await restarted.claim_due(T0 + 2)
        assert again.message.id == "mine"
        assert await restarted.next_due_at() == T0 + 1 + CLAIM_LEASE  # theirs, when it expires
        await restarted.release_claims("mine")
        assert ids(await restarted.due(T0 + 2)) == ["mine"]


# --- the dispatcher on a shared outbox ------------------------------------------------------


@dataclass
class Receiver:
    """Every message any host sent, and a gate that holds sends while closed."""

    sent: list[tuple[str, Message]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def transport(self, host: str) -> Hook:
        return Hook(self, host)


@dataclass
class Hook:
    """One host's transport to the receiver."""

    receiver: Receiver
    host: str

    async def send(self, message: Message) -> Delivery:
        self.receiver.sent.append((self.host, message))
        await self.receiver.gate.wait()
        return Delivery.ok()

    async def close(self) -> None:
        return None


def dispatcher(store: IncidentStore, hook: Hook, clock: object | None = None) -> Dispatcher:
    settings = Notifications.model_validate({"backoff_initial": "10ms", "backoff_max": "40ms"})
    return Dispatcher(
        store,
        {"hook": hook},
        settings=lambda: settings,
        clock=clock or SystemClock(),  # type: ignore[arg-type]
        metrics=NotifyMetrics(CollectorRegistry()),
        bus=EventBus(),
        vantage=lambda: hook.host,
        rng=random.Random(7),
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def delivered(store: IncidentStore, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await store.notifications(state="delivered", limit=1000)) == count

    return check


async def test_two_dispatchers_on_one_outbox_send_each_notification_once(
    backend: Backend,
) -> None:
    receiver = Receiver()
    receiver.gate.set()
    now = SystemClock().wall()
    async with stores(backend, "a", "b") as (a, b):
        tasks = [
            asyncio.create_task(dispatcher(s, receiver.transport(h)).run())
            for s, h in ((a, "a"), (b, "b"))
        ]
        try:
            await a.enqueue([outgoing(f"m{n:02}", now) for n in range(60)])
            await poll_until(delivered(a, 60), within=20, what="all 60 delivered")
        finally:
            for task in tasks:
                await stop(task)
    sent = [m.id for _, m in receiver.sent]
    assert len(sent) == len(set(sent)) == 60


async def test_a_crash_mid_delivery_leads_to_one_redelivery_with_the_same_id(
    backend: Backend,
) -> None:
    receiver = Receiver()  # the gate stays closed: the first host "dies" mid-send
    now = SystemClock().wall()
    async with stores(backend, "a", "b") as (a, b):
        crashed = asyncio.create_task(dispatcher(a, receiver.transport("a")).run())
        await a.enqueue([outgoing("m1", now)])
        await poll_until(lambda: asyncio.sleep(0, bool(receiver.sent)), within=10, what="sent")
        await stop(crashed)  # nothing recorded: the row stays claimed by "a"
        receiver.gate.set()
        # Another host does not take it before the claim expires ...
        other = asyncio.create_task(dispatcher(b, receiver.transport("b")).run())
        await asyncio.sleep(0.3)
        await stop(other)
        assert [h for h, _ in receiver.sent] == ["a"]
    # ... and "a" restarting frees its own claim at once: delivered once more, same id.
    async with stores(backend, "a") as (restarted,):
        task = asyncio.create_task(dispatcher(restarted, receiver.transport("a")).run())
        try:
            await poll_until(delivered(restarted, 1), within=10, what="redelivered")
            await asyncio.sleep(0.2)  # nothing more is sent
        finally:
            await stop(task)
    assert [(h, m.id) for h, m in receiver.sent] == [("a", "m1"), ("a", "m1")]
    assert receiver.sent[0][1] == receiver.sent[1][1]


async def test_a_dead_hosts_claim_is_delivered_by_another_after_the_lease(
    backend: Backend,
) -> None:
    receiver = Receiver()
    clock = ManualClock()
    async with stores(backend, "dead", "b") as (dead, b):
        await dead.enqueue([outgoing("m1", clock.wall())])
        await dead.claim_due(clock.wall())  # and never comes back
        receiver.gate.set()
        clock.advance(CLAIM_LEASE)
        task = asyncio.create_task(dispatcher(b, receiver.transport("b"), clock).run())
        try:
            await poll_until(delivered(b, 1), within=10, what="taken over")
        finally:
            await stop(task)
    assert [(h, m.id) for h, m in receiver.sent] == [("b", "m1")]


async def test_a_new_leader_takes_over_the_claims_of_the_old_one_at_once(
    backend: Backend,
) -> None:
    """A leader change does not wait for the old leader's claims to expire: the new leader
    frees them (its fencing epoch has already shut the old one out) and sends what was not
    marked delivered, with the same id. Delivered rows and its own claims are left alone."""
    async with stores(backend, "ops-1", "ops-2") as (old, new):
        await old.enqueue([outgoing("sent", T0), outgoing("lost", T0 + 1), outgoing("b", T0 + 2)])
        claimed = await old.claim_due(T0 + 10, lease=CLAIM_LEASE)
        assert ids(claimed) == ["b", "lost", "sent"]
        await old.mark_delivered("sent", T0 + 11, 1)  # the old leader got this one out
        assert await new.claim_due(T0 + 12) == []  # held by ops-1 for the whole lease
        assert await new.take_over_claims() == 2
        rows = await new.claim_due(T0 + 12)
        assert ids(rows) == ["b", "lost"]
        assert await new.take_over_claims() == 0  # nothing of another owner left
        assert await old.extend_claim("lost", T0 + 13) is False  # the old one cannot hold it
