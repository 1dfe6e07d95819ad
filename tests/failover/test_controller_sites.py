"""Site and service level: withdrawing a site's address, the last site, whole-service events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.failover.controller_helpers import BJ, SH, Rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.store.close()


async def test_site_down_withdraws_its_address_and_returns_after_hold_down(rig: Rig) -> None:
    await rig.cycle()
    rig.given(bj_1="down", bj_2="down")
    await rig.cycle(1)
    assert rig.record() == {SH}
    [down] = rig.kinds("site.down")
    assert down.subject == "bj"
    assert down.address == BJ
    [action] = [e for e in rig.kinds("lb.action") if e.what == "set_addresses"]
    assert (action.record, list(action.old), list(action.new)) == ("www", sorted({SH, BJ}), [SH])
    assert rig.metric("nodevigil_site_serving", site="bj") == 0
    assert rig.metric("nodevigil_service_available", service="web") == 1
    # A node failure absorbed by failover is not unavailability.
    assert rig.kinds("service.unavailable") == []
    rig.given(bj_1="up")
    await rig.cycle(1)
    await rig.cycle(19)
    assert rig.record() == {SH}  # site hold-down: 20 s
    await rig.cycle(1)
    assert rig.record() == {SH, BJ}
    assert [e.subject for e in rig.kinds("site.up")] == ["bj"]
    assert rig.metric("nodevigil_site_serving", site="bj") == 1


async def test_last_site_is_never_withdrawn_and_service_events_carry_times(rig: Rig) -> None:
    rig.given(bj_1="down", bj_2="down")
    await rig.cycle()
    assert rig.record() == {SH}
    t0 = rig.clock.wall() + 5
    rig.given(sh_1="down", sh_2="down", sh_3="down", sh_4="down")
    await rig.cycle(5)
    assert rig.record() == {SH}  # the last published site stays
    [gone] = rig.kinds("service.unavailable")
    assert gone.subject == "web"
    assert gone.started_at == t0
    assert list(gone.sites) == ["sh", "bj"]
    assert gone.evidence["sh-1"]["verdict"] == "down"
    assert rig.metric("nodevigil_service_available", service="web") == 0
    assert rig.controller.status().services[0].unavailable_since == t0
    await rig.cycle(10)
    assert len(rig.kinds("service.unavailable")) == 1
    rig.given(bj_2="up")
    await rig.cycle(50)
    [back] = rig.kinds("service.available")
    assert back.started_at == t0
    assert back.ended_at == t0 + 60
    assert back.duration == 60
    assert rig.metric("nodevigil_service_available", service="web") == 1


async def test_empty_record_is_filled_with_every_site_when_all_are_down(rig: Rig) -> None:
    rig.glob.records.clear()
    rig.given(**{f"{s}_{i}": "down" for s, n in (("sh", 4), ("bj", 2)) for i in range(1, n + 1)})
    await rig.cycle()
    assert rig.record() == {SH, BJ}


async def test_panic_keeps_a_down_node_in_but_the_site_still_counts_as_down(rig: Rig) -> None:
    rig.given(bj_1="down", bj_2="down")
    await rig.cycle()
    assert rig.out() == {"bj-1"}
    assert rig.record() == {SH}
    status = rig.controller.status()
    bj = {s.name: s for s in status.sites}["bj"]
    assert (bj.can_serve, bj.serving, bj.panic, bj.nodes_out) == (False, False, True, 1)
