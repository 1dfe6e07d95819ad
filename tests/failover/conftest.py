"""Fixtures that start the real load balancers on loopback, in tmp_path, on ephemeral ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.failover.daemons import (
    HAPROXY,
    NAMED,
    PDNS_SERVER,
    BindInstance,
    HAProxyInstance,
    PowerDnsInstance,
    pdns_schema,
    run_bind,
    run_haproxy,
    run_powerdns,
)


def require_program(path: Path, package: str) -> None:
    """Skip the test with a clear reason when a real program is not installed."""
    if not path.exists():
        pytest.skip(f"{path} is missing: install the Debian package {package}")


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[HAProxyInstance]:
    """A real HAProxy (stats socket ``level admin``) over three HTTP nodes n1, n2, n3."""
    require_program(HAPROXY, "haproxy")
    async with run_haproxy(tmp_path / "haproxy", ["n1", "n2", "n3"]) as instance:
        yield instance


@pytest.fixture
async def bind_server(tmp_path: Path) -> AsyncIterator[BindInstance]:
    """A real BIND serving example.test., updatable with the TSIG key ``nodevigil``."""
    require_program(NAMED, "bind9")
    async with run_bind(tmp_path / "bind") as instance:
        yield instance


@pytest.fixture
async def powerdns_server(tmp_path: Path) -> AsyncIterator[PowerDnsInstance]:
    """A real PowerDNS Authoritative (gsqlite3) with example.test. created via its API."""
    require_program(PDNS_SERVER, "pdns-server")
    if pdns_schema() is None:
        pytest.skip("the gsqlite3 schema is missing: install pdns-backend-sqlite3")
    async with run_powerdns(tmp_path / "pdns") as instance:
        yield instance
