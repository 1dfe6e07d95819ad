"""An in-memory etcd for the leader lease's unit tests: keys, revisions and leases that
expire on a manual clock; each process sees it through a ``View`` that can be cut off."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from nodevigil.core.clock import ManualClock
from nodevigil.state.etcd.errors import EtcdUnavailable
from nodevigil.state.etcd.values import KeyValue, Lease


@dataclass
class _Lease:
    id: int
    ttl: int
    expires: float


class FakeEtcd:
    """Keys and leases; a lease expires ``ttl`` after its last keepalive on ``clock``."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.revision = 1
        self.keys: dict[str, KeyValue] = {}
        self.leases: dict[int, _Lease] = {}
        self._ids = itertools.count(0x1000)

    def expire(self) -> None:
        """Drop leases past their expiry, and their keys (etcd's lessor)."""
        now = self.clock.monotonic()
        for lease in [x for x in self.leases.values() if x.expires <= now]:
            self.drop_lease(lease.id)

    def drop_lease(self, lease_id: int) -> None:
        """Revoke: the lease and every key under it go."""
        self.leases.pop(lease_id, None)
        for key in [k for k, kv in self.keys.items() if kv.lease == lease_id]:
            self.delete(key)

    def delete(self, key: str) -> bool:
        """Delete ``key`` (an operator, or a lease's end)."""
        if self.keys.pop(key, None) is None:
            return False
        self.revision += 1
        return True

    def put(self, key: str, value: bytes, lease: int) -> KeyValue:
        """Write ``key``: a new creation revision unless it exists."""
        self.revision += 1
        old = self.keys.get(key)
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else self.revision,
            mod_revision=self.revision,
            version=(old.version + 1) if old else 1,
            lease=lease,
        )
        self.keys[key] = kv
        return kv


class View:
    """One process's connection to the fake: ``reachable = False`` cuts it off."""

    def __init__(self, etcd: FakeEtcd) -> None:
        self.etcd = etcd
        self.reachable = True
        self.calls: list[str] = []

    def _call(self, what: str) -> FakeEtcd:
        self.calls.append(what)
        if not self.reachable:
            raise EtcdUnavailable("etcd: no endpoint answered within 1s")
        self.etcd.expire()
        return self.etcd

    async def get(self, key: str) -> KeyValue | None:
        return self._call("get").keys.get(key)

    async def range(self, prefix: str = "") -> tuple[list[KeyValue], int]:
        etcd = self._call("range")
        rows = [kv for k, kv in sorted(etcd.keys.items()) if k.startswith(prefix)]
        return rows, etcd.revision

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        etcd = self._call("put")
        etcd.put(key, value, lease or 0)
        return etcd.revision

    async def create(self, key: str, value: bytes, *, lease: int) -> KeyValue | None:
        etcd = self._call("create")
        if key in etcd.keys:
            return None
        return etcd.put(key, value, lease)

    async def grant(self, ttl: int) -> Lease:
        etcd = self._call("grant")
        lease = _Lease(next(etcd._ids), ttl, etcd.clock.monotonic() + ttl)
        etcd.leases[lease.id] = lease
        return Lease(lease.id, ttl)

    async def keepalive(self, lease_id: int) -> float | None:
        etcd = self._call("keepalive")
        lease = etcd.leases.get(lease_id)
        if lease is None:
            return None
        etcd.leases[lease_id] = replace(lease, expires=etcd.clock.monotonic() + lease.ttl)
        return float(lease.ttl)

    async def revoke(self, lease_id: int) -> None:
        self._call("revoke").drop_lease(lease_id)

    def watch(self, prefix: str = "", *, start_revision: int) -> AsyncIterator[Any]:
        return self._no_events()

    async def _no_events(self) -> AsyncIterator[Any]:
        self._call("watch")
        return
        yield  # an async generator that ends at once
