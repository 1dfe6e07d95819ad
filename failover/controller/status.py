"""A read-only snapshot of the controller for the API: plain dataclasses, JSON-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from failover.controller.decide import site_backend
from failover.controller.state import (
    Action,
    Decision,
    Observed,
    Override,
    OverrideKind,
    SetServerState,
)
from failover.lb.base import ServerState
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
class RecordStatus:
    """A service's record as a global load balancer answered it in the last cycle."""

    record: str
    service: str
    addresses: list[str] | None  # what it publishes; None when it could not be read
    # Each site of the service: whether its address is published (None: the record was not read).
    sites: dict[str, bool | None]


@dataclass(frozen=True, slots=True)
class LoadBalancerStatus:
    """What one load balancer read back in the last cycle (``/readyz`` waits for every one)."""

    name: str
    kind: str  # "local" (a site's backend) or "global" (DNS)
    read_back: bool  # every backend, server or record of it in use was read
    errors: list[str]  # what could not be read, and why
    backends: list[str] = field(default_factory=list)  # local: the backends in use
    records: list[RecordStatus] = field(default_factory=list)  # global: the records in use


@dataclass(frozen=True, slots=True)
class WouldAction:
    """An action decided but not sent, because ``failover.mode`` is ``observe``."""

    lb: str
    action: str  # "set_state" or "set_addresses"
    target: str  # backend/server or record
    old: str
    new: str
    why: str
    text: str  # "drain sh-2 from sh-lb/web (...)": what the operator sees after "would"
    # The same without the evidence (no addresses, no probe errors): what the public status
    # page, which needs no token, shows.
    summary: str = ""


@dataclass(frozen=True, slots=True)
class ControllerStatus:
    """The whole snapshot."""

    nodes: list[NodeStatus]
    sites: list[SiteStatus]
    services: list[ServiceStatus]
    last_cycle_at: float | None  # wall-clock
    brakes: list[BrakeStatus] = field(default_factory=list)  # engaged ones
    mode: str = "act"  # failover.mode as of the last cycle: "act" or "observe"
    would: list[WouldAction] = field(default_factory=list)  # observe: the actions not sent
    load_balancers: list[LoadBalancerStatus] = field(default_factory=list)

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


def would_do(action: Action, config: Config) -> WouldAction:
    """An action ``decide`` wanted, described as what observe mode did not do."""
    if isinstance(action, SetServerState):
        where = f"{action.lb}/{action.backend}"
        out = action.new is not ServerState.READY
        text = (
            f"drain {action.node} from {where}" if out else f"put {action.node} back into {where}"
        )
        old = action.old.value if action.old else "?"
        return WouldAction(
            action.lb,
            "set_state",
            f"{action.backend}/{action.server}",
            old,
            action.new.value,
            action.why,
            f"{text} ({action.why})",
            text,
        )
    site_of = {s.address: s.name for s in config.sites}

    def named(addresses: frozenset[str]) -> str:
        return ", ".join(f"site {site_of[a]}" if a in site_of else a for a in sorted(addresses))

    gone, added = action.old - action.new, action.new - action.old
    verbs = ([f"withdraw {named(gone)}"] if gone else []) + (
        [f"publish {named(added)}"] if added else []
    )
    text = f"{' and '.join(verbs) or 'rewrite'} in {action.lb} record {action.record}"
    return WouldAction(
        action.lb,
        "set_addresses",
        action.record,
        str(sorted(action.old)),
        str(sorted(action.new)),
        action.why,
        f"{text} ({action.service}: {action.why})",
        f"{text} ({action.service})",
    )


def build_load_balancers(
    config: Config, observed: Observed | None, unread: Mapping[str, list[str]]
) -> list[LoadBalancerStatus]:
    """What each load balancer in use read back in the last cycle (``unread``: lb -> errors).

    Before the first cycle nothing has been read: every one says so.
    """
    out: list[LoadBalancerStatus] = []
    backends: dict[str, set[str]] = {}
    for site in config.sites:
        if site.local_lb is not None:
            backends.setdefault(site.local_lb, set()).add(site_backend(config, site))
    for name in sorted(backends):
        problems = ["not read yet"] if observed is None else unread.get(name, [])
        out.append(
            LoadBalancerStatus(name, "local", not problems, list(problems), sorted(backends[name]))
        )
    records: dict[str, list[RecordStatus]] = {}
    addresses = {s.name: s.address for s in config.sites}
    for svc in config.services:
        if svc.global_lb is None or svc.record is None:
            continue
        got = None if observed is None else observed.records.get((svc.global_lb, svc.record))
        published = {
            site: None if got is None else addresses.get(site) in got for site in svc.sites
        }
        read = None if got is None else sorted(got)
        records.setdefault(svc.global_lb, []).append(
            RecordStatus(svc.record, svc.name, read, published)
        )
    for name in sorted(records):
        problems = ["not read yet"] if observed is None else unread.get(name, [])
        out.append(
            LoadBalancerStatus(name, "global", not problems, list(problems), [], records[name])
        )
    return out
