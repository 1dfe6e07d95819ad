"""The curve: fleet size against cores, memory, loop lag, verdict -> action and scrape time.

Runs ``load_bench.py``'s pipeline (real targets, the whole daemon in a child process, 5 %
flapping, ``/metrics`` scraped every 15 s) once per fleet size and ``monitor.workers`` count,
and with ``--base TREE`` the same sizes on another checkout (a ``git worktree`` of an earlier
commit) right before each size's runs of this tree, so the machine's drift hits both alike.
Each run is a child process (``--one``) importing ``bench/load_bench.py`` from its own tree.

    .venv/bin/python bench/curve_bench.py --base /tmp/nv-before --seconds 45

Prints one row per run and, per tree and worker count, the largest fleet held with loop lag
p99 under 100 ms in every process and every probe round on time (≥ 97 % of the offered rate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
LAG_GOAL = 0.100
KEPT_UP = 0.97


def one(tree: Path, nodes: int, workers: int, seconds: float, out: Path) -> None:
    """Child: one load_bench run from ``tree``; its summary as JSON in ``out``."""
    sys.path.insert(0, str(tree))
    import nodevigil
    from bench import load_bench  # the tree's own, not necessarily this file's

    load_bench.raise_fd_limit_to(65536)
    fields = [nodes, seconds, 0.05, 2, 7, 15.0, "sqlite"]
    if "workers" in load_bench.Plan.__dataclass_fields__:
        fields.append(workers or None)
    elif workers:
        raise SystemExit(f"{tree}: this tree has no monitor.workers")
    plan = load_bench.Plan(*fields)
    run = load_bench.run_pipeline(plan, print)
    summary = load_bench.summarize(run)
    whole = summary["whole"]
    worker_lags = list(getattr(whole, "worker_lag_p99", []))
    result = {
        "code": str(Path(nodevigil.__file__).resolve().parent.parent),
        "nodes": nodes,
        "workers": workers,
        "on_time": whole.rate / nodes,
        "cores": whole.cores + getattr(whole, "worker_cores", 0.0),
        "rss": whole.rss + sum(getattr(whole, "worker_rss", [])),
        "lag_p99": whole.lag_p99,
        "worker_lag_p99": max(worker_lags, default=math.nan),
        "action_p50": summary["action"][0],
        "action_p99": summary.get("action_p99", math.nan),
        "scrape_p50": statistics.median(run.scrapes) if run.scrapes else math.nan,
        "false": summary["false"],
        "missing": summary["missing"],
        "rss_slope": summary.get("rss_total_slope", math.nan),
    }
    out.write_text(json.dumps(result))


def ms(seconds: float) -> str:
    """Milliseconds, or a dash when not measured."""
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.0f}"


def row(label: str, r: dict[str, Any]) -> str:
    """One printed row."""
    return (
        f"{label:<8} {r['nodes']:>6} {r['workers'] or '-':>3} {r['on_time']:>7.1%} "
        f"{r['cores']:>5.2f} {r['rss']:>6.0f} {ms(r['lag_p99']):>6} {ms(r['worker_lag_p99']):>6} "
        f"{ms(r['action_p50']):>6} {ms(r['action_p99']):>6} {ms(r['scrape_p50']):>6} "
        f"{r['false']:>5} {r['missing']:>4}"
    )


HEADER = "tree      nodes wkr on time cores RSS MiB lag99 wlag99 act50  act99 scrape false miss"


def held(r: dict[str, Any]) -> bool:
    """Whether the run held its fleet: lag p99 < 100 ms in every process, rounds on time."""
    lags = [r["lag_p99"]] + ([] if math.isnan(r["worker_lag_p99"]) else [r["worker_lag_p99"]])
    return r["on_time"] >= KEPT_UP and all(lag < LAG_GOAL for lag in lags)


def parent(args: argparse.Namespace) -> None:
    """Every run in turn, then the table and the largest fleet held."""
    started = time.monotonic()
    sizes = [int(n) for n in args.sizes.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    plan: list[tuple[str, Path, int, int]] = []
    for nodes in sizes:
        if args.base:
            plan.append(("before", Path(args.base).resolve(), nodes, 0))
        plan.extend(("after", HERE, nodes, workers) for workers in counts)
    results: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="curve-") as tmp:
        for index, (label, tree, nodes, workers) in enumerate(plan):
            out = Path(tmp) / f"{index}.json"
            log = Path(tmp) / f"{index}.log"
            print(f"run {index + 1}/{len(plan)}: {label} {nodes} nodes, workers {workers or '-'}",
                  flush=True)  # fmt: skip
            command = [sys.executable, str(Path(__file__).resolve()), "--one", str(tree),
                       "--nodes", str(nodes), "--workers", str(workers),
                       "--seconds", str(args.seconds), "--out", str(out)]  # fmt: skip
            with log.open("w") as sink:
                code = subprocess.call(command, stdout=sink, stderr=subprocess.STDOUT, cwd=tree)
            if code != 0 or not out.exists():
                tail = log.read_text().splitlines()[-15:]
                print(f"  failed (exit {code}):\n    " + "\n    ".join(tail), flush=True)
                continue
            result = json.loads(out.read_text())
            if Path(result["code"]) != tree:
                raise SystemExit(f"run {index + 1} imported {result['code']}, not {tree}")
            results.append((label, result))
            print("  " + row(label, result), flush=True)
    print(f"\n{HEADER}")
    for label, result in results:
        print(row(label, result))
    print("\nlargest fleet held (loop lag p99 < 100 ms in every process, >= 97 % on time):")
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for label, result in results:
        groups.setdefault((label, result["workers"]), []).append(result)
    for (label, workers), runs in groups.items():
        best = max((r["nodes"] for r in runs if held(r)), default=0)
        print(f"  {label:<7} workers {workers or '-'}: {best or 'none of the sizes run'}")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"command: {' '.join(['.venv/bin/python bench/curve_bench.py', *sys.argv[1:]])}")
    print(f"total time: {time.monotonic() - started:.0f}s")


def main() -> None:
    """Parse arguments; run the curve, or one point of it (``--one``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000,20000")
    parser.add_argument("--workers", default="1,2", help="monitor.workers counts for this tree")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured, after warm-up")
    parser.add_argument("--base", help="another checkout to run the same sizes on (before)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(Path(args.one).resolve(), args.nodes, int(args.workers), args.seconds, args.out)
    else:
        parent(args)


if __name__ == "__main__":
    main()
