"""Node-level failover: out on down, hold-down, flapping, floors and caps, unknown verdicts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from failover.controller import ControllerState, NodeBook, Observed, decide
from failover.controller.decide import advance_node
from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import FailoverSettings
from tests.failover.controller_helpers import Rig, make_config


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.store.close()


async def test_quiet_start_does_nothing(rig: Rig) -> None:
    decision = await rig.cycle()
    assert decision.actions == ()
    assert decision.text == ""
    assert rig.kinds("controller.decision") == []
    assert rig.metric("nodevigil_last_reconcile_timestamp_seconds") == rig.clock.wall()


async def test_node_down_is_taken_out_with_events_and_metrics(rig: Rig) -> None:
    await rig.cycle()
    rig.given(sh_2="down")
    decision = await rig.cycle()
    assert rig.out() == {"sh-2"}
    assert rig.state("sh-2") is ServerState.MAINT
    [action] = rig.kinds("lb.action")
    assert action.subject == "sh-2"
    assert action.what == "set_state"
    assert action.lb == "sh-lb"
    assert (action.backend, action.server) == ("web", "sh-2")
    assert (action.old, action.new) == ("ready", "maint")
    assert "verdict down" in action.why
    [line] = rig.kinds("controller.decision")
    assert line.decision == decision.text
    assert "sh-2 ready->maint" in decision.text
    assert rig.metric("nodevigil_nodes_out", site="sh") == 1
    labels = {"lb": "sh-lb", "action": "set_state", "result": "ok"}
    assert rig.metric("nodevigil_lb_actions_total", **labels) == 1
    assert [r.target for r in await rig.controller.actions()] == ["web/sh-2"]
    # Level-triggered: the next cycle sees nothing to do and says nothing.
    assert (await rig.cycle(1)).text == ""
    assert len(rig.kinds("controller.decision")) == 1


async def test_drain_mode_from_the_lb_config(tmp_path: Path) -> None:
    rig = Rig(tmp_path, make_config(mode="drain"))
    rig.given(sh_1="down")
    await rig.cycle()
    assert rig.state("sh-1") is ServerState.DRAIN
    await rig.store.close()


async def test_back_in_only_after_hold_down(rig: Rig) -> None:
    rig.given(sh_1="down")
    await rig.cycle()
    rig.given(sh_1="up")
    await rig.cycle(1)
    assert rig.state("sh-1") is ServerState.MAINT
    await rig.cycle(29)
    assert rig.state("sh-1") is ServerState.MAINT
    status = {n.name: n for n in rig.controller.status().nodes}["sh-1"]
    assert status.desired == "out"
    assert status.hold_down_until == pytest.approx(rig.clock.wall() + 1)
    await rig.cycle(1)
    assert rig.state("sh-1") is ServerState.READY


def test_flapping_hold_down_grows_and_is_capped_then_decays() -> None:
    s = FailoverSettings(hold_down="30s", hold_down_max="240s")
    book, now, holds = NodeBook(), 0.0, []
    for _ in range(6):
        book = advance_node(book, Verdict.DOWN, now, s)
        holds.append(book.hold)
        now += 5
        book = advance_node(book, Verdict.UP, now, s)
        now += book.hold
        book = advance_node(book, Verdict.UP, now, s)
        assert not book.held
        now += 10  # fails again soon after coming back
    assert holds == [30, 60, 120, 240, 240, 240]
    # Stable for hold_down_max: the flap history is forgiven.
    book = advance_node(book, Verdict.UP, now + 240, s)
    assert (book.failures, book.hold) == (0, 30)
    book = advance_node(book, Verdict.DOWN, now + 241, s)
    assert book.hold == 30


def test_failure_during_hold_down_counts_as_a_flap() -> None:
    s = FailoverSettings(hold_down="30s", hold_down_max="240s")
    book = advance_node(NodeBook(), Verdict.DOWN, 0, s)
    book = advance_node(book, Verdict.UP, 5, s)
    book = advance_node(book, Verdict.DOWN, 10, s)
    assert (book.held, book.hold) == (True, 60)


async def test_flapping_node_is_held_longer(rig: Rig) -> None:
    rig.given(sh_1="down")
    await rig.cycle()
    rig.given(sh_1="up")
    await rig.cycle(1)
    await rig.cycle(30)
    assert rig.state("sh-1") is ServerState.READY
    rig.given(sh_1="down")
    await rig.cycle(5)
    rig.given(sh_1="up")
    await rig.cycle(1)
    await rig.cycle(30)
    assert rig.state("sh-1") is ServerState.MAINT  # now 60 s
    await rig.cycle(30)
    assert rig.state("sh-1") is ServerState.READY


async def test_min_healthy_floor_and_panic(tmp_path: Path) -> None:
    rig = Rig(tmp_path, make_config(bj={"min_healthy": 1, "max_unavailable": 2}))
    rig.given(bj_1="down", bj_2="down")
    await rig.cycle()
    # One may go out; the last one stays in whatever its verdict says.
    assert rig.out() == {"bj-1"}
    [panic] = rig.kinds("failover.panic")
    assert panic.subject == "bj"
    assert list(panic.kept_in) == ["bj-2"]
    assert panic.limit == "min_healthy"
    assert rig.metric("nodevigil_site_panic", site="bj") == 1
    await rig.cycle(1)
    assert len(rig.kinds("failover.panic")) == 1  # reported once, not every cycle
    rig.given(bj_2="up")
    await rig.cycle(1)
    assert rig.metric("nodevigil_site_panic", site="bj") == 0
    assert len(rig.kinds("failover.panic_over")) == 1
    await rig.store.close()


@pytest.mark.parametrize(("cap", "allowed"), [("50%", 2), ("25%", 1), (1, 1), (3, 3)])
async def test_max_unavailable_cap(tmp_path: Path, cap: int | str, allowed: int) -> None:
    rig = Rig(tmp_path, make_config(sh={"max_unavailable": cap}))
    rig.given(sh_1="down", sh_2="down", sh_3="down")
    await rig.cycle()
    assert len(rig.out()) == allowed
    assert rig.out() <= {"sh-1", "sh-2", "sh-3"}
    assert bool(rig.kinds("failover.panic")) == (allowed < 3)
    if allowed < 3:
        assert rig.kinds("failover.panic")[0].limit == "max_unavailable"
    await rig.store.close()


async def test_nodes_already_out_stay_out_under_the_cap(tmp_path: Path) -> None:
    rig = Rig(tmp_path, make_config(sh={"max_unavailable": 1}))
    rig.given(sh_3="down")
    await rig.cycle()
    rig.given(sh_1="down")
    await rig.cycle(1)
    assert rig.out() == {"sh-3"}  # no churn: the first one out keeps the slot
    await rig.store.close()


async def test_held_up_node_released_early_to_make_room(tmp_path: Path) -> None:
    rig = Rig(tmp_path, make_config(sh={"max_unavailable": 1}))
    rig.given(sh_1="down")
    await rig.cycle()
    rig.given(sh_1="up")
    await rig.cycle(1)
    rig.given(sh_2="down")
    await rig.cycle(1)
    # sh-1 is healthy but in its hold-down; sh-2 is really down and needs the only slot.
    assert rig.out() == {"sh-2"}
    assert rig.kinds("failover.panic") == []
    await rig.store.close()


async def test_unknown_verdicts_never_drain(rig: Rig) -> None:
    rig.given(sh_1="unknown", bj_1="unknown", bj_2="unknown")
    await rig.cycle()
    assert rig.out() == set()
    assert rig.record() == {"203.0.113.10", "203.0.113.20"}
    assert rig.kinds("service.unavailable") == []


def test_decide_is_pure_and_repeatable() -> None:
    config = make_config()
    verdicts = {n.name: Verdict.UP for n in config.nodes} | {"sh-1": Verdict.DOWN}
    observed = Observed(servers={n.name: ServerState.READY for n in config.nodes})
    state = ControllerState(verdicts, observed, {}, decide(config, _empty(), 0, 0).book)
    first = decide(config, state, 10, 100)
    second = decide(config, state, 10, 100)
    assert first == second
    assert [a.node for a in first.actions] == ["sh-1"]  # type: ignore[union-attr]


def _empty() -> ControllerState:
    from failover.controller import Book

    return ControllerState({}, Observed(), {}, Book())
