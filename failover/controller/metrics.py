"""The controller's Prometheus metrics, registered on a registry passed in (never the global)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    """Every ``nodevigil_*`` metric the failover controller exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry when none is given, so two controllers in one process never clash.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lb_actions = Counter(
            "nodevigil_lb_actions",
            "Load-balancer actions applied by the controller",
            ["lb", "action", "result"],
            registry=r,
        )
        self.lb_errors = Counter(
            "nodevigil_lb_errors",
            "Load-balancer calls (reads and actions) that failed",
            ["lb"],
            registry=r,
        )
        self.lb_up = Gauge(
            "nodevigil_lb_up",
            "1 while the controller reads the load balancer back, 0 while it cannot",
            ["lb"],
            registry=r,
        )
        self.nodes_out = Gauge(
            "nodevigil_nodes_out",
            "Nodes the controller keeps out of their local LB",
            ["site"],
            registry=r,
        )
        self.panic = Gauge(
            "nodevigil_site_panic",
            "1 while more of a site's nodes look down than its floor or cap allow",
            ["site"],
            registry=r,
        )
        self.brake = Gauge(
            "nodevigil_failover_brake",
            "1 while the brake on mass failure holds drains in the scope (site, or the fleet)",
            ["scope", "site"],
            registry=r,
        )
        self.brake_held = Counter(
            "nodevigil_failover_brake_held",
            "Node drains and site withdrawals a brake held (each once per brake)",
            ["scope", "site"],
            registry=r,
        )
        self.site_serving = Gauge(
            "nodevigil_site_serving",
            "1 while the global LBs publish the site",
            ["site"],
            registry=r,
        )
        self.service_available = Gauge(
            "nodevigil_service_available",
            "1 while at least one site of the service can serve",
            ["service"],
            registry=r,
        )
        # The topology, for rules that join a site's series to its services' (one alert per
        # site and service, so Alertmanager can inhibit a site's alert by its service's).
        self.service_site = Gauge(
            "nodevigil_service_site_info",
            "1 for each site of each configured service.",
            ["service", "site"],
            registry=r,
        )
        self._pairs: set[tuple[str, str]] = set()
        self.cycle_seconds = Histogram(
            "nodevigil_decision_cycle_seconds",
            "Duration of one controller cycle: read back, decide, apply",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.last_reconcile = Gauge(
            "nodevigil_last_reconcile_timestamp_seconds",
            "Wall time of the last cycle in which every LB was read and every action succeeded",
            registry=r,
        )

        self.observe = Gauge(
            "nodevigil_failover_observe",
            "1 while failover.mode is observe: decisions are made, nothing is written to a load "
            "balancer and no customer is notified; 0 while it acts",
            registry=r,
        )

    def show_services(self, services: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Set ``nodevigil_service_site_info`` to the configured (service, its sites) pairs."""
        pairs = {(service, site) for service, sites in services for site in sites}
        for gone in self._pairs - pairs:
            self.service_site.remove(*gone)
        for pair in pairs - self._pairs:
            self.service_site.labels(*pair).set(1)
        self._pairs = pairs

    def set_lb_up(self, lbs: Iterable[str], unreadable: Iterable[str]) -> None:
        """Set ``nodevigil_lb_up`` for every load balancer in ``lbs``."""
        down = set(unreadable)
        for lb in lbs:
            self.lb_up.labels(lb).set(0 if lb in down else 1)
