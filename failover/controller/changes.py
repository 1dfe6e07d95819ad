"""Deciding in proportion to change: redo only the sites whose inputs moved since the last
decision, and keep the last decision's results for the others.

A verdict, a read-back server state or an override touches one site's plan; a site's plan
touches only the global records of the services using it. Inside a site, a verdict touches
only its node while the site's budget binds neither before nor after (``_decide_nodes``):
the floor, the cap and the brake are re-checked from the site's counts, taken in C, and
only the changed nodes are decided in Python. ``decide_changed`` is pure, like ``decide``,
and returns exactly what ``decide`` would, or None when it cannot tell cheaply (a brake
engaged or about to): the caller then decides in full. The loop's sweep redoes every site
whole a slice at a time, so a change it failed to mark heals there (level-triggered).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import compress
from operator import attrgetter, is_not, itemgetter
from typing import Any

from failover.controller.brake import Throttle
from failover.controller.decide import (
    Memo,
    Outcome,
    _advance_site,
    _decide_site,
    _node_wake,
    _services,
    advance_node,
    node_plan,
    out_state,
    site_backend,
)
from failover.controller.state import (
    Action,
    Book,
    ControllerState,
    Decision,
    NodeBook,
    NodeView,
    Notice,
    OverrideKind,
    SetServerState,
    changed_keys,
)
from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config, Node, Service, Site

_HELD = attrgetter("held")
_DOWN = attrgetter("down")


@dataclass(frozen=True, slots=True)
class FleetIndex:
    """Lookups of one configuration, built once per configuration (O(nodes))."""

    nodes_of: Mapping[str, list[Node]]  # site -> its nodes, in configuration order
    site_of: Mapping[str, str]  # node -> site
    services_of: Mapping[str, list[Service]]  # site -> the services using it
    # site -> picks its nodes' entries out of a per-node map, in C (sites of 2+ nodes only)
    pick: Mapping[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = field(default_factory=dict)
    node: Mapping[str, Node] = field(default_factory=dict)  # name -> node
    order: Mapping[str, int] = field(default_factory=dict)  # name -> place in the config
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # site -> node names

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
        pick = {
            site: itemgetter(*(n.name for n in nodes))
            for site, nodes in nodes_of.items()
            if len(nodes) > 1
        }
        by_name = {n.name: n for n in config.nodes}
        order = {name: i for i, name in enumerate(by_name)}
        site_of = {n.name: n.site for n in config.nodes}
        names = {site: tuple(n.name for n in nodes) for site, nodes in nodes_of.items()}
        return cls(nodes_of, site_of, services_of, pick, by_name, order, names)

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


def moved_servers(
    index: FleetIndex,
    narrow: Mapping[str, set[str]],
    new: Mapping[str, object],
    old: Mapping[str, object],
) -> dict[str, set[str]]:
    """``narrow`` (site -> changed nodes) with, in each site, the nodes whose read-back server
    state ``new`` is not the one the last decision saw, ``old`` (its applied actions, drift).
    A site whose servers cannot all be compared is left out: it is decided whole."""
    out: dict[str, set[str]] = {}
    for site, few in narrow.items():
        pick = index.pick.get(site)
        if pick is None:
            continue
        try:
            now, then = pick(new), pick(old)
        except KeyError:
            continue
        out[site] = few | set(compress(index.names[site], map(is_not, now, then)))
    return out


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
    nodes: Mapping[str, Collection[str]] | None = None,
) -> Decision | None:
    """``decide(config, st, now, wall)``, redoing only the sites in ``dirty`` and those
    ``last`` said time would change; None when that cannot be told without the whole fleet.

    The caller promises that ``last`` was decided on ``config`` with the book ``st.book`` as
    its outcome, and that every site outside ``dirty`` has the same verdicts, reasons,
    read-back server states and overrides in ``st`` as it had then. ``nodes`` narrows some
    dirty sites further: site -> the only nodes whose verdict, reason or read-back state
    changed (the site's overrides did not). Such a site is decided per node
    (``_decide_nodes``) when its budget allows it, else whole.
    """
    s = config.failover
    if st.book is not last.book or st.book.brakes or last.brakes:
        return None  # a brake is engaged: its tokens and counts span the fleet
    due_now = due(last, now)
    redo = set(dirty) | due_now
    narrow = nodes or {}
    forced = {name for kind, name in st.overrides if kind == "node"}
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
        few = narrow.get(site.name)
        if (
            few is not None
            and site.name not in due_now  # a site time changes is redone whole
            and _decide_nodes(
                config,
                index,
                site,
                few,
                st,
                now=now,
                books=books,
                forced=forced,
                last=last,
                out=out,
                memo=memo,
            )
        ):
            size = len(index.nodes_of[site.name])
            if size >= b.min_nodes and memo.recent[site.name] > b.share * size:
                return None  # the site's brake engages
            continue
        site_nodes = index.nodes_of.get(site.name, [])
        recent = 0
        for n in site_nodes:
            nb = advance_node(
                books.get(n.name, NodeBook()), st.verdicts.get(n.name, Verdict.UNKNOWN), now, s
            )
            books[n.name] = nb
            recent += nb.down and (nb.down_since or 0.0) >= window
        if len(site_nodes) >= b.min_nodes and recent > b.share * len(site_nodes):
            return None  # the site's brake engages
        memo.wakes.pop(site.name, None)
        _decide_site(
            config,
            site,
            site_nodes,
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


def _decide_nodes(
    config: Config,
    index: FleetIndex,
    site: Site,
    changed: Collection[str],
    st: ControllerState,
    *,
    now: float,
    books: dict[str, NodeBook],
    forced: Collection[str],
    last: Decision,
    out: Outcome,
    memo: Memo,
) -> bool:
    """Decide only the ``changed`` nodes of ``site``, as ``_decide_site`` would decide the
    whole site, and return True; or change nothing and return False when the site's other
    nodes could be decided differently (the caller then decides the site whole).

    Per node is exact when the site's budget (``min_healthy``, ``max_unavailable``) binds
    neither before nor after (every held node fits in it, so each node's plan depends on the
    node alone), no node of the site is drained by an operator, the site's own bookkeeping
    does not move (no site up / down, panic or hold-down) and time changes none of its other
    nodes (the caller redoes a site with a wake whole). The counts that say so are taken
    over the site's nodes in C (``FleetIndex.pick``); only the changed nodes run in Python.
    """
    s = config.failover
    pick = index.pick.get(site.name)
    members = index.nodes_of.get(site.name, [])
    old_site = st.book.sites.get(site.name)
    view = last.sites.get(site.name)
    if pick is None or old_site is None or view is None or old_site.panic or view.brake:
        return False
    if forced and any(index.site_of.get(name) == site.name for name in forced):
        return False
    try:
        changed = sorted(changed, key=index.order.__getitem__)  # actions in config order
        verdicts = pick(st.verdicts)
        old_views = [last.nodes[name] for name in changed]
        before = [books[name] for name in changed]
    except KeyError:
        return False  # a node without a verdict, a view or a book: the site is decided whole
    if any(index.site_of.get(name) != site.name for name in changed):
        return False
    new = [
        advance_node(b, st.verdicts[name], now, s) for name, b in zip(changed, before, strict=True)
    ]
    for name, nb in zip(changed, new, strict=True):
        books[name] = nb
    site_books = pick(books)
    held = sum(map(_HELD, site_books))
    held_before = held - sum(map(_HELD, new)) + sum(map(_HELD, before))
    budget, _ = site.drain_budget(len(members))
    floor = max(site.min_healthy, 1)
    up, unknown = verdicts.count(Verdict.UP), verdicts.count(Verdict.UNKNOWN)
    health = True if up >= floor else (False if up + unknown < floor else None)
    if max(held, held_before) > budget or _advance_site(old_site, health, now, s) != old_site:
        for name, b in zip(changed, before, strict=True):
            books[name] = b  # left as found: the caller decides the site whole
        return False
    out_as = out_state(config, site)
    nodes_out = view.nodes_out
    wake: float | None = None
    for name, nb, old_view in zip(changed, new, old_views, strict=True):
        v = st.verdicts[name]
        want, why = node_plan(name, v, nb, st, out_as)
        nodes_out += (want is not ServerState.READY) - (old_view.desired is not ServerState.READY)
        out.node_views[name] = NodeView(v, want, nb.hold_until(), why)
        if v is Verdict.UP and (at := _node_wake(nb, s)) is not None:
            wake = at if wake is None else min(wake, at)
        actual = st.observed.servers.get(name)
        if site.local_lb is None or actual is None or actual is want:
            continue
        server = index.node[name].server_name
        backend = site_backend(config, site)
        out.actions.append(
            SetServerState(site.local_lb, backend, server, name, site.name, actual, want, why)
        )
    out.site_books[site.name] = old_site
    out.site_views[site.name] = replace(view, nodes_out=nodes_out)
    if wake is not None:  # kept with the site's older wake: an earlier one is only safe
        memo.wakes[site.name] = min(wake, memo.wakes.get(site.name, wake))
    window = now - s.brake.window
    down = compress(site_books, map(_DOWN, site_books))
    memo.recent[site.name] = sum(1 for b in down if (b.down_since or 0.0) >= window)
    return True
