"""Only a process that may act acts: the controller, incidents, the outbox and the ledger, each
given a standby authority, decide and read but change nothing; once leader, they act at once."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from failover.controller import Controller
from failover.events import ServiceUnavailable
from failover.incidents.manager import IncidentManager
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import Dispatcher
from nodevigil.app.sla_bridge import SlaBridge, utc
from nodevigil.core.authority import Fenced
from nodevigil.core.clock import ManualClock
from nodevigil.core.events import EventBus
from nodevigil.state.backend import SqliteBackend
from sla.ledger import Ledger
from tests.failover.controller_helpers import Rig
from tests.incidents.test_incidents import Recorder, make_config


class Switch:
    """An Authority the test turns on and off (the leader lease, reduced to its answer)."""

    def __init__(self, acting: bool = False) -> None:
        self.acting = acting
        self.asked = 0

    def may_act(self) -> bool:
        self.asked += 1
        return self.acting

    @property
    def epoch(self) -> int | None:
        return 7 if self.acting else None

    def remaining(self) -> float:
        return math.inf if self.acting else 0.0


# --- the controller --------------------------------------------------------------------------


def controller(rig: Rig, authority: Switch | None) -> Controller:
    """The controller of ``rig``; without ``authority`` a single host's (``Sole``)."""
    return Controller(
        config=rig.config,
        verdicts=rig.source,
        bus=rig.bus,
        clock=rig.clock,
        local_lbs=rig.local,
        global_lbs={"gslb": rig.glob},
        store=rig.store,
        registry=CollectorRegistry(),
        authority=authority,
    )


def set_state_calls(rig: Rig) -> int:
    return sum(len(lb.calls_to("set_state")) for lb in rig.local.values()) + len(
        rig.glob.calls_to("set_addresses")
    )


async def test_a_standby_controller_decides_but_never_sets_state(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    authority = Switch(acting=False)
    c = controller(rig, authority)
    rig.given(sh_1="down", bj_1="down", bj_2="down")  # a node out, a whole site out
    decision = await c.run_once()
    assert decision.actions, "the standby decides what the leader would do"
    assert set_state_calls(rig) == 0 and rig.out() == set()
    assert rig.glob.records["www"] == {"203.0.113.10", "203.0.113.20"}
    [line] = [e for e in rig.events if e.kind == "controller.decision"]
    assert line.detail().startswith("standby: would ")
    assert await rig.store.actions(10) == []  # nothing recorded: nothing was done
    # It becomes the leader: within one cycle it acts on what it already decided.
    authority.acting = True
    rig.clock.advance(1)
    await c.run_once()
    assert rig.out() == {"sh-1", "bj-1"}  # bj-2 kept in: the last server of its site
    assert rig.glob.records["www"] == {"203.0.113.10"}
    await rig.store.close()


async def test_the_authority_is_asked_again_before_each_command(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    class RunsOut(Switch):
        """May act for the cycle's first check and one command, then the lease runs out."""

        def may_act(self) -> bool:
            self.asked += 1
            return self.asked <= 2

    authority = RunsOut(acting=True)
    c = controller(rig, authority)
    rig.given(sh_1="down", sh_2="down")  # two commands to the same LB, in order
    await c.run_once()
    assert len(rig.local["sh-lb"].calls_to("set_state")) == 1
    [line] = [e for e in rig.events if e.kind == "controller.decision"]
    assert "not sent: no longer the leader" in line.detail()
    await rig.store.close()


async def test_the_action_log_and_events_name_the_vantage_and_the_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Which leader did what, across a change of leader: every record and event says it.
    rig = Rig(tmp_path)
    c = controller(rig, Switch(acting=True))
    rig.given(sh_1="down", bj_1="down", bj_2="down")  # a server and a record change
    with caplog.at_level(logging.INFO, logger="failover.controller.loop"):
        await c.run_once()
    [logged] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failover: ")]
    assert logged.endswith(" [test, epoch 7]")
    records = await rig.store.actions(10)
    assert {r.what for r in records} == {"set_state", "set_addresses"}
    assert {(r.vantage, r.epoch) for r in records} == {("test", 7)}
    actions = [e for e in rig.events if e.kind == "lb.action"]
    assert len(actions) == len(records)
    assert {(e.as_dict()["vantage"], e.as_dict()["data"]["epoch"]) for e in actions} == {
        ("test", 7)
    }
    [line] = [e for e in rig.events if e.kind == "controller.decision"]
    assert (line.vantage, line.as_dict()["data"]["epoch"]) == ("test", 7)
    await rig.store.close()


async def test_on_one_host_the_action_log_names_the_vantage_and_no_epoch(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    c = controller(rig, None)  # one host: no lease, no epoch
    rig.given(sh_1="down")
    await c.run_once()
    [record] = await rig.store.actions(10)
    assert (record.vantage, record.epoch) == ("test", None)
    [action] = [e for e in rig.events if e.kind == "lb.action"]
    assert action.as_dict()["data"]["epoch"] is None
    [line] = [e for e in rig.events if e.kind == "controller.decision"]
    assert line.as_dict()["data"]["epoch"] is None
    await rig.store.close()


async def test_a_standby_decision_carries_no_epoch(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    c = controller(rig, Switch(acting=False))
    rig.given(sh_1="down")
    await c.run_once()
    [line] = [e for e in rig.events if e.kind == "controller.decision"]
    assert line.detail().startswith("standby: would ")
    assert line.as_dict()["data"]["epoch"] is None
    await rig.store.close()


# --- incidents, the outbox, the ledger ---------------------------------------------------------


@dataclass
class House:
    authority: Switch
    clock: ManualClock
    down: dict[str, float]
    manager: IncidentManager
    dispatcher: Dispatcher
    hook: Recorder
    bridge: SlaBridge
    ledger: Ledger


@pytest.fixture
async def house(tmp_path: Path) -> AsyncIterator[House]:
    backend = SqliteBackend(tmp_path / "state")
    (tmp_path / "state").mkdir()
    store = backend.incident_store()
    await store.open()
    clock = ManualClock()
    authority = Switch(acting=False)
    down: dict[str, float] = {}
    config = make_config()
    bus = EventBus()
    metrics = NotifyMetrics(CollectorRegistry())
    recorders = {name: Recorder(name) for name in ("hook", "mail", "phone", "ops")}
    dispatcher = Dispatcher(
        store,
        recorders,
        settings=lambda: config.notifications,
        clock=clock,
        metrics=metrics,
        bus=bus,
        vantage=lambda: "ops-2",
        authority=authority,
    )
    manager = IncidentManager(
        store,
        config=lambda: config,
        bus=bus,
        clock=clock,
        unavailable=lambda: dict(down),
        metrics=metrics,
        outbox_changed=dispatcher.wake,
        authority=authority,
    )
    await manager.start()
    ledger = await Ledger.open(backend.ledger_store(), now=lambda: utc(clock.wall()))
    bridge = SlaBridge(
        ledger,
        bus=bus,
        clock=clock,
        services=lambda: ["web", "api"],
        unavailable=lambda: dict(down),
        state_dir=tmp_path / "state",
        registry=CollectorRegistry(),
        incidents=manager,
        authority=authority,
    )
    try:
        yield House(authority, clock, down, manager, dispatcher, recorders["hook"], bridge, ledger)
    finally:
        await ledger.close()
        await store.close()


async def test_a_standby_opens_no_incident_and_writes_no_ledger(house: House) -> None:
    began = house.clock.wall() - 30
    house.down["web"] = began
    await house.manager.reconcile()
    assert house.manager.open_incidents() == []
    with pytest.raises(Fenced):
        await house.manager.service_down("web", began)
    assert await house.bridge.reconcile() is False
    event = ServiceUnavailable(
        subject="web", at=house.clock.wall(), vantage="ops-2", service="web", sites=("s1",),
        evidence={}, started_at=began,
    )  # fmt: skip
    await house.bridge._apply(event)
    assert await house.ledger.open_intervals() == []
    await house.bridge.record_downtime()  # a standby's own downtime is not the service's
    # Leader now: the next reconcile opens the incident and the ledger interval, from the
    # outage's start as the controller saw it.
    house.authority.acting = True
    await house.manager.reconcile()
    [incident] = house.manager.open_incidents()
    assert incident.service == "web" and incident.started_at == began
    assert await house.bridge.reconcile() is True
    [interval] = await house.ledger.open_intervals()
    assert interval.service == "web" and interval.start == utc(began)


async def test_a_new_leader_takes_over_the_incidents_the_old_one_opened(house: House) -> None:
    house.down["web"] = house.clock.wall() - 30
    house.authority.acting = True
    await house.manager.reconcile()  # as the old leader would, in the shared store
    [opened] = house.manager.open_incidents()
    house.authority.acting = False
    await house.manager.reconcile()
    house.manager._open.clear()  # a standby started before the old leader opened it
    house.authority.acting = True
    await house.manager.reconcile()
    [incident] = house.manager.open_incidents()
    assert incident.id == opened.id  # one incident across the change of leader


async def test_a_standby_dispatches_nothing_and_a_leader_does(house: House) -> None:
    house.down["web"] = house.clock.wall() - 30
    house.authority.acting = True
    await house.manager.reconcile()  # the incident and its notices are in the outbox
    house.authority.acting = False
    await house.dispatcher._pass()
    assert house.hook.sent == []
    house.authority.acting = True
    await house.dispatcher._pass()
    for task in list(house.dispatcher._tasks):
        await task
    assert [m.kind for m in house.hook.sent] == ["incident.opened"]
