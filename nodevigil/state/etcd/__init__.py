"""etcd v3: the coordination store of a cluster of nodevigil hosts (leader lease, votes).

A thin asyncio client over etcd's v3 JSON gateway (``/v3/...`` on the client port), on aiohttp:
see ``client.EtcdClient`` for what each call guarantees.
"""

from nodevigil.state.etcd.client import MAX_TXN_OPS, EtcdClient
from nodevigil.state.etcd.errors import (
    EtcdCompacted,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdRejected,
    EtcdUnavailable,
)
from nodevigil.state.etcd.values import Delete, EventType, KeyValue, Lease, Put, WatchEvent

__all__ = [
    "MAX_TXN_OPS",
    "Delete",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdLeaseNotFound",
    "EtcdRejected",
    "EtcdUnavailable",
    "EventType",
    "KeyValue",
    "Lease",
    "Put",
    "WatchEvent",
]
