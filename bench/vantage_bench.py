"""Vantages under fire: false drains of one-vantage faults, a node's death to its drain with one
host against three vantages, and what voting costs etcd and the leader at a large fleet.

On the harness of tests/cluster/harness.py (3 etcd members, PostgreSQL, two sites ``sh`` and
``east`` of 3 HTTP nodes each behind an HAProxy of their own, 3 ``nodevigil run`` processes;
lease_ttl 2 s, probes every 200 ms with fall 1, controller cycle 200 ms):

1. False drains, ``--trials T`` of each one-vantage fault (the issue's figure: 200), three
   vantages with quorum 2; every fault hits the *leader*, the one process that acts:

   - ``cut-all``: cut off from every node (tests/cluster/cuts.py), not from etcd, until it says
     ``vantage.isolated``; a random 0-1 s more; healed until ``vantage.rejoined``;
   - ``cut-site``: cut off from the ``east`` site for ``--hold`` seconds, then healed;
   - ``kill``: SIGKILLed, until its votes are gone at the others; started again.

   Between trials every vantage votes every node up again. A false drain is any HAProxy server
   leaving ``ready`` (both HAProxies read every 20 ms throughout: no node dies in this part);
   also counted: ``node.down`` events (a combined verdict that moved), incidents opened, and
   ``vantage.isolated`` per fault. Figures: how long the vantage took to say it is cut off,
   and how long a killed vantage's votes outlived it.
2. Death to drain, ``--deaths D`` per mode: a ``sh`` node's HTTP server stopped; the time from
   the stop to HAProxy holding it in maint (read every 5 ms), p50/p99. Modes, in blocks
   A B C C B A (a drift of the machine's load hits all alike): ``single host`` (one daemon, no
   ``cluster:``, a PostgreSQL database of its own), ``cluster`` (three daemons, no vantages: the
   leader's own probes decide) and ``3 vantages`` (quorum 2).
3. Votes at scale, ``--nodes N`` more nodes (the issue's figure: 10000) in 20 sites behind
   ``recording`` load balancers, one HTTP probe each every ``--interval`` (default 10 s; three
   daemons probing 10,000 nodes every second do not fit in 2 cores) against
   ``bench/common.py switchable`` targets (one port per node, 500 ports on each target
   process's own loopback address); ``--flap-share`` (5 %) of them fail 15 s out of every
   45 s. Three daemons without vantages, then with, the lease at its defaults (5 s, etcd calls
   1 s); with votes, once every member holds every vote (the start-up storm is not measured).
   Over ``--cpu-window`` seconds after ``--warmup``: vote writes and transactions a second (the
   VoteStore's ``nodevigil_cluster_vote_writes_total`` and ``..._transactions_total``, summed
   over the three), etcd's own puts, committed proposals and WAL fsyncs a second, and CPU
   seconds a second of the leader, the standbys, etcd and the targets.

    .venv/bin/python bench/vantage_bench.py                    # T=10, D=20, N=1,000: ~7 min
    .venv/bin/python bench/vantage_bench.py --trials 200 --deaths 100 --nodes 10000  # ~45 min
    .venv/bin/python bench/vantage_bench.py --trials 0 --deaths 0 --nodes 10000

Cuts need root and nft (the cut faults are skipped otherwise). It prints numbers and asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster_bench import data_port, etcd_cpu, summary
from bench.common import cpu_seconds, raise_fd_limit_to
from bench.load_bench import DOWN_FOR, PERIOD, Targets
from failover.lb import ServerState
from nodevigil.app.demo.servers.process import Program, spawn
from tests.cluster.cuts import missing_requirements
from tests.cluster.harness import (
    EAST_NODES,
    NODES,
    Harness,
    Member,
    distinct_ports,
    run_cluster,
    until,
)
from tests.failover.haproxy_daemon import admin_states
from tests.postgres_server import postgres_for_session

NAMES = ("ops-1", "ops-2", "ops-3")
VOTING = {"vantages": list(NAMES), "quorum": 2}
SMALL = tuple(f"sh-{n}" for n in NODES) + tuple(f"east-{e}" for e in EAST_NODES)
FAULTS = ("cut-all", "cut-site", "kill")
MODES = ("single host", "cluster", "3 vantages")
FLEET_SITES = 20
PORTS_PER_TARGET = 500
SETTLE = 3.0  # seconds after a start before the first death: start-up work is over
SLOW = 0.5  # a death slower than this to drain is named (with its wall time, for the logs)
VOTE_WRITES = "nodevigil_cluster_vote_writes_total"
VOTE_TXNS = "nodevigil_cluster_vote_transactions_total"
ETCD_COUNTERS = (
    "etcd_mvcc_put_total",
    "etcd_server_proposals_committed_total",
    "etcd_disk_wal_fsync_duration_seconds_count",
)
ROWS = {  # what part 3 prints, in this order
    "cpu leader": "leader CPU (s/s)",
    "cpu standby (mean of 2)": "standby CPU, mean of 2 (s/s)",
    "cpu etcd (3 members)": "etcd CPU, 3 members (s/s)",
    "cpu targets": "targets CPU (s/s)",
    VOTE_WRITES: "vote writes/s, 3 vantages",
    VOTE_TXNS: "vote transactions/s, 3 vantages",
    "etcd_mvcc_put_total": "etcd puts/s (votes, lease, members)",
    "etcd_server_proposals_committed_total": "etcd proposals committed/s",
    "etcd_disk_wal_fsync_duration_seconds_count": "etcd WAL fsyncs/s (one member)",
}


# --- configurations ---------------------------------------------------------------------------


def rewrite(member: Member, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to ``member``'s configuration file (written back as JSON, which YAML
    reads: a 10,000-node YAML dump takes seconds)."""
    text = member.config.read_text()
    data = json.loads(text) if text.startswith("{") else yaml.safe_load(text)
    edit(data)
    member.config.write_text(json.dumps(data))


def voting(on: bool) -> Callable[[dict[str, Any]], None]:
    """An edit that turns the vantages on (quorum 2) or off."""

    def edit(data: dict[str, Any]) -> None:
        for key in VOTING:
            data["cluster"].pop(key, None)
        if on:
            data["cluster"].update(VOTING)

    return edit


def with_fleet(addresses: list[str], interval: str, on: bool) -> Callable[[dict[str, Any]], None]:
    """An edit adding one node per target address (20 sites behind recording load balancers)."""

    def edit(data: dict[str, Any]) -> None:
        voting(on)(data)
        # The lease at its defaults (5 s, renewed every third, etcd calls 1 s): the harness's
        # 2 s lease with 300 ms calls is for quick take-overs, not for a loaded fleet.
        for key in ("lease_ttl", "renew_every"):
            data["cluster"].pop(key, None)
        data["cluster"]["etcd"]["timeout"] = "1s"
        data["sites"] = [s for s in data["sites"] if not s["name"].startswith("fleet-")]
        data["nodes"] = [n for n in data["nodes"] if not n["name"].startswith("fleet-")]
        for s in range(FLEET_SITES):
            data["load_balancers"][f"flb-{s:02d}"] = {"type": "recording"}
            data["sites"].append(
                {
                    "name": f"fleet-s{s:02d}",
                    "address": f"198.51.100.{s + 1}",
                    "local_lb": f"flb-{s:02d}",
                }
            )
        probe = {"type": "http", "interval": interval, "timeout": "1s"}
        data["nodes"] += [
            {
                "name": f"fleet-{i:05d}",
                "site": f"fleet-s{i % FLEET_SITES:02d}",
                "probes": [{**probe, "url": f"http://{address}/healthz"}],
            }
            for i, address in enumerate(addresses)
        ]

    return edit


def listen_on(port: int) -> Callable[[dict[str, Any]], None]:
    """An edit moving the API to ``port``."""

    def edit(data: dict[str, Any]) -> None:
        data["api"]["listen"] = f"127.0.0.1:{port}"

    return edit


def single_host(cluster: Harness) -> Member:
    """One daemon without ``cluster:`` over the same HAProxies, with a database of its own."""
    assert cluster.postgres is not None
    home = cluster.root / "single"
    (home / "state").mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(cluster.members[0].config.read_text())
    del data["cluster"]
    port = next(p for p in distinct_ports(8) if p not in {m.port for m in cluster.members})
    data.update(vantage="single", state_dir=str(home / "state"))
    data["api"]["listen"] = f"127.0.0.1:{port}"
    data["database"]["url"] = cluster.postgres.url(cluster.postgres.create_database())
    config = home / "nodevigil.yaml"
    config.write_text(yaml.safe_dump(data))
    return Member("single", config, data_port(data), home / "daemon.log")


# --- the daemons ------------------------------------------------------------------------------


async def start(cluster: Harness, members: Iterable[Member], *, within: float = 60.0) -> None:
    """Start ``members`` (under their cut identity, if any) and wait until each is ready; a
    deadline of its own, as a 10,000-node start takes longer than the harness waits. A member
    whose API port another program took meanwhile starts again on a new one."""

    async def one(member: Member) -> None:
        for _ in range(4):
            if await started(cluster, member, within):
                return
            taken = {m.port for m in cluster.members} | {member.port}
            member.port = next(p for p in distinct_ports(8) if p not in taken)
            rewrite(member, listen_on(member.port))
        raise RuntimeError(f"{member.name}: no free API port in 4 tries")

    await asyncio.gather(*(one(m) for m in members))


async def started(cluster: Harness, member: Member, within: float) -> bool:
    """Start ``member`` once: True when ready, False when its API port was taken."""
    argv = [sys.executable, "-m", "nodevigil", "run", "-c", str(member.config)]
    launch = spawn if member.cut is None else member.cut.spawn
    offset = member.log_size()
    program = await launch(member.name, argv, member.log, member.config.parent)
    member.process, member.paused = program.process, False

    async def ready() -> bool:
        if not member.running or "Address already in use" in member.log_since(offset):
            return True
        try:
            async with cluster.http.get(f"{member.base}/readyz") as response:
                if response.status != 200:
                    return False
        except (OSError, TimeoutError, aiohttp.ClientError):
            return False
        # Another program on the same port may have answered: ask who it is.
        view = await cluster.view(member, within=2.0)
        return view is not None and view.get("me") == member.name

    try:
        await until(ready, within=within, what=f"{member.name} ready", every=0.2)
    except TimeoutError:
        tail = "\n".join(member.log_since(offset).splitlines()[-20:])
        raise RuntimeError(f"{member.name} not ready in {within:g}s; its log:\n{tail}") from None
    said = member.log_since(offset)
    if member.running and "Address already in use" not in said:
        return True
    if member.process is not None:
        await member.process.wait()  # reaped: the next try starts clean
    if "Address already in use" in said:
        return False
    raise RuntimeError(f"{member.name} exited: {said[-2000:]}")


async def stop(members: Iterable[Member]) -> None:
    """Stop ``members`` cleanly (SIGTERM; a vantage revokes its votes' lease)."""
    for member in members:
        if member.process is not None and member.running:
            await Program(member.name, member.process, member.log).stop()


async def leader(cluster: Harness, within: float = 30) -> Member:
    """The one leader among the running members, once the others say standby."""
    running = [m for m in cluster.members if m.running]

    async def one() -> Member | None:
        roles = await cluster.roles()
        leaders = [m for m in running if roles.get(m.name) == "leader"]
        settled = all(roles.get(m.name) in ("leader", "standby") for m in running)
        return leaders[0] if len(leaders) == 1 and settled else None

    return await until(one, within=within, what="one leader, the others standbys")


async def votes_up(cluster: Harness, nodes: Iterable[str] = SMALL, within: float = 30) -> None:
    """Wait until every running member sees every vantage vote every node up."""
    wanted = list(nodes)

    async def agreed() -> bool:
        for member in cluster.members:
            if member.running:
                for node in wanted:
                    view = await cluster.node(member, node)
                    if {v["vote"] for v in view["votes"]} != {"up"}:
                        return False
        return True

    await until(agreed, within=within, what="every vote up", every=0.1)


async def all_ready(cluster: Harness) -> None:
    """Every HTTP node up and ready in HAProxy."""
    for name in (*NODES, *EAST_NODES):
        await cluster.start_node(name)

    async def ready() -> bool:
        return set((await cluster.admin()).values()) == {ServerState.READY}

    await until(ready, within=30, what="every server ready in HAProxy")


# --- part 1: false drains ---------------------------------------------------------------------


@dataclass
class DrainWatch:
    """Reads both HAProxies every 20 ms; every server seen leaving ``ready`` is a drain."""

    cluster: Harness
    drains: list[tuple[str, str]] = field(default_factory=list)  # (fault, server)
    fault: str = ""

    async def run(self) -> None:
        """Until cancelled."""
        before = await self.cluster.admin()
        while True:
            now = await self.cluster.admin()
            for server, state in now.items():
                if state is not ServerState.READY and before.get(server) is ServerState.READY:
                    self.drains.append((self.fault, server))
                    print(f"  FALSE DRAIN of {server} during {self.fault}", flush=True)
            before = now
            await asyncio.sleep(0.02)


async def count_events(cluster: Harness, kind: str, since: float) -> int:
    """Events of ``kind`` from ``since`` on (wall time), every daemon's, in the shared log."""
    rows = await cluster.query(
        f"SELECT count(*) FROM events WHERE kind = '{kind}' AND at >= {since!r}"
    )
    return int(rows[0][0])


async def cut_all(cluster: Harness, target: Member) -> dict[str, float]:
    """Cut ``target`` off from every node until isolated; heal it until it rejoins."""
    began, mono = time.time(), time.monotonic()
    await cluster.cut(target, ["nodes"])
    await cluster.wait_event(
        target, "vantage.isolated", subject=target.name, since=began, within=30
    )
    isolated = time.monotonic() - mono
    await asyncio.sleep(random.uniform(0.0, 1.0))
    healed, mono = time.time(), time.monotonic()
    await cluster.heal(target)
    await cluster.wait_event(
        target, "vantage.rejoined", subject=target.name, since=healed, within=30
    )
    return {"isolated": isolated, "rejoined": time.monotonic() - mono}


async def cut_site(cluster: Harness, target: Member, hold: float) -> dict[str, float]:
    """Cut ``target`` off from the east site for ``hold`` seconds (it sees the site die)."""
    mono = time.monotonic()
    await cluster.cut(target, ["east"])
    east = [f"east-{e}" for e in EAST_NODES]

    async def sees_it_down() -> bool:
        for node in east:
            view = await cluster.node(target, node)
            if view["local_verdict"] != "down":
                return False
        return True

    await until(sees_it_down, within=10, what=f"{target.name} sees east down")
    seen = time.monotonic() - mono
    await asyncio.sleep(hold)
    await cluster.heal(target)
    return {"sees the site down": seen}


async def kill(cluster: Harness, target: Member) -> dict[str, float]:
    """SIGKILL ``target``; its votes gone at the others; start it again."""
    others = [m for m in cluster.members if m is not target]
    mono = time.monotonic()
    await cluster.kill(target)

    async def gone() -> bool:
        for member in others:
            for node in SMALL:
                view = await cluster.node(member, node)
                if any(v["vantage"] == target.name and v["vote"] for v in view["votes"]):
                    return False
        return True

    await until(gone, within=30, what=f"{target.name}'s votes gone", every=0.02)
    vanished = time.monotonic() - mono
    await start(cluster, [target])
    return {"votes gone": vanished}


async def false_drains(cluster: Harness, trials: int, hold: float, faults: list[str]) -> None:
    """Part 1: ``trials`` of each fault; the false drains and the side figures."""
    for member in cluster.members:
        rewrite(member, voting(True))
    await start(cluster, cluster.members)
    await all_ready(cluster)
    await votes_up(cluster)
    began = time.time()
    [(incidents_before,)] = await cluster.query("SELECT count(*) FROM incidents")
    watch = DrainWatch(cluster)
    watcher = asyncio.create_task(watch.run(), name="drain-watch")
    figures: dict[str, dict[str, list[float]]] = {f: {} for f in faults}
    isolated: dict[str, int] = {}
    try:
        for fault in faults:
            watch.fault = fault
            since = time.time()
            for i in range(trials):
                target = await leader(cluster)
                if fault == "cut-all":
                    got = await cut_all(cluster, target)
                elif fault == "cut-site":
                    got = await cut_site(cluster, target, hold)
                else:
                    got = await kill(cluster, target)
                await votes_up(cluster)
                for name, value in got.items():
                    figures[fault].setdefault(name, []).append(value)
                shown = ", ".join(f"{k} {v:.2f}s" for k, v in got.items())
                print(f"  {fault} {i + 1}/{trials} ({target.name}): {shown}", flush=True)
            isolated[fault] = await count_events(cluster, "vantage.isolated", since)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    downs = await count_events(cluster, "node.down", began)
    [(incidents_after,)] = await cluster.query("SELECT count(*) FROM incidents")
    print(f"\n1. false drains over {trials} trials of each fault, the leader faulted each time")
    for fault in faults:
        drains = sum(1 for f, _ in watch.drains if f == fault)
        print(
            f"{fault}: false drains {drains}, vantage.isolated events {isolated[fault]}",
            flush=True,
        )
        for name, values in figures[fault].items():
            print("  " + summary(name, values))
    print(f"node.down events (a combined verdict moved): {downs}")
    print(f"incidents opened: {int(incidents_after) - int(incidents_before)}", flush=True)
    await stop(cluster.members)


# --- part 2: death to drain -------------------------------------------------------------------


async def seen_out(cluster: Harness, server: str) -> float:
    """The monotonic time HAProxy was first read holding ``server`` out (every 5 ms)."""
    haproxy = cluster.haproxy

    async def out() -> float | None:
        states = await admin_states(haproxy)
        return time.monotonic() if states[server] is not ServerState.READY else None

    return await until(out, within=30, what=f"{server} drained", every=0.005)


async def deaths(cluster: Harness, count: int, first: int, mode: str) -> list[float]:
    """``count`` node deaths (rotating over the sh nodes): seconds from stop to drain."""
    took = []
    for i in range(count):
        server = NODES[(first + i) % len(NODES)]
        await asyncio.sleep(random.uniform(0.3, 0.6))  # a random phase against the probes
        stopped, wall = time.monotonic(), time.time()
        await cluster.stop_node(server)
        took.append(await seen_out(cluster, server) - stopped)
        if took[-1] > SLOW:
            stamp = time.strftime("%H:%M:%S", time.localtime(wall))
            print(f"  slow: {mode}, {server} stopped at {stamp}: {took[-1]:.2f}s", flush=True)
        await cluster.start_node(server)
        await cluster.wait_admin(server, ServerState.READY, within=30)
    return took


async def death_to_drain(cluster: Harness, count: int) -> None:
    """Part 2: ``count`` deaths per mode, in blocks A B C C B A."""
    single = single_host(cluster)
    try:
        took = await death_blocks(cluster, count, single)
    finally:
        await stop([single])  # not one of the harness's members: stopped here
    print("\n2. a sh node's HTTP server stopped -> HAProxy holds it in maint (read every 5 ms)")
    for mode in MODES:
        print(summary(mode, took[mode]), flush=True)


async def death_blocks(cluster: Harness, count: int, single: Member) -> dict[str, list[float]]:
    """The deaths of part 2, block by block: seconds to drain, by mode."""
    took: dict[str, list[float]] = {mode: [] for mode in MODES}
    blocks = [*MODES, *reversed(MODES)]
    for b, mode in enumerate(blocks):
        share = count // 2 + (count % 2 if b < len(MODES) else 0)
        if not share:
            continue
        if mode == "single host":
            members = [single]
        else:
            members = cluster.members
            for member in members:
                rewrite(member, voting(mode == "3 vantages"))
        await start(cluster, members)
        if mode != "single host":
            await leader(cluster)
        if mode == "3 vantages":
            await votes_up(cluster)
        await all_ready(cluster)
        await asyncio.sleep(SETTLE)
        got = await deaths(cluster, share, b, mode)
        took[mode] += got
        print(f"  {mode}: {share} deaths, median {sorted(got)[len(got) // 2]:.3f}s", flush=True)
        await stop(members)
    return took


# --- part 3: votes at scale -------------------------------------------------------------------


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every unlabelled sample of a Prometheus page, by name."""
    async with http.get(url) as response:
        text = await response.text()
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*) ([0-9.eE+-]+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


async def votes_counted(cluster: Harness, wanted: int) -> None:
    """Wait until every member's vote table holds ``wanted`` votes."""

    async def full() -> bool:
        for member in cluster.members:
            page = await scrape(cluster.http, f"{member.base}/metrics")
            if page.get("nodevigil_cluster_votes", 0.0) < wanted:
                return False
        return True

    await until(full, within=300, what=f"{wanted} votes at every member", every=1.0)


async def counters(cluster: Harness) -> dict[str, float]:
    """Vote writes and transactions summed over the members; etcd's counters (the largest of
    the members: each counts the whole cluster's writes)."""
    total = {VOTE_WRITES: 0.0, VOTE_TXNS: 0.0}
    for member in cluster.members:
        page = await scrape(cluster.http, f"{member.base}/metrics")
        for name in total:
            total[name] += page.get(name, 0.0)
    for endpoint in cluster.etcd.endpoints:
        page = await scrape(cluster.http, f"{endpoint}/metrics")
        for name in ETCD_COUNTERS:
            total[name] = max(total.get(name, 0.0), page.get(name, 0.0))
    return total


async def flap(targets: Targets, addresses: list[str], share: float, seed: int) -> None:
    """``share`` of the targets fail DOWN_FOR seconds out of every PERIOD (random phases)."""
    rng = random.Random(seed)
    began = time.monotonic()
    due: list[tuple[float, bool, str]] = []  # (when, fail, host:port): a heap
    for address in rng.sample(addresses, round(len(addresses) * share)):
        first = began + rng.uniform(0, PERIOD)
        heapq.heappush(due, (first, True, address))
        heapq.heappush(due, (first + DOWN_FOR, False, address))
    while due:
        await asyncio.sleep(max(0.0, due[0][0] - time.monotonic()))
        now = time.monotonic() + 0.05  # what falls due within 50 ms goes in the same switch
        batch: dict[bool, list[str]] = {True: [], False: []}
        while due and due[0][0] <= now:
            at, fail, address = heapq.heappop(due)
            batch[fail].append(address)
            heapq.heappush(due, (at + PERIOD, fail, address))
        for fail, switched in batch.items():
            if switched:
                await asyncio.to_thread(targets.switch, switched, fail)


async def fleet_round(
    cluster: Harness, targets: Targets, addresses: list[str], args: argparse.Namespace, on: bool
) -> dict[str, float]:
    """Three daemons over the fleet, voting or not: rates and CPU over the window."""
    for member in cluster.members:
        rewrite(member, with_fleet(addresses, f"{args.interval}s", on))
    await start(cluster, cluster.members, within=300)
    # The start-up storm (every vantage's first vote of every node, everyone's first verdicts
    # in the event log) is over before anything is measured.
    if on:
        await votes_counted(cluster, 3 * (len(addresses) + len(SMALL)))
    head = await leader(cluster, within=300)
    flapping = asyncio.create_task(flap(targets, addresses, args.flap_share, args.seed))
    try:
        await asyncio.sleep(args.warmup)
        before, began = await counters(cluster), time.monotonic()
        cpu = {m.name: cpu_seconds(m.pid) for m in cluster.members}
        side = etcd_cpu(), targets.cpu()
        await asyncio.sleep(args.cpu_window)
        after, window = await counters(cluster), time.monotonic() - began
        used = {m.name: (cpu_seconds(m.pid) - cpu[m.name]) / window for m in cluster.members}
        standbys = [used[m.name] for m in cluster.members if m is not head]
        result = {"leader": used[head.name], "standby (mean of 2)": sum(standbys) / 2}
        result["etcd (3 members)"] = (etcd_cpu() - side[0]) / window
        result["targets"] = (targets.cpu() - side[1]) / window
        rates = {name: (after[name] - before[name]) / window for name in after}
    finally:
        flapping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flapping
        await asyncio.to_thread(targets.switch, addresses, False)
        await stop(cluster.members)
    return {**{f"cpu {k}": v for k, v in result.items()}, **rates}


async def votes_at_scale(cluster: Harness, args: argparse.Namespace) -> None:
    """Part 3: the fleet without vantages, then with; side by side."""
    print(f"load average before part 3: {os.getloadavg()}", flush=True)
    # Each target process allows itself 4 descriptors a port (bench/common.py): a listener and
    # three daemons' keep-alive connections fill that, so 500 ports each leave the slack.
    procs = max(1, math.ceil(args.nodes / PORTS_PER_TARGET))
    sizes = [args.nodes // procs + (i < args.nodes % procs) for i in range(procs)]
    targets = await asyncio.to_thread(Targets, sizes)
    try:
        addresses = targets.addresses  # one loopback address per target process
        # The members' API ports were picked before the targets took 10,000 of their own.
        for member, port in zip(cluster.members, distinct_ports(3), strict=True):
            member.port = port
            rewrite(member, listen_on(port))
        rows = {}
        for label, on in (("cluster, no vantages", False), ("3 vantages", True)):
            print(f"  {label}: {args.nodes} more nodes ...", flush=True)
            rows[label] = await fleet_round(cluster, targets, addresses, args, on)
    finally:
        await asyncio.to_thread(targets.stop)
    print(
        f"\n3. {args.nodes} more nodes, http every {args.interval:g}s, "
        f"{args.flap_share:.0%} failing {DOWN_FOR:g}s of every {PERIOD:g}s; "
        f"per second over {args.cpu_window:g}s after {args.warmup:g}s"
    )
    labels = list(rows)
    print(f"{'':40}" + "".join(f"{label:>22}" for label in labels))
    for key, name in ROWS.items():
        cells = "".join(f"{rows[label].get(key, float('nan')):>22.3f}" for label in labels)
        print(f"{name:40}{cells}", flush=True)
    changes = 2 * round(args.nodes * args.flap_share) / PERIOD
    print(
        f"the flap schedule's verdict changes: {changes:.2f}/s per vantage, so "
        f"{3 * changes:.2f} vote writes/s for three when each change is one vote",
        flush=True,
    )


# --- the run ----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, root: Path) -> None:
    faults = [f for f in args.faults if f == "kill" or missing_requirements() is None]
    if skipped := [f for f in args.faults if f not in faults]:
        print(f"skipped {', '.join(skipped)}: {missing_requirements()}", flush=True)
    cuttable = NAMES if any(f.startswith("cut") for f in faults) and args.trials else ()
    (root / "pg").mkdir()
    with postgres_for_session(root / "pg") as postgres:
        async with run_cluster(
            root,
            postgres,
            east=EAST_NODES,
            cluster_extra=VOTING,
            cuttable=cuttable,
            start=False,
        ) as cluster:
            print("harness: 3 etcd, PostgreSQL, 2 HAProxies over 3 nodes each", flush=True)
            parts: list[Callable[[], Awaitable[None]]] = []
            if args.deaths:
                parts.append(lambda: death_to_drain(cluster, args.deaths))
            if args.trials and faults:
                parts.append(lambda: false_drains(cluster, args.trials, args.hold, faults))
            if args.nodes:
                parts.append(lambda: votes_at_scale(cluster, args))
            for part in parts:
                await part()
                print(f"load average after the part: {os.getloadavg()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="of each fault (0: none)")
    parser.add_argument(
        "--faults",
        type=lambda s: [f for f in s.split(",") if f],
        default=list(FAULTS),
        help=f"comma-separated, of {', '.join(FAULTS)}",
    )
    parser.add_argument("--hold", type=float, default=2.0, help="seconds a site stays cut")
    parser.add_argument("--deaths", type=int, default=20, help="per mode (0: none)")
    parser.add_argument("--nodes", type=int, default=1000, help="fleet size of part 3 (0: none)")
    parser.add_argument("--interval", type=float, default=10.0, help="fleet probe interval, s")
    parser.add_argument("--flap-share", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--cpu-window", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and state here (default: a temp dir, removed)"
    )
    args = parser.parse_args()
    if unknown := set(args.faults) - set(FAULTS):
        parser.error(f"--faults: unknown {sorted(unknown)}")
    raise_fd_limit_to(65536)  # the daemons inherit it: one connection per fleet node each
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vantage-bench-")))
        else:
            root = args.workdir
            root.mkdir(parents=True)
        asyncio.run(bench(args, root))
    command = " ".join(["bench/vantage_bench.py", *sys.argv[1:]])
    print(f"\ncommand: .venv/bin/python {command}\ntotal time: {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
