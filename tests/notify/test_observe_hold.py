"""Observe mode in the dispatcher: a customer notice queued before the switch is held, unsent,
while operator alerts go; once acting again it is sent."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from failover.incidents.model import Outgoing
from failover.notify import outbox
from failover.notify.base import Message
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import Dispatcher
from nodevigil.core.clock import SystemClock
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.incidents import SqliteIncidentStore
from tests.failover.daemons import poll_until
from tests.incidents.test_incidents import Recorder, fast, poll_state, state_of


async def test_customer_notices_wait_while_observing_and_alerts_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "HELD_RECHECK", 0.2)  # a held notice is looked at again soon
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    hook = Recorder("hook", [])
    observing = True
    dispatcher = Dispatcher(
        store,
        {"hook": hook},
        settings=fast,
        clock=SystemClock(),
        metrics=NotifyMetrics(CollectorRegistry()),
        bus=EventBus(),
        vantage=lambda: "test",
        rng=random.Random(7),
        hold_customers=lambda: observing,
    )
    now = SystemClock().wall()
    notice = Message(id="inc1.s0", notifier="hook", kind="incident.opened", subject="web",
                     created_at=now)  # fmt: skip
    alert = Message(id="ev1", notifier="hook", kind="service.unavailable", subject="web",
                    created_at=now)  # fmt: skip
    await store.enqueue(
        [Outgoing(notice, now, incident=1, customer="acme", step="s0"), Outgoing(alert, now)]
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        await poll_until(poll_state(store, "ev1", "delivered"), within=10, what="the alert")

        async def held() -> bool:
            rows = {r.message.id: r for r in await store.notifications()}
            return rows["inc1.s0"].last_error.startswith("held: failover.mode is observe")

        await poll_until(held, within=10, what="the notice held")
        assert [m.id for m in hook.sent] == ["ev1"]
        assert await state_of(store, "inc1.s0") == "pending"
        (row,) = [r for r in await store.notifications() if r.message.id == "inc1.s0"]
        assert row.attempts == 0  # held, not tried

        observing = False
        await poll_until(poll_state(store, "inc1.s0", "delivered"), within=10, what="the notice")
        assert [m.id for m in hook.sent] == ["ev1", "inc1.s0"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()
