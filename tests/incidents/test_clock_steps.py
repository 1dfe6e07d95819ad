"""The outbox and the incidents under a wall clock that steps (a fake Clock, stepped).

Due times and ages are compared on a timeline carried by the monotonic clock, so a step either
way can neither delay nor advance a notification, reorder retries, dead-letter a fresh one as
too old, nor let a resolution cancel the first notice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from failover.incidents.model import Incident, Outgoing
from failover.notify.base import Delivery, Message
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import Dispatcher
from nodevigil.core.clock import ManualClock
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.incidents import SqliteIncidentStore
from tests.incidents.test_incidents import Recorder, fast, state_of

HOUR = 3600.0


def outgoing(
    name: str, at: float, step: str | None = None, incident: int | None = None
) -> Outgoing:
    message = Message(id=name, notifier="hook", kind="node.down", subject="a", created_at=at)
    return Outgoing(message, at, incident=incident, step=step)


async def one_pass(dispatcher: Dispatcher) -> None:
    """One look at the outbox, and every delivery it started, to the end."""
    await dispatcher._pass()
    await asyncio.gather(*dispatcher._tasks)


async def test_stepped_wall_clock_neither_delays_advances_nor_reorders_notifications(
    tmp_path: Path,
) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    clock = ManualClock()
    hook = Recorder("hook")
    dispatcher = Dispatcher(
        store,
        {"hook": hook},
        settings=lambda: fast(max_age="1h"),
        clock=clock,
        metrics=NotifyMetrics(CollectorRegistry()),
        bus=EventBus(),
        vantage=lambda: "test",
    )
    try:
        t0 = clock.wall()
        await store.enqueue(
            [outgoing("first", t0), outgoing("second", t0 + 30), outgoing("third", t0 + 60)]
        )
        await one_pass(dispatcher)
        assert [m.id for m in hook.sent] == ["first"]

        clock.step_wall(-HOUR)  # back an hour: what falls due must still go on time
        clock.advance(30)
        await one_pass(dispatcher)
        assert [m.id for m in hook.sent] == ["first", "second"]

        clock.step_wall(+2 * HOUR)  # an hour ahead: nothing goes early
        await one_pass(dispatcher)
        assert [m.id for m in hook.sent] == ["first", "second"]
        clock.advance(30)
        await one_pass(dispatcher)
        assert [m.id for m in hook.sent] == ["first", "second", "third"]

        # A fresh notice whose first try fails is retried, not taken for an hour old.
        hook.script.append(Delivery.retry("busy"))
        fresh = t0 + 60
        await store.enqueue([outgoing("fresh", fresh)])
        await one_pass(dispatcher)
        assert await state_of(store, "fresh") == "pending"
        clock.advance(1)
        await one_pass(dispatcher)
        assert await state_of(store, "fresh") == "delivered"
        assert [m.id for m in hook.sent][-2:] == ["fresh", "fresh"]
    finally:
        await store.close()


async def test_a_resolution_stamped_before_the_opening_keeps_the_first_notice(
    tmp_path: Path,
) -> None:
    """A caller whose clock stepped back resolves "before" the incident opened: only plan steps
    due after the opening are cancelled, never the first notice."""
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    try:
        t0 = 1_767_225_600.0

        def steps(incident: Incident) -> list[Outgoing]:
            return [
                outgoing("s0", t0, step="s0", incident=incident.id),
                outgoing("s1", t0 + HOUR, step="s1", incident=incident.id),
            ]

        incident = await store.open_incident(
            "web", started_at=t0, at=t0, maintenance=False, cause="provider", message="down",
            outgoing=steps,
        )  # fmt: skip
        _, cancelled = await store.resolve_incident(
            incident.id, resolved_at=t0 + 10, at=t0 - HOUR + 10, message="up",
            author="nodevigil", outgoing=lambda _: [],
        )  # fmt: skip
        assert cancelled == 1
        assert await state_of(store, "s0") == "pending"
        assert await state_of(store, "s1") == "cancelled"
    finally:
        await store.close()


async def test_a_receivers_retry_after_cannot_push_a_notice_past_backoff_max(
    tmp_path: Path,
) -> None:
    """A receiver answering ``Retry-After: 30 days`` is a receiver, not an operator: it is
    honoured up to ``backoff_max``, so the notice is neither dead-lettered at once (its age plus
    the delay would pass ``max_age``) nor parked for a month."""
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    clock = ManualClock()
    hook = Recorder("hook", script=[Delivery.retry("busy", after=30 * 86400.0)])
    dispatcher = Dispatcher(
        store,
        {"hook": hook},
        settings=lambda: fast(backoff_max="2s", max_age="1h"),
        clock=clock,
        metrics=NotifyMetrics(CollectorRegistry()),
        bus=EventBus(),
        vantage=lambda: "test",
    )
    try:
        await store.enqueue([outgoing("notice", clock.wall())])
        await one_pass(dispatcher)
        assert await state_of(store, "notice") == "pending"  # before: dead at the first answer
        clock.advance(2)
        await one_pass(dispatcher)
        assert await state_of(store, "notice") == "delivered"
        assert [m.id for m in hook.sent] == ["notice", "notice"]
    finally:
        await store.close()
