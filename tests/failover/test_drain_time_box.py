"""Every drain is time-boxed by failover.drain_max (issue 12, item 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from failover.controller.state import Override
from failover.lb.base import ServerState
from tests.failover.controller_helpers import Rig, make_config

FAILOVER = {"cycle": "1s", "hold_down": "30s", "drain_max": "2h"}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, make_config(failover=FAILOVER))
    yield rig
    await rig.store.close()


async def test_a_drain_without_a_time_box_ends_after_drain_max(rig: Rig) -> None:
    o = await rig.controller.drain_node("sh-1", reason="forgotten", who="alice")
    assert o.until == rig.clock.wall() + 7200  # before the fix: None, never ending
    await rig.cycle(7199)
    assert rig.state("sh-1") is ServerState.MAINT
    await rig.cycle(1)
    assert rig.state("sh-1") is ServerState.READY
    assert [e.subject for e in rig.kinds("override.expired")] == ["sh-1"]


async def test_a_longer_drain_is_refused(rig: Rig) -> None:
    with pytest.raises(ValueError, match="drain_max"):
        await rig.controller.drain_node("sh-1", duration=7201)
    assert rig.controller.overrides() == []


async def test_an_open_ended_drain_stored_by_an_older_version_ends_too(rig: Rig) -> None:
    await rig.store.put_override(Override("node", "sh-2", "old", "bob", rig.clock.wall(), None))
    rig.controller = rig.new_controller()
    await rig.cycle()
    assert rig.state("sh-2") is ServerState.MAINT
    await rig.cycle(7200)
    assert rig.state("sh-2") is ServerState.READY
    assert rig.controller.overrides() == []
