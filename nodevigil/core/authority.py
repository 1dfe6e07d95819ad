"""Who may act on the world: move traffic, notify customers, write the ledger.

On one host the process always may (``Sole``). In a cluster only the holder of the leader lease
may, and only until its own deadline on the monotonic clock, which falls before anyone else
could take the lease over; every action carries the lease's fencing ``epoch`` so that a store or
a load balancer that can check it refuses a deposed leader itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol


class Fenced(Exception):
    """Raised instead of acting when this process no longer holds the authority to act."""


class Authority(Protocol):
    """Whether this process may act now, and the epoch it acts under."""

    def may_act(self) -> bool:
        """True only while this process holds the lease and its local deadline has not passed."""
        ...

    @property
    def epoch(self) -> int | None:
        """The fencing epoch of the lease held (the leader key's create_revision); None on a
        single host, where nothing needs fencing."""
        ...

    def remaining(self) -> float:
        """Seconds left before the local deadline (infinite on a single host; 0 when not
        leader). An action that cannot finish in this time must not start."""
        ...


class Sole:
    """A single host: it always may act, with no epoch."""

    epoch: int | None = None

    def may_act(self) -> bool:
        """Always."""
        return True

    def remaining(self) -> float:
        """For ever."""
        return math.inf


def check(authority: Authority, what: str) -> None:
    """Raise Fenced unless ``authority`` may act now; call it right before each action."""
    if not authority.may_act():
        raise Fenced(f"not acting ({what}): {refusal(authority)}")


OBSERVING = "failover.mode is observe: nothing is written to a load balancer"


class TrafficGate:
    """The authority to move traffic: ``leader``'s, withheld while ``observing()`` is true.

    Every load-balancer adapter and the controller are given the gate, not the lease, so in
    observe mode (``failover.mode: observe``, ``run --observe``) no command reaches a load
    balancer whatever the caller does: ``may_act`` is false, as on a standby, and ``epoch``
    is None, so a DNS adapter neither sends an update nor moves its fence.
    """

    def __init__(self, leader: Authority, observing: Callable[[], bool]) -> None:
        self.leader = leader
        self._observing = observing

    def observing(self) -> bool:
        """Whether the gate is shut for observe mode (the lease does not matter then)."""
        return self._observing()

    def may_act(self) -> bool:
        """The leader's answer, except never while observing."""
        return not self._observing() and self.leader.may_act()

    @property
    def epoch(self) -> int | None:
        """The leader's epoch; None while observing (nothing is sent under it)."""
        return None if self._observing() else self.leader.epoch

    def remaining(self) -> float:
        """The leader's time left; none while observing."""
        return 0.0 if self._observing() else self.leader.remaining()


def refusal(authority: Authority) -> str:
    """Why ``authority`` may not act, in words for a log line or an error."""
    if isinstance(authority, TrafficGate) and authority.observing():
        return OBSERVING
    return "this process does not hold the leader lease"
