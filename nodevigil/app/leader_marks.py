"""The leader's marks in the shared state, and the takeover that books the time without one.

In a cluster the ledger's ``unknown`` time is time when no leader held the lease, not the
downtime of one host. So, every second while this process may act, it writes a
``LeaderMark`` (``nodevigil.core.leader_marks``) for its epoch; on a planned step-down or stop
the lease calls ``stepping_down`` first, which writes a last, clean one before the lease is
revoked. When this process finds itself the leader under a new epoch, before its first mark it
reads the newest mark of an earlier epoch and hands it to ``takeover`` (the SLA bridge, which
applies the single host's restart rules to it) with the moment it took over.

Level-triggered: a beat runs every second and whenever this process is announced leader
(``cluster.leader``), so a takeover that failed (the database away) is retried with the same
moment until it is booked; only then are this epoch's marks written, so a crash in between
leaves the older mark for the next leader and the gap is booked, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nodevigil.app.cluster_events import ClusterLeader
from nodevigil.core.authority import Authority, Fenced
from nodevigil.core.clock import Clock
from nodevigil.core.errors import StateError
from nodevigil.core.events import EventBus, Subscription
from nodevigil.core.leader_marks import LeaderMark, LeaderMarks

log = logging.getLogger(__name__)

MARK_EVERY = 1.0  # as the single host's ``alive`` mark (nodevigil.state.statedir)

# previous leader's mark (None: no leader ever marked), the moment this one took over (wall)
Takeover = Callable[[LeaderMark | None, float], Awaitable[None]]


class LeaderMarker:
    """Writes this leader's marks; books the gap before them when it becomes the leader."""

    def __init__(
        self,
        marks: LeaderMarks,
        *,
        authority: Authority,
        me: str,
        clock: Clock,
        takeover: Takeover,
        bus: EventBus | None = None,
        transient: tuple[type[Exception], ...] = (StateError,),
        every: float = MARK_EVERY,
    ) -> None:
        self._marks = marks
        self._authority = authority
        self.me = me
        self._clock = clock
        self._takeover = takeover
        self._bus = bus
        self._transient: tuple[type[Exception], ...] = (*transient, StateError, OSError)
        self._every = every
        self.taken: int | None = None  # the epoch whose takeover is booked
        self._pending: tuple[int, float] | None = None  # (epoch, took over at) not yet booked
        self._lock = asyncio.Lock()  # a renewal and the clean mark never interleave
        self._wake = asyncio.Event()
        self._failing = False

    async def beat(self) -> str:
        """One round: book a new epoch's takeover if due, then mark. Returns the decision."""
        epoch = self._authority.epoch
        if epoch is None or not self._authority.may_act():
            return "not leading: no mark"
        async with self._lock:
            if self.taken != epoch:
                if self._pending is None or self._pending[0] != epoch:
                    self._pending = (epoch, self._clock.wall())  # fixed across retries
                at = self._pending[1]
                previous = await self._marks.latest(before=epoch)
                await self._takeover(previous, at)
                self.taken, self._pending = epoch, None
                if previous is not None:
                    with contextlib.suppress(*self._transient):
                        await self._marks.prune(below=previous.epoch)
            if not self._authority.may_act():  # deposed while booking: no mark for it
                return f"epoch {epoch} no longer held: no mark"
            await self._marks.write(LeaderMark(self.me, epoch, self._clock.wall(), clean=False))
        return f"leader at epoch {epoch}: marked"

    async def stepping_down(self, epoch: int) -> None:
        """The lease's step-down hook: a last, clean mark, before the lease is revoked.

        Nothing when this epoch's takeover was never booked: the next leader must then book
        from the older mark, which this clean one would hide."""
        async with self._lock:
            if self.taken != epoch:
                return
            await self._marks.write(LeaderMark(self.me, epoch, self._clock.wall(), clean=True))
        log.info("leader mark: clean step-down at epoch %d", epoch)

    async def run(self) -> None:
        """Beat every second and when announced leader, until cancelled."""
        sub = self._bus.subscribe([ClusterLeader.KIND]) if self._bus is not None else None
        try:
            async with asyncio.TaskGroup() as tg:
                if sub is not None:
                    tg.create_task(self._listen(sub), name="leader-marks-listen")
                tg.create_task(self._beats(), name="leader-marks-beat")
        finally:
            if sub is not None:
                sub.close()

    async def _listen(self, sub: Subscription) -> None:
        async for event in sub:
            if event.subject == self.me:
                self._wake.set()

    async def _beats(self) -> None:
        while True:
            try:
                decision = await self.beat()
            except Fenced:
                decision = "deposed while booking the takeover"
            except self._transient as exc:
                if not self._failing:  # once per streak
                    self._failing = True
                    log.error("leader marks: %s; retrying every %.0fs", exc, self._every)
            else:
                if self._failing:
                    self._failing = False
                    log.warning("leader marks work again (%s)", decision)
                log.debug("leader marks: %s", decision)
            await self._pause()

    async def _pause(self) -> None:
        sleep = asyncio.create_task(self._clock.sleep(self._every), name="leader-marks-sleep")
        woken = asyncio.create_task(self._wake.wait(), name="leader-marks-wake")
        try:
            await asyncio.wait([sleep, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woken.cancel()
        self._wake.clear()
