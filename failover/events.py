"""The kinds of event the failover package publishes (alert routes are checked against them)."""

from __future__ import annotations

EVENT_KINDS = frozenset(
    {
        "site.up",
        "site.down",
        "service.available",
        "service.unavailable",
        "lb.action",
        "lb.recovered",
        "failover.failed",
        "failover.panic",
        "failover.panic_over",
        "controller.decision",
        "override.set",
        "override.cleared",
        "override.expired",
        "override.below_floor",
        "incident.opened",
        "incident.reopened",
        "incident.updated",
        "incident.cause",
        "incident.resolved",
        "maintenance.declared",
        "maintenance.cancelled",
        "notification.dead",
        "notification.disabled",
    }
)
