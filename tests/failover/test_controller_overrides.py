"""Operator overrides: durable, time-boxed drains of nodes and sites."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from failover.controller import UnknownNameError
from failover.lb.base import ServerState
from tests.failover.controller_helpers import SH, Rig, make_config


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.store.close()


async def test_drain_node_with_expiry(rig: Rig) -> None:
    await rig.cycle()
    o = await rig.controller.drain_node("sh-1", duration=60, reason="disk swap", who="alice")
    assert o.until == rig.clock.wall() + 60
    await rig.cycle()
    assert rig.state("sh-1") is ServerState.MAINT
    [action] = rig.kinds("lb.action")
    assert action.why == "drained by alice: disk swap"
    assert [x.name for x in rig.controller.overrides()] == ["sh-1"]
    status = {n.name: n for n in rig.controller.status().nodes}["sh-1"]
    assert status.override is not None and status.override["who"] == "alice"
    await rig.cycle(59)
    assert rig.state("sh-1") is ServerState.MAINT
    await rig.cycle(1)
    assert rig.state("sh-1") is ServerState.READY
    assert [e.subject for e in rig.kinds("override.expired")] == ["sh-1"]
    assert rig.controller.overrides() == []


async def test_drained_node_stays_out_whatever_its_verdict_and_undrain(rig: Rig) -> None:
    await rig.controller.drain_node("sh-2", reason="kernel update", who="bob")
    rig.given(sh_2="up")
    await rig.cycle()
    assert rig.state("sh-2") is ServerState.MAINT
    assert await rig.controller.undrain_node("sh-2", who="bob")
    assert not await rig.controller.undrain_node("sh-2", who="bob")
    await rig.cycle()
    assert rig.state("sh-2") is ServerState.READY
    [cleared] = rig.kinds("override.cleared")
    assert cleared.cleared_by == "bob"


async def test_operator_drain_below_the_floor_is_allowed_with_a_warning(rig: Rig) -> None:
    await rig.controller.drain_node("bj-1", reason="r", who="w")
    await rig.controller.drain_node("bj-2", reason="r", who="w")
    await rig.cycle()
    assert rig.out() == {"bj-1", "bj-2"}
    assert {e.subject for e in rig.kinds("override.below_floor")} == {"bj-1", "bj-2"}


async def test_drain_site_withdraws_it_and_undrain_publishes_it(rig: Rig) -> None:
    await rig.controller.drain_site("bj", reason="network work", who="carol")
    await rig.cycle()
    assert rig.record() == {SH}
    assert rig.out() == set()  # a site drain moves DNS only; cached clients still reach nodes
    assert await rig.controller.undrain_site("bj", who="carol")
    await rig.cycle()
    assert len(rig.record()) == 2


async def test_site_drain_never_withdraws_the_last_site(rig: Rig) -> None:
    await rig.controller.drain_site("bj", reason="r", who="w")
    await rig.controller.drain_site("sh", reason="r", who="w")
    await rig.cycle()
    assert len(rig.record()) == 2


async def test_overrides_are_durable(tmp_path: Path, rig: Rig) -> None:
    await rig.controller.drain_node("sh-3", duration=600, reason="r", who="w")
    second = rig.new_controller()
    await second.start()
    assert [(o.name, o.who) for o in second.overrides()] == [("sh-3", "w")]


async def test_bad_overrides_are_refused(rig: Rig) -> None:
    with pytest.raises(UnknownNameError):
        await rig.controller.drain_node("nope")
    with pytest.raises(UnknownNameError):
        await rig.controller.drain_site("nope")
    with pytest.raises(ValueError, match="past"):
        await rig.controller.drain_node("sh-1", until=rig.clock.wall() - 1)
    with pytest.raises(ValueError, match="not both"):
        await rig.controller.drain_node("sh-1", until=rig.clock.wall() + 9, duration=9)


async def test_update_config_takes_effect_on_the_next_cycle(rig: Rig) -> None:
    rig.given(sh_1="down")
    rig.controller.update_config(make_config(mode="drain"))
    await rig.cycle()
    assert rig.state("sh-1") is ServerState.DRAIN
