"""The dispatcher: delivers what the outbox holds, at least once, however long it takes.

Every notification is in the outbox (SQLite, committed) before the first attempt. An attempt
that fails is retried with jittered exponential backoff, honouring a receiver's Retry-After,
until the notification is ``max_age`` old; then it is dead-lettered, counted and listed by the
API. A receiver answering 410 Gone disables its notifier until an operator enables it again.
A crash at any point loses nothing: at worst a delivery whose acknowledgement was not yet
written is sent again, with the same id, so the receiver can deduplicate.

Due times and ages are compared on a timeline carried by the monotonic clock (``Timeline``),
never on a raw wall clock: a step back cannot make a due notification wait (or a resolution
cancel a first notice it delayed), and a step forward cannot fire an escalation early or make a
fresh notification look older than ``max_age``.

Only a process that may act (``authority``: the leader lease's holder, ``Sole`` on one host)
claims and sends; the authority is checked again right before each send. A standby keeps its
gauges and leaves the outbox to the leader.

While ``hold_customers()`` (``failover.mode: observe``) no customer notice is sent: the incident
manager queues none then, and one queued before the switch waits (its attempts untouched)
until the daemon acts again; older than ``max_age`` by then, it is dead-lettered as any notice
would be. Operator alerts go as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from failover.events import NotificationDead, NotificationDisabled
from failover.incidents.model import OutboxRow
from failover.incidents.ports import CLAIM_LEASE, IncidentStore
from failover.notify.base import Delivery, Transport
from failover.notify.metrics import NotifyMetrics
from nodevigil.core.authority import Authority, Sole
from nodevigil.core.clock import Clock, Timeline
from nodevigil.core.config.schema import Notifications
from nodevigil.core.errors import NodevigilError
from nodevigil.core.events import EventBus
from nodevigil.core.failpoints import failpoint

log = logging.getLogger(__name__)

IDLE_CHECK = 1.0  # re-read the outbox at least this often
SEND_LIMIT = 120.0  # a transport that hangs past its own timeout is abandoned after this
MAX_IN_FLIGHT = 500  # notifications held by this dispatcher at once (across notifiers)
GAUGES_EVERY = 1.0  # outbox depth and age are recounted at most this often
HELD_RECHECK = 30.0  # observe mode: a customer notice queued before it is looked at this often
# A claimed row that waited this long for its notifier's slot re-asserts its claim before it
# is sent, so the claim outlives the attempt (SEND_LIMIT) with room to record the result.
REASSERT_AFTER = CLAIM_LEASE - 2 * SEND_LIMIT


def backoff(attempt: int, settings: Notifications, rng: random.Random) -> float:
    """Seconds before attempt ``attempt + 1``: exponential, capped, with equal jitter."""
    growth = float(2 ** min(attempt - 1, 30))
    ceiling = min(settings.backoff_max, settings.backoff_initial * growth)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Dispatcher:
    """Sends due notifications through their transports, a few in flight per notifier."""

    def __init__(
        self,
        store: IncidentStore,
        transports: Mapping[str, Transport],
        *,
        settings: Callable[[], Notifications],
        clock: Clock,
        metrics: NotifyMetrics,
        bus: EventBus,
        vantage: Callable[[], str],
        on_delivered: Callable[[OutboxRow, float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        authority: Authority | None = None,
        hold_customers: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._authority: Authority = authority or Sole()
        self._hold_customers = hold_customers or (lambda: False)
        self._taken_over: int | None = None  # the epoch whose takeover of claims is done
        self._transports = dict(transports)
        self._settings = settings
        # The process's timeline already; this keeps the schedule sound with any clock given.
        self._clock = Timeline(clock)
        self._metrics = metrics
        self._bus = bus
        self._vantage = vantage
        self._on_delivered = on_delivered
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._in_flight: set[str] = set()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._disabled: dict[str, tuple[float, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._gauges_at = 0.0
        metrics.know(self._transports)

    def wake(self) -> None:
        """Something was written to the outbox: look now rather than at the next tick."""
        self._wake.set()

    def replace_transports(self, transports: Mapping[str, Transport]) -> dict[str, Transport]:
        """Use new transports (after a reload); returns the old ones for the caller to close."""
        old, self._transports = self._transports, dict(transports)
        self._metrics.know(self._transports)
        self._slots.clear()
        self.wake()
        return old

    @property
    def transports(self) -> dict[str, Transport]:
        """The transports in use, by notifier name."""
        return dict(self._transports)

    @property
    def disabled(self) -> dict[str, tuple[float, str]]:
        """Notifiers disabled by a 410: name -> (since, reason)."""
        return dict(self._disabled)

    async def enable(self, name: str) -> bool:
        """An operator enables a notifier again; whether it was disabled."""
        changed = await self._store.enable_notifier(name)
        self._disabled.pop(name, None)
        self._metrics.disabled.labels(name).set(0)
        return changed

    async def run(self) -> None:
        """Deliver until cancelled; in-flight attempts are abandoned (they stay pending)."""
        try:
            await self._start_up()
            while True:
                try:
                    await self._pass()
                except NodevigilError as exc:
                    log.error("outbox unreadable (retrying): %s", exc)
                await self._sleep_until_due()
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _start_up(self) -> None:
        """Release this owner's claims and read the disabled notifiers, retried while the
        store refuses: a database away at start must not end the daemon."""
        failing = False
        while True:
            try:
                # What this owner's crash left claimed is due again at once; other hosts'
                # claims are theirs until they expire.
                await self._store.release_claims()
                self._disabled = await self._store.disabled_notifiers()
                break
            except NodevigilError as exc:
                if not failing:
                    log.error("outbox unreadable at start (retrying): %s", exc)
                failing = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_CHECK):
                        await self._wake.wait()
                self._wake.clear()
        for name in self._disabled:
            self._metrics.disabled.labels(name).set(1)

    async def _pass(self) -> None:
        now = self._clock.wall()
        if not self._authority.may_act():
            await self._gauges(now)
            return  # a standby: the leader dispatches
        epoch = self._authority.epoch
        if epoch is not None and epoch != self._taken_over:
            # A new leader: what the previous one claimed and did not mark delivered is sent
            # again now (same message id: receivers deduplicate), not after its claims expire.
            freed = await self._store.take_over_claims()
            self._taken_over = epoch
            if freed:
                log.warning("new leader (epoch %d): %d notifications taken over", epoch, freed)
        # Claimed rows are not read again while they are sent: a slow receiver costs nothing.
        for row in await self._store.claim_due(now, limit=MAX_IN_FLIGHT - len(self._in_flight)):
            if row.message.id in self._in_flight:
                continue
            self._in_flight.add(row.message.id)
            task = asyncio.create_task(self._deliver(row, now), name=f"notify-{row.message.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self._gauges(now)

    async def _gauges(self, now: float) -> None:
        if time.monotonic() - self._gauges_at >= GAUGES_EVERY:
            self._gauges_at = time.monotonic()
            await self._update_gauges(now)

    async def _sleep_until_due(self) -> None:
        timeout = IDLE_CHECK
        with contextlib.suppress(NodevigilError):
            next_at = await self._store.next_due_at()
            if next_at is not None:
                timeout = min(IDLE_CHECK, max(0.0, next_at - self._clock.wall()))
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()

    async def _update_gauges(self, now: float) -> None:
        due, scheduled, oldest = await self._store.outbox_stats(now)
        self._metrics.outbox_depth.labels("due").set(due)
        self._metrics.outbox_depth.labels("scheduled").set(scheduled)
        self._metrics.oldest_pending.set(0 if oldest is None else max(0.0, now - oldest))

    def _slot(self, notifier: str) -> asyncio.Semaphore:
        slot = self._slots.get(notifier)
        if slot is None:
            slot = self._slots[notifier] = asyncio.Semaphore(self._settings().concurrency)
        return slot

    async def _deliver(self, row: OutboxRow, claimed_at: float) -> None:
        message = row.message
        try:
            async with self._slot(message.notifier):
                if not await self._still_claimed(row, claimed_at):
                    return
                if not self._authority.may_act():  # the lease ran out while this row waited
                    await self._store.release_claims(message.id)
                    return
                if row.customer is not None and self._hold_customers():
                    later = self._clock.wall() + HELD_RECHECK
                    why = "held: failover.mode is observe (no customer is notified)"
                    await self._store.mark_retry(message.id, row.attempts, later, why)
                    return
                failpoint("outbox.before_send")
                await self._attempt(row)
        except NodevigilError as exc:  # the store failed; the row stays pending, retried later
            log.error("outbox: cannot record delivery of %s: %s", message.id, exc)
            with contextlib.suppress(NodevigilError):
                await self._store.release_claims(message.id)
        finally:
            self._in_flight.discard(message.id)
            self.wake()

    async def _still_claimed(self, row: OutboxRow, claimed_at: float) -> bool:
        """Whether this owner may send ``row`` now: a claim that waited long is extended first."""
        now = self._clock.wall()
        if now - claimed_at < REASSERT_AFTER or await self._store.extend_claim(row.message.id, now):
            return True
        log.warning("outbox: %s is no longer ours to send (taken over or settled)", row.message.id)
        return False

    async def _attempt(self, row: OutboxRow) -> None:
        message = row.message
        name = message.notifier
        attempts = row.attempts + 1
        transport = self._transports.get(name)
        if transport is None:
            await self._dead(row, attempts, f"no notifier is called {name!r} any more")
            return
        if name in self._disabled:
            await self._dead(row, attempts, f"notifier disabled: {self._disabled[name][1]}")
            return
        if attempts > 1:
            self._metrics.retried.labels(name).inc()
        try:
            async with asyncio.timeout(SEND_LIMIT):
                result = await transport.send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport bug must not stop the outbox
            log.exception("notifier %s raised on %s", name, message.id)
            result = Delivery.retry(f"{type(exc).__name__}: {exc}")
        now = self._clock.wall()
        if result.outcome == "delivered":
            failpoint("outbox.after_send")
            await self._store.mark_delivered(message.id, now, attempts)
            self._metrics.sent.labels(name).inc()
            if attempts > 1:
                log.info(
                    "notification %s delivered to %s on attempt %d", message.id, name, attempts
                )
            if self._on_delivered is not None:
                await self._on_delivered(row, now)
            return
        self._metrics.failed.labels(name).inc()
        if result.outcome == "disabled":
            self._disabled[name] = (now, result.detail)
            self._metrics.disabled.labels(name).set(1)
            await self._store.disable_notifier(name, now, result.detail)
            log.error("notifier %s disabled: %s (enable it through the API)", name, result.detail)
            self._bus.publish(
                NotificationDisabled(
                    subject=name,
                    at=self._clock.wall(),
                    vantage=self._vantage(),
                    notifier=name,
                    reason=result.detail,
                )
            )
            await self._dead(row, attempts, f"receiver disabled the notifier: {result.detail}")
            return
        settings = self._settings()
        age = now - message.created_at
        # A receiver's Retry-After is honoured up to backoff_max: a receiver cannot push its
        # own customer's notice past notifications.max_age (dead-lettered) with one header.
        asked = min(result.retry_after or 0.0, settings.backoff_max)
        delay = max(asked, backoff(attempts, settings, self._rng))
        if age + delay > settings.max_age:
            await self._dead(row, attempts, f"gave up after {attempts} attempts: {result.detail}")
            return
        if attempts == 1 or attempts % 10 == 0:
            log.warning(
                "notification %s to %s failed (attempt %d, next in %.1fs): %s",
                message.id,
                name,
                attempts,
                delay,
                result.detail,
            )
        await self._store.mark_retry(message.id, attempts, now + delay, result.detail)

    async def _dead(self, row: OutboxRow, attempts: int, why: str) -> None:
        message = row.message
        await self._store.mark_dead(message.id, attempts, why)
        self._metrics.dead.labels(message.notifier).inc()
        log.error("notification %s to %s dead-lettered: %s", message.id, message.notifier, why)
        self._bus.publish(
            NotificationDead(
                subject=message.notifier,
                at=self._clock.wall(),
                vantage=self._vantage(),
                message_id=message.id,
                message_kind=message.kind,
                about=message.subject,
                reason=why,
            )
        )
