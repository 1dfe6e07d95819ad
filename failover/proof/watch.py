"""The waiting state machines of a proof: pure, fed samples and times, never doing I/O.

Each watch starts when its action was applied (monotonic ``started``), is fed what the load
balancer or the DNS servers say at each poll, and returns a ``Proof`` once traffic moved;
``expire`` says what was still missing when the time ran out. Times are as precise as the
poll interval: a proof says when a poll first saw the traffic gone, not the instant it went.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from failover.lb.authoritative import ServerAnswer, serial_at_least
from failover.lb.haproxy import ServerTraffic


class Outcome(enum.StrEnum):
    """How a proof ended."""

    PROVED = "proved"  # the traffic moved, at ``seconds`` after the action
    NO_TRAFFIC = "no_traffic"  # a restored server took no session within the timeout (quiet)
    TIMEOUT = "timeout"  # the traffic did not move within the timeout: alerted
    ABANDONED = "abandoned"  # leadership lost, a newer action on the target, or shutdown


class Direction(enum.StrEnum):
    """Which way the traffic was to move (a metric label: few values)."""

    DRAIN = "drain"  # a server taken out of its local load balancer
    RESTORE = "restore"  # a server put back
    WITHDRAW = "withdraw"  # addresses removed from a DNS record
    PUBLISH = "publish"  # addresses added
    REPLACE = "replace"  # some removed, some added


@dataclass(frozen=True, slots=True)
class Proof:
    """What a proof found, in one sentence (``text``) and its figures."""

    outcome: Outcome
    direction: Direction
    seconds: float | None  # from the action to the traffic moving (PROVED only)
    text: str
    sessions: int | None = None  # HAProxy: sessions drained, or new ones after a restore
    ttl: int | None = None  # DNS: how long clients may still hold the old answer


def direction_of(old: frozenset[str], new: frozenset[str]) -> Direction:
    """A DNS change's direction."""
    if new <= old:
        return Direction.WITHDRAW
    if old <= new:
        return Direction.PUBLISH
    return Direction.REPLACE


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s"


class DrainWatch:
    """A drained server: proved once it has no session open and a later poll sees no new one
    (``stot`` unchanged), so neither old sessions nor new arrivals still reach it."""

    def __init__(self, *, subject: str, started: float) -> None:
        self.subject = subject
        self.started = started
        self._first: ServerTraffic | None = None
        self._last: ServerTraffic | None = None
        self._empty: tuple[float, int] | None = None  # (when a poll first saw 0 open, stot)

    def feed(self, now: float, traffic: ServerTraffic) -> Proof | None:
        """One poll's counters; the proof once traffic left."""
        self._first = self._first or traffic
        self._last = traffic
        if traffic.current > 0:
            self._empty = None
            return None
        if self._empty is None or self._empty[1] != traffic.total:
            # Empty now; a session that came and went between polls starts the wait again.
            self._empty = (now, traffic.total)
            return None
        at, total = self._empty
        seconds = max(0.0, at - self.started)
        drained = self._first.current + (total - self._first.total)
        return Proof(
            Outcome.PROVED,
            Direction.DRAIN,
            seconds,
            f"traffic left {self.subject} in {_secs(seconds)} ({drained} sessions drained)",
            sessions=drained,
        )

    def expire(self, now: float, error: str | None = None) -> Proof:
        """The time ran out: what still reached the server."""
        waited = _secs(now - self.started)
        if self._first is None or self._last is None:
            why = f"its counters could not be read ({error})" if error else "no poll answered"
            return Proof(
                Outcome.TIMEOUT,
                Direction.DRAIN,
                None,
                f"no proof that traffic left {self.subject} within {waited}: {why}",
            )
        new = self._last.total - self._first.total
        return Proof(
            Outcome.TIMEOUT,
            Direction.DRAIN,
            None,
            f"traffic did not leave {self.subject} within {waited}: "
            f"{self._last.current} sessions still open, {new} new since the drain",
            sessions=self._last.current,
        )


class RestoreWatch:
    """A server put back: proved once ``stot`` grows (it takes new sessions again)."""

    def __init__(self, *, subject: str, started: float) -> None:
        self.subject = subject
        self.started = started
        self._first: ServerTraffic | None = None

    def feed(self, now: float, traffic: ServerTraffic) -> Proof | None:
        """One poll's counters; the proof once a new session reached the server."""
        if self._first is None:
            self._first = traffic
            return None
        new = traffic.total - self._first.total
        if new <= 0:
            return None
        seconds = max(0.0, now - self.started)
        return Proof(
            Outcome.PROVED,
            Direction.RESTORE,
            seconds,
            f"{self.subject} takes traffic again after {_secs(seconds)} ({new} new sessions)",
            sessions=new,
        )

    def expire(self, now: float, error: str | None = None) -> Proof:
        """The time ran out without a new session: a quiet site, or traffic not coming back."""
        waited = _secs(now - self.started)
        if self._first is None:
            why = f"its counters could not be read ({error})" if error else "no poll answered"
            return Proof(
                Outcome.TIMEOUT,
                Direction.RESTORE,
                None,
                f"no proof that {self.subject} takes traffic again within {waited}: {why}",
            )
        return Proof(
            Outcome.NO_TRAFFIC,
            Direction.RESTORE,
            None,
            f"no traffic came to {self.subject} within {waited} of its restore",
            sessions=0,
        )


def _addresses(addresses: frozenset[str] | None) -> str:
    return "[" + ", ".join(sorted(addresses or ())) + "]"


class DnsWatch:
    """A DNS record changed: proved once every authoritative server answers the new set and
    all have the newest SOA serial seen (the primary's after the update)."""

    def __init__(
        self, *, subject: str, started: float, old: frozenset[str], new: frozenset[str], ttl: int
    ) -> None:
        self.subject = subject
        self.direction = direction_of(old, new)
        self.started = started
        self._new = new
        self._ttl = ttl
        self._serial: int | None = None  # the newest serial any server answered
        self._lagging: list[str] = []

    def feed(self, now: float, answers: list[ServerAnswer]) -> Proof | None:
        """One round of answers from the whole NS set; the proof once all agree."""
        for a in answers:
            if a.serial is not None and (
                self._serial is None or not serial_at_least(self._serial, a.serial)
            ):
                self._serial = a.serial
        self._lagging = [lag for lag in map(self._lag, answers) if lag]
        if not answers or self._lagging:
            return None
        seconds = max(0.0, now - self.started)
        ttl = max((a.ttl for a in answers if a.ttl is not None), default=self._ttl)
        ttl = max(ttl, self._ttl)
        return Proof(
            Outcome.PROVED,
            self.direction,
            seconds,
            f"all {len(answers)} authoritative servers answer {_addresses(self._new)} for "
            f"{self.subject} (serial {self._serial}) after {_secs(seconds)}; clients may "
            f"hold the old answer up to {ttl} s more (its TTL)",
            ttl=ttl,
        )

    def _lag(self, a: ServerAnswer) -> str:
        """Why server ``a`` does not answer the change yet ('' when it does)."""
        if a.error is not None:
            return f"{a.server}: {a.error}"
        assert self._serial is not None  # an answer without error has a serial
        if a.serial is None or not serial_at_least(a.serial, self._serial):
            return f"{a.server} at serial {a.serial} (newest {self._serial})"
        if a.addresses != self._new:
            return f"{a.server} answers {_addresses(a.addresses)}"
        return ""

    def expire(self, now: float, error: str | None = None) -> Proof:
        """The time ran out: which servers still lag, and how."""
        waited = _secs(now - self.started)
        why = "; ".join(self._lagging) or (error and f"the NS set was not read ({error})")
        return Proof(
            Outcome.TIMEOUT,
            self.direction,
            None,
            f"not every authoritative server answers {_addresses(self._new)} for "
            f"{self.subject} within {waited}: {why or 'no poll answered'}",
            ttl=self._ttl,
        )


def abandoned(direction: Direction, subject: str, waited: float, why: str) -> Proof:
    """A proof given up before it ended, and why (it says nothing about the traffic)."""
    return Proof(
        Outcome.ABANDONED,
        direction,
        None,
        f"proof for {subject} abandoned after {_secs(waited)}: {why}",
    )
