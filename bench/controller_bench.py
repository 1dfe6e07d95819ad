"""Controller benchmark: verdict -> load-balancer action at 1,000 and 10,000 nodes, one run.

Run: ``cd /work/main && .venv/bin/python bench/controller_bench.py`` (about 4 minutes), or
``--base PATH`` to set another checkout of nodevigil beside this one (``git worktree add
/tmp/base16 HEAD``): the two alternate A B B A at each fleet size and the table shows both.
Options: ``--nodes 1000,10000``, ``--seconds S`` (measured per run, default 30), ``--seed``.

Each run is a child process holding only the real ``Controller`` loop (``async with``) on the
load benchmark's fleet (20 sites behind recording local load balancers, 10 services of two
sites behind a recording global one, ``hold_down: 0s``), its SQLite store in a temp dir
(``synchronous=FULL``, as shipped), and a verdict source the benchmark drives: 5 % of the nodes
flap, each going down and up about every 45 s (the load benchmark's rate: ~22 verdict changes a
second at 10,000 nodes), each change published on the bus as the monitor publishes it. Measured:
from the verdict's publication to the recording load balancer receiving the ``set_state`` of
that server (both on ``time.perf_counter``), and the child's CPU over the window. No probes run:
this is the controller's own share of verdict -> action (``load_bench.py`` measures the whole
daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SITES, SERVICES = 20, 10
FLAP_SHARE, PERIOD = 0.05, 45.0


def _config(nodes: int) -> dict[str, Any]:
    lbs: dict[str, Any] = {f"lb-{s:02d}": {"type": "recording"} for s in range(SITES)}
    lbs["gslb"] = {"type": "recording"}
    return {
        "vantage": "controllerbench",
        "failover": {"hold_down": "0s"},
        "load_balancers": lbs,
        "sites": [
            {"name": f"s{s:02d}", "address": f"198.51.100.{s + 1}", "local_lb": f"lb-{s:02d}"}
            for s in range(SITES)
        ],
        "services": [
            {
                "name": f"svc{v:02d}",
                "sites": [f"s{2 * v:02d}", f"s{2 * v + 1:02d}"],
                "global_lb": "gslb",
                "record": f"svc{v:02d}",
            }
            for v in range(SERVICES)
        ],
        "nodes": [
            {
                "name": f"n{i:05d}",
                "site": f"s{i % SITES:02d}",
                "probes": [{"type": "tcp", "address": "127.0.0.1:9"}],
            }
            for i in range(nodes)
        ],
    }


async def _run(nodes: int, seconds: float, seed: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from failover.controller import Controller
    from failover.controller.decide import site_backend
    from failover.lb.recording import RecordingGlobalLoadBalancer, RecordingLocalLoadBalancer
    from monitor.verdicts import Verdict, VerdictChange
    from nodevigil.core.clock import SystemClock
    from nodevigil.core.config.schema import Config
    from nodevigil.core.events import EventBus
    from nodevigil.state.sqlite.controller import SqliteControllerStore

    config = Config.model_validate(_config(nodes))
    local: dict[str, RecordingLocalLoadBalancer] = {}
    server_of: dict[str, tuple[str, str]] = {}
    for node in config.nodes:
        site = config.site(node.site)
        assert site is not None and site.local_lb is not None
        lb = local.setdefault(
            site.local_lb, RecordingLocalLoadBalancer(site.local_lb, clock=time.perf_counter)
        )
        lb.add_server(site_backend(config, site), node.server_name)
        server_of[node.name] = (site.local_lb, node.server_name)
    glob = RecordingGlobalLoadBalancer("gslb", clock=time.perf_counter)
    for svc in config.services:
        glob.records[str(svc.record)] = {
            s.address for name in svc.sites if (s := config.site(name)) is not None
        }

    class Source:
        def __init__(self) -> None:
            self.current = {n.name: Verdict.UP for n in config.nodes}

        def verdicts(self) -> dict[str, Verdict]:
            return self.current

    source, bus = Source(), EventBus()
    rng = random.Random(seed)
    flapping = rng.sample([n.name for n in config.nodes], max(1, int(nodes * FLAP_SHARE)))
    rate = len(flapping) * 2 / PERIOD  # verdict changes a second
    sent: list[tuple[str, Verdict, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteControllerStore(Path(tmp) / "state" / "nodevigil.db")
        controller = Controller(
            config=config,
            verdicts=source,
            bus=bus,
            clock=SystemClock(),
            local_lbs=local,
            global_lbs={"gslb": glob},
            store=store,
            registry=CollectorRegistry(),
        )
        async with controller:
            await asyncio.sleep(2.0 + nodes / 2000)  # warm-up: the first full passes
            for lb in local.values():
                lb.calls.clear()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            deadline = wall0 + seconds
            while time.perf_counter() < deadline:
                await asyncio.sleep(rng.expovariate(rate))
                node = rng.choice(flapping)
                old = source.current[node]
                new = Verdict.UP if old is Verdict.DOWN else Verdict.DOWN
                source.current[node] = new
                change = VerdictChange(node, node, old, new, "bench", "tcp", time.time(), "b")
                sent.append((node, new, time.perf_counter()))
                bus.publish(change.to_event())
            await asyncio.sleep(2.0)  # the last changes reach the load balancers
            cpu = time.process_time() - cpu0
            window = time.perf_counter() - wall0
        await store.close()
    calls: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for name, lb in local.items():
        for call in lb.calls_to("set_state"):
            _, server, state = call.args
            calls.setdefault((name, server), []).append((call.at, state.value))
    lags, missing = [], 0
    following: dict[str, float] = {}  # node -> time of its next change
    for node, new, at in reversed(sent):
        until = following.get(node, float("inf"))
        following[node] = at
        want = "ready" if new is Verdict.UP else "maint"
        hits = [t for t, s in calls.get(server_of[node], []) if s == want and at <= t < until]
        if hits:
            lags.append(min(hits) - at)
        else:
            missing += 1  # changed back before any cycle saw it: no action was needed
    return {
        "nodes": nodes,
        "changes": len(sent),
        "lags": lags,
        "missing": missing,
        "cpu": cpu,
        "window": window,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _child(repo: Path, nodes: int, seconds: float, seed: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--role",
            "run",
            "--repo",
            str(repo),
            "--nodes",
            str(nodes),
            "--seconds",
            str(seconds),
            "--seed",
            str(seed),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=repo,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument("--nodes", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    if args.role == "run":
        sys.path.insert(0, str(args.repo))
        result = asyncio.run(_run(int(args.nodes), args.seconds, args.seed))
        print(json.dumps(result))
        return
    here = Path(__file__).resolve().parent.parent
    versions = {"after": here} | ({"before": args.base.resolve()} if args.base else {})
    order = ["before", "after", "after", "before"] if args.base else ["after"]
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for nodes in (int(n) for n in args.nodes.split(",")):
        for i, name in enumerate(order):
            r = _child(versions[name], nodes, args.seconds, args.seed + i)
            rows.setdefault((name, nodes), []).append(r)
            print(
                f"  {name:6} {nodes:6} nodes: {len(r['lags'])} actions, p50 "
                f"{_quantile(r['lags'], 0.5) * 1e3:.1f} ms",
                flush=True,
            )
    print(
        f"\nverdict -> load-balancer action, {args.seconds:g} s measured per run "
        f"({'A B B A' if args.base else 'one run'} per size)"
    )
    print(
        f"{'version':8} {'nodes':>6} {'changes':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'CPU %':>6} {'never sent':>10}"
    )
    p50: dict[tuple[str, int], float] = {}
    for (name, nodes), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0][::-1])):
        lags = [x for r in runs for x in r["lags"]]
        cpu = statistics.median(r["cpu"] / r["window"] * 100 for r in runs)
        p50[(name, nodes)] = _quantile(lags, 0.5)
        print(
            f"{name:8} {nodes:>6} {sum(r['changes'] for r in runs):>8} "
            f"{_quantile(lags, 0.5) * 1e3:>8.1f} {_quantile(lags, 0.99) * 1e3:>8.1f} "
            f"{max(lags) * 1e3:>8.1f} {cpu:>6.1f} {sum(r['missing'] for r in runs):>10}"
        )
    sizes = sorted({n for _, n in rows})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for name in versions:
            ratio = p50[(name, large)] / p50[(name, small)]
            print(f"{name}: p50 at {large} / p50 at {small} nodes = {ratio:.2f}x")


if __name__ == "__main__":
    main()
