"""nodevigil killed with SIGKILL while an outage is open in the ledger, then restarted.

The daemon runs as a real process. The service goes down, the incident opens, the customer is
told and the ledger holds an open interval; then SIGKILL, a few seconds of nothing watching,
and a restart. Afterwards: still one incident and one notice per kind (delivered once each), the
outage is the same ledger interval from its true start (no second one, no gap), the time
nodevigil was not running is recorded as ``unknown`` (which earns no credit), and the minutes
counted are exactly the outage less the unknown time, rounded as the contract says.

Both tests run on both state backends (SQLite files in state_dir; a PostgreSQL database); the
alive mark is in state_dir either way.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nodevigil.app.sla_bridge import UNKNOWN_AFTER
from nodevigil.state.statedir import ALIVE_EVERY
from tests.conftest import StateBackend
from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import free_port, poll_until
from tests.notify.receivers import WebhookReceiver
from tests.test_incidents_daemon import Api, accepted_of, write_config
from tests.test_sla_daemon import Target


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def expected_minutes(parts: list[tuple[float, float]]) -> int:
    """Per-outage rounding (clause VIII.8): what is left of the outage on each UTC day, rounded
    up to whole minutes once."""
    per_day: dict[object, float] = {}
    for first, end in parts:
        start = first
        while start < end:
            day = datetime.fromtimestamp(start, UTC).date()
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            cut = min(end, midnight.timestamp())
            per_day[day] = per_day.get(day, 0.0) + (cut - start)
            start = cut
    return sum(math.ceil(round(seconds, 6) / 60) for seconds in per_day.values())


async def metric(api: Api, name: str) -> float | None:
    _, text = await api.call("GET", "/metrics", token=None)
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize(
    "state_backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True
)
async def test_killed_with_an_outage_open_it_loses_no_minute_and_counts_none_twice(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    target = Target()
    await target.start()
    async with WebhookReceiver() as hook:
        port = free_port()
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook, listen=f"127.0.0.1:{port}")
        state_backend.configure(path)  # SQLite in state_dir, or a fresh PostgreSQL database
        log = tmp_path / "daemon.log"
        api = Api(f"http://127.0.0.1:{port}")
        proc = await spawn_daemon(path, log)
        try:
            await wait_daemon_ready(proc, api.base, log)
            target.healthy = False
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), timeout=20)

            async def ledger() -> list[dict[str, Any]]:
                _, body = await api.call("GET", "/api/v1/sla/ledger")
                return list(body["intervals"])

            async def opened() -> bool:
                return bool(await ledger())

            await poll_until(opened, within=10, what="the outage in the ledger")
            [before] = await ledger()
            assert before["cause"] == "provider" and before["end"] is None
            await asyncio.sleep(2 * ALIVE_EVERY)  # the alive mark is fresh when it dies

            killed_at = time.time()
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
            # Nothing watches for a while: longer than the quick-restart allowance.
            await asyncio.sleep(UNKNOWN_AFTER + 1.5)
            restarted_at = time.time()
            proc = await spawn_daemon(path, log)
            await wait_daemon_ready(proc, api.base, log)

            intervals = await ledger()
            provider = [i for i in intervals if i["cause"] == "provider"]
            unknown = [i for i in intervals if i["cause"] == "unknown"]
            assert provider == [before], intervals  # the same interval, still open
            [gap] = unknown
            gap_start, gap_end = ts(gap["start"]), ts(gap["end"])
            # From the last alive mark (at most a mark and a bit before the kill) to the restart.
            assert killed_at - 3 * ALIVE_EVERY <= gap_start <= killed_at, (gap, killed_at)
            assert restarted_at <= gap_end <= time.time(), (gap, restarted_at)
            _, events = await api.call("GET", "/api/v1/events?kind=sla.unknown")
            assert len(events["events"]) == 1
            _, incidents = await api.call("GET", "/api/v1/incidents")
            [incident] = incidents["incidents"]
            assert incident["state"] != "resolved"

            target.healthy = True
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.resolved")), timeout=20)

            async def closed() -> bool:
                return all(i["end"] is not None for i in await ledger())

            await poll_until(closed, within=10, what="the outage closed in the ledger")
            [outage] = [i for i in await ledger() if i["cause"] == "provider"]
            assert outage["id"] == before["id"] and outage["start"] == before["start"]
            start, end = ts(outage["start"]), ts(outage["end"])
            assert start < gap_start < gap_end < end
            want = expected_minutes([(start, gap_start), (gap_end, end)])

            async def counted() -> bool:
                got = await metric(api, 'nodevigil_sla_unavailable_seconds{service="web"}')
                return got == want * 60

            await poll_until(counted, within=15, what=f"{want} unavailable minutes counted")

            ids = [d.id for d in hook.accepted]
            assert len(ids) == len(set(ids)) == 2, ids  # opened once, resolved once
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
            await target.stop()


def alive_pid(state_dir: Path) -> int | None:
    """Which process wrote the alive mark (None before the first mark or in the old format)."""
    try:
        return int(json.loads((state_dir / "alive").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@pytest.mark.parametrize("state_backend", ["sqlite", "postgres"], indirect=True)
async def test_a_crash_loop_forgets_no_outage_and_hides_no_gap(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    """The service goes down and the process dies as the incident is committed, before anyone
    is told or anything else hears of it; two more processes are killed a few seconds after
    they start. The one that stays up has the incident and the ledger interval from the
    outage's true start, the customer is told, and every gap between two processes is
    ``unknown``, however short."""
    target = Target()
    await target.start()
    async with WebhookReceiver() as hook:
        port = free_port()
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook, listen=f"127.0.0.1:{port}")
        state_backend.configure(path)
        log = tmp_path / "daemon.log"
        api = Api(f"http://127.0.0.1:{port}")
        # Dies right after the incident and its notices are committed, before any event.
        proc = await spawn_daemon(path, log, failpoints="incident.opened")
        gaps: list[tuple[float, float]] = []
        try:
            await wait_daemon_ready(proc, api.base, log)
            down_at = time.time()
            target.healthy = False
            assert await asyncio.wait_for(proc.wait(), 15) == -signal.SIGKILL
            died_at = time.time()
            for crash in range(3):
                proc = await spawn_daemon(path, log)
                gaps.append((died_at, time.time()))
                if crash == 2:
                    break
                await wait_daemon_ready(proc, api.base, log)
                pid = proc.pid

                async def marked(pid: int = pid) -> bool:
                    return alive_pid(tmp_path / "state") == pid

                await poll_until(marked, within=10, what="the new process's alive mark")
                proc.send_signal(signal.SIGKILL)
                assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
                died_at = time.time()
            await wait_daemon_ready(proc, api.base, log)

            async def ledger() -> list[dict[str, Any]]:
                _, body = await api.call("GET", "/api/v1/sla/ledger")
                return list(body["intervals"])

            async def recorded() -> bool:
                intervals = await ledger()
                return any(i["cause"] == "provider" for i in intervals) and (
                    sum(i["cause"] == "unknown" for i in intervals) >= len(gaps)
                )

            await poll_until(recorded, within=15, what="the outage and the gaps in the ledger")
            intervals = await ledger()
            [outage] = [i for i in intervals if i["cause"] == "provider"]
            assert outage["end"] is None
            assert down_at <= ts(outage["start"]) <= died_at - 0.0, (outage, down_at)
            unknown = sorted(
                (ts(i["start"]), ts(i["end"])) for i in intervals if i["cause"] == "unknown"
            )
            assert len(unknown) == len(gaps), intervals
            for (start, end), (dead, restarted) in zip(unknown, gaps, strict=True):
                # From the dead process's last alive mark to the new process's start.
                assert dead - 3 * ALIVE_EVERY <= start <= dead, (start, dead)
                assert restarted <= end <= restarted + 10, (end, restarted)
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), timeout=10)
            _, incidents = await api.call("GET", "/api/v1/incidents")
            [incident] = incidents["incidents"]
            assert incident["state"] != "resolved"
            assert abs(ts(incident["started_at"]) - ts(outage["start"])) < 0.01, incident
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
            await target.stop()
