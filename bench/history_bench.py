"""Probe-history benchmark: its size per node-day on disk, and its cost per probe result.

Run: ``cd /work/main && .venv/bin/python bench/history_bench.py`` (about a minute; options
``--nodes N`` (1,000), ``--days D`` (2), ``--flap-share F`` (0.05), ``--blips B`` (4),
``--flap-period S`` (45), ``--flap-down S`` (15), ``--part size|cost|both``,
``--backend sqlite|postgres|both``).

1. Size. A fleet of N nodes with two probes each (http, tcp) at the default 1 s interval over
   D days, written through the real stores (``nodevigil.state.sqlite.history`` in a temp
   ``history.db``, ``nodevigil.state.postgres.history`` in a fresh database of the PostgreSQL
   15 that ``tests/postgres_server.py`` starts), in daily batches of the runs that closed plus
   one snapshot of the open runs at the end, as the daemon's writer leaves them.
   The mix: steady nodes whose probes each fail one isolated result B times a day (a timeout
   now and then: two more runs each), and a share F of flapping nodes that fail 15 s out of
   every 45 s by default, both probes together (as ``bench/load_bench.py`` flaps them: a
   worst case, 1,920 outages a day, 3,840 runs per probe-day; ``--flap-period 1800
   --flap-down 60`` is a milder flapper, a minute down every half hour). The runs are what
   ``RunFolder`` makes of such a stream (unit-tested in tests/monitor/test_history.py); they
   are made directly from the change points: folding 170 million results measures Python.
   Bytes: SQLite, the file's pages (``page_count * page_size``, WAL checkpointed); PostgreSQL,
   ``pg_total_relation_size('probe_runs')`` (heap, indexes, TOAST) after ``VACUUM``.
2. Cost. The per-result work the history adds to the monitor (``RunRecorder.fold``), timed
   against the work each result already costs the judge (``NodeJudge.observe``), in the same
   process on the same stream of 10,000 nodes' results (5 % flapping); and the snapshot that
   the writer takes on the event loop every half ``history_save_every`` (``take``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.history import Outcome, ProbeRun, RunRecorder
from monitor.probes.base import ProbeResult
from monitor.verdict import NodeJudge
from nodevigil.core.config.schema import Database, FlapDamping
from nodevigil.state.backend import PostgresBackend, SqliteBackend
from nodevigil.state.postgres.history import PostgresHistoryStore
from nodevigil.state.sqlite.history import SqliteHistoryStore
from tests.postgres_server import postgres_for_session

DAY = 86400.0
INTERVAL = 1.0
PROBES = ("http", "tcp")
FLAP_PERIOD, FLAP_DOWN = 45.0, 15.0  # as bench/load_bench.py flaps its nodes (a worst case)
DETAIL = {Outcome.PASS: "HTTP 200 in 3ms", Outcome.FAIL: "timeout after 1s"}
START = 1_780_000_000.0


def _run(node: str, probe: str, outcome: Outcome, first: float, last: float) -> ProbeRun:
    count = round((last - first) / INTERVAL) + 1
    return ProbeRun(node, probe, "ops-1", outcome, first, last, count, DETAIL[outcome])


def steady_runs(node: str, probe: str, days: int, blips: int, rng: random.Random) -> list[ProbeRun]:
    """A probe passing all along but for ``blips`` isolated failed results a day."""
    end = START + days * DAY
    fails = sorted(float(round(rng.uniform(START + 1, end - 1))) for _ in range(blips * days))
    runs, at = [], START
    for fail in fails:
        if fail - INTERVAL >= at:
            runs.append(_run(node, probe, Outcome.PASS, at, fail - INTERVAL))
        runs.append(_run(node, probe, Outcome.FAIL, fail, fail))
        at = fail + INTERVAL
    runs.append(_run(node, probe, Outcome.PASS, at, end))
    return runs


def flapping_runs(
    node: str, probe: str, days: int, rng: random.Random, *, period: float, down: float
) -> list[ProbeRun]:
    """A probe failing ``down`` seconds out of every ``period`` (random phase)."""
    end = START + days * DAY
    at = START + float(round(rng.uniform(INTERVAL, period)))
    runs = [_run(node, probe, Outcome.PASS, START, at - INTERVAL)]
    while at < end:
        down_end = min(at + down - INTERVAL, end)
        runs.append(_run(node, probe, Outcome.FAIL, at, down_end))
        up = down_end + INTERVAL
        if up <= end:
            runs.append(_run(node, probe, Outcome.PASS, up, min(at + period - INTERVAL, end)))
        at += period
    return runs


def fleet(
    nodes: int, days: int, flap_share: float, blips: int, *, period: float, down: float
) -> tuple[list[ProbeRun], int]:
    """Every run of the fleet over ``days``; and how many of them are flapping nodes'."""
    rng = random.Random(18)
    flappers = set(rng.sample(range(nodes), round(nodes * flap_share)))
    runs: list[ProbeRun] = []
    flapping = 0
    for i in range(nodes):
        node = f"node-{i:05d}.dc1"
        for probe in PROBES:
            if i in flappers:
                made = flapping_runs(node, probe, days, rng, period=period, down=down)
                flapping += len(made)
            else:
                made = steady_runs(node, probe, days, blips, rng)
            runs.extend(made)
    return runs, flapping


async def write(store: SqliteHistoryStore | PostgresHistoryStore, runs: list[ProbeRun],
                days: int) -> float:  # fmt: skip
    """Save as the daemon leaves it: each day's closed runs, then the open ones; seconds."""
    started = time.perf_counter()
    end = START + days * DAY
    for day in range(days):
        cutoff = START + (day + 1) * DAY
        closed = [r for r in runs if cutoff - DAY <= r.last < cutoff and r.last < end]
        for i in range(0, len(closed), 50_000):
            await store.save(closed[i : i + 50_000])
    await store.save([r for r in runs if r.last >= end])  # the open runs, as last snapshot
    return time.perf_counter() - started


async def sqlite_size(work: Path, runs: list[ProbeRun], days: int) -> tuple[int, float]:
    store = SqliteBackend(work).history_store()
    assert isinstance(store, SqliteHistoryStore)
    await store.open()
    seconds = await write(store, runs, days)
    await store.close()
    with sqlite3.connect(work / "history.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size), seconds


async def postgres_size(work: Path, runs: list[ProbeRun], days: int) -> tuple[int, float]:
    with postgres_for_session(work) as address:
        database = address.create_database()
        settings = Database(url=address.url(database), password_file=address.password_file)
        backend = PostgresBackend(settings, None, owner="bench")
        await backend.open()
        try:
            store = backend.history_store()
            assert isinstance(store, PostgresHistoryStore)
            await store.open()
            seconds = await write(store, runs, days)
            async with backend.pool.connection() as conn:
                await conn.set_autocommit(True)
                await conn.execute("VACUUM ANALYZE probe_runs")
                cursor = await conn.execute("SELECT pg_total_relation_size('probe_runs')")
                row = await cursor.fetchone()
                assert row is not None
                return int(row[0]), seconds
        finally:
            await backend.close()
            address.drop_database(database)


def size_part(args: argparse.Namespace) -> None:
    period, down = args.flap_period, args.flap_down
    runs, flapping = fleet(
        args.nodes, args.days, args.flap_share, args.blips, period=period, down=down
    )
    flappers = round(args.nodes * args.flap_share)
    node_days = args.nodes * args.days
    print(
        f"--- history size: {args.nodes} nodes x {len(PROBES)} probes @ {INTERVAL:g}s, "
        f"{args.days} days; {flappers} flapping ({down:g}s down every {period:g}s), "
        f"the others {args.blips} isolated failures per probe-day ---"
    )
    per_flapping = flapping / (flappers * args.days)
    per_steady = (len(runs) - flapping) / ((args.nodes - flappers) * args.days)
    print(
        f"runs: {len(runs)} ({flapping} of flapping nodes: {per_flapping:.0f} per flapping "
        f"node-day; {per_steady:.1f} per steady node-day)"
    )
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"{'store':<10}{'bytes':>12}{'B/run':>7}{'B/node-day':>12}{'steady':>9}{'flapping':>10}"
          f"{'write s':>9}")  # fmt: skip
    for name in backends:
        with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
            work = Path(tmp)
            if name == "sqlite":
                size, seconds = asyncio.run(sqlite_size(work, runs, args.days))
            else:
                size, seconds = asyncio.run(postgres_size(work, runs, args.days))
        per_run = size / len(runs)
        steady = per_run * (len(runs) - flapping) / ((args.nodes - flappers) * args.days)
        flap = per_run * flapping / (flappers * args.days) if flappers else 0.0
        print(
            f"{name:<10}{size:>12,}{per_run:>7.0f}{size / node_days:>12,.0f}{steady:>9,.0f}"
            f"{flap:>10,.0f}{seconds:>9.1f}"
        )
    print("(steady / flapping: bytes per node-day of each kind, at the store's bytes per run)")


def cost_part(nodes: int = 10_000, rounds: int = 30) -> None:
    """Per-result cost of the history beside the judge's, on one stream of results."""
    rng = random.Random(7)
    flappers = set(rng.sample(range(nodes), nodes // 20))
    names = [f"node-{i:05d}" for i in range(nodes)]
    stream = []
    for r in range(rounds):
        for i, name in enumerate(names):
            ok = not (i in flappers and (r // 5) % 3 == 0)  # down a third of the time
            stream.append((name, ProbeResult(ok, "HTTP 200", 0.003, START + r, "ops-1")))
    flap = FlapDamping()

    def judges() -> float:
        made = {n: NodeJudge.create(["http"], rise=2, fall=3, require="all", flap=flap)
                for n in names}  # fmt: skip
        started = time.perf_counter()
        for name, result in stream:
            made[name].observe("http", result, result.at)
        return time.perf_counter() - started

    def history() -> float:
        recorder = RunRecorder()
        started = time.perf_counter()
        for name, result in stream:  # what Monitor._record does with each result
            closed = recorder.fold(name, "http", result)
            if closed is not None:
                recorder.add((closed,))
        return time.perf_counter() - started

    judge_times, history_times = [], []
    for _ in range(5):  # interleaved: the machine's drift hits both alike
        judge_times.append(judges())
        history_times.append(history())
    judge, hist = min(judge_times), min(history_times)
    per = len(stream)
    print(f"--- per-result cost: {nodes} nodes x {rounds} rounds (5 % flapping), best of 5 ---")
    print(f"NodeJudge.observe     {judge / per * 1e6:6.2f} us/result")
    print(
        f"RunRecorder.fold      {hist / per * 1e6:6.2f} us/result  "
        f"({hist / judge:.0%} of the judge's)"
    )
    recorder = RunRecorder()
    for name, result in stream:
        recorder.observe(name, "http", result)
    recorder.take()
    for name in names:  # every open run grew since: the writer's usual case
        recorder.observe(name, "http", ProbeResult(True, "HTTP 200", 0.003, START + rounds, "v"))
    started = time.perf_counter()
    taken = recorder.take()
    took = time.perf_counter() - started
    print(f"take() of {len(taken)} grown runs on the event loop: {took * 1e3:.1f} ms "
          "(every half history_save_every)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--flap-share", type=float, default=0.05)
    parser.add_argument("--blips", type=int, default=4)
    parser.add_argument("--flap-period", type=float, default=FLAP_PERIOD, help="seconds")
    parser.add_argument("--flap-down", type=float, default=FLAP_DOWN, help="seconds")
    parser.add_argument("--part", choices=["size", "cost", "both"], default="both")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    if args.part in ("cost", "both"):
        cost_part()
    if args.part in ("size", "both"):
        size_part(args)


if __name__ == "__main__":
    main()
