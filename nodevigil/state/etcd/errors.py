"""etcd errors: one branch of nodevigil's exception tree; no aiohttp error escapes the client."""

from __future__ import annotations

from nodevigil.core.errors import AdapterError


class EtcdError(AdapterError):
    """etcd failed or refused a call."""


class EtcdUnavailable(EtcdError, ConnectionError):
    """No endpoint gave a current answer within the client's ``timeout``: no reachable member,
    no raft leader (quorum lost), or only stale members. Whoever gets this must not act: the
    cluster's state is unknown (fail static)."""


class EtcdRejected(EtcdError):
    """A member answered and refused the call (bad argument, permission, authentication)."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        # The gRPC status code etcd gave (3 invalid argument, 7 permission denied, ...).
        self.code = code


class EtcdLeaseNotFound(EtcdRejected, LookupError):
    """The lease named in a put, create or revoke does not exist (it expired or was revoked)."""


class EtcdCompacted(EtcdError):
    """A watch's start revision was compacted away: re-read a snapshot with ``range`` and watch
    again from its revision + 1."""

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
