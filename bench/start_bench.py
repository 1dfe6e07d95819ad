"""Start-up and event-loop benchmark: `nodevigil run` at 10,000 nodes, before and after, and
the probe engine on asyncio's loop against uvloop's.

Run: ``cd /work/main && .venv/bin/python bench/start_bench.py`` (about 8 minutes), or
``--part config|start|engine`` for one part. Options: ``--nodes N`` (10,000), ``--reps R`` (2:
each rep runs every variant, forwards then backwards: A B C C B A), ``--settle S`` (seconds
watched after ready, 30), ``--engine-window W`` (20).

0. **config**: ``load_config`` (as ``nodevigil run`` calls it) of the start part's YAML file,
   CPU seconds in a fresh process, the committed code against the working tree, A B B A.

1. **start**: the real daemon as operators start it (``python -m nodevigil run -c file``), on
   a YAML configuration of N nodes with one http probe each (1 s interval, the probe
   defaults, 20 sites, 10 services, recording load balancers: as ``bench/load_bench.py``)
   against ``bench/common.py switchable`` targets, one port per node. Variants: ``before``,
   the committed code (``git archive HEAD`` into a temp dir, run from there), and ``after``,
   the working tree, on asyncio's loop and on uvloop (``NODEVIGIL_LOOP``). Measured: the time
   from the process's start to the first ``/readyz`` 200, the daemon's CPU seconds until
   then, and over the ``settle`` seconds after it: probes shed for being late
   (``nodevigil_probes_skipped_total``), failed and inconclusive probes (every target is
   healthy, so each one is the daemon's own), the nodes judged up at the end (every node
   starts unknown), and over the second half of the window the event-loop lag p99 (the
   daemon's own histogram, bucket bound) and the CPU of the daemon and its worker processes.
2. **engine**: ``bench/probe_bench.py``'s nodevigil round (the Monitor alone, N nodes at 1 s on
   8 target ports) in a fresh child per round, asyncio and uvloop interleaved A B B A:
   CPU-µs per probe, schedule lateness p99 and loop lag p99.

Medians over the reps. Everything listens on 127.0.0.1 and writes to temp dirs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 -- the repository root is on the path first
    TARGET_LIFETIME,
    _Responder,
    raise_fd_limit,
    raise_fd_limit_to,
    run_json,
    spawn_json,
    start_targets,
)

LOOPBACK = "127.0.0.1"
# Targets listen on fixed ports below Linux's ephemeral range (32768-60999): other benchmarks
# on this machine may hold tens of thousands of ephemeral ports, and a listener on port 0
# then finds none free.
FIRST_PORT = 20_000
API_PORT = FIRST_PORT - 1  # the daemon's, for the same reason
ENGINE_WARMUP = 5.0


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def _total(text: str, name: str, **match: str) -> float:
    return sum(
        v for labels, v in _samples(text, name) if all(labels.get(k) == x for k, x in match.items())
    )


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    return sorted((float(labels["le"]), v) for labels, v in _samples(text, f"{name}_bucket"))


def _p99(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The bucket bound holding the 99th percentile of what was observed between two scrapes."""
    was = dict(before)
    diff = [(le, count - was.get(le, 0.0)) for le, count in after]
    total = diff[-1][1] if diff else 0.0
    return next((le for le, count in diff if total and count >= 0.99 * total), float("nan"))


LAG = "nodevigil_event_loop_lag_distribution_seconds"


def write_config(workdir: Path, ports: list[int], nodes: int, api_port: int) -> Path:
    """load_bench's configuration, written as YAML (as operators write it)."""
    from bench.load_bench import build_config

    data = json.loads(build_config(workdir, ports, nodes).read_text())
    data["api"] = {"listen": f"{LOOPBACK}:{api_port}"}
    path = workdir / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def export_head(into: Path) -> Path:
    """The committed tree (HEAD), unpacked into ``into``: the ``before`` variant."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_run(
    tree: Path, loop: str | None, config: Path, nodes: int, settle: float
) -> dict[str, Any]:
    """Start the daemon from ``tree``; time it to ready, then watch its warm-up."""
    state = config.parent / "state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("NODEVIGIL_LOOP", None)
    if loop is not None:
        env["NODEVIGIL_LOOP"] = loop
    api = f"http://{yaml.safe_load(config.read_text())['api']['listen']}"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "nodevigil", "--log-level", "WARNING", "run", "-c", str(config)],
        cwd=tree,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "daemon.err", "wb"),  # noqa: SIM115 -- the child keeps it
    )
    me = psutil.Process(process.pid)
    try:
        while _get(f"{api}/readyz", 1.0)[0] != 200 or process.poll() is not None:
            if process.poll() is not None or time.monotonic() - started > 300:
                tail = (config.parent / "daemon.err").read_text()[-3000:]
                raise RuntimeError(f"not ready (exit code {process.poll()}):\n{tail}")
            time.sleep(0.02)
        ready = time.monotonic() - started
        cpu_ready = _cpu(me)
        # Two scrapes only (at half time and at the end): at 10,000 nodes a scrape is MBs and
        # blocks the loop long enough to disturb what is measured.
        time.sleep(settle / 2)
        first = _get(f"{api}/metrics", 60)[1].decode()
        cpu_half, half_at = _cpu(me), time.monotonic()
        time.sleep(max(0.0, started + ready + settle - time.monotonic()))
        cpu_end, end_at = _cpu(me), time.monotonic()
        last = _get(f"{api}/metrics", 60)[1].decode()
        if process.poll() is not None or not first or not last:
            tail = (config.parent / "daemon.err").read_text()[-3000:]
            raise RuntimeError(f"the daemon stopped or did not answer /metrics:\n{tail}")
        return {
            "ready": ready,
            "cpu_at_ready": cpu_ready,
            "up_at_end": max(_total(last, "nodevigil_nodes", verdict="up"), _up(last)),
            "skipped": _total(last, "nodevigil_probes_skipped_total"),
            "failed": _total(last, "nodevigil_probe_results_total", result="failure"),
            "inconclusive": _total(last, "nodevigil_probe_results_total", result="inconclusive"),
            "lag_p99": _p99(_buckets(first, LAG), _buckets(last, LAG)),
            "cores": (cpu_end - cpu_half) / (end_at - half_at),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu(process: psutil.Process) -> float:
    """CPU seconds of ``process`` and its children (monitor worker processes), all threads."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def _up(text: str) -> float:
    """Nodes judged up, from whichever verdict series this version exports."""
    for name in ("nodevigil_node_verdict", "nodevigil_node_up"):
        samples = _samples(text, name)
        if samples:
            if name == "nodevigil_node_up":
                return sum(v for _, v in samples)
            return sum(v for labels, v in samples if labels.get("verdict") == "up")
    return 0.0


def part_start(args: argparse.Namespace) -> None:
    """Ready time and warm-up of `nodevigil run`, before and after, interleaved."""
    raise_fd_limit_to(65536)
    half = args.nodes // 2 + args.nodes % 2
    targets = [
        spawn_json(_self("--role", "targets", "--first-port", first, "--count", count), timeout=120)
        for first, count in ((FIRST_PORT, half), (FIRST_PORT + half, args.nodes - half))
    ]
    try:
        ports = [p for child in targets for p in child.hello["ports"]]
        with tempfile.TemporaryDirectory(prefix="start-bench-") as tmp:
            work = Path(tmp)
            config = write_config(work, ports, args.nodes, API_PORT)
            variants = {
                "before (HEAD, asyncio)": (export_head(work / "head"), None),
                "after, asyncio": (ROOT, "asyncio"),
                "after, uvloop": (ROOT, "uvloop"),
            }
            order = list(variants)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
            for rep in range(args.reps):
                for name in order if rep % 2 == 0 else list(reversed(order)):
                    tree, loop = variants[name]
                    result = start_run(tree, loop, config, args.nodes, args.settle)
                    runs[name].append(result)
                    shown = json.dumps({k: round(v, 3) for k, v in result.items()})
                    print(f"  {name}: {shown}", flush=True)
    finally:
        for child in targets:
            child.stop()
    print(
        f"\n=== start at {args.nodes} nodes: medians of {args.reps} runs each "
        f"(watched {args.settle:g}s after ready) ==="
    )
    print(
        f"{'variant':<24}{'ready s':>8}{'CPU-s':>7}{'up':>7}{'shed':>7}{'failed':>7}"
        f"{'inconcl':>8}{'lag p99':>8}{'cores':>6}"
    )
    for name in order:
        rs = runs[name]

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        print(
            f"{name:<24}{med('ready'):>8.1f}{med('cpu_at_ready'):>7.1f}"
            f"{med('up_at_end'):>7.0f}{med('skipped'):>7.0f}{med('failed'):>7.0f}"
            f"{med('inconclusive'):>8.0f}{med('lag_p99') * 1000:>8.0f}{med('cores'):>6.2f}"
        )


def _self(*args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


async def serve_targets(first: int, count: int) -> None:
    """Answer 200 on ``count`` ports from ``first`` on (child role) until stdin closes."""
    raise_fd_limit_to(65536)
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(_Responder, LOOPBACK, port, backlog=1024)
        for port in range(first, first + count)
    ]
    print(json.dumps({"ports": list(range(first, first + count))}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TARGET_LIFETIME):
            await reader.read()
    for server in servers:
        server.close()


LOAD_CONFIG = """
import json, sys, time
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.core.config import load_config
cpu = time.process_time()
config = load_config(sys.argv[1], event_kinds=EVENT_KINDS, secrets=True)
print(json.dumps({"cpu": time.process_time() - cpu, "nodes": len(config.nodes)}))
"""


def part_config(args: argparse.Namespace) -> None:
    """CPU seconds of ``load_config`` on the same YAML file, before and after, A B B A."""
    with tempfile.TemporaryDirectory(prefix="start-bench-") as tmp:
        work = Path(tmp)
        config = write_config(work, list(range(args.nodes)), args.nodes, API_PORT)
        size = config.stat().st_size >> 10
        trees = {"before (HEAD)": export_head(work / "head"), "after": ROOT}
        runs: dict[str, list[float]] = {name: [] for name in trees}
        for rep in range(2 * args.reps):
            for name in list(trees) if rep % 2 == 0 else list(reversed(trees)):
                done = subprocess.run(
                    [sys.executable, "-c", LOAD_CONFIG, str(config)],
                    cwd=trees[name],
                    env={**os.environ, "PYTHONPATH": str(trees[name])},
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs[name].append(json.loads(done.stdout)["cpu"])
    print(f"\n=== load_config of {args.nodes} nodes (YAML, {size} KiB), in a fresh process ===")
    for name, cpus in runs.items():
        shown = ", ".join(f"{c:.2f}" for c in cpus)
        print(f"{name:<16} CPU-s median {statistics.median(cpus):.2f} [{shown}]")


def engine_child(args: argparse.Namespace) -> None:
    """One probe_bench nodevigil round on the loop ``args.loop`` (child role)."""
    from bench.probe_bench import run_nodevigil
    from nodevigil.core.eventloop import loop_factory

    raise_fd_limit()
    coro = run_nodevigil(
        args.targets,
        args.nodes,
        1.0,
        warmup=ENGINE_WARMUP,
        window=args.engine_window,
        profile=False,
    )
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        result = runner.run(coro)
    print(json.dumps(result), flush=True)


def part_engine(args: argparse.Namespace) -> None:
    """The Monitor alone on asyncio and on uvloop, A B B A."""
    server = start_targets(8)
    targets = [f"http://{LOOPBACK}:{p}/healthz" for p in server.hello["ports"]]
    runs: dict[str, list[dict[str, Any]]] = {"asyncio": [], "uvloop": []}
    try:
        for rep in range(args.reps):
            for loop in ("asyncio", "uvloop") if rep % 2 == 0 else ("uvloop", "asyncio"):
                child = _self("--role", "engine")
                child += ["--loop", loop, "--nodes", str(args.nodes), "--targets"]
                child += [json.dumps(targets), "--engine-window", str(args.engine_window)]
                r = run_json(child, timeout=args.engine_window + 180)
                runs[loop].append(r)
                print(
                    f"  {loop}: {r['probes'] / r['wall']:.0f} probes/s, "
                    f"{r['cpu'] / r['probes'] * 1e6:.1f} CPU-us/probe, "
                    f"ok {r['ok'] / r['probes']:.1%}, late p99 {r['late_p99'] * 1000:.1f} ms, "
                    f"lag p99 {r['lag_p99'] * 1000:.0f} ms"
                )
    finally:
        server.stop()
    print(f"\n=== probe engine at {args.nodes} nodes @ 1s: medians of {args.reps} rounds each ===")
    print(
        f"{'loop':<9}{'probes/s':>9}{'CPU-us/probe':>13}{'ok':>8}{'late p99 ms':>12}"
        f"{'lag p99 ms':>11}"
    )
    for loop, rs in runs.items():
        print(
            f"{loop:<9}{statistics.median(r['probes'] / r['wall'] for r in rs):>9.0f}"
            f"{statistics.median(r['cpu'] / r['probes'] * 1e6 for r in rs):>13.1f}"
            f"{sum(r['ok'] for r in rs) / sum(r['probes'] for r in rs):>8.2%}"
            f"{statistics.median(r['late_p99'] for r in rs) * 1000:>12.1f}"
            f"{statistics.median(r['lag_p99'] for r in rs) * 1000:>11.0f}"
        )


def main() -> None:
    """Parse the options and run the parts asked for."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--part", choices=["config", "start", "engine", "all"], default="all")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--engine-window", type=float, default=20.0)
    parser.add_argument("--role", choices=["engine", "targets"], help=argparse.SUPPRESS)
    parser.add_argument("--first-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--targets", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "engine":
        engine_child(args)
        return
    if args.role == "targets":
        asyncio.run(serve_targets(args.first_port, args.count))
        return
    started = time.monotonic()
    if args.part in ("config", "all"):
        part_config(args)
    if args.part in ("start", "all"):
        part_start(args)
    if args.part in ("engine", "all"):
        part_engine(args)
    argv = " ".join(sys.argv[1:])
    print(f"\ncommand: cd /work/main && .venv/bin/python bench/start_bench.py {argv}".rstrip())
    print(f"total time: {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
