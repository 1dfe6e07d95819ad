"""The whole daemon on PostgreSQL (``database:``): an outage is recorded, notified and
credited from the shared database, and survives a restart of the daemon and of PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from nodevigil.app.daemon import Daemon
from nodevigil.core.errors import StateError
from tests.failover.daemons import poll_until
from tests.notify.receivers import WebhookReceiver
from tests.postgres_server import PostgresAddress, run_postgres
from tests.test_incidents_daemon import accepted_of, start, stop, write_config
from tests.test_sla_daemon import Target


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


def on_postgres(path: Path, url: str, password_file: Path) -> None:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["database"] = {"url": url, "password_file": str(password_file), "connect_timeout": "2s"}
    path.write_text(yaml.safe_dump(data))


async def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await (await conn.execute(query)).fetchall()


async def test_an_outage_is_kept_in_postgresql_across_a_daemon_restart(
    tmp_path: Path, target: Target, postgres: PostgresAddress
) -> None:
    name = postgres.create_database()
    dsn = postgres.admin_dsn.replace("dbname=postgres", f"dbname={name}")
    try:
        async with WebhookReceiver() as hook:
            path = tmp_path / "nodevigil.yaml"
            write_config(path, target=target.url, hook=hook)
            on_postgres(path, postgres.url(name), postgres.password_file)
            daemon, task, api = await start(path)
            try:
                target.healthy = False
                await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), 15)

                async def interval_open() -> bool:
                    _, body = await api.call("GET", "/api/v1/sla/ledger")
                    return len(body["intervals"]) == 1

                await poll_until(interval_open, within=10, what="an open ledger interval")
                target.healthy = True
                await hook.wait_for(lambda: bool(accepted_of(hook, "incident.resolved")), 15)
            finally:
                await stop(daemon, task)
            # Nothing of it is in state_dir: the shared database holds it.
            assert not list((tmp_path / "state").glob("*.db"))
            assert (await rows(dsn, "SELECT count(*) FROM incidents"))[0][0] == 1

            daemon, task, api = await start(path)
            try:
                _, body = await api.call("GET", "/api/v1/incidents?state=all")
                assert [i["state"] for i in body["incidents"]] == ["resolved"]
                _, body = await api.call("GET", "/api/v1/sla/ledger")
                assert len(body["intervals"]) == 1 and body["intervals"][0]["end"] is not None
                _, body = await api.call("GET", "/api/v1/events?kind=service.&limit=10")
                kinds = {e["kind"] for e in body["events"]}
                assert {"service.unavailable", "service.available"} <= kinds
            finally:
                await stop(daemon, task)
            delivered = [d.payload["data"]["incident"]["id"] for d in hook.accepted]
            assert len(accepted_of(hook, "incident.opened")) == 1, delivered
    finally:
        postgres.drop_database(name)


async def test_a_daemon_refuses_to_start_without_its_database(
    tmp_path: Path, target: Target
) -> None:
    async with WebhookReceiver() as hook, run_postgres(tmp_path) as pg:
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook)
        on_postgres(path, pg.url, pg.password_file)
        await pg.stop()
        with pytest.raises(StateError, match="cannot connect to PostgreSQL"):
            await Daemon(path).run()
