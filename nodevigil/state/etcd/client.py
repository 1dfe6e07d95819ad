"""``EtcdClient``: the etcd v3 calls nodevigil's leader election and votes are built on.

Why a thin client over etcd's JSON gateway rather than a library: no asyncio etcd client on
PyPI offers TLS, several endpoints with failover and typed code together (see the commit that
added this module). The gateway ships in every etcd v3 server and speaks plain HTTP/JSON, so
aiohttp, already a dependency, is enough; Patroni talks to etcd the same way.

Guarantees, for the election and fencing code on top:

- Every call returns or raises within ``timeout`` (plus scheduling noise). ``EtcdUnavailable``
  means no endpoint gave a current answer: the caller must not act on old knowledge.
- Reads are linearizable: a member without a raft leader refuses (``hasleader``), and an answer
  older than one already seen is discarded, so ``get``/``range`` never return stale data.
- A call that timed out may still have been applied by etcd. ``create`` resolves that for its
  caller: a retry that finds the key under the caller's own lease reports it as created.
- Leases: etcd restarts every lease's TTL when its raft leader changes, so a lease can outlive
  its TTL as others see it; it never expires earlier than ``ttl`` after the last keepalive the
  leader received. A holder's own deadline must therefore count from when it *sent* its last
  successful keepalive (Patroni's rule: ``loop_wait + 2 * retry_timeout <= ttl``).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from nodevigil.core.tlsfiles import TlsFileError, client_context
from nodevigil.state.etcd.errors import EtcdError, EtcdLeaseNotFound
from nodevigil.state.etcd.transport import Json, Transport, b64, unb64
from nodevigil.state.etcd.values import Delete, KeyValue, Lease, Put, WatchEvent
from nodevigil.state.etcd.watch import watch_events

TLSFiles = tuple[str, str | None, str | None]

# etcd's --max-txn-ops default: a transaction with more operations is refused.
MAX_TXN_OPS = 128


def range_end(prefix: bytes) -> bytes:
    """The key just past every key that starts with ``prefix`` (etcd's prefix range)."""
    end = bytearray(prefix)
    for index in range(len(end) - 1, -1, -1):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\0"  # all 0xff: to the end of the keyspace


def _check(
    endpoints: Sequence[str],
    *,
    prefix: str,
    timeout: float,
    tls: TLSFiles | None,
    username: str | None,
    password: str | None,
) -> list[str]:
    """Every problem with the constructor's arguments, each as ``name: message``."""
    problems: list[str] = []
    if isinstance(endpoints, str) or not endpoints:
        problems.append("endpoints: must be a non-empty list of URLs")
    else:
        for index, url in enumerate(endpoints):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"endpoints[{index}]: {url!r} is not an http(s):// URL")
            elif parts.path.strip("/") or parts.query:
                problems.append(f"endpoints[{index}]: {url!r} must have no path")
            elif tls is not None and parts.scheme != "https":
                problems.append(f"endpoints[{index}]: {url!r} must be https:// with tls")
    if not prefix:
        problems.append("prefix: must not be empty (one cluster must not see another's keys)")
    if not timeout > 0:
        problems.append(f"timeout: must be positive, not {timeout!r}")
    if tls is not None and (tls[1] is None) != (tls[2] is None):
        problems.append("tls: cert_file and key_file go together")
    if (username is None) != (password is None):
        problems.append("username, password: give both or neither")
    return problems


def _ssl_context(tls: TLSFiles | None) -> ssl.SSLContext | None:
    """Trust only the CA given; a file that cannot be used is a ValueError naming it."""
    if tls is None:
        return None
    ca_file, cert_file, key_file = tls
    try:
        return client_context(
            Path(ca_file),
            None if cert_file is None else Path(cert_file),
            None if key_file is None else Path(key_file),
        )
    except TlsFileError as exc:
        raise ValueError(f"EtcdClient: tls.{exc}") from None


class EtcdClient:
    """An etcd v3 client for one key prefix; use it as ``async with EtcdClient(...) as etcd``.

    ``endpoints``: client URLs of the members, tried in turn (the last one that answered first).
    ``prefix``: prepended to every key; keys given and returned are relative to it.
    ``timeout``: the longest any call may take before ``EtcdUnavailable``.
    ``tls``: ``(ca_file, cert_file, key_file)``; cert and key may be None (no client cert).
    ``username``/``password``: etcd authentication, both or neither.
    Argument errors raise ``ValueError`` at once, listing every problem.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str,
        timeout: float,
        tls: TLSFiles | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        problems = _check(
            endpoints,
            prefix=prefix,
            timeout=timeout,
            tls=tls,
            username=username,
            password=password,
        )
        if problems:
            raise ValueError("EtcdClient: " + "; ".join(problems))
        self.prefix = prefix
        self._prefix = prefix.encode()
        credentials = None
        if username is not None and password is not None:
            credentials = (username, password)
        self._transport = Transport(
            tuple(url.rstrip("/") for url in endpoints),
            timeout=timeout,
            ssl_context=_ssl_context(tls),
            credentials=credentials,
        )

    @property
    def timeout(self) -> float:
        """The longest any call may take."""
        return self._transport.timeout

    @property
    def endpoint(self) -> str:
        """The endpoint that answered last; the next call tries it first."""
        return self._transport.current

    async def __aenter__(self) -> Self:
        await self._transport.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._transport.close()

    # --- keys ---------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return b64(self._prefix + key.encode())

    def _kv(self, raw: Json) -> KeyValue:
        full = unb64(raw["key"])
        if not full.startswith(self._prefix):
            raise EtcdError(f"etcd: key {full!r} outside prefix {self.prefix!r}")
        return KeyValue(
            key=full[len(self._prefix) :].decode(),
            value=unb64(raw.get("value", "")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            version=int(raw.get("version", 0)),
            lease=int(raw.get("lease", 0)),
        )

    async def get(self, key: str) -> KeyValue | None:
        """The key's current value (a linearizable read), or None when it does not exist."""
        answer = await self._transport.call("kv/range", {"key": self._key(key)}, fresh=True)
        kvs = answer.get("kvs", [])
        return self._kv(kvs[0]) if kvs else None

    async def range(self, prefix: str = "") -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (linearizable) and the cluster revision of that snapshot;
        watch from that revision + 1 to follow changes without missing one."""
        start = self._prefix + prefix.encode()
        body = {"key": b64(start), "range_end": b64(range_end(start))}
        answer = await self._transport.call("kv/range", body, fresh=True)
        revision = int(answer["header"]["revision"])
        return [self._kv(raw) for raw in answer.get("kvs", [])], revision

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Set the key; return the revision of the change. Raises EtcdLeaseNotFound when
        ``lease`` is gone."""
        body: Json = {"key": self._key(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self._transport.call("kv/put", body)
        return int(answer["header"]["revision"])

    async def create(self, key: str, value: bytes, *, lease: int) -> KeyValue | None:
        """Create the key under ``lease`` only if it does not exist (one transaction comparing
        ``create_revision == 0``). Returns the created key, whose ``create_revision`` is unique
        to this creation (the fencing epoch), or None when the key exists under another lease.

        Safe to retry: if an earlier attempt was applied but its answer lost, the key is found
        under ``lease`` (lease ids are unique) and returned as created.
        Raises EtcdLeaseNotFound when ``lease`` is gone.
        """
        if not lease:
            raise ValueError("create: a lease is required (a key without one never goes away)")
        encoded = self._key(key)
        body = {
            "compare": [{"key": encoded, "target": "CREATE", "create_revision": "0"}],
            "success": [
                {"request_put": {"key": encoded, "value": b64(value), "lease": str(lease)}},
                {"request_range": {"key": encoded}},
            ],
            "failure": [{"request_range": {"key": encoded}}],
        }
        answer = await self._transport.call("kv/txn", body, fresh=True)
        ranged = answer.get("responses", [])[-1].get("response_range", {})
        kvs = ranged.get("kvs", [])
        if not kvs:  # the key was deleted between put and range: impossible in one txn
            raise EtcdError(f"etcd: create {key!r}: the transaction returned no key")
        found = self._kv(kvs[0])
        return found if answer.get("succeeded") or found.lease == lease else None

    async def delete(self, key: str, *, if_mod_revision: int | None = None) -> bool:
        """Delete the key; with ``if_mod_revision`` only while it is unchanged since that
        revision. True when a key was deleted; False when it was absent or had changed (also
        when a retried attempt had already deleted it)."""
        request = {"key": self._key(key)}
        if if_mod_revision is None:
            answer = await self._transport.call("kv/deleterange", request)
            return int(answer.get("deleted", 0)) > 0
        body = {
            "compare": [
                {"key": request["key"], "target": "MOD", "mod_revision": str(if_mod_revision)}
            ],
            "success": [{"request_delete_range": request}],
        }
        answer = await self._transport.call("kv/txn", body, fresh=True)
        if not answer.get("succeeded"):
            return False
        deleted = answer["responses"][0].get("response_delete_range", {}).get("deleted", 0)
        return int(deleted) > 0

    async def txn(self, ops: Sequence[Put | Delete]) -> int:
        """Apply every put and delete in one transaction, all or none; return its revision.

        At most ``MAX_TXN_OPS`` operations, each key once (etcd refuses more, or a key twice):
        ``ValueError`` at once. Raises EtcdLeaseNotFound when a put's lease is gone (then
        nothing is applied). Safe to retry after a timeout: puts and deletes are idempotent.
        """
        if not ops:
            raise ValueError("txn: no operations")
        if len(ops) > MAX_TXN_OPS:
            raise ValueError(f"txn: {len(ops)} operations, etcd takes at most {MAX_TXN_OPS}")
        if len({op.key for op in ops}) < len(ops):
            raise ValueError("txn: a key appears twice (etcd refuses that)")
        requests: list[Json] = []
        for op in ops:
            if isinstance(op, Put):
                put: Json = {"key": self._key(op.key), "value": b64(op.value)}
                if op.lease:
                    put["lease"] = str(op.lease)
                requests.append({"request_put": put})
            else:
                requests.append({"request_delete_range": {"key": self._key(op.key)}})
        answer = await self._transport.call("kv/txn", {"success": requests})
        return int(answer["header"]["revision"])

    async def put_many(
        self, items: Iterable[tuple[str, bytes]], *, lease: int | None = None
    ) -> int:
        """Set every ``(key, value)`` in one transaction (see ``txn``); return its revision."""
        return await self.txn([Put(key, value, lease or 0) for key, value in items])

    # --- leases -------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds (etcd may raise a very short TTL to its minimum)."""
        if ttl < 1:
            raise ValueError(f"grant: ttl must be at least 1 second, not {ttl}")
        answer = await self._transport.call("lease/grant", {"TTL": str(ttl)})
        return Lease(id=int(answer["ID"]), ttl=int(answer["TTL"]))

    async def keepalive(self, lease_id: int) -> float | None:
        """Renew the lease once; return its TTL from now in seconds, or None when it is gone
        (expired or revoked: its keys are deleted). Count the holder's deadline from when this
        call was *sent*, not from when it returned."""
        answer = await self._transport.call("lease/keepalive", {"ID": str(lease_id)})
        ttl = int(answer.get("TTL", 0))
        return float(ttl) if ttl > 0 else None

    async def time_to_live(self, lease_id: int) -> float | None:
        """The lease's remaining TTL in seconds without renewing it, or None when it is gone."""
        answer = await self._transport.call("lease/timetolive", {"ID": str(lease_id)})
        ttl = int(answer.get("TTL", 0))  # -1: no such lease; 0 (left out): about to expire
        return float(ttl) if ttl >= 0 else None

    async def revoke(self, lease_id: int) -> None:
        """Revoke the lease now, deleting its keys at once; a lease already gone is fine."""
        with contextlib.suppress(EtcdLeaseNotFound):
            await self._transport.call("lease/revoke", {"ID": str(lease_id)})

    # --- watch --------------------------------------------------------------------------

    def watch(
        self, prefix: str = "", *, start_revision: int, idle_reconnect: float = 10.0
    ) -> AsyncGenerator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` on, in order, none missed.

        When a member fails the watch moves to another endpoint and resumes after the last
        event seen; a stream silent for ``idle_reconnect`` seconds is reopened the same way
        (a paused member keeps its socket open but sends nothing). Raises EtcdCompacted when
        ``start_revision`` (or the resume point) was compacted: re-read with ``range``;
        EtcdUnavailable when no endpoint opens a watch within ``timeout``.
        """
        start = self._prefix + prefix.encode()
        return watch_events(
            self._transport,
            key=start,
            end=range_end(start),
            start_revision=start_revision,
            idle_reconnect=idle_reconnect,
            decode=self._kv,
        )
