"""``check-config``'s warning when a DNS record's TTL is longer than the failover is worth.

After a site is withdrawn from DNS, resolvers and clients keep the old answer for up to the
record's TTL, and keep sending customers to the failed site meanwhile. nodevigil needs
``interval x fall`` to judge a node down; a TTL much longer than that makes detection speed
moot. The rule: warn when the TTL is longer than both a minute (the SLA's unit, clause VIII.7:
any part of a minute counts as a whole one) and the slowest detection time among the nodes of
the service's sites. A TTL within that adds at most about one counted minute per failover.
"""

from __future__ import annotations

from nodevigil.core.config.schema import Config, PowerDnsLB, Rfc2136LB
from nodevigil.core.durations import format_duration

SLA_MINUTE = 60.0


def detection_seconds(config: Config, sites: set[str]) -> float:
    """The longest time nodevigil takes to judge a node of ``sites`` down: probe interval x
    fall, the slowest probe of the slowest node (0 when the sites have no nodes)."""
    d = config.defaults
    slowest = 0.0
    for node in config.nodes:
        if node.site not in sites:
            continue
        fall = node.fall or d.fall
        for probe in node.probes:
            slowest = max(slowest, (probe.interval or d.interval) * fall)
    return slowest


def ttl_warnings(config: Config) -> list[str]:
    """One line per service whose DNS record's TTL outlives its failover (module docs)."""
    lines = []
    for service in config.services:
        if service.global_lb is None or service.record is None:
            continue
        lb = config.load_balancers.get(service.global_lb)
        if not isinstance(lb, Rfc2136LB | PowerDnsLB):
            continue
        detection = detection_seconds(config, set(service.sites))
        worth = max(SLA_MINUTE, detection)
        if lb.ttl <= worth:
            continue
        lines.append(
            f"services.{service.name}: load_balancers.{service.global_lb}.ttl is {lb.ttl}s: "
            f"after a site is withdrawn, clients may keep the old answer for "
            f"{format_duration(float(lb.ttl))}, longer than a minute and than detecting the "
            f"failure takes ({format_duration(detection)}); at most "
            f"{format_duration(worth)} keeps the failover worth its speed"
        )
    return lines
