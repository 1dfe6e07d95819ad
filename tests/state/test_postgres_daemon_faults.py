"""PostgreSQL stopped, restarted and paused under a running daemon (``database:``).

A real daemon on a real PostgreSQL (its own server, so the test can stop it), a real HTTP node
and a signature-checking webhook receiver. While the database is away the controller keeps
acting and the API keeps answering; the daemon says so once (``state.error``,
``nodevigil_database_up`` 0, ``/readyz`` 503); once it is back, everything that waited arrives:
the incident with its true start, the customer's notice exactly once, the ledger interval from
the outage's true start, and the events of the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.failover.daemons import poll_until
from tests.notify.receivers import WebhookReceiver
from tests.postgres_server import PostgresServer, run_postgres
from tests.state.test_daemon_postgres import on_postgres
from tests.test_incidents_daemon import Api, accepted_of, start, stop, write_config
from tests.test_sla_daemon import Target

UP = 'nodevigil_database_up{backend="postgres"}'


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def metric(api: Api, name: str) -> float | None:
    _, text = await api.call("GET", "/metrics", token=None)
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def readyz(api: Api) -> int:
    status, _ = await api.call("GET", "/readyz", token=None)
    return status


async def wait_health(api: Api, *, up: bool, within: float) -> None:
    """Until /readyz and the gauge both say the database is ``up`` (or not)."""

    async def reached() -> bool:
        return await readyz(api) == (200 if up else 503) and await metric(api, UP) == float(up)

    await poll_until(reached, within=within, interval=0.1, what=f"database up={up} reported")


async def service(api: Api) -> dict[str, Any]:
    _, body = await api.call("GET", "/api/v1/status")
    [web] = [s for s in body["services"] if s["name"] == "web"]
    return dict(web)


async def status(api: Api) -> dict[str, Any]:
    _, body = await api.call("GET", "/api/v1/status")
    return dict(body)


def server_pids(pg: PostgresServer) -> list[int]:
    """The postmaster and every backend it forked (a pause stops them all, as a frozen VM)."""
    assert pg.process is not None
    pids = [pg.process.pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pg.process.pid:
                pids.append(int(entry))
    return pids


@contextlib.contextmanager
def paused(pg: PostgresServer) -> Iterator[None]:
    """SIGSTOP the whole server (connections open and accepted, nothing answers), then SIGCONT."""
    pids = server_pids(pg)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def outage_recorded_once(
    api: Api, hook: WebhookReceiver, *, unavailable_since: float
) -> None:
    """One incident, its notice delivered once, and the ledger interval, all from the true
    start of the outage (``unavailable_since`` as the controller saw it)."""
    await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), 20)

    async def ledger() -> list[dict[str, Any]]:
        _, body = await api.call("GET", "/api/v1/sla/ledger")
        return list(body["intervals"])

    async def interval() -> bool:
        return any(i["cause"] != "unknown" for i in await ledger())

    await poll_until(interval, within=15, interval=0.1, what="the ledger interval")
    [outage] = [i for i in await ledger() if i["cause"] != "unknown"]
    assert abs(ts(outage["start"]) - unavailable_since) < 0.01, (outage, unavailable_since)
    _, body = await api.call("GET", "/api/v1/incidents?state=all")
    [incident] = body["incidents"]
    assert abs(ts(incident["started_at"]) - unavailable_since) < 0.01, incident
    [opened] = accepted_of(hook, "incident.opened")
    assert hook.deliveries(opened.id) == 1


def add_node(path: Path, name: str, url: str) -> None:
    """A second node in site ``s``: while it is up, the site's floor lets the first go out."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["nodes"].append({"name": name, "site": "s", "probes": [{"type": "http", "url": url}]})
    path.write_text(yaml.safe_dump(data))


async def test_postgresql_restarted_under_a_running_daemon(tmp_path: Path, target: Target) -> None:
    spare = Target()
    await spare.start()
    async with WebhookReceiver() as hook, run_postgres(tmp_path) as pg:
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook)
        add_node(path, "b", spare.url)
        on_postgres(path, pg.url, pg.password_file)
        daemon, task, api = await start(path)
        try:
            await wait_health(api, up=True, within=10)

            stopped_at = time.time()
            await pg.stop()
            await wait_health(api, up=False, within=5)
            assert time.time() - stopped_at < 4  # noticed within a check and its timeout
            assert (await api.call("GET", "/healthz", token=None))[0] == 200

            # Node a fails while the database is away: the controller takes it out.
            target.healthy = False

            async def a_out() -> bool:
                nodes = {n["name"]: n for n in (await status(api))["nodes"]}
                return nodes["a"]["actual"] == "maint"

            await poll_until(a_out, within=10, interval=0.1, what="node a out of the LB")
            # Then the whole service fails: unavailable, as the controller's status says.
            down_at = time.time()
            spare.healthy = False

            async def unavailable() -> bool:
                return not (await service(api))["available"]

            await poll_until(unavailable, within=10, interval=0.1, what="web unavailable")
            since = ts((await service(api))["unavailable_since"])
            assert down_at <= since <= time.time()
            assert hook.attempts == 0  # nothing committed, nothing sent
            await asyncio.sleep(1.5)  # the outage runs on with the database away
            assert ts((await status(api))["last_cycle_at"]) > since + 1  # cycles go on
            assert await readyz(api) == 503
            assert await metric(api, UP) == 0

            restarted_at = time.time()
            await pg.start()
            await wait_health(api, up=True, within=10)

            await outage_recorded_once(api, hook, unavailable_since=since)
            _, body = await api.call("GET", "/api/v1/events?kind=state.&limit=10")
            events = sorted(body["events"], key=lambda e: ts(e["at"]))
            assert [(e["kind"], e["subject"]) for e in events] == [
                ("state.error", "database"),
                ("state.recovered", "database"),
            ], events
            error, recovered = events
            assert error["data"]["path"] == pg.url and "password" not in str(error)
            away = recovered["data"]["seconds"]
            # From the last check it answered (at most a second before the stop) to the first again.
            assert restarted_at - stopped_at <= away <= time.time() - stopped_at + 1.5, away
            _, body = await api.call("GET", "/api/v1/events?kind=service.unavailable")
            assert len(body["events"]) == 1  # published while away, kept in memory, written

            target.healthy = spare.healthy = True
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.resolved")), 20)
            ids = [d.id for d in hook.accepted]
            assert len(ids) == len(set(ids)) == 2, ids
            assert all(hook.deliveries(i) == 1 for i in ids)
        finally:
            await stop(daemon, task)
            await spare.stop()


async def test_postgresql_paused_nothing_hangs(tmp_path: Path, target: Target) -> None:
    """Every server process SIGSTOPped for a few seconds: connections stay open and the
    server's kernel still acknowledges, but no query is answered. The controller must keep
    acting, the API answering, and the stores must not wait for ever."""
    async with WebhookReceiver() as hook, run_postgres(tmp_path) as pg:
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook)
        on_postgres(path, pg.url, pg.password_file)
        daemon, task, api = await start(path)
        try:
            await wait_health(api, up=True, within=10)
            with paused(pg):
                # At once, before the watch has noticed: the controller's save of its book
                # waits 1 s for the silent server, then it acts (nodevigil/state/postgres/
                # bounded.py); without that bound it waited as long as the pause.
                paused_at = time.time()
                target.healthy = False

                async def unavailable() -> bool:
                    return not (await service(api))["available"]

                await poll_until(unavailable, within=10, interval=0.1, what="web unavailable")
                assert time.time() - paused_at < 3.5
                await wait_health(api, up=False, within=6)
                since = ts((await service(api))["unavailable_since"])
                [node] = (await status(api))["nodes"]
                assert node["verdict"] == "down" and node["actual"] == node["desired_state"]
                await asyncio.sleep(2)
                assert ts((await status(api))["last_cycle_at"]) > since + 1  # cycles go on
            await wait_health(api, up=True, within=15)
            await outage_recorded_once(api, hook, unavailable_since=since)
            _, body = await api.call("GET", "/api/v1/events?kind=state.&limit=10")
            kinds = [e["kind"] for e in sorted(body["events"], key=lambda e: ts(e["at"]))]
            assert kinds == ["state.error", "state.recovered"], kinds
            target.healthy = True
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.resolved")), 20)
            ids = [d.id for d in hook.accepted]
            assert len(ids) == len(set(ids)) == 2, ids
        finally:
            await stop(daemon, task)
