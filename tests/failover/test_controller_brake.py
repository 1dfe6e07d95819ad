"""The brake through the controller loop: events, metrics, status, the decision line, and the
book that keeps an engaged brake across a restart (the stores: tests/state)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from failover.events import BrakeEngaged, BrakeReleased, ControllerDecision
from nodevigil.core.events import EventTypes
from tests.failover.controller_helpers import BJ, Rig, make_config

SETTINGS = {"cycle": "1s", "hold_down": "30s", "site_hold_down": "20s"}
REASON = "braked: 8 of 8 nodes of site sh went down within 1m"


def _rig(tmp_path: Path, **brake: object) -> Rig:
    failover = {**SETTINGS, "brake": {"min_nodes": 8, **brake}}
    return Rig(tmp_path, make_config(sh_nodes=8, bj_nodes=8, failover=failover))


async def test_a_dead_site_brakes_its_drains_and_says_why(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    await rig.cycle()
    rig.given(**{f"sh_{i}": "down" for i in range(1, 9)})
    decision = await rig.cycle(1)
    assert rig.out() == set()  # no drain beyond the rate (0)
    assert rig.record() == {BJ}  # but the dead site leaves DNS
    [engaged] = rig.kinds("failover.brake")
    assert isinstance(engaged, BrakeEngaged)
    assert (engaged.subject, engaged.scope, engaged.reason) == ("sh", "site", REASON)
    assert engaged.vantage == "test"
    [line] = rig.kinds("controller.decision")
    assert isinstance(line, ControllerDecision)
    assert line.decision == decision.text
    assert f"would drain sh-1, sh-2, sh-3, sh-4 ({REASON})" in line.decision
    assert rig.metric("nodevigil_failover_brake", scope="site", site="sh") == 1
    assert rig.metric("nodevigil_failover_brake", scope="site", site="bj") == 0
    assert rig.metric("nodevigil_failover_brake", scope="fleet", site="") == 0  # 8 of 16
    assert rig.metric("nodevigil_failover_brake_held_total", scope="site", site="sh") == 4
    status = rig.controller.status()
    [brake] = status.brakes
    assert (brake.scope, brake.site, brake.nodes, brake.down) == ("site", "sh", 8, 8)
    assert brake.held == ["sh-1", "sh-2", "sh-3", "sh-4"]
    assert brake.since == rig.clock.wall()
    sites = {s.name: s for s in status.sites}
    assert sites["sh"].brake and not sites["bj"].brake
    nodes = {n.name: n for n in status.nodes}
    assert nodes["sh-1"].desired == "in" and nodes["sh-1"].why.endswith(REASON)
    json.dumps(status.as_dict())  # the API serves it as is
    # Held every cycle, counted and said once.
    await rig.cycle(1)
    assert rig.metric("nodevigil_failover_brake_held_total", scope="site", site="sh") == 4
    assert len(rig.kinds("controller.decision")) == 1
    await rig.store.close()


async def test_an_engaged_brake_survives_a_restart_and_releases_on_recovery(
    tmp_path: Path,
) -> None:
    rig = _rig(tmp_path)
    await rig.cycle()
    rig.given(**{f"sh_{i}": "down" for i in range(1, 9)})
    await rig.cycle(1)
    rig.controller = rig.new_controller()  # a restart, or a new leader, past the window
    await rig.cycle(300)
    assert rig.out() == set()
    assert len(rig.kinds("failover.brake")) == 1  # still the same brake, not a new one
    assert rig.metric("nodevigil_failover_brake", scope="site", site="sh") == 1
    rig.given(**{f"sh_{i}": "up" for i in range(1, 9)})
    decision = await rig.cycle(1)
    [released] = rig.kinds("failover.brake_released")
    assert isinstance(released, BrakeReleased)
    assert (released.subject, released.down, released.duration) == ("sh", 0, 301)
    assert "brake on site sh released" in decision.text
    assert rig.metric("nodevigil_failover_brake", scope="site", site="sh") == 0
    assert rig.out() == set()  # the nodes it kept in never left: no hold-down for them
    assert rig.controller.status().brakes == []
    await rig.store.close()


async def test_the_rate_drains_one_node_per_token(tmp_path: Path) -> None:
    rig = _rig(tmp_path, rate=1)
    await rig.cycle()
    rig.given(**{f"sh_{i}": "down" for i in range(1, 9)})
    await rig.cycle(1)
    assert rig.out() == set()
    await rig.cycle(60)
    assert rig.out() == {"sh-1"}
    assert rig.metric("nodevigil_failover_brake_held_total", scope="site", site="sh") == 4
    await rig.cycle(60)
    assert rig.out() == {"sh-1", "sh-2"}
    await rig.store.close()


async def test_a_single_node_failure_drains_as_ever(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    await rig.cycle()
    rig.given(sh_3="down")
    await rig.cycle(1)
    assert rig.out() == {"sh-3"}
    assert rig.kinds("failover.brake") == []
    assert rig.metric("nodevigil_failover_brake", scope="site", site="sh") == 0
    await rig.store.close()


def test_brake_events_round_trip() -> None:
    types = EventTypes([BrakeEngaged, BrakeReleased])
    stamp: dict[str, Any] = {"at": 1.0, "vantage": "ops-1", "id": "e1"}
    fleet = BrakeEngaged(
        subject="fleet", **stamp, scope="fleet", nodes=30, went_down=16, down=16, window=60.0,
        share=0.5, rate=0.0, reason="braked: 16 of 30 nodes of the fleet went down within 1m",
    )  # fmt: skip
    assert "site" not in fleet.as_dict()["data"]
    site = BrakeReleased(
        subject="sh", **stamp, scope="site", site="sh", nodes=8, down=3, duration=61.5,
        reason="3 of 8 nodes of site sh down, not more than share 0.5",
    )  # fmt: skip
    for event in (fleet, site):
        assert types.from_dict(json.loads(json.dumps(event.as_dict()))) == event
