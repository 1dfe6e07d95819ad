"""A real daemon killed (SIGKILL) around an incident's cause or a maintenance window reaching
the SLA ledger, then restarted: the ledger ends up holding it, made exactly once.

Failpoints (nodevigil/core/failpoints.py): ``incident.cause_set`` and ``maintenance.declared``
die just after the incident store committed the cause or the window with its pending ledger
change; ``ledger.change_applied`` dies after the ledger committed the change, before it was
marked applied in the incident store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from tests.daemon_process import spawn_daemon, wait_daemon_ready
from tests.failover.daemons import free_port, poll_until
from tests.notify.receivers import WebhookReceiver
from tests.test_incidents_daemon import Api, write_config
from tests.test_sla_daemon import Target


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


def ledger_rows(state: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of the stopped daemon's ledger file."""
    with contextlib.closing(sqlite3.connect(state / "ledger.db")) as conn:
        return conn.execute(sql).fetchall()


async def call_until_killed(api: Api, method: str, route: str, **kw: object) -> None:
    """Ask; the daemon may die at its failpoint before it answers."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        await api.call(method, route, **kw)  # type: ignore[arg-type]


async def killed_then_restarted(
    tmp_path: Path, target: Target, failpoint: str, act: str
) -> tuple[Path, Api]:
    """Run a daemon with ``failpoint`` armed, do ``act`` so it dies there, start it again."""
    async with WebhookReceiver() as hook:
        port = free_port()
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook, listen=f"127.0.0.1:{port}")
        api = Api(f"http://127.0.0.1:{port}")
        log = tmp_path / "daemon.log"
        proc = await spawn_daemon(path, log, failpoints=failpoint)
        try:
            await wait_daemon_ready(proc, api.base, log)
            if act == "cause":
                target.healthy = False

                async def outage_recorded() -> bool:
                    _, incidents = await api.call("GET", "/api/v1/incidents?state=open")
                    _, ledger = await api.call("GET", "/api/v1/sla/ledger")
                    return bool(incidents["incidents"]) and bool(ledger["intervals"])

                await poll_until(outage_recorded, within=15, what="the outage recorded")
                _, body = await api.call("GET", "/api/v1/incidents?state=open")
                incident = body["incidents"][0]["id"]
                await call_until_killed(
                    api, "POST", f"/api/v1/incidents/{incident}/cause",
                    json={"cause": "telecom_failure", "note": "carrier"},
                )  # fmt: skip
            else:
                now = datetime.now(UTC).timestamp()
                await call_until_killed(
                    api, "POST", "/api/v1/maintenance",
                    json={"start": datetime.fromtimestamp(now - 60, UTC).isoformat(),
                          "end": datetime.fromtimestamp(now + 3600, UTC).isoformat(),
                          "services": ["web"], "note": "kernel upgrade"},
                )  # fmt: skip
            code = await asyncio.wait_for(proc.wait(), 20)
            assert code == -signal.SIGKILL, log.read_text()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        proc = await spawn_daemon(path, log)
        try:
            await wait_daemon_ready(proc, api.base, log)
            if act == "cause":

                async def ledger_follows() -> bool:
                    # The outage's interval; the crash's gap (``unknown``) takes the cause too
                    # when the change is applied after the restart recorded it.
                    _, body = await api.call("GET", "/api/v1/sla/ledger")
                    outage = [i for i in body["intervals"] if i["evidence"].get("sites")]
                    return [i["cause"] for i in outage] == ["telecom_failure"]

                await poll_until(ledger_follows, within=15, what="the ledger's cause")
            else:

                async def excluded() -> bool:
                    _, body = await api.call("GET", "/api/v1/maintenance")
                    windows = body["maintenance"]
                    return len(windows) == 1 and windows[0]["excluded_in_ledger"]

                await poll_until(excluded, within=15, what="the window excluded in the ledger")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
    return tmp_path / "state", api


@pytest.mark.parametrize("failpoint", ["incident.cause_set", "ledger.change_applied"])
async def test_a_cause_survives_a_kill_and_is_recorded_once(
    tmp_path: Path, target: Target, failpoint: str
) -> None:
    state, _ = await killed_then_restarted(tmp_path, target, failpoint, "cause")
    tagged = ledger_rows(state, "SELECT id FROM intervals WHERE cause = 'telecom_failure'")
    changes = ledger_rows(state, "SELECT what, note FROM changes WHERE what LIKE 'interval %'")
    # Each interval changed once: the credit recomputed once, never twice.
    assert sorted(str(w).split()[1] for w, _ in changes) == sorted(str(i) for (i,) in tagged)
    assert all(str(w).endswith("-> telecom_failure") for w, _ in changes), changes
    assert all("carrier" in str(note) for _, note in changes), changes


@pytest.mark.parametrize("failpoint", ["maintenance.declared", "ledger.change_applied"])
async def test_a_window_survives_a_kill_and_becomes_one_exclusion(
    tmp_path: Path, target: Target, failpoint: str
) -> None:
    state, _ = await killed_then_restarted(tmp_path, target, failpoint, "window")
    exclusions = ledger_rows(state, "SELECT id, cause, note FROM exclusions")
    assert len(exclusions) == 1, exclusions
    assert exclusions[0][1] == "scheduled_maintenance" and "kernel upgrade" in str(exclusions[0][2])
    changes = ledger_rows(state, "SELECT what FROM changes WHERE what LIKE 'exclusion %'")
    assert len(changes) == 1, changes
