"""Scrape benchmark: ``/metrics`` at 1,000 and 10,000 nodes, and what scrapes do to the loop.

Run: ``cd /work/main && .venv/bin/python bench/metrics_bench.py --base /tmp/base16m`` (about
6 minutes; ``--quick``: about 2). ``--base`` is a checkout of the code before the change
(``git worktree add --detach /tmp/base16m <commit>``); without it only this tree is measured.
Options: ``--nodes 1000,10000``, ``--seconds S`` (measured per variant), ``--rounds R``.

Every variant is a child process that imports one tree's code (``--base`` or this one) and
builds what the daemon registers for a fleet of N nodes, one http probe each: the daemon's,
the monitor's and the controller's metrics on one registry (20 sites, 10 services), every node
judged up, each probe with its success and duration. It serves the tree's own ``/metrics``
handler (``nodevigil.app.api.app.metrics``, rendering in a thread as the daemon does) on an
ephemeral loopback port. Meanwhile its event loop plays the probing loop at 1 s per node: a
tick every 10 ms applies N/100 probe results (each sets the probe's two series, as
``Monitor._record`` does, and spends ``--work-us`` of pure-Python CPU: the probing share of
the daemon's cost per probe, 20 µs by default, 0.2 cores at 10,000 nodes), and 5 % of the
nodes flap (a verdict change each 22 s on average). Loop lag is how late each tick wakes, over
the measured window.

The parent plays Prometheus: ``GET /metrics`` every ``--scrape-every`` seconds (or never), and
records each scrape's time to the last byte and its size. Variants are interleaved, base and
this tree in A B B A order per round, scrapes off and on; medians over rounds are printed.

Last, in one child per node count (this tree), the render alone without HTTP: prometheus_client's
own ``generate_latest`` against ``exposition`` on the same registry, interleaved, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent.parent
SITES, SERVICES = 20, 10
TICK = 0.01
FLAP_SHARE, FLAP_EVERY = 0.05, 22.5  # 5 % of nodes, a change each 22.5 s (15 s down of 45)


# --- the child: one tree's metrics under a probing load ----------------------------------------


def _spin(iterations: int) -> int:
    """Pure-Python CPU, holding the GIL as the daemon's per-probe work does."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def _calibrate(us: float) -> int:
    """Iterations of ``_spin`` that take ``us`` microseconds here."""
    n = 20_000
    best = min(_timed(_spin, n) for _ in range(5))
    return max(int(n * us / (best * 1e6)), 0)


def _timed(f: Any, *args: Any) -> float:
    started = time.perf_counter()
    f(*args)
    return time.perf_counter() - started


def _controller_metrics_module(tree: Path) -> Any:
    """failover/controller/metrics.py alone: the controller package's own imports are not
    needed for its metrics (and may be mid-change in a shared tree)."""
    path = tree / "failover" / "controller" / "metrics.py"
    spec = importlib.util.spec_from_file_location("bench_controller_metrics", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(
    nodes: int, tree: Path = HERE
) -> tuple[Any, Any, list[tuple[Any, Any]], list[tuple[str, str]]]:
    """The registry a daemon of ``nodes`` nodes has, filled in; the probes' series."""
    from prometheus_client import CollectorRegistry

    from monitor.metrics import MonitorMetrics
    from monitor.verdicts import Verdict
    from nodevigil.app.metrics import DaemonMetrics

    registry = CollectorRegistry()
    DaemonMetrics(registry)
    monitor = MonitorMetrics(registry)
    controller = _controller_metrics_module(tree).ControllerMetrics(registry)
    sites = [f"site-{i:02d}" for i in range(SITES)]
    services = [(f"svc-{i}", sites[2 * i : 2 * i + 2]) for i in range(SERVICES)]
    controller.show_services(services)
    controller.set_lb_up(["local", "global"], [])
    for site in sites:
        controller.nodes_out.labels(site).set(0)
        controller.panic.labels(site).set(0)
        controller.site_serving.labels(site).set(1)
    for service, _ in services:
        controller.service_available.labels(service).set(1)
    for kind in ("http",):
        for result in ("success", "failure", "inconclusive"):
            monitor.probe_results.labels(kind, result).inc(0)
        monitor.probe_type_duration.labels(kind).observe(0.001)
    fleet = [(f"node-{i:05d}", sites[i % SITES]) for i in range(nodes)]
    series = []
    for name, site in fleet:
        monitor.set_verdict(name, site, Verdict.UNKNOWN)
        success = monitor.probe_success.labels(name, "http")
        duration = monitor.probe_duration.labels(name, "http")
        success.set(1)
        duration.set(0.001)
        series.append((success, duration))
        monitor.set_verdict(name, site, Verdict.UP)
    return registry, monitor, series, fleet


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """Serve the tree's /metrics and play the probing loop; report the loop's lag."""
    from aiohttp import web

    from monitor.verdicts import Verdict
    from nodevigil.app.api import app as api

    registry, monitor, series, fleet = build(args.nodes, args.tree)
    # What the handler reads of ApiContext: the registry, and no metrics token configured.
    config = SimpleNamespace(api=SimpleNamespace(metrics_token_sha256=None))
    context = SimpleNamespace(registry=registry, config=config)
    app = web.Application()
    app[api.CONTEXT] = context  # type: ignore[misc]
    app.router.add_get("/metrics", api.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    spin = _calibrate(args.work_us)
    rng = random.Random(args.seed)
    per_tick = max(len(series) * TICK, 1.0)  # results per tick at a 1 s interval
    flappers = rng.sample(fleet, int(len(fleet) * FLAP_SHARE))
    changes_per_tick = len(flappers) / FLAP_EVERY * TICK
    down: set[str] = set()
    print(json.dumps({"port": port, "module": api.__file__}), flush=True)
    sys.stdin.readline()  # the parent says go (its scraper is ready)
    lags: list[float] = []
    cursor, owed, owed_changes = 0, 0.0, 0.0
    due = time.monotonic()
    measured_until = due + args.seconds
    while (now := time.monotonic()) < measured_until:
        due += TICK
        await asyncio.sleep(max(due - now, 0.0))
        lags.append(max(time.monotonic() - due, 0.0))
        owed += per_tick
        while owed >= 1.0:
            owed -= 1.0
            success, duration = series[cursor]
            cursor = (cursor + 1) % len(series)
            success.set(1)
            duration.set(0.0005 + rng.random() * 0.002)
            _spin(spin)
        owed_changes += changes_per_tick
        while owed_changes >= 1.0:
            owed_changes -= 1.0
            name, site_name = rng.choice(flappers)
            verdict = Verdict.UP if name in down else Verdict.DOWN
            (down.discard if name in down else down.add)(name)
            monitor.set_verdict(name, site_name, verdict)
        if due < time.monotonic() - 1.0:  # more than a second behind: catch up, keep counting
            due = time.monotonic()
    lags.sort()
    result = {
        "ticks": len(lags),
        "lag_p50": lags[len(lags) // 2],
        "lag_p99": lags[int(len(lags) * 0.99)],
        "lag_max": lags[-1],
    }
    print(json.dumps(result), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # serve until the parent's scraper has stopped
    await runner.cleanup()
    return result


def render_only(nodes: int, reps: int) -> dict[str, Any]:
    """generate_latest against exposition on one registry, interleaved (A B B A)."""
    from prometheus_client import generate_latest

    from nodevigil.core.exposition import exposition

    registry, _, series, _ = build(nodes)
    times: dict[str, list[float]] = {"generate_latest": [], "exposition": []}
    sizes = {}
    renders = {"generate_latest": generate_latest, "exposition": exposition}
    rng = random.Random(1)
    for _ in range(reps):
        for name in ("generate_latest", "exposition", "exposition", "generate_latest"):
            for _, duration in series:  # every duration changed since the last scrape
                duration.set(0.0005 + rng.random() * 0.002)
            started = time.perf_counter()
            body = renders[name](registry)
            times[name].append(time.perf_counter() - started)
            sizes[name] = len(body)
    return {
        name: {"median": statistics.median(t), "bytes": sizes[name]} for name, t in times.items()
    }


# --- the parent: Prometheus, and the table -------------------------------------------------


def _scrape(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def run_variant(tree: Path, args: argparse.Namespace, nodes: int, scrape: float) -> dict[str, Any]:
    """One child on ``tree``; scrape it every ``scrape`` seconds (0: never)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "child", "--tree", str(tree)]
    cmd += ["--nodes", str(nodes), "--seconds", str(args.seconds), "--work-us", str(args.work_us)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree
    )
    assert proc.stdin is not None and proc.stdout is not None
    hello = json.loads(proc.stdout.readline())
    assert str(hello["module"]).startswith(str(tree)), (hello, tree)  # the tree's own code
    url = f"http://127.0.0.1:{hello['port']}/metrics"
    times: list[float] = []
    sizes: list[int] = []
    stop = threading.Event()

    def scraper() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            took, size = _scrape(url)
            times.append(took)
            sizes.append(size)
            next_at += scrape
            stop.wait(max(next_at - time.monotonic(), 0.0))

    thread = threading.Thread(target=scraper, daemon=True) if scrape > 0 else None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if thread is not None:
        thread.start()
    line = proc.stdout.readline()
    stop.set()
    if thread is not None:
        thread.join()
    proc.stdin.write("bye\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    result: dict[str, Any] = json.loads(line)
    if times:
        result["scrape_p50"] = statistics.median(times)
        result["scrape_max"] = max(times)
        result["scrapes"] = len(times)
        result["bytes"] = max(sizes)
    return result


def main() -> None:
    """Parse arguments; run the child or the whole benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["parent", "child", "render"], default="parent")
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--base", type=Path, help="a checkout of the code before the change")
    parser.add_argument("--nodes", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scrape-every", type=float, default=1.0)
    parser.add_argument("--work-us", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="10 s a variant, one round")
    args = parser.parse_args()
    if args.role == "child":
        sys.path.insert(0, str(args.tree))
        args.nodes = int(args.nodes)
        asyncio.run(child(args))
        return
    if args.role == "render":
        sys.path.insert(0, str(args.tree))
        print(json.dumps(render_only(int(args.nodes), reps=5)), flush=True)
        return
    if args.quick:
        args.seconds, args.rounds = 10.0, 1
    trees = {"after": HERE} if args.base is None else {"before": args.base, "after": HERE}
    counts = [int(n) for n in args.nodes.split(",")]
    results: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for nodes in counts:
            for scrape in (0.0, args.scrape_every):
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                for name in order + list(reversed(order)):  # A B B A
                    result = run_variant(trees[name], args, nodes, scrape)
                    results.setdefault((name, nodes, scrape), []).append(result)
                    print(f"  {name} {nodes} nodes scrape={scrape:g}s: {result}", flush=True)
    print(f"\nmedians over {args.rounds} round(s) x 2 runs, {args.seconds:g} s each:")
    print("| tree | nodes | scrapes | scrape p50 ms | max ms | body MB | lag p99 ms | lag max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (name, nodes, scrape), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2])):

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        scraped = "none" if not scrape else f"every {scrape:g} s"
        cells = [name, f"{nodes:,}", scraped]
        if scrape:
            cells += [
                f"{med('scrape_p50') * 1e3:.1f}",
                f"{max(r['scrape_max'] for r in runs) * 1e3:.0f}",
                f"{med('bytes') / 1e6:.2f}",
            ]
        else:
            cells += ["-", "-", "-"]
        cells += [f"{med('lag_p99') * 1e3:.1f}", f"{max(r['lag_max'] for r in runs) * 1e3:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print("\nrender alone (this tree, no HTTP, every duration changed), medians of 5 x 2:")
    for nodes in counts:
        out = subprocess.run(
            [sys.executable, __file__, "--role", "render", "--nodes", str(nodes)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(HERE)},
            cwd=HERE,
        )
        figures = json.loads(out.stdout)
        gl, ex = figures["generate_latest"], figures["exposition"]
        print(
            f"  {nodes:,} nodes: generate_latest {gl['median'] * 1e3:.1f} ms, exposition "
            f"{ex['median'] * 1e3:.1f} ms ({gl['median'] / ex['median']:.0f}x), "
            f"{ex['bytes'] / 1e6:.2f} MB"
        )


if __name__ == "__main__":
    main()
