"""``nodevigil status`` names the leader of a real cluster (three daemons, etcd, PostgreSQL,
HAProxy: harness.py), whichever host it asks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.cluster.harness import TOKEN, Harness, run_cluster
from tests.etcd_cluster import ETCD
from tests.failover.daemons import HAPROXY
from tests.postgres_server import BINDIR, PostgresAddress

pytestmark = [
    pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server"),
    pytest.mark.skipif(not HAPROXY.exists(), reason="haproxy is missing"),
    pytest.mark.skipif(BINDIR is None, reason="PostgreSQL is missing"),
    pytest.mark.timeout(90),
]


@pytest.fixture
async def cluster(tmp_path: Path, postgres: PostgresAddress) -> AsyncIterator[Harness]:
    async with run_cluster(tmp_path, postgres) as harness:
        yield harness


async def test_status_on_a_standby_names_the_leader(cluster: Harness) -> None:
    leader = await cluster.wait_leader()
    standby = next(m for m in cluster.members if m is not leader)
    code, out = await run_cli("status", "--url", standby.base, "-o", "json", token=TOKEN)
    assert code == 0, out
    view = json.loads(out)
    assert view["leader"] == leader.name and isinstance(view["epoch"], int), view
    assert view["role"] in ("standby", "fenced"), view  # this host: not the leader
    code, out = await run_cli("status", "--url", standby.base, token=TOKEN)
    assert code == 0, out
    assert f"leader {leader.name} (epoch {view['epoch']})" in out.splitlines()[0], out
