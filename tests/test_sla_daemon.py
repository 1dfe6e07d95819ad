"""The ledger inside the daemon: outages recorded from the controller, credits over the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from nodevigil.app.api.auth import token_digest
from nodevigil.app.daemon import Daemon
from tests.cli import run_cli
from tests.failover.daemons import poll_until

ADMIN = "admin-secret-token"
ACME = "acme-secret-token"
GLOBEX = "globex-secret-token"


class Target:
    """An HTTP node whose health the test switches."""

    def __init__(self) -> None:
        self.healthy = True
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.healthy else 503)

        app = web.Application()
        app.router.add_get("/", handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def write_config(path: Path, url: str) -> None:
    def token(name: str, secret: str, customer: str) -> dict[str, str]:
        return {
            "name": name,
            "role": "customer",
            "customer": customer,
            "sha256": token_digest(secret),
        }

    data: dict[str, Any] = {
        "timezone": "Asia/Shanghai",
        "state_dir": str(path.parent / "state"),
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [
                {"name": "ops", "role": "admin", "sha256": token_digest(ADMIN)},
                token("acme", ACME, "acme"),
                token("globex", GLOBEX, "globex"),
            ],
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms", "hold_down": "1s", "site_hold_down": "1s"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [{"name": "a", "site": "s", "probes": [{"type": "http", "url": url}]}],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [{"id": "acme", "services": ["web"]}, {"id": "globex", "services": []}],
    }
    path.write_text(yaml.safe_dump(data))


class Client:
    def __init__(self, base: str) -> None:
        self.base = base

    async def call(self, method: str, path: str, token: str = ADMIN, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.base + path, headers=headers, **kw) as r,
        ):
            return r.status, await r.json()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


async def cli(*args: str) -> tuple[int, str]:
    """``nodevigil ARGS`` with the admin token."""
    return await run_cli(*args, token=ADMIN)


async def start_daemon(path: Path, within: float = 10) -> tuple[Daemon, asyncio.Task[None], Client]:
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())

    async def ready() -> bool:
        if task.done():
            task.result()
        return daemon.api_port is not None and daemon.context.ready

    await poll_until(ready, within=within, what="daemon ready")
    return daemon, task, Client(f"http://127.0.0.1:{daemon.api_port}")


async def stop_daemon(daemon: Daemon, task: asyncio.Task[None], within: float = 10) -> None:
    daemon.request_stop()
    await asyncio.wait_for(task, within)


async def test_outage_is_recorded_and_credited(tmp_path: Path, target: Target) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, target.url)
    daemon, task, api = await start_daemon(path)
    try:
        target.healthy = False

        async def interval_open() -> bool:
            _, body = await api.call("GET", "/api/v1/sla/ledger")
            return len(body["intervals"]) == 1 and body["intervals"][0]["end"] is None

        await poll_until(interval_open, within=10, what="an open ledger interval")
        target.healthy = True

        async def interval_closed() -> bool:
            _, body = await api.call("GET", "/api/v1/sla/ledger")
            return body["intervals"][0]["end"] is not None

        await poll_until(interval_closed, within=10, what="the interval closed")
        _, body = await api.call("GET", "/api/v1/sla/ledger")
        entry = body["intervals"][0]
        assert entry["service"] == "web" and entry["cause"] == "provider"
        # The ledger reports times in the billing time zone (Asia/Shanghai here).
        local_day = datetime.fromisoformat(entry["start"]).date()
        csv = f"customer,service,date,amount,currency\nacme,web,{local_day},144.00,CNY\n"
        status, body = await api.call("POST", "/api/v1/sla/charges", data=csv)
        assert (status, body) == (200, {"imported": 1})
        status, body = await api.call("GET", "/api/v1/sla/credits", token=ACME)
        assert status == 200
        [row] = body["credits"]
        # A short outage counts as whole minutes; 144.00 over 1440 minutes is 0.10 a minute.
        minutes = row["unavailable_minutes"]
        assert minutes >= 1 and row["credit"] == f"{minutes * 0.1:.2f}"
        assert row["charge"] == "144.00" and row["currency"] == "CNY"

        status, body = await api.call("GET", "/api/v1/sla/credits", token=GLOBEX)
        assert (status, body) == (200, {"credits": []})
        status, body = await api.call("GET", "/api/v1/sla/credits?customer=acme", token=GLOBEX)
        assert status == 403
        status, body = await api.call("GET", "/api/v1/sla/ledger", token=GLOBEX)
        assert body == {"intervals": []}

        # The operator tags the cause after the fact, from the CLI: the credit goes.
        code, out = await cli(
            "cause",
            str(entry["id"]),
            "telecom_failure",
            "--note",
            "carrier outage",
            "--url",
            api.base,
        )
        assert code == 0, out
        _, body = await api.call("GET", "/api/v1/sla/credits", token=ACME)
        assert body["credits"][0]["credit"] == "0.00"
    finally:
        await stop_daemon(daemon, task)


async def test_bad_sla_requests_get_json_4xx(tmp_path: Path, target: Target) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, target.url)
    daemon, task, api = await start_daemon(path)
    try:
        cases = [
            ("GET", "/api/v1/sla/credits?from=yesterday", {}, 400),
            ("POST", "/api/v1/sla/intervals/x/cause", {"json": {"cause": "provider"}}, 400),
            ("POST", "/api/v1/sla/intervals/999/cause", {"json": {"cause": "bogus"}}, 400),
            ("POST", "/api/v1/sla/intervals/999/cause", {"json": {"cause": "provider"}}, 404),
            ("POST", "/api/v1/sla/exclusions", {"json": {"start": "2026-01-01T00:00:00"}}, 400),
            ("POST", "/api/v1/sla/charges", {"data": "customer,service\nacme,web\n"}, 400),
            ("POST", "/api/v1/sla/charges", {"data": "x"}, 400),
        ]
        for method, route, kw, expected in cases:
            status, body = await api.call(method, route, **kw)
            assert status == expected and "error" in body, (route, status, body)
        status, _ = await api.call("POST", "/api/v1/sla/charges", token=ACME, data="")
        assert status == 403
        code, out = await cli(
            "exclude",
            "--start",
            "2026-03-01T10:00:00+08:00",
            "--end",
            "2026-03-01T09:00:00+08:00",
            "--cause",
            "scheduled_maintenance",
            "--url",
            api.base,
        )
        assert code == 1 and "end: must be after start (HTTP 422)" in out
        code, out = await cli(
            "exclude",
            "--start",
            "2026-03-01T09:00:00+08:00",
            "--end",
            "2026-03-01T10:00:00+08:00",
            "--cause",
            "scheduled_maintenance",
            "--service",
            "web",
            "--url",
            api.base,
        )
        assert code == 0 and '"id"' in out
    finally:
        await stop_daemon(daemon, task)


async def test_time_nodevigil_was_down_is_recorded_as_unknown(
    tmp_path: Path, target: Target
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, target.url)
    daemon, task, api = await start_daemon(path)
    await poll_until(
        lambda: asyncio.sleep(0, (tmp_path / "state" / "alive").exists()),
        within=10,
        what="the alive mark",
    )
    await stop_daemon(daemon, task)
    # Pretend the daemon last ran ten minutes ago.
    alive = tmp_path / "state" / "alive"
    mark = json.loads(alive.read_text())
    alive.write_text(json.dumps({**mark, "wall": mark["wall"] - 600}))
    daemon, task, api = await start_daemon(path)
    try:
        _, body = await api.call("GET", "/api/v1/sla/ledger")
        [entry] = body["intervals"]
        assert entry["cause"] == "unknown" and entry["service"] == "web"
        _, events = await api.call("GET", "/api/v1/events?kind=sla.unknown")
        assert len(events["events"]) == 1
    finally:
        await stop_daemon(daemon, task)
