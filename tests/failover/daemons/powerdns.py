"""A real PowerDNS Authoritative (gsqlite3 backend) with its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.failover.daemons.bind import ZONE
from tests.failover.daemons.process import (
    Daemon,
    DaemonError,
    free_port,
    free_udp_tcp_port,
    spawn,
    start_with_retries,
    wait_ready,
)

PDNS_SERVER = Path("/usr/sbin/pdns_server")
PDNS_SQLITE_SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)


@dataclass
class PowerDnsInstance:
    """A running ``pdns_server`` (gsqlite3) with ZONE created through its HTTP API."""

    daemon: Daemon
    dns_port: int
    api_port: int
    api_key: str
    api_key_file: Path
    zone: str
    directory: Path

    @property
    def url(self) -> str:
        """The base URL of the webserver (the API lives under /api/v1)."""
        return f"http://127.0.0.1:{self.api_port}"


def pdns_schema() -> Path | None:
    """The gsqlite3 schema shipped by pdns-backend-sqlite3, if installed."""
    return next((path for path in PDNS_SQLITE_SCHEMAS if path.exists()), None)


def _prepare_powerdns(
    workdir: Path, database: Path, schema: Path, api_key_file: Path, api_key: str
) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    api_key_file.write_text(api_key + "\n")
    (workdir / "pdns.conf").write_text("")  # --config-dir points here: no system config
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.executescript(schema.read_text())  # sqlite3 CLI may be absent: use Python's
        db.commit()


@contextlib.asynccontextmanager
async def run_powerdns(workdir: Path) -> AsyncIterator[PowerDnsInstance]:
    """Start ``pdns_server`` in the foreground and create ZONE through the API."""
    schema = pdns_schema()
    if schema is None:
        raise DaemonError("the gsqlite3 schema of pdns-backend-sqlite3 is not installed")
    database = workdir / "pdns.sqlite3"
    api_key = secrets.token_urlsafe(24)
    api_key_file = workdir / "pdns-api.key"
    await asyncio.to_thread(_prepare_powerdns, workdir, database, schema, api_key_file, api_key)
    headers = {"X-API-Key": api_key}

    async def start() -> PowerDnsInstance:
        dns_port = free_udp_tcp_port()
        api_port = free_port()
        argv = [
            str(PDNS_SERVER),
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            "--write-pid=no",
            f"--config-dir={workdir}",
            f"--socket-dir={workdir}",
            "--launch=gsqlite3",
            f"--gsqlite3-database={database}",
            "--local-address=127.0.0.1",
            f"--local-port={dns_port}",
            "--webserver=yes",
            "--webserver-address=127.0.0.1",
            f"--webserver-port={api_port}",
            "--webserver-allow-from=127.0.0.1",
            "--api=yes",
            f"--api-key={api_key}",
            "--loglevel=4",
        ]
        daemon = await spawn("pdns_server", argv, workdir / "pdns.log", workdir)
        base = f"http://127.0.0.1:{api_port}/api/v1/servers/localhost"

        async def ready() -> bool:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
                http.get(base, headers=headers) as response,
            ):
                return response.status == 200

        await wait_ready(daemon, ready)
        async with aiohttp.ClientSession() as http:
            body = {"name": ZONE, "kind": "Native", "nameservers": [f"ns1.{ZONE}"]}
            async with http.post(f"{base}/zones", json=body, headers=headers) as response:
                if response.status != 201:
                    await daemon.stop()
                    raise DaemonError(f"creating {ZONE}: {response.status} {await response.text()}")
        return PowerDnsInstance(daemon, dns_port, api_port, api_key, api_key_file, ZONE, workdir)

    instance = await start_with_retries(start)
    try:
        yield instance
    finally:
        await instance.daemon.stop()
