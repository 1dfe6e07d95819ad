"""The wall clock stepped forwards and backwards under a running daemon.

The daemon runs as a real process under libfaketime (Debian's faketime), which makes the
process's wall clock (CLOCK_REALTIME) jump when the test rewrites a file, while the monotonic
clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC). nodevigil times probes, verdicts and
hold-downs on the monotonic clock, so a step of an hour either way must neither fire a verdict
nor suppress one: healthy nodes stay up and in, and a node that dies after the steps is still
judged down and taken out within interval x fall.

Its records are on a timeline (wall time read once at start, carried by the monotonic clock), so
a step during an outage changes neither the ledger's interval nor the credit, and cannot delay
or cancel the customer's first notice; the step itself is reported once as ``clock.stepped``.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodevigil.app.api.auth import token_digest
from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import free_port, poll_until
from tests.faults.test_kill_outage import metric, ts
from tests.notify.receivers import WebhookReceiver
from tests.test_incidents_daemon import ADMIN, Api, accepted_of
from tests.test_incidents_daemon import write_config as write_incident_config
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

    def env(self) -> dict[str, str]:
        return dict(
            LD_PRELOAD=str(LIBFAKETIME),
            FAKETIME_TIMESTAMP_FILE=str(self.offset_file),
            FAKETIME_CACHE_DURATION="1",  # re-read the offset every second, not every call
            FAKETIME_DONT_FAKE_MONOTONIC="1",  # the point: only the wall clock steps
        )

    def __init__(self, tmp: Path, port: int, token: str = TOKEN) -> None:
        self.offset_file = tmp / "faketime"
        self.offset_file.write_text("+0\n")
        self.api = Api(f"http://127.0.0.1:{port}")
        self.token = token

    def step(self, seconds: int) -> None:
        self.offset_file.write_text(f"{seconds:+d}\n")

    async def stepped(self, offset: int) -> None:
        """Until the daemon has reported its wall clock ``offset`` seconds off its timeline."""

        async def seen() -> bool:
            stepped = await self.events("clock.stepped")
            return any(abs(e["data"]["offset"] - offset) < 30 for e in stepped)

        await poll_until(seen, within=10, what=f"clock.stepped to {offset:+d}s")

    async def events(self, kind: str) -> list[dict[str, Any]]:
        code, body = await self.api.call(
            "GET", f"/api/v1/events?kind={kind}&limit=1000", self.token
        )
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
            await faked.stepped(step)
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
            return bool(b["verdict"] == "down" and b["actual"] == "maint")

        # Had timing followed the wall clock, the step back would hold this verdict for an hour.
        # The deadline is seconds, not interval x fall, because the monitor rightly defers
        # verdicts while its own event loop lags (a shared 2-core machine); detection time
        # itself is measured by the packet-loss test and the failover benchmark.
        await poll_until(drained, within=10, what="node b judged down and out", interval=0.1)
        [down] = await faked.events("node.down")
        # Records carry the process's timeline, not the stepped clock: real time.
        assert abs(ts(down["at"]) - time.time()) < 30, down
        # The one verdict since the steps is b's (listed by wall time, so out of order).
        after = sorted((e["kind"], e["subject"]) for e in await faked.events("node."))
        before = [(e["kind"], e["subject"]) for e in verdicts_before]
        assert after == sorted([*before, ("node.down", "b")])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()


OUTAGE = 10.0  # seconds of each outage, on the test's own monotonic clock
PROBE_EVERY = 1.0  # each edge of an outage is seen within a probe interval of the truth
CHARGE = "288.00"  # CNY a day: one minute is 0.20


async def test_a_wall_clock_step_during_an_outage_changes_neither_the_ledger_nor_the_credit(
    tmp_path: Path,
) -> None:
    """A 10 s outage through a +1 h step and then a step to 1 h behind: the ledger interval
    is 10 s within a second, one minute, 0.20 CNY; the customer's first notice is delivered,
    not cancelled, and each step is reported once."""
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} is missing: install the Debian package faketime")
    target = Target()
    await target.start()
    # The webhook's signature carries the stepped system clock: the receiver tolerates it here,
    # the point being what the daemon books and sends.
    async with WebhookReceiver(tolerance=3 * 3600) as hook:
        port = free_port()
        path = tmp_path / "nodevigil.yaml"
        write_incident_config(path, target=target.url, hook=hook, listen=f"127.0.0.1:{port}")
        # Probes with room for a busy machine's loop lag (a 100 ms probe's failures are not
        # trusted while the loop is 50 ms late, and libfaketime slows every clock read).
        data = yaml.safe_load(path.read_text())
        data["defaults"].update(interval=f"{PROBE_EVERY}s", timeout="800ms")
        path.write_text(yaml.safe_dump(data))
        faked = Faked(tmp_path, port, token=ADMIN)
        api = faked.api
        log = tmp_path / "daemon.log"
        proc = await spawn_daemon(path, log, env=faked.env())
        try:
            await wait_daemon_ready(proc, api.base, log)
            today = time.strftime("%Y-%m-%d", time.gmtime())
            charges = f"customer,service,date,amount,currency\nacme,web,{today},{CHARGE},CNY\n"
            code, body = await api.call("POST", "/api/v1/sla/charges", data=charges)
            assert code == 200, body

            async def ledger() -> list[dict[str, Any]]:
                _, body = await api.call("GET", "/api/v1/sla/ledger")
                return [i for i in body["intervals"] if i["cause"] == "provider"]

            down = time.monotonic()
            target.healthy = False

            async def opened() -> bool:
                return len(await ledger()) == 1

            await poll_until(opened, within=10, what="the outage in the ledger")
            for offset in (+3600, -3600):  # a step of +1 h, then one of -2 h: 1 h behind
                faked.step(offset)
                await faked.stepped(offset)
            await asyncio.sleep(max(0.0, down + OUTAGE - time.monotonic()))
            target.healthy = True
            real = time.monotonic() - down

            async def closed() -> bool:
                return all(i["end"] is not None for i in await ledger())

            await poll_until(closed, within=10, what="the outage closed in the ledger")
            [interval] = await ledger()
            booked = ts(interval["end"]) - ts(interval["start"])
            # Within a second of the truth, but for the probes' own detection delay at each
            # edge. Before the timeline: -3600 + 10 s, clamped to 0 s (0.00 CNY); with the +1 h
            # step alone, 3610 s (61 minutes, 12.20 CNY).
            assert abs(booked - real) < 1.0 + PROBE_EVERY, (booked, real, interval)
            want = math.ceil(booked / 60)
            assert want == 1

            async def counted() -> bool:
                got = await metric(api, 'nodevigil_sla_unavailable_seconds{service="web"}')
                return got == want * 60

            await poll_until(counted, within=15, what=f"{want} unavailable minute counted")
            _, body = await api.call("GET", f"/api/v1/sla/credits?from={today}&to={today}")
            [row] = body["credits"]
            assert (row["unavailable_minutes"], row["credit"]) == (1, "0.20"), row

            # The first notice went out and the resolution too; no first notice was cancelled.
            await hook.wait_for(
                lambda: (
                    bool(accepted_of(hook, "incident.opened"))
                    and bool(accepted_of(hook, "incident.resolved"))
                ),
                timeout=15,
                what="the opening and the resolution delivered",
            )
            _, body = await api.call("GET", "/api/v1/notifications?state=cancelled")
            firsts = [r for r in body["notifications"] if r.get("step") == "s0"]
            assert firsts == [], firsts
            steps = await faked.events("clock.stepped")
            assert [
                round(e["data"]["offset"] / 3600) for e in sorted(steps, key=lambda e: ts(e["at"]))
            ] == [1, -1]
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
            await target.stop()
