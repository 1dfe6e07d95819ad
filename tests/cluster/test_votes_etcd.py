"""Votes in a real 3-member etcd (tests/etcd_cluster.py) while it is healthy: stores see each
other's votes, write on change only and in few transactions, lose their votes with their lease
and refuse what is not a vote. The faults (members killed, quorum lost): test_votes_etcd_faults.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from nodevigil.state.etcd import MAX_TXN_OPS, Delete, EtcdLeaseNotFound, Put
from tests.cluster.vote_stores import TTL, Stores, of, open_stores, poll, raw_vote, vote
from tests.etcd_cluster import ETCD, EtcdCluster, etcd_cluster

pytestmark = pytest.mark.skipif(not ETCD.exists(), reason="etcd is missing: etcd-server")

WRITES = "nodevigil_cluster_vote_writes_total"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def stores(etcd: EtcdCluster) -> AsyncIterator[Stores]:
    async with open_stores(etcd) as opened:
        yield opened


async def test_a_transaction_puts_many_keys_at_once_or_none(stores: Stores) -> None:
    client = await stores.client()
    items = [(f"t/{i}", str(i).encode()) for i in range(MAX_TXN_OPS)]
    revision = await client.put_many(items)
    rows, _ = await client.range("t/")
    assert len(rows) == MAX_TXN_OPS and {r.mod_revision for r in rows} == {revision}
    with pytest.raises(ValueError, match="at most"):
        await client.put_many([*items, ("t/one-more", b"x")])
    with pytest.raises(ValueError, match="twice"):
        await client.txn([Put("t/a", b"1"), Delete("t/a")])
    gone = (await client.grant(1)).id
    await client.revoke(gone)
    with pytest.raises(EtcdLeaseNotFound):
        await client.txn([Put("t/new", b"x"), Put("t/other", b"y", gone)])
    assert await client.get("t/new") is None  # nothing of a refused transaction is applied
    await client.txn([Delete("t/0"), Put("t/1", b"one")])
    assert await client.get("t/0") is None
    one = await client.get("t/1")
    assert one is not None and one.value == b"one"


async def test_two_stores_see_each_others_votes(stores: Stores) -> None:
    a, b = await stores.store("ops-1"), await stores.store("ops-2")
    a.publish(vote("web-1", "ops-1", "down"))
    a.publish(vote("web-2", "ops-1", "up"))
    b.publish(vote("web-1", "ops-2", "up"))
    both = {"web-1": {"ops-1": vote("web-1", "ops-1"), "ops-2": vote("web-1", "ops-2", "up")}}
    both["web-2"] = {"ops-1": vote("web-2", "ops-1", "up")}
    await poll("each sees every vote", lambda: a.votes() == b.votes() == both, within=3)
    assert a.healthy and b.healthy
    assert ("web-1", "ops-1", vote("web-1", "ops-1")) in stores.heard["ops-2"]
    assert stores.metric("ops-2", "nodevigil_cluster_votes") == 3
    a.withdraw("web-2")
    await poll("the withdrawn vote is gone", lambda: "web-2" not in b.votes(), within=3)
    assert stores.heard["ops-2"][-1] == ("web-2", "ops-1", None)


async def test_a_subscriber_that_came_first_hears_the_snapshot(stores: Stores) -> None:
    a = await stores.store("ops-1")
    for node in ("web-1", "web-2", "web-3"):
        a.publish(vote(node, "ops-1"))
    await poll("ops-1's votes are written", lambda: len(a.votes()) == 3, within=3)
    b = await stores.store("ops-2", enter=False)  # subscribed (by the helper), not running
    assert stores.heard["ops-2"] == []
    async with b:
        await poll("the snapshot is heard", lambda: len(stores.heard["ops-2"]) == 3, within=3)
    assert sorted(stores.heard["ops-2"]) == [(n, "ops-1", vote(n, "ops-1")) for n in a.votes()]


async def test_a_vote_is_written_on_change_only_and_the_latest_wins(stores: Stores) -> None:
    a, b = await stores.store("ops-1"), await stores.store("ops-2")
    a.publish(vote("web-1", "ops-1", "down"))
    await poll("the vote is seen", lambda: "web-1" in of(b, "ops-1"), within=3)
    assert a.stats()["writes"] == 1
    a.publish(vote("web-1", "ops-1", "down"))  # the same vote again: nothing to write
    for at in (2.0, 3.0, 4.0):  # three changes before the writer runs: only the last counts
        a.publish(vote("web-2", "ops-1", "up", at=at))
    await poll("the last vote is seen", lambda: "web-2" in of(b, "ops-1"), within=3)
    assert of(b, "ops-1")["web-2"].at == 4.0
    assert [v.at for n, _, v in stores.heard["ops-2"] if n == "web-2" and v] == [4.0]
    assert a.stats()["writes"] == 2 and a.stats()["pending"] == 0
    assert stores.metric("ops-1", WRITES) == 2
    assert stores.metric("ops-1", "nodevigil_cluster_vote_write_seconds_count") >= 1


async def test_two_thousand_votes_go_in_few_transactions(stores: Stores) -> None:
    a, b = await stores.store("ops-1"), await stores.store("ops-2")
    started = time.monotonic()
    for index in range(2000):
        a.publish(vote(f"node-{index:04}", "ops-1", "up"))
    await poll("every vote is seen", lambda: len(of(b, "ops-1")) == 2000, within=15)
    took = time.monotonic() - started
    stats = a.stats()
    print(f"\n2000 votes: {stats['transactions']} transactions, {took:.2f}s to be seen")
    assert stats["writes"] == 2000
    assert stats["transactions"] <= math.ceil(2000 / MAX_TXN_OPS) + 2
    assert len(stores.heard["ops-2"]) == 2000  # each heard once


async def test_a_halted_store_loses_its_votes_within_the_ttl(stores: Stores) -> None:
    a, b = await stores.store("ops-1"), await stores.store("ops-2")
    for node in ("web-1", "web-2"):
        a.publish(vote(node, "ops-1"))
    await poll("the votes are seen", lambda: len(of(b, "ops-1")) == 2, within=3)
    halted = time.monotonic()
    await a.halt()  # as SIGKILL would: no keepalive, no revoke
    assert not a.healthy
    gone = await poll("the votes expire", lambda: not of(b, "ops-1"), within=TTL + 1)
    assert gone - halted <= TTL + 1
    assert {(n, v) for n, who, v in stores.heard["ops-2"][-2:]} == {
        ("web-1", None),
        ("web-2", None),
    }


async def test_a_clean_stop_removes_the_votes_at_once(stores: Stores) -> None:
    a, b = await stores.store("ops-1", enter=False), await stores.store("ops-2")
    async with a:
        a.publish(vote("web-1", "ops-1"))
        await poll("the vote is seen", lambda: "web-1" in of(b, "ops-1"), within=3)
        stopped = time.monotonic()
    gone = await poll("the vote is gone", lambda: not of(b, "ops-1"), within=TTL)
    assert gone - stopped < 0.5  # the revoke, not the TTL


async def test_an_own_vote_deleted_behind_its_back_is_written_again(stores: Stores) -> None:
    a = await stores.store("ops-1")
    a.publish(vote("web-1", "ops-1"))
    await poll("the vote is seen", lambda: "web-1" in of(a, "ops-1"), within=3)
    client = await stores.client()
    assert await client.delete("votes/web-1/ops-1")
    heard = stores.heard["ops-1"]
    await poll("deleted, then back", lambda: len(heard) == 3 and heard[-1][2] is not None, 3)
    again = vote("web-1", "ops-1")
    assert [v for _, _, v in stores.heard["ops-1"]] == [again, None, again]
    assert a.stats()["writes"] == 2


async def test_what_is_not_a_vote_is_counted_and_dropped(stores: Stores) -> None:
    b = await stores.store("ops-2")
    await stores.raw_put("votes/db-1/x", raw_vote("db-1", "x"))
    await poll("a valid vote is seen", lambda: "db-1" in b.votes(), within=3)
    bad = {
        "votes/n1/x": b"not json",
        "votes/n2/x": b"[1, 2]",
        "votes/n3/x": raw_vote("n3", "x", verdict="sideways"),
        "votes/n4/x": raw_vote("n4", "x", at="yesterday"),
        "votes/n5/y": raw_vote("n5", "x"),  # says it is x's vote under y's key
        "votes/n6": raw_vote("n6", "x"),
        "votes/a/b/c": raw_vote("a", "b"),
        "votes/db-1/x": b"\xff\xfe",  # a valid vote replaced by garbage: it counts no more
    }
    for key, value in bad.items():
        await stores.raw_put(key, value)
    await stores.raw_put("votes/db-2/x", raw_vote("db-2", "x"))
    await poll("the next valid vote is seen", lambda: "db-2" in b.votes(), within=3)
    assert set(b.votes()) == {"db-2"}
    assert ("db-1", "x", None) in stores.heard["ops-2"]
    name = "nodevigil_cluster_votes_refused_total"
    refused = {r: stores.metric("ops-2", name, reason=r) for r in ("json", "field", "mismatch")}
    assert refused == {"json": 3, "field": 2, "mismatch": 1}
    assert stores.metric("ops-2", name, reason="key") == 2
    assert b.healthy
