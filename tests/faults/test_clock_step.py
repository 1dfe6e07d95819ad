"""The wall clock stepped forwards and backwards under a running daemon.

The daemon runs as a real process under libfaketime (Debian's faketime), which makes the
process's wall clock (CLOCK_REALTIME) jump when the test rewrites a file, while the monotonic
clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC). nodevigil times probes, verdicts and
hold-downs on the monotonic clock and uses wall time only for records, so a step of an hour
either way must neither fire a verdict nor suppress one: healthy nodes stay up and in, and a
node that dies after the steps is still judged down and taken out within interval x fall.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodevigil.api.auth import token_digest
from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import free_port, poll_until
from tests.test_incidents_daemon import Api
from tests.test_sla_daemon import Target

TOKEN = "clock-admin-token"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
INTERVAL, FALL = 0.2, 3


def write_config(path: Path, port: int, targets: dict[str, Target]) -> None:
    data: dict[str, Any] = {
        "state_dir": "state",
        "api": {
            "listen": f"127.0.0.1:{port}",
            "tokens": [{"name": "ops", "role": "admin", "sha256": token_digest(TOKEN)}],
        },
        "defaults": {"interval": f"{INTERVAL}s", "timeout": "150ms", "rise": 2, "fall": FALL},
        "failover": {"cycle": "200ms", "hold_down": "1s"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [
            {"name": name, "site": "s", "probes": [{"type": "http", "url": t.url}]}
            for name, t in targets.items()
        ],
        "services": [{"name": "web", "sites": ["s"]}],
    }
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
async def targets() -> AsyncIterator[dict[str, Target]]:
    made = {name: Target() for name in ("a", "b", "c")}
    for t in made.values():
        await t.start()
    yield made
    for t in made.values():
        await t.stop()


class Faked:
    """A daemon process whose wall clock the test steps."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.offset_file = tmp / "faketime"
        self.offset_file.write_text("+0\n")
        self.api = Api(f"http://127.0.0.1:{port}")

    def env(self) -> dict[str, str]:
        return dict(
            LD_PRELOAD=str(LIBFAKETIME),
            FAKETIME_TIMESTAMP_FILE=str(self.offset_file),
            FAKETIME_CACHE_DURATION="1",  # re-read the offset every second, not every call
            FAKETIME_DONT_FAKE_MONOTONIC="1",  # the point: only the wall clock steps
        )

    def step(self, seconds: int) -> None:
        self.offset_file.write_text(f"{seconds:+d}\n")

    async def events(self, kind: str) -> list[dict[str, Any]]:
        code, body = await self.api.call("GET", f"/api/v1/events?kind={kind}&limit=1000", TOKEN)
        assert code == 200, body
        return list(body["events"])

    async def status(self) -> dict[str, Any]:
        _, body = await self.api.call("GET", "/api/v1/status", TOKEN)
        return body  # type: ignore[no-any-return]

    async def probes_done(self) -> float:
        _, text = await self.api.call("GET", "/metrics", token=None)
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in str(text).splitlines()
            if line.startswith("nodevigil_probe_results_total{")
        )


async def test_a_wall_clock_step_neither_fires_nor_suppresses_verdicts(
    tmp_path: Path, targets: dict[str, Target]
) -> None:
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} is missing: install the Debian package faketime")
    port = free_port()
    path = tmp_path / "nodevigil.yaml"
    write_config(path, port, targets)
    faked = Faked(tmp_path, port)
    log = tmp_path / "daemon.log"
    proc = await spawn_daemon(path, log, env=faked.env())
    try:
        await wait_daemon_ready(proc, faked.api.base, log)

        async def all_in() -> bool:
            nodes = (await faked.status())["nodes"]
            return all(n["verdict"] == "up" and n["actual"] == "ready" for n in nodes)

        await poll_until(all_in, within=10, what="every node up and in")
        verdicts_before = await faked.events("node.")

        for step in (+3600, -3600):
            faked.step(step)

            async def stepped(step: int = step) -> bool:
                seen = (await faked.status())["last_cycle_at"]
                return seen is not None and abs(seen - (time.time() + step)) < 30

            await poll_until(stepped, within=10, what=f"the daemon's wall clock {step:+d}s")
            # Let several fall-lengths of probe rounds pass on the stepped clock.
            start = await faked.probes_done()

            async def rounds(start: float = start) -> bool:
                return await faked.probes_done() >= start + 3 * FALL * len(targets)

            await poll_until(rounds, within=15, what="three fall-lengths of probes", interval=0.1)
            assert await faked.events("node.") == verdicts_before, f"a verdict after {step:+d}s"
            assert await faked.events("lb.action") == []
            assert await all_in()

        # Still stepped back an hour: a node that dies now is judged and drained on time.
        targets["b"].healthy = False

        async def drained() -> bool:
            [b] = [n for n in (await faked.status())["nodes"] if n["name"] == "b"]
            return b["verdict"] == "down" and b["actual"] == "maint"

        # Had timing followed the wall clock, the step back would hold this verdict for an hour.
        # The deadline is seconds, not interval x fall, because the monitor rightly defers
        # verdicts while its own event loop lags (a shared 2-core machine); detection time
        # itself is measured by the packet-loss test and the failover benchmark.
        await poll_until(drained, within=10, what="node b judged down and out", interval=0.1)
        [down] = await faked.events("node.down")
        # Records carry the wall clock the process sees: an hour behind the real one.
        assert abs(down["at"] - (time.time() - 3600)) < 30, down
        # The one verdict since the steps is b's (listed by wall time, so out of order).
        after = sorted((e["kind"], e["subject"]) for e in await faked.events("node."))
        before = [(e["kind"], e["subject"]) for e in verdicts_before]
        assert after == sorted([*before, ("node.down", "b")])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
