"""The pure decision: verdicts, overrides, bookkeeping and read-back state in; actions out.

No I/O and no clock here: ``now`` (monotonic) and ``wall`` are arguments, so every rule can be
tested by calling ``decide`` with plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from failover.controller.brake import Throttle, forgive, judge, scopes
from failover.controller.state import (
    Action,
    Book,
    ControllerState,
    Decision,
    NodeBook,
    NodeView,
    Notice,
    Outage,
    SetAddresses,
    SetServerState,
    SiteBook,
    SiteView,
)
from failover.events import (
    FailoverPanic,
    FailoverPanicOver,
    OverrideBelowFloor,
    ServiceAvailable,
    ServiceUnavailable,
    SiteDown,
    SiteUp,
)
from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config, FailoverSettings, HAProxyLB, Node, Site

MAX_EXPONENT = 20  # 2**20 hold-downs is far past any cap; stops float overflow on long flaps
_RANK = {Verdict.DOWN: 0, Verdict.UNKNOWN: 1, Verdict.UP: 2}


def out_state(config: Config, site: Site) -> ServerState:
    """The admin state a node of ``site`` is put in when taken out (maint unless mode: drain)."""
    lb = config.load_balancers.get(site.local_lb or "")
    if isinstance(lb, HAProxyLB) and lb.mode == "drain":
        return ServerState.DRAIN
    return ServerState.MAINT


def site_backend(config: Config, site: Site) -> str:
    """The backend holding ``site``'s nodes: the site's own, else its load balancer's."""
    if site.backend:
        return site.backend
    lb = config.load_balancers.get(site.local_lb or "")
    if isinstance(lb, HAProxyLB):
        return lb.backend
    return site.name


def advance_node(book: NodeBook, verdict: Verdict, now: float, s: FailoverSettings) -> NodeBook:
    """Move one node's hold-down bookkeeping forward to ``now`` given its verdict."""
    if verdict is Verdict.DOWN:
        if book.down:
            return book
        # A failure while still held, or soon after coming back, is a flap: double the hold.
        recent = book.held or (book.back_at is not None and now - book.back_at < s.hold_down_max)
        failures = min(book.failures + 1, MAX_EXPONENT) if recent else 0
        hold = min(s.hold_down * 2**failures, s.hold_down_max)
        return replace(
            book, down=True, held=True, down_since=now, up_since=None, failures=failures, hold=hold
        )
    if verdict is Verdict.UP:
        if book.down:
            book = replace(book, down=False, up_since=now)
        until = book.hold_until()
        if until is not None and now >= until:
            book = replace(book, held=False, up_since=None, back_at=now)
        stable = book.back_at is not None and now - book.back_at >= s.hold_down_max
        if not book.held and book.failures and stable:
            book = replace(book, failures=0, hold=s.hold_down)  # a stable period forgives flaps
        return book
    return book  # unknown: no news, nothing moves


@dataclass(frozen=True, slots=True)
class _SitePlan:
    desired: dict[str, tuple[ServerState, str]]
    released: list[str]  # held, up nodes let back in early to make room
    kept_down: list[str]  # down nodes kept in because of the floor or the cap
    limit: str
    forced_below_floor: bool


def node_plan(
    name: str, v: Verdict, book: NodeBook, st: ControllerState, out: ServerState
) -> tuple[ServerState, str]:
    """A node's wanted state and why, when its site's budget does not bind (``_plan_site``):
    held out while its bookkeeping holds it, else in."""
    if not book.held:
        return (
            ServerState.READY,
            "verdict up" if v is Verdict.UP else "unknown verdicts never drain",
        )
    if v is Verdict.DOWN:
        return out, f"verdict down: {st.reasons.get(name) or 'no reason given'}"
    if v is Verdict.UP:
        return out, f"up, in a {book.hold:.0f}s hold-down (flap {book.failures})"
    return out, "held out; verdict unknown"


def _plan_site(
    config: Config, site: Site, nodes: list[Node], st: ControllerState, books: dict[str, NodeBook]
) -> _SitePlan:
    """Which of a site's nodes go out, within min_healthy and max_unavailable."""
    budget, limit = site.drain_budget(len(nodes))  # check-config prints the same figure
    out = out_state(config, site)
    desired: dict[str, tuple[ServerState, str]] = {}
    forced = [n for n in nodes if ("node", n.name) in st.overrides]
    for n in forced:
        o = st.overrides[("node", n.name)]
        desired[n.name] = (out, f"drained by {o.who}: {o.reason}")
    candidates = [n for n in nodes if n not in forced and books[n.name].held]

    def priority(n: Node) -> tuple[int, bool, float, str]:
        # Down before unknown before up-in-hold-down; nodes already out first to avoid churn.
        v = st.verdicts.get(n.name, Verdict.UNKNOWN)
        already_out = st.observed.servers.get(n.name, ServerState.READY) is not ServerState.READY
        return (_RANK[v], not already_out, books[n.name].down_since or 0.0, n.name)

    candidates.sort(key=priority)
    room = max(0, budget - len(forced))
    released: list[str] = []
    kept_down: list[str] = []
    for i, n in enumerate(candidates):
        v = st.verdicts.get(n.name, Verdict.UNKNOWN)
        if i < room:
            desired[n.name] = node_plan(n.name, v, books[n.name], st, out)
            continue
        desired[n.name] = (ServerState.READY, f"kept in: site {site.name} at its {limit}")
        if v is Verdict.UP:
            released.append(n.name)
        elif v is Verdict.DOWN:
            kept_down.append(n.name)
    for n in nodes:
        if n.name not in desired:
            v = st.verdicts.get(n.name, Verdict.UNKNOWN)
            desired[n.name] = node_plan(n.name, v, books[n.name], st, out)
    healthy_in = sum(
        1
        for n in nodes
        if st.verdicts.get(n.name) is Verdict.UP and desired[n.name][0] is ServerState.READY
    )
    return _SitePlan(
        desired, released, kept_down, limit, bool(forced) and healthy_in < site.min_healthy
    )


def _site_health(site: Site, nodes: list[Node], st: ControllerState) -> bool | None:
    """True/False when the verdicts settle whether the site can serve, None when unknowns decide."""
    usable = [n for n in nodes if ("node", n.name) not in st.overrides]
    up = sum(1 for n in usable if st.verdicts.get(n.name) is Verdict.UP)
    unknown = sum(1 for n in usable if st.verdicts.get(n.name, Verdict.UNKNOWN) is Verdict.UNKNOWN)
    floor = max(site.min_healthy, 1)  # a site with no node up cannot serve, whatever the floor
    if up >= floor:
        return True
    if up + unknown < floor:
        return False
    return None


def _advance_site(book: SiteBook, health: bool | None, now: float, s: FailoverSettings) -> SiteBook:
    can_serve = book.can_serve if health is None else health
    if not can_serve:
        return replace(book, can_serve=False, up=False, recovering_since=None)
    if book.up:
        return replace(book, can_serve=True, recovering_since=None)
    since = book.recovering_since if book.recovering_since is not None else now
    return replace(book, can_serve=True, up=now - since >= s.site_hold_down, recovering_since=since)


def _evidence(config: Config, sites: list[str], st: ControllerState) -> dict[str, Any]:
    return {
        n.name: {
            "site": n.site,
            "verdict": st.verdicts.get(n.name, Verdict.UNKNOWN).value,
            "reason": st.reasons.get(n.name, ""),
        }
        for n in config.nodes
        if n.site in sites
    }


def decide(config: Config, st: ControllerState, now: float, wall: float) -> Decision:
    """One decision: what to change in the load balancers and which events to publish."""
    s = config.failover
    notices: list[Notice] = []
    actions: list[Action] = []
    books = {
        n.name: advance_node(
            st.book.nodes.get(n.name, NodeBook()),
            st.verdicts.get(n.name, Verdict.UNKNOWN),
            now,
            s,
        )
        for n in config.nodes
    }
    node_views: dict[str, NodeView] = {}
    site_books: dict[str, SiteBook] = {}
    site_views: dict[str, SiteView] = {}
    by_site: dict[str, list[Node]] = {}
    for n in config.nodes:  # one pass, not one per site (O(sites x nodes) at 10,000 nodes)
        by_site.setdefault(n.site, []).append(n)
    all_scopes = scopes(config, by_site)
    books = forgive(books, st.book.brakes, all_scopes, st, now)
    brakes, down, brake_notices = judge(
        s.brake, all_scopes, books, st.book.brakes, now=now, wall=wall
    )
    notices += brake_notices
    throttle = Throttle(s.brake, brakes, config.nodes, books, now)
    memo = Memo()
    out = Outcome(node_views, site_books, site_views, actions, notices)
    for site in config.sites:
        _decide_site(
            config,
            site,
            by_site.get(site.name, []),
            st,
            now=now,
            wall=wall,
            books=books,
            throttle=throttle,
            out=out,
            memo=memo,
        )
    if throttle.engaged:
        site_views = throttle.hold_withdrawals(config, st, site_views)
    available, outages = _services(
        config=config, st=st, sites=site_views, wall=wall, notices=notices, actions=actions
    )
    brakes, brake_views = throttle.outcome(st.book.brakes, down)
    book = Book(nodes=books, sites=site_books, outages=outages, brakes=brakes)
    return Decision(
        tuple(actions),
        tuple(notices),
        book,
        node_views,
        site_views,
        available,
        brake_views,
        wakes=memo.wakes,
        recent=memo.recent,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where ``_decide_site`` puts what it decides (the decision's parts, filled site by site)."""

    node_views: dict[str, NodeView]
    site_books: dict[str, SiteBook]
    site_views: dict[str, SiteView]
    actions: list[Action]
    notices: list[Notice]


@dataclass(frozen=True, slots=True)
class Memo:
    """Per site, what a later decision needs to know which sites it may skip (``changes.py``)."""

    wakes: dict[str, float] = field(default_factory=dict)  # site -> next time-driven change
    recent: dict[str, int] = field(default_factory=dict)  # site -> nodes down within the window


def _node_wake(book: NodeBook, s: FailoverSettings) -> float | None:
    """When time alone next moves an up node's bookkeeping (``advance_node``), if ever."""
    until = book.hold_until()
    if until is not None:
        return until
    if not book.held and book.failures and book.back_at is not None:
        return book.back_at + s.hold_down_max  # the flaps are forgiven then
    return None


def _decide_site(
    config: Config,
    site: Site,
    nodes: list[Node],
    st: ControllerState,
    *,
    now: float,
    wall: float,
    books: dict[str, NodeBook],
    throttle: Throttle,
    out: Outcome,
    memo: Memo,
) -> None:
    """Decide one site: its nodes' wanted states and actions, its book, view and notices."""
    s = config.failover
    plan = _plan_site(config, site, nodes, st, books)
    if throttle.engaged:
        plan = replace(plan, desired=throttle.hold_drains(site.name, plan.desired, st, books))
    for name in plan.released:  # let back in early: its hold-down starts over if it fails
        books[name] = replace(books[name], held=False, up_since=None, back_at=now)
    old = st.book.sites.get(site.name, SiteBook())
    new = _advance_site(old, _site_health(site, nodes, st), now, s)
    panic = bool(plan.kept_down)
    if panic and not old.panic:
        out.notices.append(
            Notice(
                FailoverPanic(
                    subject=site.name,
                    at=wall,
                    vantage="",
                    site=site.name,
                    kept_in=tuple(plan.kept_down),
                    limit=plan.limit,
                    min_healthy=site.min_healthy,
                    max_unavailable=site.max_unavailable,
                ),
                f"PANIC site {site.name}: {len(plan.kept_down)} down nodes kept in "
                f"at its {plan.limit} (possible monitoring fault)",
            )
        )
    elif old.panic and not panic:
        over = FailoverPanicOver(subject=site.name, at=wall, vantage="", site=site.name)
        out.notices.append(Notice(over))
    new = replace(new, panic=panic)
    out.site_books[site.name] = new
    _site_notices(site=site, nodes=nodes, old=old, new=new, st=st, wall=wall, notices=out.notices)
    nodes_out = 0
    node_views = out.node_views
    wake: float | None = None
    recent = 0
    since = now - s.brake.window
    for n in nodes:
        want, why = plan.desired[n.name]
        nodes_out += want is not ServerState.READY
        verdict = st.verdicts.get(n.name, Verdict.UNKNOWN)
        book = books[n.name]
        node_views[n.name] = NodeView(verdict, want, book.hold_until(), why)
        if verdict is Verdict.UP and (at := _node_wake(book, s)) is not None:
            wake = at if wake is None else min(wake, at)
        recent += book.down and (book.down_since or 0.0) >= since
        actual = st.observed.servers.get(n.name)
        if site.local_lb is None or actual is None or actual is want:
            continue
        out.actions.append(
            SetServerState(
                site.local_lb,
                site_backend(config, site),
                n.server_name,
                n.name,
                site.name,
                actual,
                want,
                why,
            )
        )
        if plan.forced_below_floor and ("node", n.name) in st.overrides:
            out.notices.append(
                Notice(
                    OverrideBelowFloor(
                        subject=n.name,
                        at=wall,
                        vantage="",
                        node=n.name,
                        site=site.name,
                        min_healthy=site.min_healthy,
                    ),
                    f"WARNING operator drain of {n.name} takes {site.name} below min_healthy",
                )
            )
    drained = ("site", site.name) in st.overrides
    out.site_views[site.name] = SiteView(
        new.can_serve, new.up and not drained, panic, nodes_out, throttle.site_braked(site.name)
    )
    if new.recovering_since is not None:  # up at last: the next decision forgets the since
        at = now if new.up else new.recovering_since + s.site_hold_down
        wake = at if wake is None else min(wake, at)
    if plan.released:
        wake = now  # let back in early: the next decision says so (views, and what comes next)
    if wake is not None:
        memo.wakes[site.name] = wake
    memo.recent[site.name] = recent


def _site_notices(
    *,
    site: Site,
    nodes: list[Node],
    old: SiteBook,
    new: SiteBook,
    st: ControllerState,
    wall: float,
    notices: list[Notice],
) -> None:
    if old.up == new.up:
        return
    up = tuple(n.name for n in nodes if st.verdicts.get(n.name) is Verdict.UP)
    kind = SiteUp if new.up else SiteDown
    event = kind(
        subject=site.name,
        at=wall,
        vantage="",
        site=site.name,
        address=site.address,
        nodes_up=up,
        min_healthy=site.min_healthy,
    )
    if new.up:
        notices.append(Notice(event, f"site {site.name} up"))
    else:
        notices.append(
            Notice(
                event,
                f"site {site.name} down ({len(up)} nodes up < min_healthy {site.min_healthy})",
            )
        )


def _services(
    *,
    config: Config,
    st: ControllerState,
    sites: Mapping[str, SiteView],
    wall: float,
    notices: list[Notice],
    actions: list[Action],
) -> tuple[dict[str, bool], dict[str, Outage]]:
    available: dict[str, bool] = {}
    outages = dict(st.book.outages)
    for svc in config.services:
        members = [site for name in svc.sites if (site := config.site(name)) is not None]
        ok = any(sites[m.name].can_serve for m in members if m.name in sites)
        available[svc.name] = ok
        if not ok and svc.name not in outages:
            names = tuple(m.name for m in members)
            outage = Outage(svc.name, wall, names, _evidence(config, list(names), st))
            outages[svc.name] = outage
            notices.append(
                Notice(
                    ServiceUnavailable(
                        subject=svc.name,
                        at=wall,
                        vantage="",
                        service=svc.name,
                        sites=names,
                        evidence=outage.evidence,
                        started_at=wall,
                    ),
                    f"SERVICE {svc.name} UNAVAILABLE: no site can serve",
                )
            )
        elif ok and svc.name in outages:
            started = outages.pop(svc.name).started_at
            notices.append(
                Notice(
                    ServiceAvailable(
                        subject=svc.name,
                        at=wall,
                        vantage="",
                        service=svc.name,
                        started_at=started,
                        ended_at=wall,
                        duration=wall - started,
                    ),
                    f"service {svc.name} available again after {wall - started:.0f}s",
                )
            )
        if svc.global_lb is None or svc.record is None:
            continue
        actual = st.observed.records.get((svc.global_lb, svc.record))
        if actual is None:
            continue  # unreadable: never write blind over a record we could not read
        every = frozenset(m.address for m in members)
        serving = frozenset(m.address for m in members if sites[m.name].serving)
        if serving:
            down = sorted(m.name for m in members if not sites[m.name].serving)
            why = f"sites down or drained: {', '.join(down)}" if down else "all sites serving"
            want = serving
        else:
            # Never withdraw the last site: with every site out, keep what is published.
            want = (actual & every) or every
            why = "every site down: keeping the last published sites"
        if want != actual:
            actions.append(SetAddresses(svc.global_lb, svc.record, svc.name, actual, want, why))
    return available, outages
