"""State benchmark: SLA ledger write throughput on SQLite and on PostgreSQL, side by side.

Run: ``.venv/bin/python bench/state_bench.py [--pairs N] [--rounds R]`` (~1 min).

What is timed: outages recorded through the real ``sla.ledger.Ledger`` as the daemon records
them, ``open_interval`` then ``close_interval`` (two transactions, each on the ledger's worker
thread), one after the other, over 100 services with charges for the day. Rounds rotate the
backends in one run, each round on a fresh ledger; medians shown.

- SQLite as shipped: the ledger's file settings (WAL, SQLite's default ``synchronous=FULL``:
  each commit is synced to the disk).
- PostgreSQL 15 on loopback TCP with a password, started by ``tests/postgres_server.py``
  (``postgres_for_session``), which runs it with ``fsync=off`` (a command-line setting that
  ``ALTER SYSTEM`` cannot undo). So commits there are not synced, and the like-for-like
  comparison is the third line: the same SQLite store with ``synchronous=OFF``.
- ``client CPU`` is this process's CPU per outage (event loop and the ledger's thread);
  ``server CPU`` the PostgreSQL processes' (backend, WAL writer, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, median, quantile
from nodevigil.core.config.schema import Database
from nodevigil.state.backend import PostgresBackend, SqliteBackend
from nodevigil.state.sqlite.ledger import SqliteLedgerStore
from sla.ledger import Ledger
from sla.model import Charge
from sla.store import LedgerStore
from tests.postgres_server import PostgresAddress, postgres_for_session

SERVICES = 100
WARMUP = 50
LABELS = {
    "sqlite": "SQLite as shipped (synchronous=FULL)",
    "nosync": "SQLite synchronous=OFF",
    "postgres": "PostgreSQL 15 (loopback, fsync=off)",
}


@dataclass
class Round:
    """One timed round on one backend."""

    pairs_per_s: float
    pair_ms: list[float]
    client_cpu_ms: float  # per pair
    server_cpu_ms: float  # per pair (PostgreSQL's processes; 0 for SQLite)


def server_cpu() -> float:
    """CPU seconds of every PostgreSQL process this benchmark started (the postmaster's tree)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "postgres":
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass  # a process that ended meanwhile
    return total


async def timed_round(store: Callable[[], LedgerStore], pairs: int) -> Round:
    """Open and close ``pairs`` outages through a fresh ledger; their rate and costs."""
    clock = [datetime(2026, 3, 1, 6, tzinfo=UTC)]

    def now() -> datetime:
        return clock[0]

    async with await Ledger.open(store, timezone="Europe/Berlin", now=now) as ledger:
        await ledger.import_charges(
            Charge("acme", f"svc{s}", date(2026, 3, 1), Decimal("48.00"), "EUR")
            for s in range(SERVICES)
        )
        for i in range(WARMUP):
            await ledger.open_interval(f"svc{i % SERVICES}", clock[0])
            await ledger.close_interval(f"svc{i % SERVICES}", clock[0] + timedelta(seconds=1))
        durations = []
        cpu0, server0 = cpu_seconds(), server_cpu()
        t0 = time.perf_counter()
        for i in range(pairs):
            service = f"svc{i % SERVICES}"
            clock[0] += timedelta(seconds=10)
            start = time.perf_counter()
            await ledger.open_interval(service, clock[0])
            await ledger.close_interval(service, clock[0] + timedelta(seconds=3))
            durations.append((time.perf_counter() - start) * 1000)
        elapsed = time.perf_counter() - t0
        client = (cpu_seconds() - cpu0) / pairs * 1000
        server = (server_cpu() - server0) / pairs * 1000
    return Round(pairs / elapsed, durations, client, server)


def unsynced(state: Path) -> Callable[[], LedgerStore]:
    """The SQLite ledger store with ``synchronous=OFF``: no commit waits for the disk."""

    def build() -> LedgerStore:
        store = SqliteLedgerStore(state / "ledger.db")
        store._db.execute("PRAGMA synchronous=OFF")  # benchmark only
        return store

    return build


async def run(address: PostgresAddress, work: Path, pairs: int, rounds: int) -> None:
    results: dict[str, list[Round]] = {name: [] for name in LABELS}
    names = list(LABELS)
    for n in range(rounds):
        for name in names[n % 3 :] + names[: n % 3]:
            if name != "postgres":
                state = Path(tempfile.mkdtemp(dir=work))
                store = SqliteBackend(state).ledger_store() if name == "sqlite" else unsynced(state)
                results[name].append(await timed_round(store, pairs))
                continue
            database = address.create_database()
            try:
                settings = Database(url=address.url(database), password_file=address.password_file)
                factory = PostgresBackend(settings, None, owner="bench").ledger_store()
                results[name].append(await timed_round(factory, pairs))
            finally:
                address.drop_database(database)
        print(f"  round {n + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1].pairs_per_s:,.0f}/s" for k, v in results.items()
        ))  # fmt: skip
    print()
    print(f"{'':38}{'outages/s':>10}{'ms/outage p50':>15}{'p90':>8}{'client CPU ms':>15}"
          f"{'server CPU ms':>15}")  # fmt: skip
    medians = {}
    for name, label in LABELS.items():
        rs = results[name]
        medians[name] = median([r.pairs_per_s for r in rs])
        all_ms = [ms for r in rs for ms in r.pair_ms]
        print(
            f"{label:38}{medians[name]:>10,.0f}{quantile(all_ms, 0.5):>15.2f}"
            f"{quantile(all_ms, 0.9):>8.2f}{median([r.client_cpu_ms for r in rs]):>15.2f}"
            f"{median([r.server_cpu_ms for r in rs]):>15.2f}"
        )
    pg = medians["postgres"]
    print(
        f"ratio PostgreSQL / SQLite as shipped (outages/s, medians): {pg / medians['sqlite']:.2f}"
    )
    print(
        f"ratio PostgreSQL / SQLite synchronous=OFF (like for like): {pg / medians['nosync']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="outages per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per backend (default 5)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmp:
        work = Path(tmp)
        with postgres_for_session(work) as address:
            print(
                "SLA ledger write throughput: one outage = open_interval + close_interval through"
                f" sla.ledger.Ledger; {args.pairs} per round, {args.rounds} rounds each"
            )
            asyncio.run(run(address, work, args.pairs, args.rounds))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
