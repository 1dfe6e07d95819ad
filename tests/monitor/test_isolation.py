"""A vantage that is itself cut off says so: the rules of ``monitor.isolation``, one by one."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry

from monitor.isolation import IsolationCheck, IsolationJudge, IsolationSettings, VantageMetrics
from monitor.metrics import MonitorMetrics
from monitor.vantage_events import VantageIsolated, VantageRejoined
from monitor.verdicts import Verdict
from nodevigil.core.events import EventTypes, stored_form

UP, DOWN, UNKNOWN = Verdict.UP, Verdict.DOWN, Verdict.UNKNOWN
ONCE = IsolationSettings(enter_after=1, leave_after=1)  # no hysteresis: one check decides


def fleet(count: int, verdict: Verdict) -> dict[str, Verdict]:
    """``count`` nodes n00, n01... all with ``verdict``."""
    return {f"n{i:02d}": verdict for i in range(count)}


def votes(nodes: Mapping[str, Verdict], **by_vantage: Verdict) -> dict[str, dict[str, Verdict]]:
    """Every node of ``nodes`` voted the same by each named other vantage."""
    return {node: dict(by_vantage) for node in nodes}


def check(
    judge: IsolationJudge,
    *,
    canaries: Mapping[str, bool | None] | None = None,
    own: Mapping[str, Verdict] | None = None,
    others: Mapping[str, Mapping[str, Verdict]] | None = None,
) -> IsolationCheck:
    return judge.check(canaries=canaries or {}, own=own or {}, others=others or {})


# --- canaries --------------------------------------------------------------------------------


def test_canaries_failing_at_the_share_look_isolated() -> None:
    judge = IsolationJudge(ONCE)
    done = judge.check(
        canaries={"tcp://etcd1:2379": False, "tcp://etcd2:2379": True},
        own={},
        others={},
        canary_detail={"tcp://etcd1:2379": "connection refused"},
    )
    assert done.isolated and done.changed and judge.isolated
    assert done.reason == "1 of 2 canaries fail (tcp://etcd1:2379: connection refused)"


def test_canaries_below_the_share_are_not_isolation() -> None:
    judge = IsolationJudge(ONCE)
    done = check(judge, canaries={"a": False, "b": True, "c": True})
    assert not done.isolated and not done.changed and not done.looks_isolated
    assert done.reason.startswith("1 of 3 canaries fail (a); sees 0 of 0 nodes")


def test_canaries_not_checked_yet_are_ignored() -> None:
    judge = IsolationJudge(ONCE)
    assert not check(judge, canaries={"a": None, "b": None}).looks_isolated  # none checked
    # One checked, and it fails: 1 of 1 is the whole share.
    done = check(judge, canaries={"a": None, "b": None, "c": False})
    assert done.isolated and done.reason == "1 of 1 canary fails (c)"


def test_a_long_list_of_failing_canaries_is_cut_short() -> None:
    judge = IsolationJudge(ONCE)
    targets = {f"tcp://10.0.0.{i}:2379": False for i in range(6)}
    done = judge.check(
        canaries=targets, own={}, others={}, canary_detail=dict.fromkeys(targets, "timed out")
    )
    assert done.reason == (
        "6 of 6 canaries fail (tcp://10.0.0.0:2379: timed out; tcp://10.0.0.1:2379: timed out; "
        "tcp://10.0.0.2:2379: timed out; and 3 more)"
    )


# --- nodes the other vantages dispute -------------------------------------------------------


def test_seeing_down_what_the_others_see_up_is_isolation() -> None:
    judge = IsolationJudge(ONCE)
    own = fleet(60, UP) | fleet(40, DOWN)  # the first 40 of 60 down here
    others = votes(fleet(60, UP), **{"ops-2": UP, "ops-3": UP})
    done = check(judge, own=own, others=others)
    assert done.isolated and done.changed
    assert done.reason == "sees 40 of 60 nodes down that ops-2, ops-3 see up"


def test_a_mass_outage_the_others_confirm_is_not_isolation() -> None:
    judge = IsolationJudge(ONCE)
    own = fleet(60, DOWN)
    # One other vantage sees them down, one up: a single "down" vote confirms a node.
    assert not check(judge, own=own, others=votes(own, **{"ops-2": DOWN})).looks_isolated
    assert not check(judge, own=own, others=votes(own, **{"ops-2": DOWN, "ops-3": UP})).isolated


def test_nodes_without_votes_from_the_others_count_as_neither() -> None:
    judge = IsolationJudge(ONCE)
    own = fleet(60, DOWN)
    assert not check(judge, own=own, others={}).looks_isolated
    assert not check(judge, own=own, others=votes(own, **{"ops-2": UNKNOWN})).looks_isolated
    # 29 of 60 disputed (the rest unvoted) is not more than half; 31 is.
    assert not check(judge, own=own, others=votes(fleet(29, DOWN), **{"ops-2": UP})).isolated
    done = check(judge, own=own, others=votes(fleet(31, DOWN), **{"ops-2": UP}))
    assert done.isolated and done.reason == "sees 31 of 60 nodes down that ops-2 sees up"


def test_the_share_must_be_exceeded_among_the_nodes_judged() -> None:
    judge = IsolationJudge(ONCE)
    own = fleet(10, DOWN) | {f"u{i}": UP for i in range(10)} | {f"x{i}": UNKNOWN for i in range(50)}
    others = votes(own, **{"ops-2": UP})
    done = check(judge, own=own, others=others)  # 10 of 20 judged: exactly half, not more
    assert not done.looks_isolated
    assert done.reason.endswith("sees 10 of 20 nodes down that ops-2 sees up")
    own["u0"] = DOWN
    assert check(judge, own=own, others=others).isolated  # 11 of 20


def test_fewer_than_min_nodes_never_count_by_share() -> None:
    judge = IsolationJudge(ONCE)  # min_nodes 3
    own = fleet(2, DOWN)
    others = votes(own, **{"ops-2": UP})
    assert not check(judge, own=own, others=others).looks_isolated  # 2 of 2, but only 2
    own = fleet(3, DOWN)
    assert check(judge, own=own, others=votes(own, **{"ops-2": UP})).isolated


def test_a_node_judged_up_here_is_never_disputed() -> None:
    judge = IsolationJudge(ONCE)
    own = fleet(60, UP)
    assert not check(judge, own=own, others=votes(own, **{"ops-2": DOWN})).looks_isolated


# --- hysteresis ------------------------------------------------------------------------------


def test_isolation_is_declared_after_enter_after_checks_and_left_after_leave_after() -> None:
    judge = IsolationJudge(IsolationSettings(enter_after=2, leave_after=3))
    cut, fine = {"a": False, "b": False}, {"a": True, "b": True}
    first = check(judge, canaries=cut)
    assert first.looks_isolated and not first.isolated and not first.changed
    assert first.reason.startswith("looks isolated (1 of 2 checks): 2 of 2 canaries fail")
    assert not check(judge, canaries=fine).looks_isolated  # a clean check resets the count
    assert not check(judge, canaries=cut).isolated
    entered = check(judge, canaries=cut)
    assert entered.isolated and entered.changed and entered.reason == "2 of 2 canaries fail (a; b)"
    assert not check(judge, canaries=cut).changed  # still isolated: no second change
    for n in (1, 2):
        pending = check(judge, canaries=fine)
        assert pending.isolated and not pending.changed
        assert pending.reason.startswith(f"looks clean ({n} of 3 checks): 2 of 2 canaries answer")
    assert check(judge, canaries=cut).isolated  # a bad check restarts the clean count
    for _ in range(2):
        assert check(judge, canaries=fine).isolated
    left = check(judge, canaries=fine)
    assert not left.isolated and left.changed and not judge.isolated
    assert left.reason == (
        "2 of 2 canaries answer; sees 0 of 0 nodes down that the other vantages see up"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("share", 1.5),
        ("canary_share", 0.0),
        ("min_nodes", 0),
        ("enter_after", 0),
        ("leave_after", -1),
    ],
)
def test_settings_are_checked_at_once(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        IsolationSettings(**{field: value})  # type: ignore[arg-type]


# --- events ----------------------------------------------------------------------------------


def test_a_change_is_one_event_that_round_trips() -> None:
    judge = IsolationJudge(ONCE)
    own = fleet(5, DOWN)
    entered = check(judge, canaries={"a": True}, own=own, others=votes(own, **{"ops-2": UP}))
    event = entered.to_event(vantage="ops-1", at=10.0)
    assert isinstance(event, VantageIsolated) and event.kind == "vantage.isolated"
    assert (event.subject, event.vantage, event.at) == ("ops-1", "ops-1", 10.0)
    assert event.payload() == {
        "reason": "sees 5 of 5 nodes down that ops-2 sees up",
        "canaries_failed": 0,
        "canaries_checked": 1,
        "nodes_disputed": 5,
        "nodes_judged": 5,
    }
    types = EventTypes([VantageIsolated, VantageRejoined])
    assert types.from_dict(json.loads(json.dumps(stored_form(event)))) == event
    still = check(judge, canaries={"a": True}, own=own, others=votes(own, **{"ops-2": UP}))
    assert still.isolated and still.to_event(vantage="ops-1", at=11.0) is None  # no change
    left = check(judge, canaries={"a": True}, own=fleet(5, UP), others={})
    rejoined = left.to_event(vantage="ops-1", at=12.0)
    assert isinstance(rejoined, VantageRejoined) and rejoined.kind == "vantage.rejoined"
    assert (
        rejoined.detail()
        == "1 of 1 canary answers; sees 0 of 5 nodes down that the other vantages see up"
    )


# --- metrics ---------------------------------------------------------------------------------


def test_every_process_exports_isolation_and_the_wiring_shares_the_gauges() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry)  # a single host: isolated 0, no canary series
    assert registry.get_sample_value("nodevigil_vantage_isolated") == 0
    metrics = VantageMetrics(registry)  # the cluster wiring's: the same gauges, no clash
    metrics.set_isolated(True)
    assert registry.get_sample_value("nodevigil_vantage_isolated") == 1

    def canary(target: str) -> float | None:
        return registry.get_sample_value("nodevigil_vantage_canary_up", {"target": target})

    metrics.set_canaries({"tcp://a:2379": True, "tcp://b:2379": False, "tcp://c:2379": None})
    assert [canary(t) for t in ("tcp://a:2379", "tcp://b:2379", "tcp://c:2379")] == [1, 0, None]
    VantageMetrics(registry).set_canaries({"tcp://b:2379": True})  # a gone, b answers again
    assert [canary(t) for t in ("tcp://a:2379", "tcp://b:2379")] == [None, 1]
