"""Probe-engine benchmark: nodevigil against Prometheus' blackbox_exporter, and 10,000 nodes.

Run: ``cd /work/main && .venv/bin/python bench/probe_bench.py`` (about 4 minutes; ``--quick``
for about 1 minute). Everything listens on 127.0.0.1 ephemeral ports.

1. A light HTTP target server (bench/common.py) runs in its own process on a few ports.
2. Peer: the Debian ``prometheus-blackbox-exporter`` with an ``http_2xx`` module, driven as
   Prometheus drives it: a load generator process keeps a fixed number of concurrent
   ``GET /probe?target=...&module=http_2xx`` requests in flight for a fixed time. Only the
   exporter's CPU seconds count (user + sys, psutil), not the load generator's.
3. nodevigil: the real ``Monitor`` (HttpProber with hedged attempts, NodeJudge, the jittered
   scheduler, MonitorMetrics) in a child process, watching a generated configuration of nodes
   with one http probe each against the same targets. Probes are read from the counter
   ``nodevigil_probe_results_total``; CPU seconds are the child's own.
   Both are measured after a warm-up, in interleaved rounds; the table shows medians and the
   ratio nodevigil / blackbox of probes per CPU-second.
4. Scale: 10,000 nodes at a 1 s interval: achieved probe rate, CPU (cores), RSS, event-loop lag
   (DaemonMetrics.watch_loop_lag) and schedule lateness (how late each probe's sleep returned
   against its due time), then a short cProfile of the same load (top functions).

Child roles (``--role loadgen`` / ``--role nodevigil``) are internal: the script starts itself.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import pstats
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOOPBACK,
    Child,
    cpu_seconds,
    free_port,
    median,
    quantile,
    raise_fd_limit,
    rss_mb,
    run_json,
    start_targets,
)

EXPORTER = "/usr/bin/prometheus-blackbox-exporter"
TARGET_PORTS = 8  # targets look like several nodes; one process keeps the target's CPU small
BLACKBOX_MODULES = """\
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
"""


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part runs (the full run, or ``--quick``)."""

    rounds: int
    window: float  # measured seconds per comparison round
    warmup: float
    concurrency: int  # blackbox: concurrent /probe requests, as many parallel scrapes
    compare_nodes: int  # nodevigil: nodes (one http probe each) in a comparison round
    compare_interval: float
    scale_nodes: int
    scale_window: float
    scale_warmup: float
    profile_window: float
    ramp_window: float  # measured seconds per step of the search for the sustained rate
    ramp_steps: int  # bisection steps between the comparison size and the scale size


FULL = Plan(3, 8.0, 2.0, 32, 2000, 1.0, 10_000, 60.0, 5.0, 8.0, 6.0, ramp_steps=3)
QUICK = Plan(2, 3.0, 1.5, 32, 2000, 1.0, 10_000, 30.0, 3.0, 4.0, 3.0, ramp_steps=0)


# --- the blackbox_exporter side --------------------------------------------------------------


@contextlib.contextmanager
def blackbox_exporter(workdir: Path) -> Iterator[tuple[Child, str]]:
    """Start the exporter on a loopback port with our module file; yield it and its base URL."""
    import subprocess

    config = workdir / "blackbox.yml"
    config.write_text(BLACKBOX_MODULES)
    for _ in range(5):  # free_port can race with another program; try a few ports
        port = free_port()
        process = subprocess.Popen(
            [
                EXPORTER,
                f"--config.file={config}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://{LOOPBACK}:{port}"
        if _wait_healthy(base, process):
            child = Child(process, {"port": port})  # type: ignore[arg-type]
            try:
                yield child, base
            finally:
                child.process.terminate()
                child.process.wait(10)
            return
        process.kill()
        process.wait()
    raise RuntimeError("blackbox_exporter did not start")


def _wait_healthy(base: str, process: Any, tries: int = 100) -> bool:
    for _ in range(tries):
        if process.poll() is not None:
            return False
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base}/-/healthy", timeout=1) as response,
        ):
            if response.status == 200:
                return True
        time.sleep(0.05)
    return False


async def loadgen(
    base: str, targets: list[str], *, concurrency: int, warmup: float, window: float, pid: int
) -> dict[str, Any]:
    """Keep ``concurrency`` /probe requests in flight; count probes and the exporter's CPU.

    The counts and the exporter's CPU are read at the same two instants, after a warm-up.
    """
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + warmup + window + 0.5  # every worker stops by itself
    counts = {"done": 0, "ok": 0}
    # Prometheus tells the exporter its scrape timeout; the exporter bounds the probe by it.
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}

    async def worker(session: aiohttp.ClientSession, first: int) -> None:
        index = first
        while loop.time() < stop_at:
            params = {"target": targets[index % len(targets)], "module": "http_2xx"}
            index += 1
            async with session.get(f"{base}/probe", params=params, headers=headers) as resp:
                body = await resp.read()
            counts["done"] += 1
            counts["ok"] += b"\nprobe_success 1" in body

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(worker(session, i)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        start = (time.monotonic(), cpu_seconds(pid), dict(counts))
        await asyncio.sleep(window)
        end = (time.monotonic(), cpu_seconds(pid), dict(counts))
        await asyncio.gather(*workers)
    return {
        "wall": end[0] - start[0],
        "cpu": end[1] - start[1],
        "probes": end[2]["done"] - start[2]["done"],
        "ok": end[2]["ok"] - start[2]["ok"],
    }


# --- the nodevigil side ----------------------------------------------------------------------


class LatenessClock:
    """The system clock, recording how late each scheduled sleep returned (sampled 1 in 8)."""

    def __init__(self) -> None:
        self.samples = array.array("d")  # compact: 10k probes/s for a minute stays small
        self.recording = False
        self._seen = 0

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop; note the lateness against the due time."""
        due = time.monotonic() + seconds
        await asyncio.sleep(seconds)
        if self.recording:
            self._seen += 1
            if self._seen % 8 == 0:
                self.samples.append(time.monotonic() - due)


def bench_config(targets: list[str], nodes: int, interval: float) -> Any:
    """A validated Config of ``nodes`` nodes, each with one http probe on a target."""
    from nodevigil.core.config import parse_config

    data = {
        "vantage": "bench",
        "defaults": {"interval": f"{round(interval * 1000)}ms"},
        "sites": [{"name": "bench", "address": "203.0.113.10"}],
        "nodes": [
            {
                "name": f"n{i:05d}",
                "site": "bench",
                "probes": [{"type": "http", "url": targets[i % len(targets)]}],
            }
            for i in range(nodes)
        ],
    }
    return parse_config(data, source="probe_bench")


def _results(registry: Any) -> dict[str, float]:
    """Probe results so far by outcome (summing the counter's per-type series)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.name != "nodevigil_probe_results":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels["result"]
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _lag_quantiles(hist: Any) -> dict[str, float]:
    """Median / p99 upper bounds from the DaemonMetrics loop-lag histogram buckets."""
    buckets = [
        (float(s.labels["le"]), s.value)
        for metric in hist.collect()
        for s in metric.samples
        if s.name.endswith("_bucket")
    ]
    total = buckets[-1][1] if buckets else 0.0
    out = {}
    for name, q in (("lag_p50", 0.5), ("lag_p99", 0.99)):
        out[name] = next((le for le, count in buckets if total and count >= q * total), 0.0)
    return out


async def run_nodevigil(
    targets: list[str],
    nodes: int,
    interval: float,
    *,
    warmup: float,
    window: float,
    profile: bool,
) -> dict[str, Any]:
    """Run the real Monitor on ``nodes`` nodes; measure a window after the warm-up."""
    from prometheus_client import CollectorRegistry

    from monitor.heartbeat import HeartbeatBoard
    from monitor.metrics import MonitorMetrics
    from monitor.monitor import Monitor
    from nodevigil.app.gctuning import freeze_long_lived
    from nodevigil.app.metrics import DaemonMetrics
    from nodevigil.core.events import EventBus

    # A collapsing monitor logs one line per node judged down: thousands, and not what we measure.
    logging.disable(logging.WARNING)
    setup_started = time.monotonic()
    config = bench_config(targets, nodes, interval)
    registry = CollectorRegistry()
    daemon_metrics = DaemonMetrics(registry)
    clock = LatenessClock()
    monitor = Monitor(
        config,
        bus=EventBus(),
        clock=clock,
        metrics=MonitorMetrics(registry),
        board=HeartbeatBoard(clock),
    )
    async with monitor:
        setup = time.monotonic() - setup_started
        freeze_long_lived()  # the garbage collector tuned as `nodevigil run` tunes it
        lag_task = asyncio.create_task(daemon_metrics.watch_loop_lag())
        await asyncio.sleep(warmup)
        gc.freeze()  # as the daemon does once the first rounds opened their connections
        profiler = cProfile.Profile() if profile else None
        clock.recording = True
        start = (time.monotonic(), cpu_seconds(), _results(registry))
        if profiler:
            profiler.enable()
        await asyncio.sleep(window)
        if profiler:
            profiler.disable()
        end = (time.monotonic(), cpu_seconds(), _results(registry))
        clock.recording = False
        rss = rss_mb()
        # Every target answers 200, so every node judged down is a false verdict.
        down = sum(v.value == "down" for v in monitor.verdicts().values())
        lag_task.cancel()
    outcomes = {k: end[2].get(k, 0.0) - start[2].get(k, 0.0) for k in end[2]}
    lateness = list(clock.samples)
    report: dict[str, Any] = {
        "setup": setup,
        "wall": end[0] - start[0],
        "cpu": end[1] - start[1],
        "probes": sum(outcomes.values()),
        "ok": outcomes.get("success", 0.0),
        "rss": rss,
        "down": down,
        "late_p50": quantile(lateness, 0.5),
        "late_p99": quantile(lateness, 0.99),
        "late_max": max(lateness, default=float("nan")),
        **_lag_quantiles(daemon_metrics.loop_lag_hist),
    }
    if profiler:
        report["profile"] = _profile_text(profiler)
    return report


def _profile_text(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write("--- top 10 by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(10)
    out.write("--- top 10 by own (total) time ---\n")
    stats.sort_stats("tottime").print_stats(10)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


# --- orchestration ---------------------------------------------------------------------------


def _self(*args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def blackbox_round(plan: Plan, base: str, pid: int, targets: list[str]) -> dict[str, Any]:
    """One measured round of the exporter under the load generator."""
    args = _self("--role", "loadgen", "--base", base, "--pid", pid)
    args += ["--concurrency", str(plan.concurrency), "--warmup", str(plan.warmup)]
    args += ["--window", str(plan.window), "--targets", json.dumps(targets)]
    return run_json(args, timeout=plan.warmup + plan.window + 60)


def nodevigil_round(
    targets: list[str],
    nodes: int,
    interval: float,
    *,
    warmup: float,
    window: float,
    profile: bool = False,
) -> dict[str, Any]:
    """One measured run of the Monitor in a fresh child process."""
    args = _self("--role", "nodevigil", "--nodes", nodes, "--interval", interval)
    args += ["--warmup", str(warmup), "--window", str(window), "--targets", json.dumps(targets)]
    if profile:
        args.append("--profile")
    return run_json(args, timeout=warmup + window + 180)


def kept_up(r: dict[str, Any], nodes: int, interval: float) -> bool:
    """Whether a run delivered its offered rate with (nearly) every probe passing."""
    offered = nodes / interval
    return bool(r["probes"] / r["wall"] >= 0.97 * offered and r["ok"] >= 0.99 * r["probes"])


def ramp(plan: Plan, targets: list[str], good: int, bad: int) -> list[tuple[int, dict[str, Any]]]:
    """Bisect the node count (1 s interval) between a size that kept up and one that did not."""
    steps = []
    for _ in range(plan.ramp_steps):
        nodes = round((good + bad) / 2 / 500) * 500  # round numbers read better
        if nodes in (good, bad):
            break
        r = nodevigil_round(targets, nodes, 1.0, warmup=plan.scale_warmup, window=plan.ramp_window)
        ok = kept_up(r, nodes, 1.0)
        print(f"  {nodes} nodes: {r['probes'] / r['wall']:.0f}/s, kept up: {ok}", flush=True)
        steps.append((nodes, r))
        good, bad = (nodes, bad) if ok else (good, nodes)
    return steps


def per_cpu(r: dict[str, Any]) -> float:
    """Probes per CPU-second of one round."""
    return float(r["probes"] / r["cpu"]) if r["cpu"] > 0 else float("nan")


def compare(plan: Plan, targets: list[str], workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Interleaved rounds: blackbox, nodevigil, blackbox, ... so drift hits both alike."""
    rounds: dict[str, list[dict[str, Any]]] = {"blackbox": [], "nodevigil": []}
    with blackbox_exporter(workdir) as (exporter, base):
        for i in range(plan.rounds):
            bb = blackbox_round(plan, base, exporter.pid, targets)
            rounds["blackbox"].append(bb)
            nv = nodevigil_round(
                targets,
                plan.compare_nodes,
                plan.compare_interval,
                warmup=plan.warmup,
                window=plan.window,
            )
            rounds["nodevigil"].append(nv)
            print(
                f"  round {i + 1}/{plan.rounds}: blackbox {bb['probes'] / bb['wall']:7.0f}/s "
                f"{per_cpu(bb):7.0f}/cpu-s   nodevigil {nv['probes'] / nv['wall']:7.0f}/s "
                f"{per_cpu(nv):7.0f}/cpu-s",
                flush=True,
            )
    return rounds


def _summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "rate": median([r["probes"] / r["wall"] for r in rounds]),
        "cores": median([r["cpu"] / r["wall"] for r in rounds]),
        "per_cpu": median([per_cpu(r) for r in rounds]),
        "ok": sum(r["ok"] for r in rounds) / max(sum(r["probes"] for r in rounds), 1),
    }


def print_report(
    plan: Plan,
    rounds: dict[str, list[dict[str, Any]]],
    scale: dict[str, Any],
    steps: list[tuple[int, dict[str, Any]]],
    command: str,
) -> None:
    """The closing table: medians, the ratio against the peer, and the 10k-node figures."""
    bb, nv = _summary(rounds["blackbox"]), _summary(rounds["nodevigil"])
    print(f"\n=== probe engine: probes per CPU-second (medians of {plan.rounds} rounds) ===")
    print(f"{'prober':<34}{'probes/s':>10}{'cores':>8}{'probes/cpu-s':>14}{'ok':>8}")
    rows = (
        (f"blackbox_exporter (c={plan.concurrency})", bb),
        (f"nodevigil ({plan.compare_nodes} nodes @ {plan.compare_interval:g}s)", nv),
    )
    for name, s in rows:
        print(
            f"{name:<34}{s['rate']:>10.0f}{s['cores']:>8.2f}{s['per_cpu']:>14.0f}"
            f"{s['ok'] * 100:>7.1f}%"
        )
    print(
        f"ratio nodevigil / blackbox (probes per CPU-second): {nv['per_cpu'] / bb['per_cpu']:.2f}"
    )
    _print_scale(plan, scale, bb["per_cpu"])
    if steps:
        print("\n=== highest sustained rate (1 s interval, bisection) ===")
        print(f"{'nodes':>7}{'probes/s':>10}{'ok':>8}{'cores':>8}{'late p99':>10}{'kept up':>9}")
        for nodes, r in sorted(steps):
            print(
                f"{nodes:>7}{r['probes'] / r['wall']:>10.0f}{r['ok'] / max(r['probes'], 1):>8.1%}"
                f"{r['cpu'] / r['wall']:>8.2f}{r['late_p99'] * 1000:>8.0f}ms"
                f"{'yes' if kept_up(r, nodes, 1.0) else 'NO':>9}"
            )
        sustained = max((n for n, r in steps if kept_up(r, n, 1.0)), default=None)
        print(
            f"highest node count that kept up: {sustained or f'below {min(n for n, _ in steps)}'}"
        )
    print(f"\ncommand: {command}")


def _print_scale(plan: Plan, scale: dict[str, Any], bb_per_cpu: float) -> None:
    offered = plan.scale_nodes / 1.0
    rate = scale["probes"] / scale["wall"]
    ok = scale["ok"] / max(scale["probes"], 1)
    print(f"\n=== scale: {plan.scale_nodes} nodes @ 1s, measured {scale['wall']:.0f}s ===")
    print(f"offered rate         {offered:10.0f} probes/s")
    print(f"achieved rate        {rate:10.0f} probes/s ({rate / offered:.1%} of offered)")
    print(f"passing probes       {ok:10.1%}   (every target is healthy)")
    print(f"nodes judged down    {scale['down']:10d}   (all of them false)")
    print(f"CPU                  {scale['cpu'] / scale['wall']:10.2f} cores")
    per = per_cpu(scale)
    print(f"probes per CPU-s     {per:10.0f}   ({per / bb_per_cpu:.2f}x blackbox)")
    print(f"RSS                  {scale['rss']:10.0f} MiB")
    print(f"start-up             {scale['setup']:10.1f} s   (config validation + tasks)")
    print(
        f"schedule lateness    p50 {scale['late_p50'] * 1000:.1f} ms, "
        f"p99 {scale['late_p99'] * 1000:.0f} ms, max {scale['late_max'] * 1000:.0f} ms"
    )
    print(
        f"event-loop lag       p50 {_bound(scale['lag_p50'])}, p99 {_bound(scale['lag_p99'])}"
        " (DaemonMetrics histogram bucket bounds)"
    )
    print(f"kept up              {'yes' if kept_up(scale, plan.scale_nodes, 1.0) else 'NO'}")


def _bound(seconds: float) -> str:
    """A histogram bucket bound as text; the +Inf bucket means beyond the largest bound."""
    return "> 2500 ms" if seconds == float("inf") else f"<= {seconds * 1000:g} ms"


def main_parent(args: argparse.Namespace) -> None:
    """Run the whole benchmark and print the table."""
    plan = QUICK if args.quick else FULL
    command = "cd /work/main && .venv/bin/python bench/probe_bench.py" + (
        " --quick" if args.quick else ""
    )
    started = time.monotonic()
    target_server = start_targets(TARGET_PORTS)
    targets = [f"http://{LOOPBACK}:{p}/healthz" for p in target_server.hello["ports"]]
    steps: list[tuple[int, dict[str, Any]]] = []
    profile = None
    try:
        with tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
            print(f"comparison: {plan.rounds} interleaved rounds of {plan.window:g}s", flush=True)
            rounds = compare(plan, targets, Path(tmp))
        print(f"scale: {plan.scale_nodes} nodes for {plan.scale_window:g}s", flush=True)
        scale = nodevigil_round(
            targets, plan.scale_nodes, 1.0, warmup=plan.scale_warmup, window=plan.scale_window
        )
        if not kept_up(scale, plan.scale_nodes, 1.0):
            print("it did not keep up; searching for the highest sustained rate", flush=True)
            steps = ramp(plan, targets, plan.compare_nodes, plan.scale_nodes)
        if not args.no_profile:
            print(f"profile: {plan.scale_nodes} nodes for {plan.profile_window:g}s", flush=True)
            profile = nodevigil_round(
                targets,
                plan.scale_nodes,
                1.0,
                warmup=plan.scale_warmup,
                window=plan.profile_window,
                profile=True,
            )
    finally:
        target_server.stop()
    if profile is not None:
        print(f"\n=== cProfile of {plan.scale_nodes} nodes (profiling slows it down) ===")
        print(profile["profile"])
    print_report(plan, rounds, scale, steps, command)
    print(f"total time: {time.monotonic() - started:.0f}s")


def main() -> None:
    """Parse arguments; run as the parent or as one of the child roles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 1 minute instead of 4")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--role", choices=["loadgen", "nodevigil"], help=argparse.SUPPRESS)
    parser.add_argument("--targets", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.role == "loadgen":
        result = asyncio.run(
            loadgen(
                args.base,
                args.targets,
                concurrency=args.concurrency,
                warmup=args.warmup,
                window=args.window,
                pid=args.pid,
            )
        )
    elif args.role == "nodevigil":
        result = asyncio.run(
            run_nodevigil(
                args.targets,
                args.nodes,
                args.interval,
                warmup=args.warmup,
                window=args.window,
                profile=args.profile,
            )
        )
    else:
        main_parent(args)
        return
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
