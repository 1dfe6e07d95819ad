"""A read-only snapshot of the controller for the API: plain dataclasses, JSON-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from failover.controller.state import Decision, Observed, Override, OverrideKind
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node: its verdict, what the controller wants, what the load balancer has."""

    name: str
    site: str
    verdict: str
    desired: str | None  # "in" / "out"; None before the first decision
    desired_state: str | None  # the admin state wanted (ready, maint, drain)
    actual: str | None  # the admin state read back; None when unreadable
    why: str
    hold_down_until: float | None  # wall-clock
    override: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """One site: whether it can serve and whether the global LBs publish it."""

    name: str
    can_serve: bool
    serving: bool
    panic: bool
    nodes_out: int
    override: dict[str, Any] | None
    brake: bool = False  # the site's own brake is engaged
    withdrawal_held: bool = False  # cannot serve, kept in DNS by the fleet's brake


@dataclass(frozen=True, slots=True)
class BrakeStatus:
    """An engaged brake: a site's or the fleet's; ``since`` is wall-clock."""

    scope: str  # "site" or "fleet"
    site: str | None
    since: float
    nodes: int
    went_down: int
    down: int
    reason: str
    held: list[str]  # nodes whose drains it holds
    held_sites: list[str]  # sites whose withdrawals it holds (the fleet's brake)


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service: available or not, and since when it is unavailable (wall-clock)."""

    name: str
    available: bool
    unavailable_since: float | None


@dataclass(frozen=True, slots=True)
class ControllerStatus:
    """The whole snapshot."""

    nodes: list[NodeStatus]
    sites: list[SiteStatus]
    services: list[ServiceStatus]
    last_cycle_at: float | None  # wall-clock
    brakes: list[BrakeStatus] = field(default_factory=list)  # engaged ones

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return asdict(self)


def build_status(
    *,
    config: Config,
    last: Decision | None,
    observed: Observed | None,
    verdicts: Mapping[str, Verdict],
    overrides: Mapping[tuple[OverrideKind, str], Override],
    mono_to_wall: float,
    last_cycle_at: float | None,
) -> ControllerStatus:
    """Assemble the snapshot from the last decision and read-back (``mono_to_wall`` = offset)."""
    nodes = []
    for node in config.nodes:
        view = last.nodes.get(node.name) if last else None
        actual = observed.servers.get(node.name) if observed else None
        override = overrides.get(("node", node.name))
        hold = view.hold_until if view else None
        nodes.append(
            NodeStatus(
                name=node.name,
                site=node.site,
                verdict=verdicts.get(node.name, Verdict.UNKNOWN).value,
                desired=None if view is None else ("in" if view.desired == "ready" else "out"),
                desired_state=view.desired.value if view else None,
                actual=actual.value if actual else None,
                why=view.why if view else "",
                hold_down_until=None if hold is None else hold + mono_to_wall,
                override=override.as_dict() if override else None,
            )
        )
    sites = []
    for site in config.sites:
        sv = last.sites.get(site.name) if last else None
        override = overrides.get(("site", site.name))
        sites.append(
            SiteStatus(
                name=site.name,
                can_serve=sv.can_serve if sv else True,
                serving=sv.serving if sv else True,
                panic=sv.panic if sv else False,
                nodes_out=sv.nodes_out if sv else 0,
                override=override.as_dict() if override else None,
                brake=sv.brake if sv else False,
                withdrawal_held=sv.withdrawal_held if sv else False,
            )
        )
    brakes = [
        BrakeStatus(
            scope=b.scope,
            site=b.site,
            since=b.since + mono_to_wall,
            nodes=b.nodes,
            went_down=b.went_down,
            down=b.down,
            reason=b.reason,
            held=list(b.held),
            held_sites=list(b.held_sites),
        )
        for b in (last.brakes.values() if last else ())
    ]
    return ControllerStatus(nodes, sites, build_services(config, last), last_cycle_at, brakes)


def build_services(config: Config, last: Decision | None) -> list[ServiceStatus]:
    """The services' part of the snapshot alone (no per-node work: it is asked for often)."""
    services = []
    for svc in config.services:
        outage = last.book.outages.get(svc.name) if last else None
        available = last.available.get(svc.name, True) if last else True
        services.append(ServiceStatus(svc.name, available, outage.started_at if outage else None))
    return services
