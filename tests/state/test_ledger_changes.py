"""An incident's cause and a maintenance window reach the SLA ledger durably, on both backends.

The incident store writes the ledger's change in the same transaction as the cause or the
window; the bridge applies pending changes to the ledger, by their stable id, and marks them.
A ledger that refuses (its database away) or a process that dies between the ledger's commit
and the mark leaves the change pending, and the next process applies it: once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from failover.incidents.manager import IncidentManager
from failover.incidents.ports import IncidentStore
from failover.notify.metrics import NotifyMetrics
from nodevigil.app.sla_bridge import SlaBridge, utc
from nodevigil.core.clock import ManualClock
from nodevigil.core.errors import StateError
from nodevigil.core.events import EventBus
from nodevigil.state.backend import Backend
from nodevigil.state.sqlite.incidents import SqliteIncidentStore
from sla.ledger import Ledger
from sla.model import Charge
from sla.store import LedgerStore
from tests.incidents.test_incidents import make_config

DAY = 86_400.0


class Refusing:
    """A ledger store whose database can be made to refuse every transaction (it is away)."""

    def __init__(self, inner: LedgerStore) -> None:
        self.inner = inner
        self.down = False

    def transaction(self) -> AbstractContextManager[None]:
        if self.down:
            raise StateError("ledger: the database is away")
        return self.inner.transaction()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Process:
    """One nodevigil process's incident manager, ledger and bridge on the backend's state."""

    store: IncidentStore
    manager: IncidentManager
    ledger: Ledger
    bridge: SlaBridge
    refusing: Refusing

    async def stop(self) -> None:
        """Gone, as after a crash: nothing more reaches either database."""
        await self.ledger.close()
        await self.store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def start(
    backend: Backend, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """Start a process on the backend's state (the previous one is stopped by the test)."""
    started: list[Process] = []
    config = make_config()

    async def make() -> Process:
        store = backend.incident_store()
        await store.open()
        manager = IncidentManager(
            store,
            config=lambda: config,
            bus=EventBus(),
            clock=clock,
            unavailable=lambda: None,
            metrics=NotifyMetrics(CollectorRegistry()),
            outbox_changed=lambda: None,
        )
        await manager.start()
        factory = backend.ledger_store()
        refusing: list[Refusing] = []

        def ledger_store() -> LedgerStore:
            refusing.append(Refusing(factory()))
            return cast(LedgerStore, refusing[0])

        ledger = await Ledger.open(
            ledger_store, settlement_delay=timedelta(0), now=lambda: utc(clock.wall())
        )
        bridge = SlaBridge(
            ledger,
            bus=EventBus(),
            clock=clock,
            services=lambda: ["web", "api"],
            unavailable=lambda: None,
            state_dir=tmp_path,
            registry=CollectorRegistry(),
            incidents=manager,
            transient=backend.transient_errors,
        )
        process = Process(store, manager, ledger, bridge, refusing[0])
        started.append(process)
        return process

    yield make


async def yesterdays_outage(process: Process, clock: ManualClock) -> tuple[int, float]:
    """web down an hour yesterday, in the incidents and the ledger, the day settled."""
    began = clock.wall() - DAY
    ledger = process.ledger
    await ledger.open_interval("web", utc(began))
    await ledger.close_interval("web", utc(began + 3600))
    day = utc(began).date()
    await ledger.import_charges([Charge("acme", "web", day, Decimal("100.00"), "EUR")])
    await ledger.settle()
    incident = await process.manager.service_down("web", began)
    await process.manager.service_up("web", began + 3600)
    return incident.id, began


async def test_a_cause_tagged_while_the_ledger_refuses_reaches_it_after_a_restart(
    start: Callable[[], Any], clock: ManualClock
) -> None:
    first: Process = await start()
    incident, _ = await yesterdays_outage(first, clock)
    first.refusing.down = True  # PostgreSQL away, the disk full
    tagged = await first.manager.set_cause(incident, cause="force_majeure", note="storm",
                                           author="ops")  # fmt: skip
    assert tagged.cause == "force_majeure"  # the operator's tag is taken
    with pytest.raises(StateError):
        await first.bridge.apply_ledger_changes()
    await first.stop()  # the process ends with the ledger still refusing

    second: Process = await start()
    assert await second.bridge.apply_ledger_changes() == 1
    (entry,) = await second.ledger.ledger(service="web")
    assert entry.cause.value == "force_majeure"
    (adjustment,) = await second.ledger.adjustments()  # the settled day's credit, recomputed
    assert adjustment.new_credit == 0 and adjustment.old_credit > 0
    assert "storm" in adjustment.why and f"incident {incident}" in adjustment.why
    assert await second.bridge.apply_ledger_changes() == 0
    await second.stop()


async def test_a_cause_applied_but_not_marked_before_a_crash_is_not_applied_twice(
    start: Callable[[], Any], clock: ManualClock
) -> None:
    first: Process = await start()
    incident, _ = await yesterdays_outage(first, clock)
    await first.manager.set_cause(incident, cause="telecom_failure", note="", author="ops")
    (change,) = await first.manager.ledger_changes()
    await first.bridge._apply_change(change)  # the ledger commits; the process dies here
    await first.stop()

    second: Process = await start()
    assert await second.bridge.apply_ledger_changes() == 1  # marked, not made again
    assert len(await second.ledger.adjustments()) == 1
    assert [e.cause.value for e in await second.ledger.ledger(service="web")] == ["telecom_failure"]
    await second.stop()


async def test_a_window_becomes_one_exclusion_across_a_refusing_ledger_and_a_crash(
    start: Callable[[], Any], clock: ManualClock
) -> None:
    first: Process = await start()
    _, began = await yesterdays_outage(first, clock)
    later = await first.manager.declare_window(
        start=clock.wall() + 600, end=clock.wall() + 900, services=["web"], note="", who="ops"
    )
    window = await first.manager.declare_window(
        start=began - 60, end=clock.wall() + 60, services=["web"], note="upgrade", who="ops"
    )
    await first.manager.cancel_window(later.id, "ops")  # never excluded
    first.refusing.down = True
    with pytest.raises(StateError):
        await first.bridge.apply_ledger_changes()
    first.refusing.down = False
    (change,) = await first.manager.ledger_changes()
    exclusion = await first.bridge._apply_change(change)  # the ledger commits; then a crash
    await first.stop()

    second: Process = await start()
    assert [w.exclusion_id for w in await second.manager.windows()] == [None]
    assert await second.bridge.apply_ledger_changes() == 1
    (marked,) = await second.manager.windows()
    assert marked.id == window.id and marked.exclusion_id == exclusion
    (adjustment,) = await second.ledger.adjustments()  # excluded once: one recomputation
    assert adjustment.new_credit == 0 and f"maintenance window {window.id}" in adjustment.why
    clock.advance(3600)
    assert await second.bridge.apply_ledger_changes() == 0  # the cancelled one never comes
    await second.stop()


async def test_upgrading_sqlite_gives_windows_not_yet_excluded_their_pending_exclusion(
    tmp_path: Path,
) -> None:
    path = tmp_path / "incidents.db"
    store = SqliteIncidentStore(path)
    await store.open()
    kept = await store.add_window(
        start=100.0, end=200.0, services=["web"], note="upgrade", source="api", who="ops"
    )
    done = await store.add_window(
        start=100.0, end=200.0, services=["api"], note="", source="api", who="ops"
    )
    await store.mark_window_excluded(done.id, 3)
    await store.close()
    with sqlite3.connect(path) as conn:  # back to the schema before the ledger's outbox
        conn.execute("DROP TABLE ledger_outbox")
        conn.execute("PRAGMA user_version=2")
    conn.close()
    store = SqliteIncidentStore(path)
    await store.open()
    (change,) = await store.ledger_changes(1000.0)
    assert (change.kind, change.window, change.services) == ("exclusion", kept.id, ("web",))
    assert (change.start, change.end, change.not_before) == (100.0, 200.0, 100.0)
    assert change.note == f"maintenance window {kept.id}: upgrade" and change.who == "ops"
    await store.close()
