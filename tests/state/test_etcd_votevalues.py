"""A vote as etcd holds it: the key's shape and the JSON value, read strictly (pure logic; the
vote store against a real etcd: tests/cluster/test_votes_etcd.py)."""

from __future__ import annotations

import json

import pytest

from nodevigil.core.clock import SystemClock
from nodevigil.state.etcd.client import EtcdClient
from nodevigil.state.etcd.votes import StoredVote, VoteStore
from nodevigil.state.etcd.votevalues import Refused, decode, encode, parse_key, vote_key

VOTE = StoredVote("web-1", "ops-1", "down", 1700000000.5, "http: refused (3 of 3)", "http")


def test_a_vote_goes_through_etcd_unchanged() -> None:
    assert parse_key(vote_key("web-1", "ops-1")) == ("web-1", "ops-1")
    assert decode("web-1", "ops-1", encode(VOTE)) == VOTE
    isolated = StoredVote("web-1", "ops-1", "unknown", 2.0, "", isolated=True)
    assert decode("web-1", "ops-1", encode(isolated)) == isolated


def test_unknown_fields_are_ignored_and_optional_ones_default() -> None:
    data = json.loads(encode(VOTE)) | {"from_a_newer_version": [1]}
    del data["probe"], data["isolated"]
    vote = decode("web-1", "ops-1", json.dumps(data).encode())
    assert vote.probe is None and vote.isolated is False and vote.at == VOTE.at


@pytest.mark.parametrize(
    ("key", "ok"),
    [("votes/a/b", True), ("votes/a", False), ("votes/a/b/c", False), ("votes//b", False)],
)
def test_only_votes_node_vantage_is_a_vote_key(key: str, ok: bool) -> None:
    if ok:
        assert parse_key(key) == ("a", "b")
    else:
        with pytest.raises(Refused) as refused:
            parse_key(key)
        assert refused.value.reason == "key"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"verdict": "sideways"}, "field"),
        ({"verdict": None}, "field"),
        ({"at": "yesterday"}, "field"),
        ({"at": True}, "field"),  # a boolean is not a time, though Python calls it an int
        ({"reason": 3}, "field"),
        ({"probe": 3}, "field"),
        ({"isolated": "yes"}, "field"),
        ({"node": "web-2"}, "mismatch"),
        ({"vantage": "ops-2"}, "mismatch"),
    ],
)
def test_a_wrong_field_is_refused_with_its_reason(change: dict[str, object], reason: str) -> None:
    value = json.dumps(json.loads(encode(VOTE)) | change).encode()
    with pytest.raises(Refused) as refused:
        decode("web-1", "ops-1", value)
    assert refused.value.reason == reason


@pytest.mark.parametrize("value", [b"not json", b"[1]", b"\xff\xfe", b'{"at": NaN}'])
def test_what_is_not_a_json_object_is_refused(value: bytes) -> None:
    with pytest.raises(Refused) as refused:
        decode("web-1", "ops-1", value)
    assert refused.value.reason in ("json", "field")


async def test_the_store_checks_its_arguments_and_votes() -> None:
    client = EtcdClient(["http://127.0.0.1:1"], prefix="/t/", timeout=0.5)
    with pytest.raises(ValueError, match=r"vantage.*renew_every"):
        VoteStore(client, vantage="a/b", ttl=2, renew_every=2, clock=SystemClock())
    store = VoteStore(client, vantage="ops-1", ttl=2, renew_every=0.5, clock=SystemClock())
    with pytest.raises(ValueError, match="ops-2"):
        store.publish(StoredVote("web-1", "ops-2", "up", 1.0, ""))
    with pytest.raises(ValueError, match="node"):
        store.publish(StoredVote("web/1", "ops-1", "up", 1.0, ""))
    assert not store.healthy and store.stats()["pending"] == 0
