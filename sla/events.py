"""The kinds of event the SLA ledger's side publishes (alert routes are checked against them)."""

from __future__ import annotations

EVENT_KINDS = frozenset({"sla.unknown"})
