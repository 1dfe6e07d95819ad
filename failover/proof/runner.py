"""Proofs run in the background after the controller applied actions.

``ProofRunner.start`` returns at once: the next failover decision never waits for a proof.
Only the leader watches (the controller starts proofs only for actions it sent), and each poll
checks the lease first: a proof in flight when leadership is lost is abandoned and says so. A
newer action on the same server or record abandons the older proof ("superseded").

The servers of one backend acted on in one cycle share a task and one ``show stat`` a poll, so
a mass drain costs one read per backend and interval, not one per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram

from failover.controller.lbio import Applied
from failover.controller.state import SetAddresses, SetServerState
from failover.controller.store import ActionRecord
from failover.events import TrafficProof
from failover.lb.authoritative import ServerAnswer
from failover.lb.base import ServerState
from failover.lb.haproxy import ServerTraffic
from failover.proof.watch import (
    Direction,
    DnsWatch,
    DrainWatch,
    Outcome,
    Proof,
    RestoreWatch,
    abandoned,
)
from nodevigil.core.authority import Authority, refusal
from nodevigil.core.clock import Clock
from nodevigil.core.config.schema import FailoverProof
from nodevigil.core.errors import NodevigilError

log = logging.getLogger(__name__)

# From a quick drain of idle servers to long-lived sessions and slow zone transfers.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@runtime_checkable
class SessionCounters(Protocol):
    """A local load balancer that reports each server's sessions (HAProxy's ``show stat``)."""

    async def traffic(self, backend: str) -> dict[str, ServerTraffic]:
        """Every server of ``backend`` with its open and total sessions."""
        ...


@runtime_checkable
class PublishedAnswers(Protocol):
    """A global load balancer that can ask every authoritative server of its zone."""

    @property
    def ttl(self) -> int:
        """The TTL its records are published with."""
        ...

    async def published(self, record: str) -> list[ServerAnswer]:
        """What each authoritative server answers for ``record``."""
        ...


class ProofMetrics:
    """``nodevigil_traffic_moved_seconds`` and the count of proofs by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.moved = Histogram(
            "nodevigil_traffic_moved_seconds",
            "Time from a load-balancer action to the proof that traffic followed it",
            ["lb_type", "direction"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.proofs = Counter(
            "nodevigil_traffic_proofs",
            "Proofs that traffic moved, by outcome (timeout: the traffic did not follow)",
            ["lb_type", "direction", "outcome"],
            registry=registry,
        )


@dataclass(slots=True)
class _Watching:
    """One action being proved."""

    key: tuple[str, str]  # (lb, target): a newer action on it supersedes this proof
    generation: int
    result: Applied
    target: str
    subject: str
    watch: DrainWatch | RestoreWatch | DnsWatch
    action_at: float  # wall


Record = Callable[[list[ActionRecord]], Awaitable[None]]


class ProofRunner:
    """Starts and keeps the proofs of applied actions; ``close()`` cancels those in flight."""

    def __init__(
        self,
        *,
        clock: Clock,
        authority: Authority,
        local_lbs: Mapping[str, object],
        global_lbs: Mapping[str, object],
        lb_types: Callable[[str], str],
        emit: Callable[[TrafficProof], None],
        record: Record,
        vantage: Callable[[], str],
        registry: CollectorRegistry,
    ) -> None:
        self._clock = clock
        self._authority = authority
        self._local = local_lbs
        self._global = global_lbs
        self._lb_type = lb_types
        self._emit = emit
        self._record = record
        self._vantage = vantage
        self.metrics = ProofMetrics(registry)
        self._generations: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """How many proof tasks are running."""
        return len(self._tasks)

    def start(self, applied: Sequence[Applied], settings: FailoverProof) -> None:
        """Start proving each successful action of ``applied`` (returns at once)."""
        if not settings.enabled:
            return
        now, wall = self._clock.monotonic(), self._clock.wall()
        groups: dict[tuple[str, str], list[_Watching]] = {}
        for result in applied:
            a = result.action
            if result.error is not None:
                continue
            if isinstance(a, SetServerState):
                if not isinstance(self._local.get(a.lb), SessionCounters):
                    continue  # an adapter without counters (recording) proves nothing
                target = f"{a.backend}/{a.server}"
                drain = a.new is not ServerState.READY
                cls = DrainWatch if drain else RestoreWatch
                watch: DrainWatch | RestoreWatch | DnsWatch = cls(subject=a.node, started=now)
                group = groups.setdefault((a.lb, a.backend), [])
                subject = a.node
            else:
                assert isinstance(a, SetAddresses)
                glob = self._global.get(a.lb)
                if not isinstance(glob, PublishedAnswers):
                    continue
                target = a.record
                watch = DnsWatch(
                    subject=f"{a.service} ({a.record})",
                    started=now,
                    old=a.old,
                    new=a.new,
                    ttl=glob.ttl,
                )
                group = groups.setdefault((a.lb, f"record {a.record}"), [])
                subject = a.service
            key = (a.lb, target)
            generation = self._generations.get(key, 0) + 1
            self._generations[key] = generation
            group.append(_Watching(key, generation, result, target, subject, watch, wall))
        for (lb, what), watching in groups.items():
            task = asyncio.create_task(
                self._prove(lb, what, watching, settings), name=f"proof {lb} {what}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the proofs in flight (the process stops; nothing is recorded for them)."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if tasks:
            log.info("failover: %d traffic proofs abandoned: shutting down", len(tasks))

    async def _prove(
        self, lb: str, what: str, watching: list[_Watching], settings: FailoverProof
    ) -> None:
        started = self._clock.monotonic()
        deadline = started + settings.timeout
        pending = list(watching)
        error: str | None = None
        try:
            while pending:
                now = self._clock.monotonic()
                pending = await self._drop_stale(pending, now)
                if not pending:
                    return
                try:
                    async with asyncio.timeout(max(0.05, deadline - now)):
                        sample = await self._read(lb, what, pending)
                    error = None
                except (NodevigilError, TimeoutError, OSError) as exc:
                    sample, error = None, str(exc) or type(exc).__name__
                now = self._clock.monotonic()
                still: list[_Watching] = []
                for w in pending:
                    proof = None if sample is None else self._feed(w, now, sample)
                    if proof is None:
                        still.append(w)
                    else:
                        await self._finish(w, proof)
                pending = still
                if not pending:
                    return
                if now >= deadline:
                    for w in pending:
                        await self._finish(w, w.watch.expire(now, error or _absent(w, sample)))
                    return
                await self._clock.sleep(min(settings.interval, max(0.0, deadline - now)))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in a proof must never reach the controller
            log.exception("failover: the traffic proof for %s %s failed", lb, what)

    async def _drop_stale(self, pending: list[_Watching], now: float) -> list[_Watching]:
        """Abandon the proofs leadership or a newer action took away; keep the others."""
        leading = self._authority.may_act()
        kept = []
        for w in pending:
            if not leading:
                why = f"this host stopped leading ({refusal(self._authority)})"
            elif self._generations.get(w.key) != w.generation:
                why = f"a newer action on {w.target} superseded it"
            else:
                kept.append(w)
                continue
            waited = now - w.watch.started
            await self._finish(w, abandoned(_direction(w.watch), w.subject, waited, why))
        return kept

    async def _read(
        self, lb: str, what: str, pending: list[_Watching]
    ) -> dict[str, ServerTraffic] | list[ServerAnswer]:
        if what.startswith("record "):
            glob = self._global[lb]
            assert isinstance(glob, PublishedAnswers)
            return await glob.published(what.removeprefix("record "))
        local = self._local[lb]
        assert isinstance(local, SessionCounters)
        return await local.traffic(what)

    @staticmethod
    def _feed(
        w: _Watching, now: float, sample: dict[str, ServerTraffic] | list[ServerAnswer]
    ) -> Proof | None:
        if isinstance(w.watch, DnsWatch):
            assert isinstance(sample, list)
            return w.watch.feed(now, sample)
        assert isinstance(sample, dict) and isinstance(w.result.action, SetServerState)
        traffic = sample.get(w.result.action.server)
        return None if traffic is None else w.watch.feed(now, traffic)

    async def _finish(self, w: _Watching, proof: Proof) -> None:
        """Record a proof: event, metric, log line and the action log."""
        if self._generations.get(w.key) == w.generation:
            del self._generations[w.key]
        a = w.result.action
        lb_type = self._lb_type(a.lb)
        self.metrics.proofs.labels(lb_type, proof.direction.value, proof.outcome.value).inc()
        if proof.seconds is not None:
            self.metrics.moved.labels(lb_type, proof.direction.value).observe(proof.seconds)
        level = logging.WARNING if proof.outcome is Outcome.TIMEOUT else logging.INFO
        log.log(level, "failover: proof: %s [%s %s]", proof.text, a.lb, w.target)
        wall = self._clock.wall()
        self._emit(
            TrafficProof(
                subject=w.subject,
                at=wall,
                vantage=self._vantage(),
                lb=a.lb,
                lb_type=lb_type,
                target=w.target,
                direction=proof.direction.value,
                outcome=proof.outcome.value,
                seconds=None if proof.seconds is None else round(proof.seconds, 3),
                text=proof.text,
                action_at=w.action_at,
                sessions=proof.sessions,
                ttl=proof.ttl,
                epoch=w.result.epoch,
            )
        )
        good = proof.outcome in (Outcome.PROVED, Outcome.NO_TRAFFIC)
        record = ActionRecord(
            wall,
            a.lb,
            "traffic_moved",
            w.target,
            "",
            proof.outcome.value,
            proof.text,
            "ok" if good else "error",
            None if good else proof.text,
            vantage=self._vantage(),
            epoch=w.result.epoch,
        )
        if not self._authority.may_act():
            return  # a standby writes nothing to the shared action log; the event says it
        try:
            await self._record([record])
        except NodevigilError as exc:
            log.error("cannot record the traffic proof in the action log: %s", exc)


def _direction(watch: DrainWatch | RestoreWatch | DnsWatch) -> Direction:
    if isinstance(watch, DnsWatch):
        return watch.direction
    return Direction.DRAIN if isinstance(watch, DrainWatch) else Direction.RESTORE


def _absent(w: _Watching, sample: object) -> str | None:
    """Why a server's counters never came although the load balancer answered: the backend's
    ``show stat`` has no such server (HAProxy reloaded without it, say)."""
    action = w.result.action
    if not isinstance(action, SetServerState) or not isinstance(sample, dict):
        return None
    if action.server in sample:
        return None
    return f"backend {action.backend} has no server {action.server} in `show stat`"
