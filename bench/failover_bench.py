"""Failover benchmark: kill a node behind real HAProxy, measure detection and the error window.

Run as ``.venv/bin/python bench/failover_bench.py [--reps N]``. It starts real HAProxy over three
aiohttp nodes, a client loop through the frontend and a detection loop that probes every node
with nodevigil's defaults (interval 1 s, timeout 500 ms, fall 3) through the monitor's own
HttpProber and NodeJudge, and drains a node with the HAProxy adapter on its down verdict.
Then it measures how fast a DNS answer changes after ``set_addresses`` on real BIND/PowerDNS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from failover.lb import RetryPolicy, ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from failover.lb.powerdns import PowerDnsLoadBalancer
from failover.lb.rfc2136 import Rfc2136LoadBalancer
from monitor.probes.base import ProbeResult
from monitor.probes.http import HttpProber, make_session
from monitor.verdict import NodeJudge
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Defaults, HttpProbe
from tests.failover.daemons import (
    HAProxyInstance,
    dns_query,
    run_bind,
    run_haproxy,
    run_powerdns,
)

DEFAULTS = Defaults()


@dataclass
class Detector:
    """Probes every node on nodevigil's schedule; sets maint on down and ready on up."""

    haproxy: HAProxyInstance
    lb: HAProxyLoadBalancer
    judges: dict[str, NodeJudge] = field(default_factory=dict)
    drained_at: dict[str, float] = field(default_factory=dict)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Run one probe loop per node until cancelled."""
        async with asyncio.TaskGroup() as group:
            for name, node in self.haproxy.nodes.items():
                spec = HttpProbe.model_validate(
                    {
                        "type": "http",
                        "url": f"http://127.0.0.1:{node.port}/",
                        "interval": f"{DEFAULTS.interval}s",
                        "timeout": f"{DEFAULTS.timeout}s",
                        "attempts": DEFAULTS.attempts,
                    }
                )
                self.judges[name] = NodeJudge.create(
                    ["http"],
                    rise=DEFAULTS.rise,
                    fall=DEFAULTS.fall,
                    require="all",
                    flap=DEFAULTS.flap,
                )
                group.create_task(self._loop(name, HttpProber(spec, session)), name=f"probe-{name}")

    async def _loop(self, name: str, prober: HttpProber) -> None:
        # The monitor's schedule: a random phase, then fixed steps on the monotonic clock.
        interval = DEFAULTS.interval
        next_at = time.monotonic() + random.uniform(0, interval)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            started = time.monotonic()
            ok, detail, decisive = await prober.check()
            result = ProbeResult(
                ok, detail, time.monotonic() - started, time.time(), "bench", decisive
            )
            transition = self.judges[name].observe("http", result, time.monotonic())
            if transition is not None and transition.new is Verdict.DOWN:
                await self.lb.set_state("web", name, ServerState.MAINT)
                self.drained_at[name] = time.monotonic()
            elif transition is not None and transition.new is Verdict.UP:
                await self.lb.set_state("web", name, ServerState.READY)
            next_at += interval
            if next_at < time.monotonic():
                next_at = time.monotonic() + interval


@dataclass
class Client:
    """Several workers send requests through the frontend and record the failed ones."""

    url: str
    workers: int = 4
    # (sent, answered) monotonic times of every failed request.
    failures: list[tuple[float, float]] = field(default_factory=list)
    requests: int = 0

    async def run(self) -> None:
        """Loop until cancelled."""
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.TaskGroup() as group:
            for index in range(self.workers):
                group.create_task(self._worker(http), name=f"client-{index}")

    async def _worker(self, http: aiohttp.ClientSession) -> None:
        while True:
            self.requests += 1
            sent = time.monotonic()
            try:
                async with http.get(self.url) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if not ok:
                self.failures.append((sent, time.monotonic()))
            await asyncio.sleep(0.005)


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float, step: float = 0.005
) -> float:
    """Poll an async predicate; return the monotonic time it first held."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(step)
    raise TimeoutError(f"not reached within {within}s")


async def bench_haproxy(reps: int, workdir: Path) -> tuple[list[float], list[float], list[float]]:
    """Kill one node per repetition; return (read-back out, adapter call, error window)."""
    out_times: list[float] = []
    drain_times: list[float] = []
    windows: list[float] = []
    async with run_haproxy(workdir / "haproxy", ["n1", "n2", "n3"]) as haproxy:
        lb = HAProxyLoadBalancer(
            name="bench",
            socket_path=haproxy.socket_path,
            timeout=0.5,
            retry=RetryPolicy(attempts=3, total=1.0),
        )
        detector = Detector(haproxy, lb)
        client = Client(haproxy.url)
        session = make_session()
        tasks = [asyncio.create_task(detector.run(session)), asyncio.create_task(client.run())]
        try:
            await wait_until(functools.partial(_all_up, detector), within=10)
            for rep in range(reps):
                name = f"n{rep % 3 + 1}"
                await asyncio.sleep(random.uniform(0.2, 1.2))  # a random phase against probes
                client.failures.clear()
                killed = time.monotonic()
                await haproxy.nodes[name].stop()

                async def shows_out(n: str = name) -> bool:
                    return (await lb.servers("web"))[n].admin is ServerState.MAINT

                seen_out = await wait_until(shows_out, within=10, step=0.01)
                await asyncio.sleep(0.3)  # let requests in flight at the drain finish
                out_times.append(seen_out - killed)
                drain_times.append(detector.drained_at[name] - killed)
                fails = list(client.failures)
                # From the first failed request's sending to the last failed one's answer.
                windows.append(max(f[1] for f in fails) - min(f[0] for f in fails) if fails else 0)
                print(
                    f"  rep {rep + 1}: {name} out after {out_times[-1]:.3f}s (read back), "
                    f"{len(fails)} failed requests over {windows[-1]:.3f}s"
                )
                await haproxy.nodes[name].start()

                async def back_in(n: str = name) -> bool:
                    return (await lb.servers("web"))[n].admin is ServerState.READY

                await wait_until(back_in, within=10, step=0.02)
            print(f"  client sent {client.requests} requests")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await session.close()
    return out_times, drain_times, windows


async def _all_up(detector: Detector) -> bool:
    return bool(detector.judges) and all(j.verdict is Verdict.UP for j in detector.judges.values())


async def dns_change_times(
    set_addresses: Callable[[str, set[str]], Awaitable[None]], port: int, fqdn: str, reps: int
) -> tuple[list[float], list[float]]:
    """Time set_addresses and the first real DNS answer that shows the new set."""
    calls: list[float] = []
    visible: list[float] = []
    for rep in range(reps):
        target = {f"192.0.2.{rep % 200 + 1}", f"198.51.100.{rep % 200 + 1}"}
        started = time.monotonic()
        await set_addresses("www", target)
        calls.append(time.monotonic() - started)

        async def shows(expected: set[str] = target) -> bool:
            answer = await dns_query(fqdn, "A", port, limit=0.5)
            return {r.to_text() for rrset in answer.answer for r in rrset} == expected

        visible.append(await wait_until(shows, within=10, step=0.001) - started)
    return calls, visible


async def bench_dns(reps: int, workdir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Measure set_addresses -> answer change on BIND and PowerDNS."""
    results: dict[str, tuple[list[float], list[float]]] = {}
    async with run_bind(workdir / "bind") as bind:
        secret = bind.key_file.read_text().strip()
        rfc = Rfc2136LoadBalancer(
            name="gslb",
            host="127.0.0.1",
            port=bind.port,
            zone=bind.zone,
            ttl=30,
            tsig_name=bind.key_name,
            tsig_secret=secret,
            tsig_algorithm=bind.key_algorithm,
        )
        results["BIND (rfc2136)"] = await dns_change_times(
            rfc.set_addresses, bind.port, f"www.{bind.zone}", reps
        )
    async with run_powerdns(workdir / "pdns") as pdns:
        api = PowerDnsLoadBalancer(name="pdns", url=pdns.url, zone=pdns.zone, api_key=pdns.api_key)
        try:
            results["PowerDNS (API)"] = await dns_change_times(
                api.set_addresses, pdns.dns_port, f"www.{pdns.zone}", reps
            )
        finally:
            await api.close()
    return results


def summary(values: list[float]) -> str:
    """Median, min and max in milliseconds."""
    return (
        f"median {statistics.median(values) * 1000:7.1f} ms  "
        f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})"
    )


async def main() -> None:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=9, help="node kills (default 9)")
    parser.add_argument("--dns-reps", type=int, default=20, help="DNS changes (default 20)")
    args = parser.parse_args()
    budget = DEFAULTS.interval * DEFAULTS.fall
    with tempfile.TemporaryDirectory(prefix="nv-bench-") as tmp:
        workdir = Path(tmp)
        print(
            f"HAProxy: kill a node, probes every {DEFAULTS.interval:g}s, timeout "
            f"{DEFAULTS.timeout * 1000:g}ms, fall {DEFAULTS.fall} (interval x fall = {budget:g}s)"
        )
        out_times, drain_times, windows = await bench_haproxy(args.reps, workdir)
        print(f"(a) kill -> adapter set maint   {summary(drain_times)}")
        print(f"(a) kill -> HAProxy shows maint {summary(out_times)}")
        print(f"(b) client error window         {summary(windows)}")
        print(
            f"    target: interval x fall + 100 ms = {(budget + 0.1) * 1000:.0f} ms; "
            f"worst kill->out {max(out_times) * 1000:.0f} ms"
        )
        print("DNS: set_addresses -> a real query sees the new A set")
        for label, (calls, visible) in (await bench_dns(args.dns_reps, workdir)).items():
            print(f"(c) {label:15} call     {summary(calls)}")
            print(f"(c) {label:15} visible  {summary(visible)}")


if __name__ == "__main__":
    asyncio.run(main())
