"""The Prometheus metrics of incidents and notification delivery."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The contract says "immediately": the first customer notice is measured from the outage's start.
FIRST_NOTICE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class NotifyMetrics:
    """Every ``nodevigil_*`` metric of the outbox, its transports and the incidents."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent = Counter(
            "nodevigil_notifications_sent",
            "Notifications delivered (2xx, accepted by the mail server, published)",
            ["notifier"],
            registry=r,
        )
        self.failed = Counter(
            "nodevigil_notifications_failed",
            "Delivery attempts that failed (each is retried until max_age)",
            ["notifier"],
            registry=r,
        )
        self.retried = Counter(
            "nodevigil_notifications_retried",
            "Delivery attempts after the first",
            ["notifier"],
            registry=r,
        )
        self.dead = Counter(
            "nodevigil_notifications_dead",
            "Notifications dead-lettered: retries exhausted or the receiver disabled (410)",
            ["notifier"],
            registry=r,
        )
        self.disabled = Gauge(
            "nodevigil_notifier_disabled",
            "1 while a notifier is disabled because its receiver answered 410 Gone",
            ["notifier"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "nodevigil_outbox_depth",
            "Notifications waiting in the outbox (due now or scheduled by a plan step)",
            ["state"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            "nodevigil_outbox_oldest_pending_age_seconds",
            "Age of the oldest notification that is due and not yet delivered",
            registry=r,
        )
        self.first_notice = Histogram(
            "nodevigil_incident_first_notice_seconds",
            "From a whole-service outage's start to the first customer notice delivered",
            buckets=FIRST_NOTICE_BUCKETS,
            registry=r,
        )
        self.incidents_open = Gauge(
            "nodevigil_incidents_open", "Incidents not yet resolved", registry=r
        )
        self.incidents_opened = Counter(
            "nodevigil_incidents_opened",
            "Incidents opened (a reopened one counts again)",
            registry=r,
        )
        for state in ("due", "scheduled"):
            self.outbox_depth.labels(state).set(0)

    def know(self, notifiers: Iterable[str]) -> None:
        """Create every notifier's series at zero, so rates and alerts work from the start."""
        for name in notifiers:
            for family in (self.sent, self.failed, self.retried, self.dead):
                family.labels(name)
            self.disabled.labels(name)
