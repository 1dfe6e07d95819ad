"""Replay benchmark: simulated hours per second for 10,000 nodes over a day, 5 % flapping.

Run: ``cd /work/main && .venv/bin/python bench/replay_bench.py`` (about 10 CPU-minutes), options
``--nodes N``, ``--hours H``, ``--flap 0.05``, ``--seed``, ``--reps R``.

The fleet is the controller benchmark's shape at 100 nodes a site: 100 sites behind recording
local load balancers, 50 services of two sites behind a recording global one, one tcp probe a
node at the default 1 s interval (defaults: ``fall: 3``, ``rise: 2``, ``hold_down: 30s``),
two customers with a two-step contingency plan. History for a day: every node passes, except

- 5 % of the nodes flap: bursts of 1 to 8 failed probes, one every 1 to 10 minutes (about
  290 bursts a node a day; those of 3 and more are drains);
- one service's two sites fail wholly for 10 minutes at noon (an incident, notices, SLA minutes).

The runs are built per stretch of equal results, as ``RunFolder`` folds them; ``--check N``
(default 50 nodes) folds those nodes' results one by one with the real ``RunFolder`` and checks
the runs are the same, so the bench replays what the daemon would have recorded.

Measured (CPU of this process, ``time.process_time``, medians of ``--reps``): the whole
``replay`` (judges over the runs, decisions, incidents on a throwaway SQLite store, the SLA
rule) and its parts. Baseline in the same run: the monitor's judge fed every result one by one
(what replay would cost without feeding runs in bulk), timed over the flapping nodes' first
hour and the steady nodes' first minute and scaled to the day (it is linear in results).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.history import Outcome, ProbeRun, RunFolder, expand
from monitor.probes.base import ProbeResult
from nodevigil.app.replay.engine import replay
from nodevigil.app.replay.feed import judges_for
from nodevigil.core.config.schema import Config

PER_SITE = 100
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
VANTAGE = "replaybench"


def config(nodes: int) -> Config:
    """The benchmark's fleet."""
    sites = max(2, nodes // PER_SITE)
    sites += sites % 2
    lbs: dict[str, Any] = {f"lb-{s:03d}": {"type": "recording"} for s in range(sites)}
    lbs["gslb"] = {"type": "recording"}
    return Config.model_validate(
        {
            "vantage": VANTAGE,
            "load_balancers": lbs,
            "sites": [
                {
                    "name": f"s{s:03d}",
                    "address": f"10.{s // 250}.{s % 250}.1",
                    "local_lb": f"lb-{s:03d}",
                }
                for s in range(sites)
            ],
            "services": [
                {
                    "name": f"svc{v:03d}",
                    "sites": [f"s{2 * v:03d}", f"s{2 * v + 1:03d}"],
                    "global_lb": "gslb",
                    "record": f"svc{v:03d}",
                }
                for v in range(sites // 2)
            ],
            "nodes": [
                {
                    "name": f"n{i:05d}",
                    "site": f"s{i % sites:03d}",
                    "probes": [{"type": "tcp", "address": "127.0.0.1:9"}],
                }
                for i in range(nodes)
            ],
            "notifiers": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/hook"}},
            "contingency_plans": {
                "standard": {
                    "steps": [
                        {"after": "0s", "notify": ["hook"]},
                        {"after": "5m", "notify": ["hook"]},
                    ]
                }
            },
            "customers": [
                {"id": "acme", "services": ["svc000"], "plan": "standard"},
                {"id": "globex", "services": ["svc000", "svc001"], "plan": "standard"},
            ],
        }
    )


def stretches(
    node: int, flapping: bool, outage: bool, seconds: float, rng: random.Random
) -> list[tuple[bool, int, int]]:
    """A node's day as (passed, first round, rounds) stretches at one round a second."""
    fails: list[tuple[int, int]] = []
    if flapping:
        t = rng.uniform(60, 600)
        while t < seconds:
            fails.append((int(t), rng.randint(1, 8)))
            t += rng.uniform(60, 600)
    if outage:
        fails.append((12 * 3600, 600))
        fails.sort()
    out: list[tuple[bool, int, int]] = []
    at, total = 0, int(seconds)
    for start, length in fails:
        if start >= total or start < at:
            continue
        if start > at:
            out.append((True, at, start - at))
        n = min(length, total - start)
        out.append((False, start, n))
        at = start + n
    if at < total:
        out.append((True, at, total - at))
    return out


def runs_of(name: str, phase: float, parts: list[tuple[bool, int, int]]) -> list[ProbeRun]:
    """The runs ``RunFolder`` makes of a node's stretches (built directly: see ``--check``)."""
    out = []
    for passed, first, count in parts:
        outcome = Outcome.PASS if passed else Outcome.FAIL
        detail = "ok" if passed else "connection refused"
        a = T0 + phase + first
        out.append(ProbeRun(name, "tcp", VANTAGE, outcome, a, a + count - 1, count, detail))
    return out


def folded(name: str, phase: float, parts: list[tuple[bool, int, int]]) -> list[ProbeRun]:
    """The same, with the real ``RunFolder`` fed every result."""
    folder = RunFolder()
    runs = []
    for passed, first, count in parts:
        detail = "ok" if passed else "connection refused"
        for k in range(count):
            at = T0 + phase + first + k
            result = ProbeResult(passed, detail, 0.001, at, VANTAGE)
            if (run := folder.observe(name, "tcp", result)) is not None:
                runs.append(run)
    return runs + folder.close_all()


def history(cfg: Config, hours: float, flap: float, seed: int, check: int) -> list[ProbeRun]:
    """The day's runs, the first ``check`` nodes checked against ``RunFolder``."""
    rng = random.Random(seed)
    seconds = hours * 3600
    outage_sites = {"s000", "s001"}
    runs: list[ProbeRun] = []
    for i, node in enumerate(cfg.nodes):
        flapping = rng.random() < flap
        parts = stretches(
            i, flapping, node.site in outage_sites and seconds > 12 * 3600, seconds, rng
        )
        phase = rng.random()
        mine = runs_of(node.name, phase, parts)
        if i < check and folded(node.name, phase, parts) != mine:
            raise SystemExit(f"{node.name}: runs differ from RunFolder's")
        runs += mine
    runs.sort(key=lambda r: r.first)
    return runs


def _before(horizon: float, result: ProbeResult) -> bool:
    return result.at < horizon


def naive_rate(cfg: Config, runs: list[ProbeRun], seconds: float) -> tuple[float, int]:
    """CPU seconds per result of the judge fed one result at a time, on a sample."""
    judges = judges_for(cfg)
    flappers = {r.node for r in runs if r.outcome is Outcome.FAIL}
    sample = [r for r in runs if r.first < T0 + (3600 if r.node in flappers else 60)]
    results = []
    for r in sample:
        horizon = T0 + (3600 if r.node in flappers else 60)
        results += [(x.at, r.node, x) for x in takewhile(partial(_before, horizon), expand(r))]
    results.sort(key=lambda item: item[0])
    start = time.process_time()
    for at, node, result in results:
        judges[node].observe("tcp", result, at)
    took = time.process_time() - start
    return took / max(1, len(results)), len(results)


def main() -> None:
    """Build the history, replay it, print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--flap", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--check", type=int, default=50)
    args = p.parse_args()
    cfg = config(args.nodes)
    t = time.process_time()
    runs = history(cfg, args.hours, args.flap, args.seed, args.check)
    built = time.process_time() - t
    results = sum(r.count for r in runs)
    until = T0 + args.hours * 3600
    print(
        f"history: {args.nodes} nodes x {args.hours:g} h, {args.flap:.0%} flapping: "
        f"{len(runs):,} runs for {results:,} results (built in {built:.1f} s CPU; "
        f"{args.check} nodes checked against RunFolder)"
    )
    totals: list[float] = []
    parts: dict[str, list[float]] = {}
    result = None
    for _ in range(args.reps):
        t = time.process_time()
        result = asyncio.run(replay(cfg, runs, T0, until))
        totals.append(time.process_time() - t)
        for part, seconds in result.cpu.items():
            parts.setdefault(part, []).append(seconds)
    assert result is not None
    total = statistics.median(totals)
    kinds: dict[str, int] = {}
    for h in result.happenings:
        kinds[h.kind] = kinds.get(h.kind, 0) + 1
    print(
        f"replay: {total:.1f} s CPU (median of {args.reps}) = "
        f"{args.hours / total:.2f} simulated hours per second"
    )
    cpu = {name: statistics.median(values) for name, values in parts.items()}
    print(
        f"  judges over runs {cpu['judges']:.1f} s ({result.stats.fed:,} results fed one by "
        f"one of {result.stats.results:,}); decisions {cpu['decisions']:.1f} s "
        f"({result.decisions:,} decisions, {cpu['decisions'] / result.decisions * 1e3:.2f} ms "
        f"each); incidents and SLA {cpu['incidents_sla']:.2f} s"
    )
    print(f"  did: {dict(sorted(kinds.items()))}; SLA minutes {result.minutes}")
    per_result, sampled = naive_rate(cfg, runs, args.hours * 3600)
    naive = per_result * results
    print(
        f"baseline, the judge fed every result: {per_result * 1e9:.0f} ns a result "
        f"({sampled:,} sampled) -> {naive:.0f} s for these {results:,} results, "
        f"{naive / cpu['judges']:.0f}x the bulk feed's {cpu['judges']:.1f} s; a replay fed "
        f"result by result: {naive + cpu['decisions']:.0f} s = "
        f"{args.hours / (naive + cpu['decisions']):.2f} simulated hours per second"
    )


if __name__ == "__main__":
    main()
