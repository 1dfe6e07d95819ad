"""The leader's sign of life in the shared state: when the cluster last had a leader.

On one host the ``alive`` file in ``state_dir`` says when nodevigil last ran. In a cluster the
service is watched as long as *some* process holds the leader lease, so the mark that counts is
the leader's: while it may act, the leader writes a ``LeaderMark`` (who, its epoch, the time on
its timeline) every second, and a last clean one when it steps down on purpose. A process that
becomes the leader reads the newest mark of an earlier epoch and books the time since then as
``unknown`` (``nodevigil.app.sla_bridge``).

Marks are kept per epoch, so a new leader's own marks never hide its predecessor's, whatever
the order in which they are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LeaderMark:
    """The last sign of life of one leader (one epoch)."""

    who: str  # the host's name (``vantage``)
    epoch: int  # the leader key's create_revision: orders leaders, whoever's clock is ahead
    wall: float  # seconds on that process's timeline (``Clock.wall``)
    clean: bool  # written on a planned step-down or stop, after it stopped acting


class LeaderMarks(Protocol):
    """Where leaders leave their marks: shared by every process of the cluster.

    Errors are the backend's transient errors (``StateError``): the caller retries.
    """

    async def write(self, mark: LeaderMark) -> None:
        """Store ``mark`` as its epoch's latest; a clean mark is final (an unclean one written
        after it, a renewal still in flight, does not undo it)."""
        ...

    async def latest(self, *, before: int) -> LeaderMark | None:
        """The mark of the newest epoch below ``before``, or None when no leader marked."""
        ...

    async def prune(self, *, below: int) -> None:
        """Forget the marks of epochs below ``below`` (their gaps are booked)."""
        ...
