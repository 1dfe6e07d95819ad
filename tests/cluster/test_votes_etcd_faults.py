"""Votes in a real 3-member etcd through its faults: the watch's member killed (no event
missed), history compacted while a watch was away, quorum lost, a lease lost while cut off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from nodevigil.state.etcd import EtcdError
from tests.cluster.vote_stores import TTL, Stores, of, open_stores, poll, raw_vote, vote
from tests.etcd_cluster import ETCD, EtcdCluster, etcd_cluster

pytestmark = pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def stores(etcd: EtcdCluster) -> AsyncIterator[Stores]:
    async with open_stores(etcd) as opened:
        yield opened


async def test_the_watch_survives_killing_the_leader_member_with_no_event_missed(
    stores: Stores,
) -> None:
    etcd = stores.etcd
    leader = await asyncio.to_thread(etcd.leader)
    first = [etcd.endpoints[leader], *(u for i, u in enumerate(etcd.endpoints) if i != leader)]
    b = await stores.store("ops-2", endpoints=first)  # its watch runs on the raft leader
    a = await stores.store("ops-1")
    writer = await stores.client()
    await poll("ops-2 is healthy", lambda: b.healthy, within=3)
    for index in range(60):  # one key changed 60 times: ops-2 must hear every value in order
        if index == 20:
            await asyncio.to_thread(etcd.kill, leader)
        while True:
            try:
                await writer.put("votes/seq/x", raw_vote("seq", "x", at=index))
                break
            except EtcdError:  # the re-election: the same value again, so none is reordered
                await asyncio.sleep(0.05)
    a.publish(vote("web-1", "ops-1"))
    await poll(
        "the last value and a new vote are seen",
        lambda: "web-1" in of(b, "ops-1") and of(b, "x").get("seq", vote("seq", "x")).at == 59,
        within=10,
    )
    heard = [v.at for n, _, v in stores.heard["ops-2"] if n == "seq" and v is not None]
    assert heard == [float(i) for i in range(60)]
    await poll("ops-2 is healthy again", lambda: b.healthy, within=5)


async def test_a_compacted_history_is_read_again_and_deletions_delivered(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nodevigil.state.etcd.votes")
    etcd = stores.etcd
    leader = await asyncio.to_thread(etcd.leader)
    watched, other = [i for i in range(etcd.size) if i != leader]  # followers: no election
    b = await stores.store("ops-2", endpoints=[etcd.endpoints[watched], etcd.endpoints[other]])
    a = await stores.store("ops-1")
    a.publish(vote("web-1", "ops-1"))
    a.publish(vote("web-2", "ops-1"))
    await stores.raw_put("votes/db-1/x", raw_vote("db-1", "x"))
    await poll("ops-2 sees every vote", lambda: b.stats()["votes"] == 3, within=3)
    # ops-2's watch goes silent; what happens now reaches it only through a re-read.
    await asyncio.to_thread(etcd.pause, watched)
    a.withdraw("web-1")
    await poll("the withdrawal is written", lambda: a.stats()["writes"] == 3, within=3)
    client = await stores.client()
    await client.delete("votes/db-1/x")
    revision = await client.put("votes/db-2/x", raw_vote("db-2", "x"))
    await asyncio.to_thread(stores.compact, revision)
    # Its member dies: the watch resumes on another from a revision that is compacted away.
    await asyncio.to_thread(etcd.kill, watched)
    await poll(
        "ops-2 sees the difference",
        lambda: set(b.votes()) == {"web-2", "db-2"} and "db-1" not in b.votes(),
        within=5,
    )
    heard = stores.heard["ops-2"]
    assert ("web-1", "ops-1", None) in heard and ("db-1", "x", None) in heard
    assert any("compacted" in record.getMessage() for record in caplog.records)
    await poll("ops-2 is healthy", lambda: b.healthy, within=3)


@pytest.mark.slow
async def test_votes_published_while_quorum_is_lost_land_when_it_returns(
    stores: Stores,
) -> None:
    etcd = stores.etcd
    a, b = await stores.store("ops-1"), await stores.store("ops-2")
    a.publish(vote("web-1", "ops-1", "up"))
    await poll("the vote is seen", lambda: "web-1" in of(b, "ops-1"), within=3)
    await asyncio.to_thread(etcd.stop_quorum)
    await poll("ops-1 knows etcd is away", lambda: not a.healthy, within=TTL)
    a.publish(vote("web-1", "ops-1", "down", at=2.0))
    a.publish(vote("web-2", "ops-1", "down"))
    await poll("the writes fail", lambda: a.stats()["write_errors"] > 0, within=TTL)
    assert a.stats()["pending"] == 2
    await asyncio.to_thread(etcd.restore)
    expected = {"web-1": vote("web-1", "ops-1", "down", at=2.0), "web-2": vote("web-2", "ops-1")}
    await poll("the votes land", lambda: of(b, "ops-1") == expected, within=TTL * 3)
    await poll("both healthy", lambda: a.healthy and b.healthy, within=TTL)


async def test_a_lease_lost_while_cut_off_is_replaced_and_the_votes_come_back(
    stores: Stores,
) -> None:
    etcd = stores.etcd
    leader = await asyncio.to_thread(etcd.leader)
    a = await stores.store("ops-1", endpoints=[etcd.endpoints[leader]])  # reaches one member
    b = await stores.store("ops-2")
    for node in ("web-1", "web-2"):
        a.publish(vote(node, "ops-1"))
    await poll("the votes are seen", lambda: len(of(b, "ops-1")) == 2, within=3)
    lost = a.stats()["lease"]
    stopped = await asyncio.to_thread(etcd.stop_quorum)
    assert stopped[0] == leader
    await poll("ops-1 knows etcd is away", lambda: not a.healthy, within=TTL)
    # Quorum returns without ops-1's member: its lease runs out, and its votes with it.
    await asyncio.to_thread(etcd.start, stopped[1])
    await asyncio.to_thread(etcd.wait_healthy)
    await poll("ops-1's votes expire", lambda: not of(b, "ops-1"), within=TTL + 3)
    await asyncio.to_thread(etcd.restore)
    await poll("ops-1's votes are back", lambda: len(of(b, "ops-1")) == 2, within=TTL * 3)
    assert a.stats()["lease"] not in (None, lost)
    await poll("ops-1 is healthy", lambda: a.healthy, within=TTL)


async def test_a_lease_revoked_behind_its_back_is_replaced(stores: Stores) -> None:
    a, b = await stores.store("ops-1"), await stores.store("ops-2")
    a.publish(vote("web-1", "ops-1"))
    await poll("the vote is seen", lambda: "web-1" in of(b, "ops-1"), within=3)
    lost = a.stats()["lease"]
    client = await stores.client()
    await client.revoke(lost)
    heard = stores.heard["ops-2"]
    await poll("gone, then back", lambda: len(heard) == 3 and heard[-1][2] is not None, 3)
    assert [v for _, _, v in heard] == [vote("web-1", "ops-1"), None, vote("web-1", "ops-1")]
    assert a.stats()["lease"] not in (None, lost)
