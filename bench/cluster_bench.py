"""Cluster mode under fire: leader kills and pauses, and what cluster mode costs in CPU.

On the harness of tests/cluster/harness.py (3 etcd members, PostgreSQL, a real HAProxy over
three HTTP nodes, a webhook receiver, three ``nodevigil run`` processes; lease_ttl 2 s, renewed
every 500 ms, etcd calls 300 ms):

1. ``--kills K`` times: SIGKILL the leader, stop an HTTP node at once; the time from the kill
   to HAProxy holding that node in maint (the next leader's first action). The killed daemon is
   started again and the node brought back before the next round.
2. ``--pauses K`` times: SIGSTOP the leader, stop a node; the time to the drain by another
   leader; then SIGCONT the old leader and watch HAProxy for ``lease_ttl``: any change of admin
   state, or any decision line in the old leader's log that acted (or believed it could), is a
   deposed leader's action (must be 0). The action log names the vantage and epoch of each
   command, but the epoch fence refuses a deposed leader's write to it, so a deposed leader's
   command is attributed through its own log.
3. ``--notices N`` leader changes with a whole-service outage open: notices resent under a
   webhook-id the receiver had already accepted (at-least-once delivery: a leader killed
   between the receiver's 200 and its own delivered mark leaves the notice to the next leader,
   which sends it again under the same id; receivers deduplicate by it), distinct opening
   notices, and incidents opened or reopened as the database counts them (both must be 1 per
   change: a resend is not a second incident).
4. CPU: one daemon without ``cluster:`` (a single host, SQLite) against a cluster leader and a
   standby (PostgreSQL + etcd), each with ``--nodes`` extra nodes (TCP probes every 10 s),
   CPU seconds per second over ``--cpu-window`` seconds, plus etcd's and PostgreSQL's
   (``--nodes ''`` skips it).

    .venv/bin/python bench/cluster_bench.py                          # K=20, 1,000 nodes: ~5 min
    .venv/bin/python bench/cluster_bench.py --kills 100 --pauses 100 --nodes 1000,10000
    .venv/bin/python bench/cluster_bench.py --kills 0 --pauses 0 --notices 10 --nodes ''

It prints numbers and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, postgres_cpu, quantile
from failover.lb import ServerState
from tests.cluster.harness import (
    LEASE_TTL,
    NODES,
    Harness,
    Member,
    daemon_config,
    distinct_ports,
    run_cluster,
    until,
)
from tests.notify.receivers import ReceivedWebhook
from tests.postgres_server import postgres_for_session


async def heal(cluster: Harness, down: Member | None) -> None:
    """Every daemon running, every node up and ready in HAProxy, one leader."""
    if down is not None and not down.running:
        await cluster.start(down)
    for name in NODES:
        await cluster.start_node(name)
    for name in NODES:
        await cluster.wait_admin(name, ServerState.READY, within=20)
    await cluster.wait_leader(within=20)


async def watch_deposed(cluster: Harness, old: Member, offset: int, seconds: float) -> int:
    """Actions by ``old`` since ``offset``: its acting decision lines, plus HAProxy changes
    seen while watching for ``seconds`` (nobody else has a reason to change anything)."""
    before = await cluster.admin()
    changes = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        now = await cluster.admin()
        changes += sum(1 for k in now if now[k] is not before[k])
        before = now
        await asyncio.sleep(0.02)
    return changes + len(old.acting_lines(offset))


async def takeover(cluster: Harness, round_: int, *, pause: bool) -> tuple[float, int]:
    """One kill or pause of the leader: (seconds to the next leader's drain, deposed actions)."""
    old = await cluster.wait_leader(within=20)
    node = NODES[round_ % len(NODES)]
    offset = old.log_size()
    started = time.monotonic()
    if pause:
        cluster.pause(old)
    else:
        await cluster.kill(old)
    await cluster.stop_node(node)
    drained = await cluster.wait_admin(node, ServerState.MAINT, within=30)
    deposed = 0
    if pause:
        await cluster.wait_leader(within=20, excluding=old)
        cluster.resume(old)
        deposed = await watch_deposed(cluster, old, offset, LEASE_TTL)
    else:
        deposed = len(old.acting_lines(offset))
    await heal(cluster, old)
    return drained - started, deposed


OPENED = ("incident.opened", "incident.reopened")  # an outage soon after the last reopens


@dataclass(frozen=True)
class NoticeTally:
    """What a round's accepted deliveries say."""

    resent: int  # accepted again under a webhook-id already accepted (this round or before)
    opened: int  # distinct opening notices: one per incident opened or reopened


def tally_notices(
    earlier: Sequence[ReceivedWebhook], round_: Sequence[ReceivedWebhook]
) -> NoticeTally:
    """Count one round's deliveries (``round_``, accepted after ``earlier``) by webhook-id:
    an opening notice resent under its id is the same notice, not another incident."""
    seen = {d.id for d in earlier}
    resent = 0
    openings: set[str] = set()
    for delivery in round_:
        if delivery.id in seen:
            resent += 1
        seen.add(delivery.id)
        if delivery.type in OPENED:
            openings.add(delivery.id)
    return NoticeTally(resent, len(openings - {d.id for d in earlier}))


async def openings_in_database(cluster: Harness) -> int:
    """Every opening and reopening of every incident, as the shared database holds them."""
    [(total,)] = await cluster.query("SELECT coalesce(sum(openings), 0) FROM incidents")
    return int(total)


async def notice_round(cluster: Harness) -> tuple[NoticeTally, int]:
    """A change of leader with an outage open: the round's notices, and the incidents opened
    or reopened in the database meanwhile."""
    hook = cluster.hook
    start = len(hook.accepted)
    in_database = await openings_in_database(cluster)
    opened = sum(1 for d in hook.accepted if d.type in OPENED)
    resolved = sum(1 for d in hook.accepted if d.type == "incident.resolved")
    leader = await cluster.wait_leader(within=20)
    for name in NODES:
        await cluster.stop_node(name)
    await hook.wait_for(
        lambda: sum(1 for d in hook.accepted if d.type in OPENED) > opened,
        timeout=20,
    )
    await cluster.kill(leader)
    await cluster.wait_leader(within=20, excluding=leader)
    await asyncio.sleep(1.0)
    for name in NODES:
        await cluster.start_node(name)
    await hook.wait_for(
        lambda: sum(1 for d in hook.accepted if d.type == "incident.resolved") > resolved,
        timeout=20,
    )
    await asyncio.sleep(1.0)  # room for a resend or a second incident
    tally = tally_notices(hook.accepted[:start], hook.accepted[start:])
    in_database = await openings_in_database(cluster) - in_database
    await heal(cluster, leader)
    return tally, in_database


def etcd_cpu() -> float:
    """CPU seconds of every etcd process below this one."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "etcd":
                total += cpu_seconds(child.pid)
    return total


async def cpu_round(cluster: Harness, nodes: int, window: float) -> dict[str, float]:
    """CPU seconds per second: a single host, then a cluster leader and a standby."""
    template = yaml.safe_load(cluster.members[0].config.read_text())
    root = cluster.root / f"cpu-{nodes}"
    ports = distinct_ports(3)
    made: dict[str, Member] = {}
    for name in ("single", "big-1", "big-2"):
        home = root / name
        (home / "state").mkdir(parents=True, exist_ok=True)
        data = daemon_config(
            vantage=name,
            port=ports.pop(),
            state_dir=home / "state",
            haproxy=cluster.haproxy,
            etcd=cluster.etcd.endpoints,
            prefix=f"/nodevigil/bench-{nodes}/",
            database_url=template["database"]["url"],
            password_file=Path(template["database"]["password_file"]),
            hook=cluster.hook,
            secret_file=cluster.root / "acme.whsec",
            nodes=nodes,
        )
        if name == "single":
            del data["cluster"], data["database"]
        (home / "nodevigil.yaml").write_text(yaml.safe_dump(data))
        made[name] = Member(name, home / "nodevigil.yaml", data_port(data), home / "daemon.log")
    result: dict[str, float] = {}
    for label, names in (("single host", ["single"]), ("cluster", ["big-1", "big-2"])):
        members = [made[n] for n in names]
        for member in members:
            await cluster.start(member)
        if label == "cluster":

            async def one_leader(members: list[Member] = members) -> Member | None:
                roles = {m.name: (await cluster.view(m) or {}).get("role") for m in members}
                leaders = [m for m in members if roles[m.name] == "leader"]
                return leaders[0] if len(leaders) == 1 else None

            leader = await until(one_leader, within=60, what="a leader of the big cluster")
        await asyncio.sleep(10)  # the first round of probes, the first saves
        before = {m.name: cpu_seconds(m.pid) for m in members}
        side = etcd_cpu(), postgres_cpu()
        await asyncio.sleep(window)
        for m in members:
            role = "" if label == "single host" else (" leader" if m is leader else " standby")
            result[f"{label}{role}"] = (cpu_seconds(m.pid) - before[m.name]) / window
        result[f"{label}: etcd"] = (etcd_cpu() - side[0]) / window
        result[f"{label}: postgres"] = (postgres_cpu() - side[1]) / window
        for member in members:
            await cluster.kill(member)
    return result


def data_port(data: dict[str, Any]) -> int:
    """The API port of a configuration."""
    return int(str(data["api"]["listen"]).rsplit(":", 1)[1])


def summary(name: str, values: list[float]) -> str:
    """p50, p99 and max in seconds."""
    return (
        f"{name}: n={len(values)} p50={quantile(values, 0.5):.2f}s "
        f"p99={quantile(values, 0.99):.2f}s max={max(values, default=float('nan')):.2f}s"
    )


async def bench(args: argparse.Namespace, root: Path) -> None:
    (root / "pg").mkdir()
    with postgres_for_session(root / "pg") as postgres:
        async with run_cluster(root, postgres) as cluster:
            print("harness up: 3 etcd, PostgreSQL, HAProxy over 3 nodes, 3 daemons", flush=True)
            for label, count, pause in (("kill", args.kills, False), ("pause", args.pauses, True)):
                if not count:
                    continue
                took: list[float] = []
                deposed = 0
                for i in range(count):
                    seconds, actions = await takeover(cluster, i, pause=pause)
                    took.append(seconds)
                    deposed += actions
                    print(f"  {label} {i + 1}/{count}: {seconds:.2f}s", flush=True)
                print(summary(f"{label} -> next leader's first action", took))
                print(f"{label}: actions by a deposed leader: {deposed}", flush=True)
            resent = notices = incidents = 0
            for i in range(args.notices):
                tally, in_database = await notice_round(cluster)
                resent += tally.resent
                notices += tally.opened
                incidents += in_database
                print(
                    f"  notice round {i + 1}/{args.notices}: {tally.resent} resent under the "
                    f"same webhook-id, {tally.opened} opening notices, {in_database} incidents "
                    "opened or reopened (database)",
                    flush=True,
                )
            print(
                f"notices: {args.notices} leader changes with an outage open: {resent} resent "
                f"under the same webhook-id, {notices} distinct opening notices, {incidents} "
                "incidents opened or reopened (database)",
                flush=True,
            )
            await cluster.stop_all()
            for nodes in args.nodes:
                for label, value in (await cpu_round(cluster, nodes, args.cpu_window)).items():
                    print(f"cpu at {nodes} nodes, {label}: {value:.3f} s/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--pauses", type=int, default=20)
    parser.add_argument("--notices", type=int, default=5)
    parser.add_argument(
        "--nodes",
        type=lambda s: [int(n) for n in s.split(",") if n.strip()],
        default=[1000],
        help="node counts of the CPU rounds, comma-separated ('' for none)",
    )
    parser.add_argument("--cpu-window", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
