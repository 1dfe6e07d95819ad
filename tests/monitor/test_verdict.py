"""Verdict logic with injected time: thresholds, policies, decisive and inconclusive results."""

from __future__ import annotations

import random

from monitor.probes.base import ProbeResult
from monitor.verdict import NodeJudge
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import FlapDamping

FLAP = FlapDamping.model_validate({"window": "60s", "max_changes": 4, "hold": "30s"})


def result(ok: bool | None, decisive: bool = False) -> ProbeResult:
    return ProbeResult(ok, "seen", 0.001, 0.0, "test", decisive)


def judge(probes: tuple[str, ...] = ("http",), require: str = "all", **kw: int) -> NodeJudge:
    return NodeJudge.create(
        list(probes), rise=kw.get("rise", 2), fall=kw.get("fall", 3), require=require, flap=FLAP
    )


def feed(j: NodeJudge, probe: str, oks: list[bool | None], start: float = 0.0) -> list[Verdict]:
    """Feed results one second apart; return the verdicts reached by transitions."""
    seen = []
    for i, ok in enumerate(oks):
        t = j.observe(probe, result(ok), start + i)
        if t is not None:
            seen.append(t.new)
    return seen


def test_new_node_is_unknown_until_rise_successes() -> None:
    j = judge()
    assert j.verdict is Verdict.UNKNOWN
    assert feed(j, "http", [True]) == []
    assert feed(j, "http", [True], start=1) == [Verdict.UP]


def test_fall_consecutive_failures_take_it_down_and_a_success_resets() -> None:
    j = judge()
    feed(j, "http", [True, True])
    assert feed(j, "http", [False, False, True, False, False], start=2) == []
    assert j.verdict is Verdict.UP
    assert feed(j, "http", [False], start=7) == [Verdict.DOWN]


def test_reason_names_the_probe_and_what_it_saw() -> None:
    j = judge()
    feed(j, "http", [True, True])
    transition = None
    for i in range(3):
        transition = j.observe("http", ProbeResult(False, "connection refused", 0, 0, "v"), 3 + i)
    assert transition is not None
    assert transition.reason == "http: connection refused (3 consecutive failures)"
    assert transition.probe == "http" and transition.old is Verdict.UP


def test_inconclusive_results_move_nothing() -> None:
    j = judge()
    feed(j, "http", [True, True])
    assert feed(j, "http", [False, False, None, None, None], start=2) == []
    assert j.verdict is Verdict.UP
    assert feed(j, "http", [False], start=7) == [Verdict.DOWN]


def test_decisive_failure_is_immediate() -> None:
    j = judge()
    feed(j, "http", [True, True])
    t = j.observe("http", result(False, decisive=True), 3)
    assert t is not None and t.new is Verdict.DOWN


def test_require_all_versus_any() -> None:
    all_ = judge(("a", "b"))
    any_ = judge(("a", "b"), require="any")
    for j in (all_, any_):
        feed(j, "a", [True, True])
        feed(j, "b", [True, True])
        assert j.verdict is Verdict.UP
        feed(j, "b", [False, False, False], start=2)
    assert all_.verdict is Verdict.DOWN
    assert any_.verdict is Verdict.UP
    feed(any_, "a", [False, False, False], start=5)
    assert any_.verdict is Verdict.DOWN


def test_flapping_node_is_held_down_until_stable() -> None:
    j = judge(rise=1, fall=1)
    now = 0.0
    verdicts = []
    for i in range(10):  # up/down every second: far more than 4 changes a minute
        t = j.observe("http", result(i % 2 == 0), now)
        now += 1
        if t is not None:
            verdicts.append(t.new)
    assert j.flapping and j.verdict is Verdict.DOWN
    # Now stable up: still held down until the hold time has passed with no change.
    assert j.observe("http", result(True), now) is None
    assert j.tick(now + 29) is None
    t = j.tick(now + 31)
    assert t is not None and t.new is Verdict.UP and not j.flapping


def test_random_twenty_percent_loss_never_trips_default_thresholds_with_hedging() -> None:
    """Probe rounds fail only when both hedged attempts are lost (0.2 * 0.2 = 4 %)."""
    rng = random.Random(7)
    j = judge()
    feed(j, "http", [True, True])
    oks = [not (rng.random() < 0.2 and rng.random() < 0.2) for _ in range(3600)]
    assert Verdict.DOWN not in feed(j, "http", oks, start=2)
