"""The running loop: bursts, restarts, manual changes, failing load balancers."""

from __future__ import annotations

from pathlib import Path

from failover.lb.base import ServerState
from failover.lb.errors import LoadBalancerUnavailable
from monitor.verdicts import Verdict, VerdictChange
from tests.failover.controller_helpers import SH, Rig, WakeOnlyClock, wait_for
from tests.failover.daemons import poll_until


def _change(node: str, new: Verdict, reason: str) -> VerdictChange:
    return VerdictChange(
        node, node.split("-", maxsplit=1)[0], Verdict.UP, new, reason, "http", 0.0, "test"
    )


async def test_burst_of_verdicts_is_one_decision(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock=WakeOnlyClock())
    async with rig.controller:
        await wait_for(lambda: rig.metric("nodevigil_decision_cycle_seconds_count") == 1)
        for node in ("sh-1", "sh-2", "bj-1"):
            rig.given(**{node.replace("-", "_"): "down"})
            rig.bus.publish(_change(node, Verdict.DOWN, f"{node}: http 503").to_event())
        # The cycle's metrics are its last step: once counted, the whole cycle is done.
        await wait_for(lambda: rig.metric("nodevigil_decision_cycle_seconds_count") == 2)
        [decision] = rig.kinds("controller.decision")
        assert rig.out() == {"sh-1", "sh-2", "bj-1"}
        assert decision.actions == 3
        assert decision.evidence["sh-1"] == {"verdict": "down", "reason": "sh-1: http 503"}
        assert "sh-1: http 503" in decision.decision
    await rig.store.close()


async def test_override_wakes_the_loop(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock=WakeOnlyClock())
    async with rig.controller as controller:
        await controller.drain_node("bj-2", reason="r", who="w")
        await wait_for(lambda: rig.out() == {"bj-2"})
    await rig.store.close()


async def test_manual_lb_change_is_repaired(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.cycle()
    await rig.local["sh-lb"].set_state("web", "sh-4", ServerState.MAINT)  # an operator, by hand
    rig.glob.records["www"] = {"198.51.100.99"}
    decision = await rig.cycle(1)
    assert rig.out() == set()
    assert len(rig.record()) == 2
    assert len(decision.actions) == 2
    await rig.store.close()


async def test_restart_reconciles_from_the_store_and_the_lbs(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.given(sh_1="down", bj_1="down", bj_2="down")
    await rig.cycle()
    rig.given(sh_1="up")
    await rig.cycle(10)
    all_down = {f"{s}_{i}": "down" for s, n in (("sh", 4), ("bj", 2)) for i in range(1, n + 1)}
    rig.given(**all_down)
    await rig.cycle(1)
    assert len(rig.kinds("service.unavailable")) == 1
    assert rig.out() == {"sh-1", "sh-2", "bj-1"}  # max_unavailable 50% of sh: two out
    await rig.store.close()

    # A new process: same store file, same LB state; the monitor has no verdicts yet.
    from nodevigil.state.sqlite.controller import SqliteControllerStore

    rig.store = SqliteControllerStore(tmp_path / "state" / "nodevigil.db")
    rig.source.current.clear()
    rig.controller = rig.new_controller()
    events_before = len(rig.events)
    decision = await rig.cycle(5)
    assert decision.actions == ()  # unknown verdicts: no drains, and held nodes stay out
    assert rig.out() == {"sh-1", "sh-2", "bj-1"}
    rig.given(**all_down)
    await rig.cycle(1)
    assert len(rig.kinds("service.unavailable")) == 1  # not reported twice across the restart
    # An operator put sh-2 back by hand while we were down: level-triggered repair.
    await rig.local["sh-lb"].set_state("web", "sh-2", ServerState.READY)
    rig.given(sh_1="up", sh_2="up", sh_3="up", sh_4="up")
    await rig.cycle(1)
    assert rig.state("sh-2") is ServerState.MAINT  # still in its hold-down from before
    [back] = rig.kinds("service.available")
    assert back.duration == 7  # started before the restart, kept across it
    await rig.cycle(60)
    assert rig.out() == {"bj-1"}
    assert len(rig.events) > events_before
    await rig.store.close()


async def test_failing_lb_is_reported_once_and_converges_after_recovery(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.cycle()
    rig.local["sh-lb"].fail_with(LoadBalancerUnavailable("sh-lb: connection refused"))
    rig.given(sh_1="down", bj_1="down")
    await rig.cycle(1)
    assert rig.out() == {"bj-1"}  # the other LB still acts
    [failed] = rig.kinds("failover.failed")
    assert failed.lb == "sh-lb"
    assert "connection refused" in failed.error
    await rig.cycle(1)
    assert len(rig.kinds("failover.failed")) == 1  # once per streak, not once per cycle
    assert rig.metric("nodevigil_lb_errors_total", lb="sh-lb") == 2
    last_ok = rig.metric("nodevigil_last_reconcile_timestamp_seconds")
    rig.local["sh-lb"].recover()
    await rig.cycle(1)
    assert rig.out() == {"sh-1", "bj-1"}
    assert [e.lb for e in rig.kinds("lb.recovered")] == ["sh-lb"]
    assert rig.metric("nodevigil_last_reconcile_timestamp_seconds") == rig.clock.wall() != last_ok
    await rig.store.close()


async def test_action_failure_is_retried_and_the_loop_keeps_running(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clock=WakeOnlyClock())
    glob = rig.glob
    original = glob.set_addresses
    calls = 0

    async def flaky(record: str, addresses: set[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise LoadBalancerUnavailable("gslb: SERVFAIL")
        await original(record, addresses)

    glob.set_addresses = flaky  # type: ignore[method-assign]
    async with rig.controller:
        rig.given(bj_1="down", bj_2="down")
        rig.bus.publish(_change("bj-1", Verdict.DOWN, "tcp refused").to_event())
        labels = {"lb": "gslb", "action": "set_addresses", "result": "error"}
        await wait_for(lambda: rig.metric("nodevigil_lb_actions_total", **labels) == 1)
        assert len(rig.kinds("failover.failed")) == 1
        rig.bus.publish(_change("bj-2", Verdict.DOWN, "tcp refused").to_event())
        await wait_for(lambda: rig.record() == {SH})

        async def logged() -> bool:  # the cycle records its actions just after applying them
            records = await rig.controller.actions()
            return [r.result for r in records if r.what == "set_addresses"] == ["error", "ok"]

        await poll_until(logged, within=10, what="the action log")
    await rig.store.close()
