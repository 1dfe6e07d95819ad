"""The DNS and PostgreSQL fences through the real processes (issue 14, "Tests").

Three ``nodevigil run`` processes, 3-member etcd, PostgreSQL, real HAProxy and a real BIND as
the service's global load balancer (``run_cluster(..., bind=True)``). The leader is paused
(SIGSTOP) past its TTL; the next leader advances both fences (BIND's
``_nodevigil-fence.<zone>`` TXT record and PostgreSQL's ``nodevigil_epoch`` row: read back
from BIND and PostgreSQL, both hold its epoch) and withdraws a dead site from DNS. The old
leader is resumed (SIGCONT): for several of its cycles, the DNS record, the fence record and
the epoch row stay what the new leader left, and the old leader's log shows no decision it
believed it could act on.

What this does not show: BIND refusing an update the old leader sent. The lease's own check
(``may_act`` from the local monotonic clock) stops the resumed process before it sends
anything, so no update reaches BIND for its prerequisite to refuse; that refusal is shown at
adapter level against a real BIND in tests/failover/test_rfc2136_fence.py. If an update were
sent, its log would carry the adapter's "refused" warning or an EpochFenced error: the test
fails on either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.rdataclass
import dns.rdatatype
import pytest

from tests.cluster.harness import LEASE_TTL, Harness, run_cluster, until
from tests.cluster.test_cluster_processes import standbys
from tests.etcd_cluster import ETCD
from tests.failover.daemons import HAPROXY, NAMED, BindInstance, dns_query
from tests.postgres_server import BINDIR, PostgresAddress

pytestmark = [
    pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server"),
    pytest.mark.skipif(not HAPROXY.exists(), reason="haproxy is missing"),
    pytest.mark.skipif(not NAMED.exists(), reason="BIND is missing: bind9"),
    pytest.mark.skipif(BINDIR is None, reason="PostgreSQL is missing"),
    pytest.mark.timeout(90),
]

TAKEOVER = LEASE_TTL + 2.0
BOTH, SH_ONLY = {"192.0.2.10", "192.0.2.20"}, {"192.0.2.10"}


@pytest.fixture
async def cluster(tmp_path: Path, postgres: PostgresAddress) -> AsyncIterator[Harness]:
    async with run_cluster(tmp_path, postgres, bind=True) as harness:
        yield harness


async def rrset(bind: BindInstance, name: str, rdtype: str) -> set[str]:
    """What BIND answers a resolver for ``name`` (relative to the zone) and ``rdtype``."""
    answer = await dns_query(f"{name}.{bind.zone}", rdtype, bind.port)
    found = answer.get_rrset(
        answer.answer,
        answer.question[0].name,
        dns.rdataclass.IN,
        dns.rdatatype.from_text(rdtype),
    )
    return set() if found is None else {rdata.to_text() for rdata in found}


async def fences(cluster: Harness) -> tuple[set[str], list[tuple[object, ...]]]:
    """(BIND's fence TXT record, PostgreSQL's epoch row as (epoch, holder))."""
    assert cluster.bind is not None
    txt = await rrset(cluster.bind, "_nodevigil-fence", "TXT")
    rows = await cluster.query("SELECT epoch, holder FROM nodevigil_epoch")
    return txt, rows


async def test_a_paused_leader_is_fenced_by_bind_and_postgres(cluster: Harness) -> None:
    bind, far = cluster.bind, cluster.far
    assert bind is not None and far is not None
    old = await cluster.wait_leader()
    await standbys(cluster, old)
    old_view = await cluster.view(old)
    assert old_view is not None
    old_epoch = int(old_view["epoch"])

    async def published(want: set[str]) -> bool:
        return await rrset(bind, "www", "A") == want

    await until(lambda: published(BOTH), within=10, what="www = both sites")
    # The first leader's fences: its epoch in BIND's TXT record (moved before its first
    # update). PostgreSQL's row is moved by its first leader write, whenever that comes.
    txt, _ = await fences(cluster)
    assert txt == {f'"{old_epoch}"'}, txt

    offset = old.log_size()
    cluster.pause(old)
    new = await cluster.wait_leader(within=3 * TAKEOVER, excluding=old)
    new_view = await cluster.view(new)
    assert new_view is not None
    new_epoch = int(new_view["epoch"])
    assert new_epoch > old_epoch
    # ``far`` dies while the old leader sleeps: the new leader withdraws it from DNS (and
    # writes it down in PostgreSQL). When the old leader wakes, its view still says ``far`` is
    # up: a leader that did not know it was deposed would publish it again.
    await far.stop()
    await until(lambda: published(SH_ONLY), within=3 * TAKEOVER, what="far withdrawn")

    async def both_fenced() -> tuple[set[str], list[tuple[object, ...]]] | None:
        txt, rows = await fences(cluster)
        return (
            (txt, rows) if txt == {f'"{new_epoch}"'} and rows == [(new_epoch, new.name)] else None
        )

    txt, rows = await until(both_fenced, within=5, what="both fences at the new epoch", every=0.1)
    print(f"\nold epoch {old_epoch}, new epoch {new_epoch}: fence TXT {txt}, epoch row {rows}")

    cluster.resume(old)
    watch_until = time.monotonic() + 3.0  # several of its cycles, probes and renewals
    while time.monotonic() < watch_until:
        assert await rrset(bind, "www", "A") == SH_ONLY, "DNS changed after the old leader resumed"
        assert await fences(cluster) == (txt, rows), "a fence moved after the old leader resumed"
        await asyncio.sleep(0.1)
    view = await cluster.view(old)
    assert view is not None and view["role"] in ("standby", "fenced")
    assert view["leader"] == new.name
    assert old.acting_lines(offset) == [], "the deposed leader acted (or believed it could)"
    after = old.log_since(offset)
    assert "acting from now on" not in after
    # Neither store accepted anything of it; had it sent anything, it was refused (and said so).
    marks = ("holds epoch", "fenced at epoch", "does not hold the leader lease")
    refusals = [line for line in after.splitlines() if any(m in line for m in marks)]
    print(f"old leader's fenced lines after SIGCONT: {refusals}")
    assert await cluster.leaders() == [new]
