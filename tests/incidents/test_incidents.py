"""Incidents and the outbox as logic: opening, escalation, resolution, reopening, retries.

The transports here are in-process recorders (pure logic); the real receivers are exercised in
tests/notify/ and, through the whole daemon, in tests/test_incidents_daemon.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from failover.events import NotificationDead
from failover.incidents.manager import IncidentError, IncidentManager
from failover.incidents.messages import Composer
from failover.incidents.model import IncidentState
from failover.notify.base import Delivery, Message
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import Dispatcher, backoff
from monitor.verdicts import NodeDown, NodeUp, Verdict
from nodevigil.core.clock import ManualClock, SystemClock
from nodevigil.core.config import Config, parse_config
from nodevigil.core.config.schema import Notifications
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.incidents import SqliteIncidentStore
from tests.failover.daemons import poll_until

SECRET_FILE = "hook.whsec"


def make_config(**extra: Any) -> Config:
    data: dict[str, Any] = {
        "sites": [{"name": "s1", "address": "192.0.2.1"}, {"name": "s2", "address": "192.0.2.2"}],
        "nodes": [
            {"name": "a", "site": "s1", "probes": [{"type": "tcp", "address": "127.0.0.1:9"}]},
            {"name": "b", "site": "s2", "probes": [{"type": "tcp", "address": "127.0.0.1:9"}]},
        ],
        "services": [{"name": "web", "sites": ["s1"]}, {"name": "api", "sites": ["s2"]}],
        "customers": [
            {"id": "acme", "services": ["web"], "plan": "gold"},
            {"id": "globex", "services": ["api"], "plan": "gold"},
            {"id": "initech", "services": ["web"]},  # no plan: nobody to tell
        ],
        "contingency_plans": {
            "gold": {
                "steps": [
                    {"after": "0s", "notify": ["hook", "mail"]},
                    {"after": "15m", "notify": ["phone"]},
                ],
                "on_resolve": ["hook"],
                "repeat_every": "1h",
            }
        },
        "notifiers": {
            "hook": {"type": "webhook", "url": "http://127.0.0.1:1/", "secret_file": SECRET_FILE},
            "mail": {"type": "email", "to": ["ops@acme.example"], "smtp": {"host": "127.0.0.1"}},
            "phone": {"type": "alertmanager", "url": "http://127.0.0.1:1"},
            "ops": {"type": "alertmanager", "url": "http://127.0.0.1:1"},
        },
        "alerts": [{"events": ["node.down", "notification.*"], "notify": ["ops", "hook"]}],
        "incidents": {"reopen_window": "10m"},
    }
    data.update(extra)
    return parse_config(data)


@dataclass
class Recorder:
    """A transport that answers from a script and records every attempt."""

    name: str
    script: list[Delivery] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)

    async def send(self, message: Message) -> Delivery:
        self.sent.append(message)
        return self.script.pop(0) if self.script else Delivery.ok()

    async def close(self) -> None:
        return None


@dataclass
class World:
    store: SqliteIncidentStore
    manager: IncidentManager
    clock: ManualClock
    bus: EventBus
    down: dict[str, float]
    config: Config


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = SqliteIncidentStore(tmp_path / "incidents.db")
    await store.open()
    clock = ManualClock()
    bus = EventBus()
    down: dict[str, float] = {}
    config = make_config()
    manager = IncidentManager(
        store,
        config=lambda: config,
        bus=bus,
        clock=clock,
        unavailable=lambda: dict(down),
        metrics=NotifyMetrics(CollectorRegistry()),
        outbox_changed=lambda: None,
    )
    await manager.start()
    try:
        yield World(store, manager, clock, bus, down, config)
    finally:
        await store.close()


async def pending(store: SqliteIncidentStore) -> list[tuple[str, str | None, float]]:
    rows = await store.notifications(state="pending")
    return sorted((r.message.notifier, r.step, r.not_before) for r in rows)


async def test_an_outage_tells_only_the_services_customers_at_once_and_escalates_later(
    world: World,
) -> None:
    start = world.clock.wall()
    incident = await world.manager.service_down("web", start)
    assert incident.state is IncidentState.INVESTIGATING and incident.cause == "provider"
    rows = await world.store.notifications(incident=incident.id)
    # acme holds web and has a plan; globex (api) and initech (no plan) are not told.
    assert {r.customer for r in rows} == {"acme"}
    assert await pending(world.store) == [
        ("hook", "s0", start),
        ("mail", "s0", start),
        ("phone", "s1", start + 900),
    ]
    due = await world.store.due(start)
    assert {r.message.notifier for r in due} == {"hook", "mail"}
    opened = next(r.message for r in due if r.message.notifier == "mail")
    assert opened.kind == "incident.opened"
    assert "web is unavailable" in opened.summary
    assert "Customer:  acme" in opened.text and "clause VIII.6" in opened.text
    assert opened.data["incident"]["id"] == incident.id


async def test_the_same_outage_twice_opens_one_incident(world: World) -> None:
    first = await world.manager.service_down("web", world.clock.wall())
    again = await world.manager.service_down("web", world.clock.wall() + 5)
    assert again.id == first.id
    assert len(await world.store.incidents()) == 1


async def test_resolution_cancels_steps_not_yet_due_and_sends_the_notice(world: World) -> None:
    start = world.clock.wall()
    incident = await world.manager.service_down("web", start)
    world.clock.advance(120)
    await world.manager.service_up("web", start + 118)
    resolved = await world.store.get(incident.id)
    assert resolved is not None and resolved.state is IncidentState.RESOLVED
    assert resolved.resolved_at == start + 118
    rows = {r.step: r for r in await world.store.notifications(incident=incident.id)}
    assert rows["s1"].state == "cancelled"
    notice = rows["resolve"]
    assert notice.state == "pending" and notice.message.notifier == "hook"
    assert notice.message.kind == "incident.resolved"
    assert "available again after 1m58s" in notice.message.summary
    assert [u.state for u in await world.store.updates(incident.id)] == [
        IncidentState.INVESTIGATING,
        IncidentState.RESOLVED,
    ]


async def test_a_quick_relapse_reopens_the_same_incident(world: World) -> None:
    start = world.clock.wall()
    first = await world.manager.service_down("web", start)
    await world.manager.service_up("web", start + 60)
    world.clock.advance(300)
    again = await world.manager.service_down("web", world.clock.wall())
    assert again.id == first.id and again.openings == 2 and again.is_open
    kinds = {
        r.message.kind for r in await world.store.notifications(incident=first.id) if r.step == "s0"
    }
    assert kinds == {"incident.opened", "incident.reopened"}
    # Well after the reopen window a new failure is a new incident.
    await world.manager.service_up("web", world.clock.wall() + 1)
    world.clock.advance(3600)
    later = await world.manager.service_down("web", world.clock.wall())
    assert later.id != first.id and later.openings == 1


async def test_long_incidents_repeat_the_last_step(world: World) -> None:
    start = world.clock.wall()
    incident = await world.manager.service_down("web", start)
    world.clock.advance(900 + 3600 * 2 + 10)  # the last step at 15m, then two repeats of 1h
    await world.manager.repeat_due()
    await world.manager.repeat_due()  # idempotent
    repeats = [
        r for r in await world.store.notifications(incident=incident.id) if ".r" in (r.step or "")
    ]
    assert [(r.step, r.message.notifier) for r in repeats] == [("s1.r2", "phone")]


async def test_reconcile_heals_a_missed_event_and_waits_for_the_controller(world: World) -> None:
    manager = IncidentManager(
        world.store,
        config=lambda: world.config,
        bus=world.bus,
        clock=world.clock,
        unavailable=lambda: None,  # the controller has not judged yet
        metrics=NotifyMetrics(CollectorRegistry()),
        outbox_changed=lambda: None,
    )
    await manager.start()
    await manager.reconcile()
    assert await world.store.incidents() == []
    world.down["api"] = world.clock.wall() - 30
    await world.manager.reconcile()
    (incident,) = await world.store.incidents(open_only=True)
    assert incident.service == "api" and incident.started_at == world.down["api"]
    del world.down["api"]
    await world.manager.reconcile()
    assert await world.store.incidents(open_only=True) == []


async def test_operators_post_updates_and_cannot_resolve_a_live_outage(world: World) -> None:
    incident = await world.manager.service_down("web", world.clock.wall())
    world.down["web"] = incident.started_at
    updated = await world.manager.post_update(
        incident.id, message="fibre cut near DC1", state=IncidentState.IDENTIFIED, author="ops"
    )
    assert updated.state is IncidentState.IDENTIFIED
    rows = [r for r in await world.store.notifications(incident=incident.id) if r.step == "update"]
    assert {r.message.notifier for r in rows} == {"hook", "mail"}
    assert rows[0].message.data["message"] == "fibre cut near DC1"
    with pytest.raises(IncidentError) as refused:
        await world.manager.post_update(
            incident.id, message="done", state=IncidentState.RESOLVED, author="ops"
        )
    assert refused.value.status == 409
    with pytest.raises(IncidentError) as missing:
        await world.manager.get(999)
    assert missing.value.status == 404


async def test_cause_is_published_for_the_ledger(world: World) -> None:
    sub = world.bus.subscribe(["incident.cause"])
    incident = await world.manager.service_down("web", world.clock.wall())
    await world.manager.set_cause(
        incident.id, cause="telecom_failure", note="carrier", author="ops"
    )
    (event,) = sub.drain()
    assert event.subject == "web"
    assert event.cause == "telecom_failure" and event.started == incident.started_at
    assert world.manager.cause_for("web", incident.started_at) == "telecom_failure"


async def test_maintenance_windows_mark_incidents_and_are_excluded_once_begun(
    world: World,
) -> None:
    now = world.clock.wall()
    window = await world.manager.declare_window(
        start=now + 60, end=now + 3600, services=["web"], note="kernel upgrade", who="ops"
    )
    assert await world.manager.windows_to_exclude() == []  # not begun: still cancellable
    world.clock.advance(120)
    incident = await world.manager.service_down("web", world.clock.wall())
    assert incident.maintenance and incident.cause == "scheduled_maintenance"
    due = await world.store.due(world.clock.wall())
    assert all("announced maintenance" in r.message.summary for r in due)
    assert "kernel upgrade" in due[0].message.text
    (begun,) = await world.manager.windows_to_exclude()
    await world.manager.window_excluded(begun, 7)
    assert await world.manager.windows_to_exclude() == []
    with pytest.raises(IncidentError):
        await world.manager.cancel_window(window.id, "ops")  # begun: too late to cancel
    with pytest.raises(IncidentError):
        await world.manager.declare_window(
            start=now, end=now + 60, services=["nope"], note="", who="ops"
        )


def test_alert_routes_never_report_a_notifier_through_itself() -> None:
    composer = Composer(make_config())
    at = {"at": 1.0, "vantage": "v"}
    down = NodeDown(subject="a", **at, site="s", old=Verdict.UP, reason="tcp: refused", probe=None)
    assert {o.message.notifier for o in composer.alerts(down)} == {"ops", "hook"}
    (one,) = [o for o in composer.alerts(down) if o.message.notifier == "ops"]
    assert (
        one.message.id == f"ev.{down.id}.ops" and one.message.summary == "node.down a: tcp: refused"
    )
    dead = NotificationDead(
        subject="hook", **at, message_id="m", message_kind="incident.opened", about="web",
        reason="gone",
    )  # fmt: skip
    assert [o.message.notifier for o in composer.alerts(dead)] == ["ops"]
    up = NodeUp(subject="a", **at, site="s", old=Verdict.DOWN, reason="tcp: ok", probe=None)
    assert composer.alerts(up) == []
    # Two dead notifiers must not report each other's dead reports forever.
    echo = NotificationDead(
        subject="ops", **at, message_id="m", message_kind="notification.dead", about="hook",
        reason="gone",
    )  # fmt: skip
    assert composer.alerts(echo) == []


# --- the dispatcher --------------------------------------------------------------------------


def fast(**overrides: Any) -> Notifications:
    settings = {"backoff_initial": "10ms", "backoff_max": "40ms", "max_age": "1h"}
    settings.update(overrides)
    return Notifications.model_validate(settings)


async def run_dispatcher(
    store: SqliteIncidentStore,
    transports: dict[str, Recorder],
    settings: Notifications,
    bus: EventBus | None = None,
) -> tuple[Dispatcher, asyncio.Task[None], NotifyMetrics]:
    metrics = NotifyMetrics(CollectorRegistry())
    dispatcher = Dispatcher(
        store,
        transports,
        settings=lambda: settings,
        clock=SystemClock(),
        metrics=metrics,
        bus=bus or EventBus(),
        vantage=lambda: "test",
        rng=random.Random(7),
    )
    return dispatcher, asyncio.create_task(dispatcher.run()), metrics


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def queue_one(
    store: SqliteIncidentStore, notifier: str = "hook", at: float | None = None
) -> str:
    from failover.incidents.model import Outgoing

    now = SystemClock().wall() if at is None else at
    message = Message(
        id=f"m-{notifier}-{now}", notifier=notifier, kind="node.down", subject="a", created_at=now
    )
    await store.enqueue([Outgoing(message, now)])
    return message.id


async def state_of(store: SqliteIncidentStore, message_id: str) -> str:
    rows = await store.notifications(limit=1000)
    return next(r.state for r in rows if r.message.id == message_id)


def poll_state(store: SqliteIncidentStore, message_id: str, state: str) -> Callable[[], Any]:
    async def check() -> bool:
        return await state_of(store, message_id) == state

    return check


async def test_a_receiver_failing_five_times_gets_the_message_once(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    hook = Recorder("hook", [Delivery.retry("HTTP 503")] * 5)
    _, task, metrics = await run_dispatcher(store, {"hook": hook}, fast())
    try:
        message_id = await queue_one(store)
        await poll_until(poll_state(store, message_id, "delivered"), within=10, what="delivery")
        assert len(hook.sent) == 6 and {m.id for m in hook.sent} == {message_id}
        (row,) = await store.notifications()
        assert row.attempts == 6
        assert metrics.sent.labels("hook")._value.get() == 1
        assert metrics.failed.labels("hook")._value.get() == 5
        assert metrics.retried.labels("hook")._value.get() == 5
    finally:
        await stop(task)
        await store.close()


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    hook = Recorder("hook", [Delivery.retry("HTTP 429", after=120.0)])
    # Honoured up to backoff_max (a longer one is capped there: test_clock_steps.py).
    _, task, _ = await run_dispatcher(store, {"hook": hook}, fast(backoff_max="10m"))
    try:
        message_id = await queue_one(store)
        await poll_until(lambda: _attempted(store, message_id), within=10, what="first attempt")
        (row,) = await store.notifications()
        assert row.state == "pending" and row.next_at - SystemClock().wall() > 100
    finally:
        await stop(task)
        await store.close()


async def _attempted(store: SqliteIncidentStore, message_id: str) -> bool:
    rows = await store.notifications()
    return any(r.message.id == message_id and r.attempts >= 1 for r in rows)


async def test_gone_disables_the_notifier_until_enabled_and_survives_restart(
    tmp_path: Path,
) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    bus = EventBus()
    events = bus.subscribe(["notification."])
    hook = Recorder("hook", [Delivery("disabled", "HTTP 410 Gone")])
    dispatcher, task, metrics = await run_dispatcher(store, {"hook": hook}, fast(), bus)
    try:
        first = await queue_one(store)
        await poll_until(poll_state(store, first, "dead"), within=10, what="dead letter")
        second = await queue_one(store, at=SystemClock().wall() + 0.001)
        await poll_until(poll_state(store, second, "dead"), within=10, what="second dead letter")
        assert len(hook.sent) == 1  # the disabled notifier is not tried again
        assert metrics.disabled.labels("hook")._value.get() == 1
        assert metrics.dead.labels("hook")._value.get() == 2
        assert [e.kind for e in events.drain()][:2] == [
            "notification.disabled",
            "notification.dead",
        ]
    finally:
        await stop(task)
    # A new dispatcher (a restart) still knows; an operator enables it and requeues.
    dispatcher, task, _ = await run_dispatcher(store, {"hook": hook}, fast())
    try:
        await poll_until(lambda: _known_disabled(dispatcher), within=5, what="disabled state")
        assert await dispatcher.enable("hook")
        assert await store.requeue(second, SystemClock().wall())
        dispatcher.wake()
        await poll_until(poll_state(store, second, "delivered"), within=10, what="redelivery")
    finally:
        await stop(task)
        await store.close()


async def _known_disabled(dispatcher: Dispatcher) -> bool:
    return "hook" in dispatcher.disabled


async def test_messages_older_than_max_age_are_dead_lettered(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    hook = Recorder("hook", [Delivery.retry("HTTP 500")] * 100)
    _, task, metrics = await run_dispatcher(store, {"hook": hook}, fast(max_age="300ms"))
    try:
        message_id = await queue_one(store)
        await poll_until(poll_state(store, message_id, "dead"), within=10, what="dead letter")
        (row,) = await store.notifications(state="dead")
        assert "gave up after" in row.last_error and "HTTP 500" in row.last_error
        assert metrics.dead.labels("hook")._value.get() == 1
    finally:
        await stop(task)
        await store.close()


async def test_pending_messages_survive_a_restart(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    message_id = await queue_one(store)
    await store.close()  # "crash" before any dispatcher ran
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    hook = Recorder("hook")
    _, task, _ = await run_dispatcher(store, {"hook": hook}, fast())
    try:
        await poll_until(poll_state(store, message_id, "delivered"), within=10, what="delivery")
        assert [m.id for m in hook.sent] == [message_id]
    finally:
        await stop(task)
        await store.close()


async def test_a_removed_notifier_dead_letters_its_messages(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    _, task, _ = await run_dispatcher(store, {}, fast())
    try:
        message_id = await queue_one(store, notifier="gone-from-config")
        await poll_until(poll_state(store, message_id, "dead"), within=10, what="dead letter")
    finally:
        await stop(task)
        await store.close()


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    settings = Notifications.model_validate({"backoff_initial": "1s", "backoff_max": "60s"})
    rng = random.Random(1)
    delays = [backoff(n, settings, rng) for n in range(1, 12)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not lock-step


async def test_a_slow_receiver_does_not_make_the_dispatcher_spin(tmp_path: Path) -> None:
    store = SqliteIncidentStore(tmp_path / "o.db")
    await store.open()
    gate = asyncio.Event()
    passes = 0
    claim = store.claim_due

    async def counting(now: float, limit: int = 100) -> Any:
        nonlocal passes
        passes += 1
        return await claim(now, limit)

    store.claim_due = counting  # type: ignore[method-assign]

    class Slow(Recorder):
        async def send(self, message: Message) -> Delivery:
            self.sent.append(message)
            await gate.wait()
            return Delivery.ok()

    hook = Slow("hook")
    _, task, _ = await run_dispatcher(store, {"hook": hook}, fast())
    try:
        message_id = await queue_one(store)
        await poll_until(lambda: asyncio.sleep(0, bool(hook.sent)), within=5, what="send started")
        before = passes
        await asyncio.sleep(1.0)  # the receiver is still answering: the outbox must idle
        assert passes - before <= 3, f"{passes - before} outbox passes while one send was held"
        assert await store.due(SystemClock().wall()) == []  # held, so not due twice
        gate.set()
        await poll_until(poll_state(store, message_id, "delivered"), within=5, what="delivery")
        assert len(hook.sent) == 1
    finally:
        await stop(task)
        await store.close()
