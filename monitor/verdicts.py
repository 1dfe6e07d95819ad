"""A node's verdict and its changes: what the monitor tells the rest of nodevigil.

The failover controller reads these types (and only this module of the monitor).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nodevigil.core.events import Event

# The kinds of event the monitor publishes (alert routes are checked against every package's).
EVENT_KINDS = frozenset({"node.up", "node.down", "node.unknown"})


class Verdict(StrEnum):
    """A node's health as judged from its probes."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class VerdictChange:
    """A node's verdict moved from ``old`` to ``new``; ``reason`` says which probe saw what."""

    node: str
    site: str
    old: Verdict
    new: Verdict
    reason: str
    probe: str | None
    at: float
    vantage: str
    flapping: bool = False

    def to_event(self) -> Event:
        """The event-stream form (``node.up`` / ``node.down`` / ``node.unknown``)."""
        return Event(
            kind=f"node.{self.new.value}",
            subject=self.node,
            at=self.at,
            vantage=self.vantage,
            data={
                "site": self.site,
                "old": self.old.value,
                "new": self.new.value,
                "reason": self.reason,
                "probe": self.probe,
                "flapping": self.flapping,
            },
        )
