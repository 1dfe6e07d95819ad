"""The events the SLA ledger's side publishes (alert routes are checked against their kinds)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nodevigil.core.events import Event, key, kinds_of


@dataclass(frozen=True, slots=True, kw_only=True)
class SlaUnknown(Event):
    """nodevigil was not running from ``start`` to ``end``: recorded as unknown for review.

    ``clean`` says whether the previous process stopped cleanly (JSON keys ``from``/``to``).
    """

    KIND = "sla.unknown"
    start: float = field(metadata=key("from"))
    end: float = field(metadata=key("to"))
    clean: bool


EVENT_TYPES: tuple[type[Event], ...] = (SlaUnknown,)
EVENT_KINDS = kinds_of(EVENT_TYPES)
