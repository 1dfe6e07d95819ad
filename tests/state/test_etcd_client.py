"""EtcdClient against a real 3-member etcd cluster on loopback (tests/etcd_cluster.py).

One cluster serves the module; every test has a prefix of its own, and a test that stops,
kills or pauses members leaves the cluster healthy again (the ``cluster`` fixture restores it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from nodevigil.core.errors import AdapterError
from nodevigil.state.etcd import (
    EtcdClient,
    EtcdCompacted,
    EtcdLeaseNotFound,
    EtcdUnavailable,
    EventType,
    WatchEvent,
)
from tests.etcd_cluster import EtcdCluster, etcd_cluster, gateway

T = TypeVar("T")
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def etcd_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One 3-member cluster for the whole module."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def cluster(etcd_module: EtcdCluster) -> Iterator[EtcdCluster]:
    """The module's cluster, all three members running and healthy again after the test."""
    yield etcd_module
    etcd_module.restore()


def prefix() -> str:
    return f"/nodevigil/test-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def etcd(cluster: EtcdCluster) -> AsyncIterator[EtcdClient]:
    """A client on all three endpoints, with a prefix of its own."""
    async with EtcdClient(cluster.endpoints, prefix=prefix(), timeout=TIMEOUT) as client:
        yield client


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]], within: float) -> T:
    """Await ``probe`` until it returns something other than None, or fail after ``within``."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.05)


def test_constructor_checks_every_argument_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        EtcdClient(
            ["ftp://x", "http://h:2379/v3"],
            prefix="",
            timeout=0,
            tls=("ca.pem", "cert.pem", None),
            username="u",
        )
    text = str(caught.value)
    for problem in (
        "endpoints[0]",
        "endpoints[1]",
        "prefix",
        "timeout",
        "tls:",
        "username, password",
    ):
        assert problem in text


async def test_put_get_range_delete_under_the_prefix(cluster: EtcdCluster) -> None:
    mine, other = prefix(), prefix()
    async with (
        EtcdClient(cluster.endpoints, prefix=mine, timeout=TIMEOUT) as etcd,
        EtcdClient(cluster.endpoints, prefix=other, timeout=TIMEOUT) as neighbour,
    ):
        assert await etcd.get("votes/ops-1") is None
        first = await etcd.put("votes/ops-1", b"down")
        await etcd.put("votes/ops-2", b"up")
        await etcd.put("leader", b"ops-1")
        await neighbour.put("votes/ops-9", b"other cluster")

        kv = await etcd.get("votes/ops-1")
        assert kv is not None
        assert (kv.key, kv.value, kv.version, kv.lease) == ("votes/ops-1", b"down", 1, 0)
        assert kv.create_revision == kv.mod_revision == first

        kvs, revision = await etcd.range("votes/")
        assert [(k.key, k.value) for k in kvs] == [("votes/ops-1", b"down"), ("votes/ops-2", b"up")]
        assert revision >= first
        everything, _ = await etcd.range()
        assert {k.key for k in everything} == {"votes/ops-1", "votes/ops-2", "leader"}

        assert await etcd.delete("votes/ops-2")
        assert not await etcd.delete("votes/ops-2")
        kv = await etcd.get("votes/ops-1")
        assert kv is not None
        assert not await etcd.delete("votes/ops-1", if_mod_revision=kv.mod_revision - 1)
        assert await etcd.delete("votes/ops-1", if_mod_revision=kv.mod_revision)
        assert await etcd.get("votes/ops-1") is None
        assert await neighbour.get("votes/ops-9") is not None


async def test_create_is_create_if_absent_under_concurrency(etcd: EtcdClient) -> None:
    leases = await asyncio.gather(*(etcd.grant(30) for _ in range(10)))
    created = await asyncio.gather(
        *(
            etcd.create("leader", f"ops-{i}".encode(), lease=lease.id)
            for i, lease in enumerate(leases)
        )
    )
    winners = [kv for kv in created if kv is not None]
    assert len(winners) == 1
    winner = winners[0]
    assert winner.create_revision > 0
    stored = await etcd.get("leader")
    assert stored == winner
    # A retry by the winner (its first answer lost) still reports the key as its own.
    assert await etcd.create("leader", b"again", lease=winner.lease) == winner
    loser = next(lease for lease in leases if lease.id != winner.lease)
    assert await etcd.create("leader", b"loser", lease=loser.id) is None
    # The epoch moves on: deleted and created again, the key gets a higher create_revision.
    await etcd.revoke(winner.lease)
    again = await etcd.create("leader", b"next", lease=loser.id)
    assert again is not None
    assert again.create_revision > winner.create_revision
    for lease in leases:
        await etcd.revoke(lease.id)


async def test_a_lease_expires_and_takes_its_keys(etcd: EtcdClient) -> None:
    lease = await etcd.grant(1)
    await etcd.put("votes/ops-1", b"down", lease=lease.id)
    assert await etcd.create("leader", b"ops-1", lease=lease.id) is not None
    started = time.monotonic()

    async def gone() -> bool | None:
        kvs, _ = await etcd.range()
        return True if not kvs else None

    await eventually("keys of an expired lease deleted", gone, within=5.0)
    assert time.monotonic() - started >= 0.5
    assert await etcd.keepalive(lease.id) is None
    assert await etcd.time_to_live(lease.id) is None
    with pytest.raises(EtcdLeaseNotFound):
        await etcd.put("votes/ops-1", b"down", lease=lease.id)
    with pytest.raises(EtcdLeaseNotFound):
        await etcd.create("leader", b"ops-1", lease=lease.id)


async def test_keepalive_keeps_a_lease(etcd: EtcdClient) -> None:
    lease = await etcd.grant(1)
    await etcd.put("leader", b"ops-1", lease=lease.id)
    ends = time.monotonic() + 2.5  # well past the 1 s TTL
    while time.monotonic() < ends:
        assert await etcd.keepalive(lease.id) == pytest.approx(lease.ttl)
        await asyncio.sleep(0.25)
    assert await etcd.get("leader") is not None
    left = await etcd.time_to_live(lease.id)
    assert left is not None
    assert 0 <= left <= lease.ttl
    await etcd.revoke(lease.id)


async def test_revoke_deletes_at_once(etcd: EtcdClient) -> None:
    lease = await etcd.grant(60)
    await etcd.put("leader", b"ops-1", lease=lease.id)
    await etcd.revoke(lease.id)
    assert await etcd.get("leader") is None
    assert await etcd.keepalive(lease.id) is None
    await etcd.revoke(lease.id)  # already gone: fine


async def test_watch_sees_every_event_after_its_revision(
    cluster: EtcdCluster, etcd: EtcdClient
) -> None:
    _, revision = await etcd.range()
    await etcd.put("votes/a", b"1")
    await etcd.put("votes/b", b"2")
    await etcd.put("elsewhere", b"not watched")
    seen: list[WatchEvent] = []
    events = etcd.watch("votes/", start_revision=revision + 1)
    try:
        for _ in range(2):
            seen.append(await asyncio.wait_for(anext(events), 5))
        # Kill the member the watch streams from; writes go on through the others.
        watched = cluster.endpoints.index(etcd.endpoint)
        cluster.kill(watched)
        await etcd.put("votes/c", b"3")
        await etcd.delete("votes/a")
        await etcd.put("votes/b", b"4")
        for _ in range(3):
            seen.append(await asyncio.wait_for(anext(events), 5))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert [(e.type, e.kv.key, e.kv.value) for e in seen] == [
        (EventType.PUT, "votes/a", b"1"),
        (EventType.PUT, "votes/b", b"2"),
        (EventType.PUT, "votes/c", b"3"),
        (EventType.DELETE, "votes/a", b""),
        (EventType.PUT, "votes/b", b"4"),
    ]
    revisions = [e.kv.mod_revision for e in seen]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == len(revisions)


async def test_watch_from_a_compacted_revision_raises(
    cluster: EtcdCluster, etcd: EtcdClient
) -> None:
    first = await etcd.put("k", b"1")
    last = await etcd.put("k", b"2")
    gateway(cluster.endpoints[0], "/v3/kv/compaction", {"revision": str(last), "physical": True})
    events = etcd.watch("", start_revision=first)
    with pytest.raises(EtcdCompacted) as caught:
        await asyncio.wait_for(anext(events), 5)
    assert caught.value.compact_revision >= last
    assert isinstance(caught.value, AdapterError)


async def test_the_etcd_leader_killed_the_client_goes_on(cluster: EtcdCluster) -> None:
    leader = cluster.leader()
    # The leader first, so the client is talking to it when it dies.
    endpoints = sorted(cluster.endpoints, key=lambda url: url != cluster.endpoints[leader])
    async with EtcdClient(endpoints, prefix=prefix(), timeout=TIMEOUT) as etcd:
        await etcd.put("k", b"0")
        killed_at = time.monotonic()
        cluster.kill(leader)
        failures = 0
        slowest = 0.0
        first_success: float | None = None
        for n in range(1, 40):
            began = time.monotonic()
            try:
                await etcd.put("k", str(n).encode())
                kv = await etcd.get("k")
            except EtcdUnavailable:
                failures += 1
            else:
                assert kv is not None
                assert kv.value == str(n).encode()
                if first_success is None:
                    first_success = time.monotonic() - killed_at
            slowest = max(slowest, time.monotonic() - began)
            if first_success is not None and n >= 10:
                break
            await asyncio.sleep(0.02)
        print(
            f"\netcd leader killed: first successful put+get after {first_success}s, "
            f"{failures} calls failed, slowest put+get {slowest:.3f}s"
        )
        assert first_success is not None
        assert first_success < 2 * TIMEOUT
        assert slowest < 2 * TIMEOUT + 0.5  # a put and a get, each bounded by the timeout


async def test_quorum_lost_calls_fail_within_timeout_and_recover(cluster: EtcdCluster) -> None:
    timeout = 1.0
    async with EtcdClient(cluster.endpoints, prefix=prefix(), timeout=timeout) as etcd:
        await etcd.put("leader", b"ops-1")
        cluster.stop_quorum()
        for call in (
            lambda: etcd.get("leader"),  # a stale member must not answer with ops-1
            etcd.range,
            lambda: etcd.put("leader", b"ops-2"),
            lambda: etcd.grant(5),
        ):
            began = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await call()
            took = time.monotonic() - began
            assert took < timeout + 0.5, took
        for index, member in enumerate(cluster.members):
            if not member.running:
                cluster.start(index)

        async def answers() -> bool | None:
            try:
                kv = await etcd.get("leader")
            except EtcdUnavailable:
                return None
            assert kv is not None
            return kv.value == b"ops-1"

        started = time.monotonic()
        assert await eventually("a get after quorum returns", answers, within=15.0)
        print(f"\nquorum back: calls answer again {time.monotonic() - started:.2f}s after restart")


async def test_a_paused_member_does_not_hang_the_client(cluster: EtcdCluster) -> None:
    leader = cluster.leader()
    paused = cluster.endpoints[leader]
    endpoints = [paused, *(url for url in cluster.endpoints if url != paused)]
    async with EtcdClient(endpoints, prefix=prefix(), timeout=TIMEOUT) as etcd:
        await etcd.put("k", b"before")
        cluster.pause(leader)
        slowest = 0.0
        answered: float | None = None
        began_all = time.monotonic()
        while answered is None and time.monotonic() - began_all < 10:
            began = time.monotonic()
            try:
                kv = await etcd.get("k")
            except EtcdUnavailable:
                pass
            else:
                assert kv is not None
                assert kv.value == b"before"
                answered = time.monotonic() - began_all
            slowest = max(slowest, time.monotonic() - began)
        print(f"\nleader paused: first get answered after {answered}s, slowest {slowest:.3f}s")
        assert slowest < TIMEOUT + 0.5
        assert answered is not None
        assert etcd.endpoint != paused


async def test_no_endpoint_answers_within_the_timeout() -> None:
    async with EtcdClient(["http://127.0.0.1:9"], prefix="/x/", timeout=0.5) as etcd:
        began = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="no endpoint answered"):
            await etcd.get("k")
        assert time.monotonic() - began < 1.0
