"""Votes in etcd: this vantage's verdicts under its own lease, everyone's as a watched table.

Writing. Each vantage holds ONE lease for all its votes (``votes/<node>/<vantage>``), so a
vantage that dies loses every vote when the lease expires, and a clean stop revokes it (the
votes vanish at once). ``publish`` only records the vote; a writer task sends the nodes whose
vote changed in transactions of up to ``MAX_TXN_OPS`` puts, so 10,000 first votes take ~80
round trips, and whatever is published while one is in flight goes in the next. A batch always
carries each node's *latest* vote, so a failed write is retried with the newest value and an
older one can never land after a newer one from this process. If etcd says the lease is gone
(it expired while this vantage could not reach etcd), a new one is granted and every current
vote is written again under it.

Reading. The table is a snapshot ``range("votes/")`` at revision R, then a watch from R + 1,
so no change is missed; when the watch history was compacted or the watch broke, the snapshot
is read again and only the difference reaches subscribers (a vanished key as None).

Level-triggered: what the watch shows of this vantage's own keys is compared with what it
believes it wrote; a key changed or deleted behind its back (a late retry from another member,
an operator, an expired lease) is written again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry

from nodevigil.core.clock import Clock
from nodevigil.state.etcd.client import MAX_TXN_OPS, EtcdClient
from nodevigil.state.etcd.errors import EtcdCompacted, EtcdError, EtcdLeaseNotFound
from nodevigil.state.etcd.values import Delete, EventType, KeyValue, Lease, Put
from nodevigil.state.etcd.votemetrics import VoteMetrics
from nodevigil.state.etcd.votetable import Subscriber, VoteTable
from nodevigil.state.etcd.votevalues import VOTES, StoredVote, check_name, encode, vote_key

__all__ = ["StoredVote", "Subscriber", "VoteStore"]

log = logging.getLogger(__name__)

# etcd refuses a request over 1.5 MiB (--max-request-bytes); base64 and JSON add about 40 %.
MAX_TXN_BYTES = 512 * 1024
EtcdTrouble = (EtcdError, TimeoutError)


class VoteStore:
    """This vantage's votes in etcd under its own lease, and everyone's votes as a watched table.

    ``async with VoteStore(client, vantage=..., ttl=..., renew_every=..., clock=...)`` grants
    the lease and runs the keepalive, writer and watcher tasks. Never raises for etcd trouble:
    ``healthy`` is False meanwhile and each kind of trouble is logged once per streak.
    """

    def __init__(
        self,
        client: EtcdClient,
        *,
        vantage: str,
        ttl: float,
        renew_every: float,
        clock: Clock,
        registry: CollectorRegistry | None = None,
    ) -> None:
        problems = []
        if not vantage or "/" in vantage:
            problems.append(f"vantage: {vantage!r} must be non-empty and without '/'")
        if not ttl > 0:
            problems.append(f"ttl: must be positive, not {ttl!r}")
        if not 0 < renew_every < ttl:
            problems.append(f"renew_every: must be positive and below ttl, not {renew_every!r}")
        if problems:
            raise ValueError("VoteStore: " + "; ".join(problems))
        self.vantage = vantage
        self._client = client
        self._ttl = math.ceil(ttl)
        self._renew_every = renew_every
        self._clock = clock
        self._own: dict[str, StoredVote] = {}  # node -> what this vantage says now
        self._written: dict[str, StoredVote] = {}  # node -> what etcd holds under our lease
        self._written_rev: dict[str, int] = {}  # node -> revision that knowledge is from
        self._dirty: OrderedDict[str, None] = OrderedDict()  # nodes to compare and write
        self._lease: Lease | None = None
        self._lease_ok = False
        self._watch_current = False
        self._failing: set[str] = set()  # "lease", "write", "watch": logged once per streak
        self._writer_wake = asyncio.Event()
        self._lease_wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counts = {"writes": 0, "transactions": 0, "write_errors": 0}
        self._last_write: float | None = None
        self._metrics = VoteMetrics(registry or CollectorRegistry())
        self._table = VoteTable(
            own=vantage, refused=self._metrics.refused, observe_own=self._observe_own
        )
        self._metrics.votes.set_function(self._table.count)  # read at scrape time

    # --- what the wiring calls --------------------------------------------------------------

    def publish(self, vote: StoredVote) -> None:
        """Record this vantage's vote; written soon if it changed (only the latest counts)."""
        if vote.vantage != self.vantage:
            raise ValueError(f"publish: {vote.vantage!r}'s vote given to {self.vantage!r}")
        check_name("node", vote.node)
        if self._own.get(vote.node) == vote:
            return
        self._own[vote.node] = vote
        self._mark(vote.node)

    def withdraw(self, node: str) -> None:
        """Delete this vantage's vote of ``node`` (the node left the configuration)."""
        if self._own.pop(node, None) is not None or node in self._written:
            self._mark(node)

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(node, vantage, vote or None)`` on every change the watch sees; a
        late subscriber first gets every vote already in the table, synchronously."""
        self._table.subscribe(callback)

    def votes(self) -> Mapping[str, Mapping[str, StoredVote]]:
        """node -> vantage -> vote as last seen in etcd (a live, read-only view)."""
        return self._table.view()

    @property
    def healthy(self) -> bool:
        """The lease is held and the watch is current; False while etcd is away."""
        running = self._task is not None and not self._task.done()
        return running and self._lease is not None and self._lease_ok and self._watch_current

    def stats(self) -> dict[str, Any]:
        """Writes, transactions, write errors, last write latency, pending, lease, revision."""
        return {
            **self._counts,
            "last_write_seconds": self._last_write,
            "pending": len(self._dirty),
            "lease": self._lease.id if self._lease is not None else None,
            "revision": self._table.revision,
            "votes": self._table.count(),
            "healthy": self.healthy,
        }

    # --- running ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:  # best effort: the lease task grants it when etcd is away now
            await self._grant()
            self._lease_ok = True
        except EtcdTrouble as exc:
            self._trouble("lease", exc)
        self._task = asyncio.create_task(self._main(), name=f"nodevigil-votes-{self.vantage}")
        self._task.add_done_callback(self._ended)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:  # the votes go now rather than after a TTL
            async with asyncio.timeout(self._client.timeout):
                await self._client.revoke(lease.id)
        except EtcdTrouble as error:
            log.warning("votes: lease %x not revoked (it expires by itself): %s", lease.id, error)

    async def halt(self) -> None:
        """Stop every task without revoking the lease, as a crash would: the votes stay until
        the lease expires in etcd."""
        await self._stop()
        self._lease = None

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled too, not only the tasks
        except Exception:  # a bug in a task: logged by _ended, not raised a second time
            pass

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("votes: the vote store stopped", exc_info=task.exception())

    async def _main(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_lease(), name=f"votes-lease-{self.vantage}")
            tg.create_task(self._write(), name=f"votes-writer-{self.vantage}")
            tg.create_task(self._watch(), name=f"votes-watch-{self.vantage}")

    # --- the lease --------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        while True:
            if self._lease is not None or "lease" in self._failing:
                await self._pause(self._lease_wake, self._renew_every)
            try:
                await self._renew()
            except EtcdTrouble as exc:
                self._lease_ok = False
                self._trouble("lease", exc)
            else:
                self._lease_ok = True
                self._recovered("lease")

    async def _renew(self) -> None:
        lease = self._lease
        if lease is not None:
            try:
                ttl = await self._client.keepalive(lease.id)
            except EtcdLeaseNotFound:
                ttl = None
            if ttl is not None:
                return
            if self._lease is lease:
                self._lost(lease)
        if self._lease is None:
            await self._grant()

    def _lost(self, lease: Lease) -> None:
        log.warning("votes (%s): lease %x is gone in etcd: a new one", self.vantage, lease.id)
        self._lease = None

    async def _grant(self) -> None:
        """A new lease; nothing is written under it yet, so every own vote is due again."""
        self._lease = await self._client.grant(self._ttl)
        self._written.clear()
        self._written_rev.clear()
        for node in self._own:
            self._dirty[node] = None
        self._writer_wake.set()

    # --- the writer -------------------------------------------------------------------------

    async def _write(self) -> None:
        failures = 0
        while True:
            if not self._dirty or self._lease is None:
                await self._writer_wake.wait()
                self._writer_wake.clear()
                continue
            if await self._flush(self._lease):
                failures = 0
                self._recovered("write")
            else:
                failures += 1
                await self._backoff(failures)

    def _batch(self, lease: Lease) -> dict[str, Put | Delete]:
        """Up to MAX_TXN_OPS of the dirty nodes whose vote differs from what etcd holds."""
        ops: dict[str, Put | Delete] = {}
        size = 0
        while self._dirty and len(ops) < MAX_TXN_OPS and size < MAX_TXN_BYTES:
            node, _ = self._dirty.popitem(last=False)
            want = self._own.get(node)
            if want == self._written.get(node):
                continue
            key = vote_key(node, self.vantage)
            if want is None:
                ops[node] = Delete(key)
            else:
                value = encode(want)
                ops[node] = Put(key, value, lease.id)
                size += len(key) + len(value)
        return ops

    async def _flush(self, lease: Lease) -> bool:
        """Write one batch; False after a failure that calls for a pause."""
        ops = self._batch(lease)
        if not ops:
            return True
        sent = {node: self._own.get(node) for node in ops}
        started = self._clock.monotonic()
        try:
            revision = await self._client.txn(list(ops.values()))
        except EtcdLeaseNotFound:
            self._requeue(ops)
            if self._lease is lease:  # expired in etcd: the lease task grants a new one now
                self._lost(lease)
                self._lease_wake.set()
            return True
        except EtcdTrouble as exc:
            self._requeue(ops)
            self._counts["write_errors"] += 1
            self._metrics.write_errors.inc()
            self._trouble("write", exc)
            return False
        self._last_write = max(0.0, self._clock.monotonic() - started)
        self._metrics.latency.observe(self._last_write)
        self._counts["transactions"] += 1
        self._counts["writes"] += len(ops)
        self._metrics.transactions.inc()
        self._metrics.writes.inc(len(ops))
        if self._lease is not lease:  # a new lease meanwhile: every vote is dirty again
            return True
        for node, vote in sent.items():
            if revision < self._written_rev.get(node, 0):
                continue  # the watch already saw a later change of the key
            self._written_rev[node] = revision
            if vote is None:
                self._written.pop(node, None)
            else:
                self._written[node] = vote
        return True

    def _requeue(self, ops: Mapping[str, object]) -> None:
        for node in ops:
            self._dirty[node] = None
            self._dirty.move_to_end(node, last=False)

    def _mark(self, node: str) -> None:
        self._dirty[node] = None
        self._writer_wake.set()

    def _observe_own(self, node: str, vote: StoredVote | None, lease: int, revision: int) -> None:
        """What etcd holds of this vantage's key at ``revision``: write again if it is not
        the vote we mean (changed or deleted behind our back, or under another lease)."""
        if revision <= self._written_rev.get(node, 0):
            return  # our own write, or older news
        held = vote if self._lease is not None and lease == self._lease.id else None
        if held is None:
            self._written.pop(node, None)
        else:
            self._written[node] = held
        self._written_rev[node] = revision
        if self._own.get(node) != held:
            self._mark(node)

    # --- the watcher ------------------------------------------------------------------------

    async def _watch(self) -> None:
        failures = 0
        while True:
            try:
                rows, revision = await self._client.range(VOTES)
                self._load(rows, revision)
                self._watch_current = True
                self._recovered("watch")
                failures = 0
                events = self._client.watch(VOTES, start_revision=revision + 1)
                try:
                    async for event in events:
                        self._table.apply(event.kv, deleted=event.type is EventType.DELETE)
                finally:
                    if isinstance(events, AsyncGenerator):
                        await events.aclose()
            except EtcdCompacted as exc:  # re-read the snapshot at once
                log.info("votes (%s): history compacted, reading again: %s", self.vantage, exc)
            except EtcdTrouble as exc:
                self._watch_current = False
                self._trouble("watch", exc)
                failures += 1
                await self._backoff(failures)

    def _load(self, rows: Sequence[KeyValue], revision: int) -> None:
        """A fresh snapshot; an own vote it lacks was deleted (or never written)."""
        self._table.load(rows, revision)
        for node in [*self._own, *self._written]:
            if not self._table.holds(node, self.vantage):
                self._observe_own(node, None, 0, revision)

    # --- telling ----------------------------------------------------------------------------

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        """``seconds`` on the injected clock, or until ``wake`` is set."""
        sleep = asyncio.create_task(self._clock.sleep(seconds), name="votes-sleep")
        woken = asyncio.create_task(wake.wait(), name="votes-wake")
        try:
            await asyncio.wait([sleep, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woken.cancel()
        wake.clear()

    async def _backoff(self, failures: int) -> None:
        """Jittered exponential, at most one renewal interval: etcd's return is seen soon."""
        pause = min(0.05 * 2**failures, self._renew_every) * random.uniform(0.5, 1.0)
        await self._clock.sleep(pause)

    def _trouble(self, what: str, exc: BaseException) -> None:
        if what not in self._failing:  # once per streak, not once per attempt
            self._failing.add(what)
            log.warning("votes (%s): %s fails, retrying: %s", self.vantage, what, exc)

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.info("votes (%s): %s works again", self.vantage, what)
