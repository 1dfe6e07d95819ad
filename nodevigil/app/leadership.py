"""The leader lease in etcd: every process campaigns, exactly one acts.

Each process holds one etcd lease (TTL ``cluster.lease_ttl``) renewed by keepalive every
``renew_every``; under it, ``members/<me>`` says it is alive, and the winner of a
create-if-absent on ``leader`` acts. The leader key's ``create_revision`` is the fencing epoch.

A deposed leader never acts: besides the lease in etcd, the leader keeps a **local deadline**
on its monotonic clock, ``sent + TTL - margin``, where ``sent`` is when its last successful
keepalive (or grant) was *sent*. etcd restarts the lease's TTL no earlier than it received that
keepalive, so the lease cannot expire (and nobody else can take the key) before ``sent + TTL``;
an etcd leader change restarts TTLs, which only makes the lease live longer. ``may_act()`` is
true only before the deadline, so a leader cut off from etcd, or paused, stops acting at least
``margin`` before anyone could take over. The margin is ``min(TTL / 10, etcd.timeout)``
(0.5 s with the defaults): it covers the difference in clock rate between this host and the
etcd leader (parts per million), the event loop's lag between the check and the bytes leaving,
and a load-balancer command in flight as the deadline passes; it is at most ``etcd.timeout``,
so with ``renew_every + 2 x etcd.timeout <= lease_ttl`` a healthy leader's renewal always lands
before its deadline (a slow but working etcd never makes the leader flap).

Any failure to talk to etcd (unreachable, no quorum, an unexpected answer) is treated the same:
the process cannot prove it holds the lease, so it stops acting at its deadline, and a standby
cannot win; the role becomes ``fenced`` with the reason, and everything recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram

from nodevigil.app.cluster_events import ClusterFenced, ClusterLeader, ClusterStandby
from nodevigil.core.authority import Sole
from nodevigil.core.clock import Clock
from nodevigil.core.events import Event, EventBus

log = logging.getLogger(__name__)

LEADER_KEY = "leader"
MEMBERS = "members/"


class Role(StrEnum):
    """What this process is in the cluster."""

    LEADER = "leader"  # holds the lease, before its deadline: acts
    STANDBY = "standby"  # in touch with etcd, another holds (or nobody yet holds) the lease
    FENCED = "fenced"  # may not act and cannot win: etcd away, or the deadline passed


# --- what the lease needs of the etcd client (nodevigil.state.etcd.client.EtcdClient) ------


class KeyValue(Protocol):
    """One key as etcd holds it."""

    @property
    def value(self) -> bytes: ...
    @property
    def create_revision(self) -> int: ...
    @property
    def lease(self) -> int: ...


class LeaseGrant(Protocol):
    """A granted lease."""

    @property
    def id(self) -> int: ...
    @property
    def ttl(self) -> int: ...


class ElectionStore(Protocol):
    """The etcd calls the election makes; every key is relative to the client's prefix."""

    async def get(self, key: str) -> KeyValue | None: ...
    async def range(self, prefix: str) -> tuple[Sequence[KeyValue], int]: ...
    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> Any: ...
    async def create(self, key: str, value: bytes, *, lease: int) -> KeyValue | None: ...
    async def grant(self, ttl: int) -> LeaseGrant: ...
    async def keepalive(self, lease_id: int) -> float | None: ...
    async def revoke(self, lease_id: int) -> Any: ...
    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[Any]: ...


def deadline_margin(ttl: float, timeout: float) -> float:
    """How long before the lease's earliest expiry the leader stops acting (module docs)."""
    return min(ttl / 10, timeout)


@dataclass(frozen=True, slots=True)
class Member:
    """A process of the cluster as this one last saw it."""

    name: str
    alive: bool
    last_seen: float | None  # wall time it last renewed its membership
    api: str | None = None  # its API as the others reach it (cluster.advertise), if known

    def as_dict(self) -> dict[str, Any]:
        """The API's form."""
        return {
            "name": self.name,
            "alive": self.alive,
            "last_seen": self.last_seen,
            "api": self.api,
        }


class Leadership(Protocol):
    """The Authority the daemon hands out, with what the API shows and the hand-over."""

    me: str

    def may_act(self) -> bool: ...
    @property
    def epoch(self) -> int | None: ...
    def remaining(self) -> float: ...
    @property
    def role(self) -> Role: ...
    def view(self) -> dict[str, Any]: ...
    async def step_down(self) -> bool: ...


class SoleLeadership(Sole):
    """One host without ``cluster:``: always the leader, nothing to hand over."""

    def __init__(self, me: str) -> None:
        self.me = me

    @property
    def role(self) -> Role:
        """Always the leader."""
        return Role.LEADER

    def view(self) -> dict[str, Any]:
        """The API's ``/api/v1/cluster`` on a single host."""
        return {
            "me": self.me,
            "role": "leader",
            "leader": self.me,
            "epoch": None,
            "members": [self.me],
        }

    async def step_down(self) -> bool:
        """Nothing to step down from: there is no one to hand over to."""
        return False


class LeaseMetrics:
    """``nodevigil_cluster_*``: read at scrape time, so a stalled loop cannot leave them stale."""

    def __init__(self, registry: CollectorRegistry, lease: LeaderLease) -> None:
        Gauge(
            "nodevigil_cluster_leader",
            "1 while this process holds the leader lease and may act, else 0.",
            registry=registry,
        ).set_function(lambda: float(lease.may_act()))
        Gauge(
            "nodevigil_cluster_epoch",
            "The fencing epoch of the current leader as this process last saw it (0: none).",
            registry=registry,
        ).set_function(lambda: float(lease.term or 0))
        self.renewal = Histogram(
            "nodevigil_cluster_lease_renewal_seconds",
            "Time a lease keepalive took to be answered by etcd.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )


class LeaderLease:
    """One process's campaign for the leader lease; an ``Authority``.

    ``async with LeaderLease(...) as lease:`` runs the renewals (and a watch of the leader key,
    so a standby campaigns within ~100 ms of the key's deletion); ``tick()`` runs one round
    (tests drive it with a manual clock).
    """

    def __init__(
        self,
        client: ElectionStore,
        *,
        me: str,
        ttl: float,
        renew_every: float,
        timeout: float,
        clock: Clock,
        bus: EventBus | None = None,
        registry: CollectorRegistry | None = None,
        advertise: str | None = None,
    ) -> None:
        if not me:
            raise ValueError("me must name this process")
        if ttl <= 0 or renew_every <= 0 or timeout <= 0:
            raise ValueError("ttl, renew_every and timeout must be positive")
        self.me = me
        self._advertise = advertise  # this process's API URL, told to the others
        self._client = client
        self._ttl = ttl
        self._renew_every = renew_every
        self._timeout = timeout
        self.margin = deadline_margin(ttl, timeout)
        self._clock = clock
        self._bus = bus
        self._metrics = LeaseMetrics(registry or CollectorRegistry(), self)
        self._lease: LeaseGrant | None = None
        self._leading = False
        self._epoch: int | None = None  # ours, while leading
        self._deadline = -math.inf  # monotonic; may act only before it
        self._sent: float | None = None  # when the last successful renewal was sent
        self._leader: str | None = None  # the holder of the leader key as last seen
        self._term: int | None = None  # its create_revision
        self._trouble: str | None = "not yet in touch with etcd"
        self._hold_off_until = -math.inf  # after a step-down: let another win first
        self._members: dict[str, Member] = {}
        self._revision = 0
        self._announced: tuple[Role, str | None, int | None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._step_down_hooks: list[Callable[[int], Awaitable[None]]] = []

    # --- Authority ---------------------------------------------------------------------------

    def may_act(self) -> bool:
        """True only while leading and before the local deadline."""
        return self._leading and self._clock.monotonic() < self._deadline

    @property
    def epoch(self) -> int | None:
        """The leader key's create_revision while this process leads; None otherwise."""
        return self._epoch if self.may_act() else None

    def remaining(self) -> float:
        """Seconds before the local deadline; 0 when this process may not act."""
        return max(0.0, self._deadline - self._clock.monotonic()) if self._leading else 0.0

    # --- what the API and metrics show -------------------------------------------------------

    @property
    def role(self) -> Role:
        """Leader before the deadline; fenced past it or while etcd is away; else standby."""
        if self._leading:
            return Role.LEADER if self.may_act() else Role.FENCED
        return Role.FENCED if self._trouble is not None else Role.STANDBY

    @property
    def term(self) -> int | None:
        """The epoch of the current leader as last seen (this process's or another's)."""
        return self._term

    @property
    def deadline(self) -> float:
        """The local deadline on the monotonic clock (-inf when not leading)."""
        return self._deadline if self._leading else -math.inf

    def reason(self) -> str:
        """Why the role is what it is, in a few words."""
        role = self.role
        if role is Role.LEADER:
            left = f"{self.remaining():.1f}s left"
            if self._trouble is not None:
                return f"{self._trouble}; acting until the local deadline ({left})"
            return f"holds the leader lease (epoch {self._epoch}, {left})"
        if role is Role.FENCED:
            if self._trouble is not None:
                return self._trouble
            return "the lease was not renewed before the local deadline"
        if self._leader is None:
            return "no leader yet"
        return f"{self._leader} leads (epoch {self._term})"

    def members(self) -> list[Member]:
        """Every process seen, this one first."""
        own = self._members.get(self.me, Member(self.me, self._lease is not None, None))
        others = sorted((m for n, m in self._members.items() if n != self.me), key=_name)
        return [own, *others]

    def view(self) -> dict[str, Any]:
        """The API's ``/api/v1/cluster``."""
        return {
            "me": self.me,
            "role": self.role.value,
            "leader": self._leader,
            "epoch": self._term,
            "reason": self.reason(),
            "members": [m.as_dict() for m in self.members()],
        }

    # --- running -----------------------------------------------------------------------------

    async def __aenter__(self) -> LeaderLease:
        self._task = asyncio.create_task(self._main(), name="nodevigil-leader-lease")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.halt()
        # The members key goes at once, not after a TTL; a stop by an error is not a clean one.
        await self.step_down(hold_off=0.0, clean=kind is None)

    async def halt(self) -> None:
        """Stop renewing and campaigning without revoking anything, as a crash or a pause
        would: the local deadline and the lease in etcd run out by themselves."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _main(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._renewals(), name="leader-lease-renew")
            tg.create_task(self._watch_leader(), name="leader-lease-watch")

    async def _renewals(self) -> None:
        while True:
            await self.tick()
            await self._pause()

    async def _pause(self) -> None:
        """Until the next renewal is due (counted from when the last one was sent), the local
        deadline (to say at once that this process stopped acting), or a wake-up."""
        now = self._clock.monotonic()
        due = (self._sent if self._sent is not None else now) + self._renew_every
        if self._trouble is not None:
            due = now + self._renew_every  # retry at the same pace, not in a tight loop
        if self._leading and now < self._deadline:
            due = min(due, self._deadline)
        sleep = asyncio.create_task(self._clock.sleep(max(0.0, due - now)), name="lease-sleep")
        woken = asyncio.create_task(self._wake.wait(), name="lease-wake")
        try:
            await asyncio.wait([sleep, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woken.cancel()
        self._wake.clear()

    async def _watch_leader(self) -> None:
        """Wake the renewals when the leader key changes (deleted, expired, taken)."""
        while True:
            try:
                async for _ in self._client.watch(LEADER_KEY, start_revision=self._revision + 1):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away or history compacted: the renewals cover it
                log.debug("leader watch ended: %s", exc)
            await self._clock.sleep(self._renew_every)

    async def tick(self) -> Role:
        """One round: renew the lease, check or campaign for the leader key, keep membership.

        Returns the role after it. Never raises for etcd's trouble: that is ``fenced``.
        """
        was_down = self._trouble is not None and self._sent is not None
        try:
            async with asyncio.timeout(self._ttl):
                await self._round()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever went wrong, this round proved nothing: not acting
            if self._trouble is None:  # once per streak, not once a renewal
                log.warning("cluster: cannot renew through etcd: %s", _describe(exc))
            self._trouble = f"{_trouble_kind(exc)}: {_describe(exc)}"
        else:
            if was_down:
                log.info("cluster: etcd answers again")
            self._trouble = None
        self._announce()
        return self.role

    async def _round(self) -> None:
        sent = self._clock.monotonic()
        ttl = await self._renew()
        client = self._client
        assert self._lease is not None
        renewed = sent + min(ttl, self._ttl) - self.margin
        kv = await client.get(LEADER_KEY)
        lost = self._leading and not self._is_ours(kv)
        if lost:
            # Someone deleted it, or it expired and another took it: step down at once.
            held = "nobody" if kv is None else kv.value.decode(errors="replace")
            log.warning("leader key lost (now held by %s): stepping down", held)
            self._stop_leading()
        vacant = kv is None and self._clock.monotonic() >= self._hold_off_until
        if vacant and not lost and not self._leading:  # campaign; after a loss, next round
            kv = await client.create(LEADER_KEY, self.me.encode(), lease=self._lease.id)
            if kv is None:  # another won the race
                kv = await client.get(LEADER_KEY)
            elif kv.value == self.me.encode() and kv.lease == self._lease.id:
                self._leading, self._epoch = True, kv.create_revision
        self._leader = None if kv is None else kv.value.decode(errors="replace")
        self._term = None if kv is None else kv.create_revision
        if self._leading:
            self._deadline = renewed
            self._trouble = None
            self._announce()  # as it starts to act, not after the membership round trip
        self._sent = sent
        await self._membership()

    async def _renew(self) -> float:
        """Keep the lease alive (a new one if it is gone); the TTL etcd restarted it with."""
        client = self._client
        if self._lease is not None:
            started = self._clock.monotonic()
            ttl = await client.keepalive(self._lease.id)
            self._metrics.renewal.observe(max(0.0, self._clock.monotonic() - started))
            if ttl is not None and ttl > 0:
                return ttl
            log.warning("lease %x expired in etcd", self._lease.id)
            self._lease = None
            if self._leading:
                self._stop_leading()
        self._lease = await client.grant(math.ceil(self._ttl))
        return float(self._lease.ttl)

    def _is_ours(self, kv: KeyValue | None) -> bool:
        return kv is not None and kv.value == self.me.encode() and kv.create_revision == self._epoch

    def _stop_leading(self) -> None:
        self._leading, self._epoch, self._deadline = False, None, -math.inf

    async def _membership(self) -> None:
        """Renew ``members/<me>`` (under the lease) and read every member's."""
        assert self._lease is not None
        wall = self._clock.wall()
        body = json.dumps({"name": self.me, "last_seen": wall, "api": self._advertise}).encode()
        await self._client.put(MEMBERS + self.me, body, lease=self._lease.id)
        rows, self._revision = await self._client.range(MEMBERS)
        alive: dict[str, Member] = {}
        for row in rows:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                data = json.loads(row.value)
                seen = data.get("last_seen")
                api = data.get("api")
                alive[str(data["name"])] = Member(
                    str(data["name"]),
                    True,
                    float(seen) if seen is not None else None,
                    api if isinstance(api, str) else None,
                )
        gone = {
            n: Member(n, False, m.last_seen, m.api)
            for n, m in self._members.items()
            if n not in alive
        }
        self._members = {**gone, **alive}

    # --- hand-over ---------------------------------------------------------------------------

    async def step_down(self, *, hold_off: float | None = None, clean: bool = True) -> bool:
        """Stop acting now and revoke the lease, so another process takes over at once.

        This process campaigns again only after ``hold_off`` (default one lease TTL), so a
        standby wins the race. Returns whether it was the leader. A ``clean`` (planned)
        step-down of a leader still acting runs the step-down hooks before the revoke.
        """
        was = self._leading
        acting = self.epoch  # None unless acting before the deadline
        self._stop_leading()  # before anything awaits: no action starts after this line
        self._hold_off_until = self._clock.monotonic() + (
            self._ttl if hold_off is None else hold_off
        )
        if clean and acting is not None:
            await self._run_step_down_hooks(acting)
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.revoke(lease.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the lease then expires by itself within its TTL
                log.warning("could not revoke the lease (it expires by itself): %s", exc)
        if was:
            log.warning("stepped down: the leader lease is revoked; another host takes over")
            if self._leader == self.me:
                self._leader = None
        if self._announced is not None:  # a process stopped before its first round says nothing
            self._announce()
        self._wake.set()
        return was

    def on_step_down(self, hook: Callable[[int], Awaitable[None]]) -> None:
        """Call ``hook(epoch)`` on a planned step-down, after acting stopped and before the
        lease is revoked (the leader's last, clean mark), bounded by ``etcd.timeout``."""
        self._step_down_hooks.append(hook)

    async def _run_step_down_hooks(self, epoch: int) -> None:
        for hook in self._step_down_hooks:
            try:
                async with asyncio.timeout(self._timeout):
                    await hook(epoch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the hand-over goes on; the next leader sees it unclean
                log.warning("step-down hook failed (the hand-over goes on): %s", _describe(exc))

    # --- telling -----------------------------------------------------------------------------

    def _announce(self) -> None:
        """Log and publish a change of role (and of leader), once each."""
        role = self.role
        now = (role, self._leader, self._term)
        if now == self._announced:
            return
        self._announced = now
        why = self.reason()
        event: Event
        wall = self._clock.wall()
        if role is Role.LEADER:
            log.warning("cluster: this process (%s) is the leader: %s", self.me, why)
            assert self._epoch is not None
            event = ClusterLeader(
                subject=self.me, at=wall, vantage=self.me, epoch=self._epoch, reason=why
            )
        elif role is Role.STANDBY:
            log.info("cluster: %s is a standby: %s", self.me, why)
            event = ClusterStandby(
                subject=self.me,
                at=wall,
                vantage=self.me,
                leader=self._leader,
                epoch=self._term,
                reason=why,
            )
        else:
            log.error("cluster: %s is fenced and does not act: %s", self.me, why)
            event = ClusterFenced(subject=self.me, at=wall, vantage=self.me, reason=why)
        if self._bus is not None:
            self._bus.publish(event)

    def wake(self) -> None:
        """Run the next round now (tests; the leader key's watch)."""
        self._wake.set()


def _name(member: Member) -> str:
    return member.name


def _trouble_kind(exc: BaseException) -> str:
    """Whether etcd could not be reached in time or answered and refused (a wrong password, a
    missing permission): the operator's next step differs."""
    if isinstance(exc, ConnectionError | TimeoutError):  # EtcdUnavailable is a ConnectionError
        return "etcd unreachable or without quorum"
    return "etcd refused the lease's calls"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    return str(exc) or type(exc).__name__
