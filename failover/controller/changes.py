"""Deciding in proportion to change: redo only the sites whose inputs moved since the last
decision, and keep the last decision's results for the others.

A verdict, a read-back server state or an override touches one site's plan; a site's plan
touches only the global records of the services using it. ``decide_changed`` is pure, like
``decide``, and returns exactly what ``decide`` would, or None when it cannot tell cheaply (a
brake engaged or about to): the caller then decides in full. The loop still runs a full
``decide`` on a slower period, so a change it failed to mark heals there (level-triggered).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from failover.controller.brake import Throttle
from failover.controller.decide import Memo, Outcome, _decide_site, _services, advance_node
from failover.controller.state import (
    Action,
    Book,
    ControllerState,
    Decision,
    NodeBook,
    Notice,
    OverrideKind,
    SetServerState,
    changed_keys,
)
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config, Node, Service


@dataclass(frozen=True, slots=True)
class FleetIndex:
    """Lookups of one configuration, built once per configuration (O(nodes))."""

    nodes_of: Mapping[str, list[Node]]  # site -> its nodes, in configuration order
    site_of: Mapping[str, str]  # node -> site
    services_of: Mapping[str, list[Service]]  # site -> the services using it

    @classmethod
    def of(cls, config: Config) -> FleetIndex:
        """The index of ``config``."""
        nodes_of: dict[str, list[Node]] = {}
        for n in config.nodes:
            nodes_of.setdefault(n.site, []).append(n)
        services_of: dict[str, list[Service]] = {}
        for svc in config.services:
            for site in svc.sites:
                services_of.setdefault(site, []).append(svc)
        return cls(nodes_of, {n.name: n.site for n in config.nodes}, services_of)

    def sites_of(self, nodes: Iterable[str]) -> set[str]:
        """The sites of the configured ``nodes`` (others are ignored)."""
        return {site for n in nodes if (site := self.site_of.get(n)) is not None}


def changed_nodes(new: Mapping[str, Verdict], old: Mapping[str, Verdict]) -> set[str]:
    """Nodes whose verdict differs between ``old`` and ``new`` (a missing one is unknown)."""
    changed = set(changed_keys(new, old))
    if old.keys() != new.keys():  # a node gone from the verdicts is unknown now
        changed |= {n for n, v in old.items() if new.get(n, Verdict.UNKNOWN) is not v}
    return changed


def changed_overrides(
    new: Mapping[tuple[OverrideKind, str], object],
    old: Mapping[tuple[OverrideKind, str], object],
    index: FleetIndex,
) -> set[str]:
    """The sites an override set, changed or cleared between ``old`` and ``new`` touches."""
    if new == old:
        return set()
    keys = {k for k in new.keys() | old.keys() if new.get(k) != old.get(k)}
    sites = {name for kind, name in keys if kind == "site"}
    return sites | index.sites_of(name for kind, name in keys if kind == "node")


def unsettled_sites(actions: Iterable[Action], applied: Iterable[Action]) -> set[str]:
    """The sites of ``actions``' servers not ``applied`` (failed, or not sent): decided again
    next time, as a full decision would decide them again."""
    done = set(map(id, applied))
    return {a.site for a in actions if isinstance(a, SetServerState) and id(a) not in done}


def due(last: Decision, now: float) -> set[str]:
    """The sites whose decision time alone changes by ``now`` (hold-downs ending...)."""
    return {site for site, at in last.wakes.items() if now >= at}


def decide_changed(
    config: Config,
    index: FleetIndex,
    st: ControllerState,
    now: float,
    wall: float,
    *,
    last: Decision,
    dirty: Collection[str],
) -> Decision | None:
    """``decide(config, st, now, wall)``, redoing only the sites in ``dirty`` and those
    ``last`` said time would change; None when that cannot be told without the whole fleet.

    The caller promises that ``last`` was decided on ``config`` with the book ``st.book`` as
    its outcome, and that every site outside ``dirty`` has the same verdicts, reasons,
    read-back server states and overrides in ``st`` as it had then.
    """
    s = config.failover
    if st.book is not last.book or st.book.brakes or last.brakes:
        return None  # a brake is engaged: its tokens and counts span the fleet
    redo = set(dirty) | due(last, now)
    books = dict(st.book.nodes)
    node_views = dict(last.nodes)
    site_books = dict(st.book.sites)
    site_views = dict(last.sites)
    actions: list[Action] = []
    notices: list[Notice] = []
    memo = Memo(wakes=dict(last.wakes), recent=dict(last.recent))
    out = Outcome(node_views, site_books, site_views, actions, notices)
    throttle = Throttle(s.brake, {}, (), books, now)
    window = now - s.brake.window
    b = s.brake
    for site in config.sites:
        if site.name not in redo:
            continue
        nodes = index.nodes_of.get(site.name, [])
        recent = 0
        for n in nodes:
            nb = advance_node(
                books.get(n.name, NodeBook()), st.verdicts.get(n.name, Verdict.UNKNOWN), now, s
            )
            books[n.name] = nb
            recent += nb.down and (nb.down_since or 0.0) >= window
        if len(nodes) >= b.min_nodes and recent > b.share * len(nodes):
            return None  # the site's brake engages
        memo.wakes.pop(site.name, None)
        _decide_site(
            config,
            site,
            nodes,
            st,
            now=now,
            wall=wall,
            books=books,
            throttle=throttle,
            out=out,
            memo=memo,
        )
    # Sites not redone counted their recent failures earlier: as many or more than now.
    size = len(config.nodes)
    if size >= b.min_nodes and sum(memo.recent.values()) > b.share * size:
        return None  # the fleet's brake may engage: count exactly, in full
    available, outages = _services(
        config=config, st=st, sites=site_views, wall=wall, notices=notices, actions=actions
    )
    book = Book(nodes=books, sites=site_books, outages=outages, brakes={})
    return Decision(
        tuple(actions),
        tuple(notices),
        book,
        node_views,
        site_views,
        available,
        {},
        wakes=memo.wakes,
        recent=memo.recent,
    )
