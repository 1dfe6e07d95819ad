"""Vote stores on a real etcd for the tests: one prefix per test, a client per store, each
store's metrics in its own registry and every change it heard recorded."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from nodevigil.core.clock import SystemClock
from nodevigil.state.etcd.client import EtcdClient
from nodevigil.state.etcd.votes import StoredVote, VoteStore
from tests.etcd_cluster import EtcdCluster, gateway

# The leader lease's tightest timing (tests/cluster/test_election.py).
TTL, RENEW, TIMEOUT = 2.0, 0.5, 0.5

Heard = tuple[str, str, StoredVote | None]


def vote(node: str, vantage: str, verdict: str = "down", at: float = 1.0) -> StoredVote:
    """A vote with evidence, as a vantage would publish it."""
    return StoredVote(
        node=node,
        vantage=vantage,
        verdict=verdict,
        at=at,
        reason="http: connection refused (3 of 3)",
        probe="http",
    )


def raw_vote(node: str, vantage: str, **change: Any) -> bytes:
    """A vote's JSON as another writer (or an operator) might store it, ``change`` applied."""
    data: dict[str, Any] = {"node": node, "vantage": vantage, "verdict": "up", "at": 1.0}
    data |= {"reason": "ok", "probe": None, "isolated": False, **change}
    return json.dumps(data).encode()


async def poll(what: str, check: Callable[[], bool], within: float) -> float:
    """Wait until ``check()``; the monotonic time it first held."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


def of(store: VoteStore, vantage: str) -> dict[str, StoredVote]:
    """node -> ``vantage``'s vote, as ``store`` sees the table."""
    return {n: row[vantage] for n, row in store.votes().items() if vantage in row}


class Stores:
    """Opens clients and vote stores on one prefix; closes them all at the test's end."""

    def __init__(self, etcd: EtcdCluster, prefix: str, stack: AsyncExitStack) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self._stack = stack
        self.registries: dict[str, CollectorRegistry] = {}
        self.heard: dict[str, list[Heard]] = {}
        self._raw: EtcdClient | None = None

    async def client(self, endpoints: Sequence[str] | None = None) -> EtcdClient:
        """A client on the test's prefix (every member unless ``endpoints``)."""
        client = EtcdClient(endpoints or self.etcd.endpoints, prefix=self.prefix, timeout=TIMEOUT)
        return await self._stack.enter_async_context(client)

    async def store(
        self,
        vantage: str,
        *,
        endpoints: Sequence[str] | None = None,
        client: EtcdClient | None = None,
        enter: bool = True,
    ) -> VoteStore:
        """A vote store for ``vantage`` that records what it hears in ``heard[vantage]``."""
        self.registries[vantage] = CollectorRegistry()
        store = VoteStore(
            client or await self.client(endpoints),
            vantage=vantage,
            ttl=TTL,
            renew_every=RENEW,
            clock=SystemClock(),
            registry=self.registries[vantage],
        )
        heard = self.heard.setdefault(vantage, [])
        store.subscribe(lambda node, who, v: heard.append((node, who, v)))
        return await self._stack.enter_async_context(store) if enter else store

    def metric(self, vantage: str, name: str, **labels: str) -> float:
        """A sample of ``vantage``'s store's registry (0 when absent)."""
        return self.registries[vantage].get_sample_value(name, labels) or 0.0

    async def raw_put(self, key: str, value: bytes) -> int:
        """Put ``key`` (relative to the prefix) as an operator would; its revision."""
        if self._raw is None:
            self._raw = await self.client()
        return await self._raw.put(key, value)

    def compact(self, revision: int) -> None:
        """Compact the history up to ``revision`` through a running member."""
        for index, member in enumerate(self.etcd.members):
            if member.running and not member.paused and self.etcd.linearizable_get(index):
                gateway(member.client_url, "/v3/kv/compaction", {"revision": str(revision)})
                return
        raise AssertionError("no member to compact through")


@asynccontextmanager
async def open_stores(etcd: EtcdCluster) -> AsyncIterator[Stores]:
    """Stores on a fresh prefix of ``etcd``, every member running first."""
    await asyncio.to_thread(etcd.restore)  # whatever the previous test stopped
    async with AsyncExitStack() as stack:
        yield Stores(etcd, f"/nodevigil-test/{uuid.uuid4().hex[:8]}/", stack)
