"""A node's verdict and its changes: what the monitor tells the rest of nodevigil.

The failover controller reads these types (and only this module of the monitor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from monitor.vantage_events import VantageIsolated, VantageRejoined
from nodevigil.core.events import Event, kinds_of


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

    def to_event(self) -> NodeVerdictEvent:
        """The event-stream form (``node.up`` / ``node.down`` / ``node.unknown``)."""
        return _BY_VERDICT[self.new](
            subject=self.node,
            at=self.at,
            vantage=self.vantage,
            site=self.site,
            old=self.old,
            reason=self.reason,
            probe=self.probe,
            flapping=self.flapping,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeVerdictEvent(Event):
    """A node's verdict changed (``subject`` is the node); the kinds are its subclasses."""

    site: str
    old: Verdict
    new: Verdict = field(init=False, default=Verdict.UNKNOWN)  # each kind fixes its own
    reason: str
    probe: str | None
    flapping: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "new", _VERDICT_OF[type(self).KIND])


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUp(NodeVerdictEvent):
    """The node's probes pass."""

    KIND = "node.up"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDown(NodeVerdictEvent):
    """The node's probes fail."""

    KIND = "node.down"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUnknown(NodeVerdictEvent):
    """No probe can tell (the monitor lost sight of the node)."""

    KIND = "node.unknown"


_BY_VERDICT: dict[Verdict, type[NodeVerdictEvent]] = {
    Verdict.UP: NodeUp,
    Verdict.DOWN: NodeDown,
    Verdict.UNKNOWN: NodeUnknown,
}
_VERDICT_OF = {cls.KIND: verdict for verdict, cls in _BY_VERDICT.items()}

# The kinds of event the monitor publishes (alert routes are checked against every package's).
EVENT_TYPES: tuple[type[Event], ...] = (
    NodeUp,
    NodeDown,
    NodeUnknown,
    VantageIsolated,
    VantageRejoined,
)
EVENT_KINDS = kinds_of(EVENT_TYPES)
