"""Feeding runs in bulk gives exactly the verdicts the judge reaches fed result by result."""

from __future__ import annotations

import heapq
import random

import pytest

from monitor.history import Outcome, ProbeRun, expand
from monitor.probes.base import ProbeResult
from nodevigil.app.replay.feed import judges_for, verdict_changes
from nodevigil.core.config.schema import Config
from tests.replay.helpers import fold

T0 = 1_767_225_600.0


def _config(fall: int = 3, rise: int = 2, probes: int = 2) -> Config:
    probe = [
        {"type": "tcp", "name": f"p{i}", "address": f"127.0.0.1:{9 + i}"} for i in range(probes)
    ]
    return Config.model_validate(
        {
            "vantage": "v1",
            "defaults": {
                "rise": rise,
                "fall": fall,
                "flap": {"window": "60s", "max_changes": 3, "hold": "30s"},
            },
            "sites": [{"name": "s", "address": "203.0.113.1"}],
            "nodes": [{"name": f"n{i}", "site": "s", "probes": probe} for i in range(6)],
        }
    )


def _history(seed: int, config: Config, seconds: int = 3600) -> list[ProbeRun]:
    """Per probe: long good stretches, bursts of flapping, inconclusive and decisive ones."""
    rng = random.Random(seed)
    stream: list[tuple[float, str, str, ProbeResult]] = []
    for node in config.nodes:
        for k, spec in enumerate(node.probes):
            state, t = True, T0 + rng.random()
            while t < T0 + seconds:
                if rng.random() < 0.02:
                    state = not state
                r = rng.random()
                ok: bool | None = state if r > 0.03 else (not state if r > 0.01 else None)
                decisive = ok is False and rng.random() < 0.01
                stream.append(
                    (t, node.name, spec.label, ProbeResult(ok, "x", 0.0, t, "v1", decisive))
                )
                t += 1.0 + 0.1 * k
    stream.sort(key=lambda item: item[0])
    runs: list[ProbeRun] = []
    by_probe: dict[str, list[tuple[str, ProbeResult]]] = {}
    for _, name, label, result in stream:
        by_probe.setdefault(label, []).append((name, result))
    for label, items in by_probe.items():
        runs += fold(items, probe=label)
    return sorted(runs, key=lambda r: r.first)


def _naive(config: Config, runs: list[ProbeRun]) -> list[tuple[str, float, str, str]]:
    judges = judges_for(config)
    per_run = [
        [(r.at, i, run.node, run.probe, r) for r in expand(run)] for i, run in enumerate(runs)
    ]
    results = heapq.merge(*per_run)
    out = []
    for at, _, node, probe, res in results:
        t = judges[node].observe(probe, res, at)
        if t is not None:
            out.append((node, at, t.new.value, t.reason))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("fall", [1, 3])
def test_bulk_feed_matches_result_by_result(seed: int, fall: int) -> None:
    config = _config(fall=fall)
    runs = _history(seed, config)
    changes, stats = verdict_changes(config, runs)
    got = [(c.node, c.at, c.transition.new.value, c.transition.reason) for c in changes]
    assert got == _naive(config, runs)
    assert any(c.transition.flapping for c in changes)  # the flap hold is exercised
    assert any("stable for the flap hold" in c.transition.reason for c in changes)  # and ends
    assert stats.fed < stats.results / 2  # and most results went in bulk


def test_runs_of_other_vantages_and_unknown_nodes_are_ignored() -> None:
    config = _config()
    run = ProbeRun("n0", "p0", "v2", Outcome.FAIL, T0, T0 + 10, 11, "x")
    ghost = ProbeRun("ghost", "p0", "v1", Outcome.FAIL, T0, T0 + 10, 11, "x")
    changes, stats = verdict_changes(config, [run, ghost])
    assert changes == [] and stats.ignored_runs == 2
