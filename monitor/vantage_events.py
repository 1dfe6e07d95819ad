"""Events of a vantage point about itself: cut off from the fleet, and back.

``subject`` is the vantage's own name. While isolated it votes ``unknown`` for every node (see
``monitor.isolation``), so its own trouble never counts against the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodevigil.core.events import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class VantageIsolated(Event):
    """This vantage looks cut off (its canaries fail, or it sees down what the others see up)."""

    KIND = "vantage.isolated"
    reason: str
    canaries_failed: int = 0
    canaries_checked: int = 0
    nodes_disputed: int = 0  # judged down here while another vantage votes up and none down
    nodes_judged: int = 0  # nodes this vantage judges up or down


@dataclass(frozen=True, slots=True, kw_only=True)
class VantageRejoined(Event):
    """This vantage sees the fleet as the others do again: its votes count once more."""

    KIND = "vantage.rejoined"
    reason: str
