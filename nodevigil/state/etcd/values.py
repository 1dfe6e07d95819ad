"""What the etcd client takes and returns: frozen values, keys relative to the client's prefix."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it.

    ``create_revision`` is the cluster revision that created the key (the fencing epoch of a
    leader key), ``mod_revision`` the one that last changed it, ``version`` the number of
    changes since creation, ``lease`` the lease it is attached to (0: none).
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease granted by etcd: its id and the TTL in seconds that etcd granted."""

    id: int
    ttl: int


class EventType(enum.Enum):
    """What happened to a key in a watch event."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch; for a DELETE ``kv`` has only the key and ``mod_revision``."""

    type: EventType
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Put:
    """In a transaction: set ``key`` to ``value``, under ``lease`` unless it is 0."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """In a transaction: delete ``key`` (absent is fine)."""

    key: str
