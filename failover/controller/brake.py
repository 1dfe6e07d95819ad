"""The brake on mass failure: pure, like ``decide``, which calls it once a cycle.

Kubernetes' node lifecycle controller slows evictions when much of a zone looks unhealthy at
once: a sudden wave is more often the observer's trouble than the nodes'. Here a *scope* is a
site or the whole fleet, and ``failover.brake`` says:

- a scope's brake **engages** when more than ``share`` of its nodes went down within ``window``
  (scopes of fewer than ``min_nodes`` nodes never brake); it **holds** while more than ``share``
  of its nodes are down, however long ago they fell, and **releases** when no more are;
- while it holds, a node of the scope that went down in the wave (from ``window`` before the
  brake engaged on) leaves its local load balancer only as a token bucket allows: ``rate`` a
  minute, one at a time, none with 0. Nodes already out stay out, operator drains are never
  braked, and a node that was down before the wave is not part of it;
- a site that cannot serve still leaves DNS under its own brake: a dead site must fail over.
  Under the fleet's brake its withdrawal is held too (at the same rate, after the node drains),
  unless the rest of the fleet stands: when no more than ``share`` of the nodes outside the site
  went down in the wave, its failure is its own and it is withdrawn as ever (as Kubernetes
  evicts normally from a zone that is fully down while the others are healthy). A withdrawal
  already begun goes on, and the last site of a service is never withdrawn (``decide``).

Engaged brakes live in the book (``Book.brakes``) so a restart or a new leader keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from failover.controller.state import (
    BrakeBook,
    BrakeView,
    ControllerState,
    NodeBook,
    Notice,
    SiteView,
)
from failover.events import BrakeEngaged, BrakeReleased
from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config, FailoverBrake, Node, Site
from nodevigil.core.durations import format_duration

FLEET = "fleet"
_FULL = 1.0 - 1e-9  # a whole token, give or take float rounding


def site_key(site: str) -> str:
    """The book's key of a site's brake."""
    return f"site:{site}"


@dataclass(frozen=True, slots=True)
class Scope:
    """Nodes that brake together: one site's, or the whole fleet's (``site`` None)."""

    key: str
    site: str | None
    nodes: tuple[str, ...]

    def describe(self) -> str:
        """``site west`` or ``the fleet``."""
        return "the fleet" if self.site is None else f"site {self.site}"


def scopes(config: Config, by_site: Mapping[str, Sequence[Node]]) -> list[Scope]:
    """Every site's scope, then the fleet's."""
    out = [
        Scope(site_key(s.name), s.name, tuple(n.name for n in by_site.get(s.name, ())))
        for s in config.sites
    ]
    out.append(Scope(FLEET, None, tuple(n.name for n in config.nodes)))
    return out


def _reason(scope: str, brake: BrakeBook, s: FailoverBrake) -> str:
    return (
        f"braked: {brake.went_down} of {brake.nodes} nodes of {scope} went down "
        f"within {format_duration(s.window)}"
    )


def _describe_key(key: str) -> tuple[str, str | None]:
    site = None if key == FLEET else key.removeprefix("site:")
    return ("the fleet" if site is None else f"site {site}"), site


def judge(
    s: FailoverBrake,
    all_scopes: Sequence[Scope],
    books: Mapping[str, NodeBook],
    old: Mapping[str, BrakeBook],
    *,
    now: float,
    wall: float,
) -> tuple[dict[str, BrakeBook], dict[str, int], list[Notice]]:
    """Which scopes are braked now, each scope's count of down nodes, and the notices."""
    engaged: dict[str, BrakeBook] = {}
    down_counts: dict[str, int] = {}
    notices: list[Notice] = []
    for scope in all_scopes:
        size = len(scope.nodes)
        down = sum(1 for n in scope.nodes if books[n].down)
        down_counts[scope.key] = down
        before = old.get(scope.key)
        if before is None:
            since = now - s.window
            recent = sum(
                1 for n in scope.nodes if books[n].down and (books[n].down_since or 0.0) >= since
            )
            if size >= s.min_nodes and recent > s.share * size:
                brake = BrakeBook(since=now, nodes=size, went_down=recent)
                engaged[scope.key] = brake
                notices.append(_engaged(scope, brake, down, s, wall))
        elif size >= s.min_nodes and down > s.share * size:
            engaged[scope.key] = before
        else:
            notices.append(
                _released(scope.key, before, s, size=size, down=down, now=now, wall=wall)
            )
    known = {scope.key for scope in all_scopes}
    for key, before in old.items():
        if key not in known:  # a site a reload removed
            released = _released(key, before, s, size=0, down=0, now=now, wall=wall, gone=True)
            notices.append(released)
    return engaged, down_counts, notices


def _engaged(scope: Scope, brake: BrakeBook, down: int, s: FailoverBrake, wall: float) -> Notice:
    reason = _reason(scope.describe(), brake, s)
    pace = f"at most {s.rate:g} a minute" if s.rate else "none"
    event = BrakeEngaged(
        subject=scope.site or FLEET,
        at=wall,
        vantage="",
        scope="fleet" if scope.site is None else "site",
        site=scope.site,
        nodes=brake.nodes,
        went_down=brake.went_down,
        down=down,
        window=s.window,
        share=s.share,
        rate=s.rate,
        reason=reason,
    )
    counts = (
        f"{brake.went_down} of {brake.nodes} nodes went down within {format_duration(s.window)}"
    )
    return Notice(event, f"BRAKE on {scope.describe()}: {counts}; new drains: {pace}")


def _released(
    key: str,
    brake: BrakeBook,
    s: FailoverBrake,
    *,
    size: int,
    down: int,
    now: float,
    wall: float,
    gone: bool = False,
) -> Notice:
    name, site = _describe_key(key)
    if gone:
        reason = f"{name} is no longer configured"
    elif size < s.min_nodes:
        reason = f"{name} has {size} nodes, fewer than min_nodes {s.min_nodes}"
    else:
        reason = f"{down} of {size} nodes of {name} down, not more than share {s.share:g}"
    event = BrakeReleased(
        subject=site or FLEET,
        at=wall,
        vantage="",
        scope="fleet" if site is None else "site",
        site=site,
        nodes=size,
        down=down,
        duration=max(0.0, now - brake.since),
        reason=reason,
    )
    return Notice(event, f"brake on {name} released: {reason}")


def _published_everywhere(config: Config, site: Site, st: ControllerState) -> bool:
    """Whether every readable record of ``site``'s services publishes it (at least one does):
    its withdrawal has not begun."""
    found = False
    for svc in config.services:
        if site.name not in svc.sites or svc.global_lb is None or svc.record is None:
            continue
        actual = st.observed.records.get((svc.global_lb, svc.record))
        if actual is None:
            continue
        if site.address not in actual:
            return False
        found = True
    return found


def forgive(
    books: Mapping[str, NodeBook],
    old: Mapping[str, BrakeBook],
    all_scopes: Sequence[Scope],
    st: ControllerState,
    now: float,
) -> dict[str, NodeBook]:
    """``books`` with the hold-down lifted from the nodes of braked scopes that are up again
    and still in their load balancer: the hold-down keeps a returning node out, and these never
    left (without this, a brake's release would take every recovered node out for its
    hold-down)."""
    out = dict(books)
    for scope in all_scopes:
        if scope.key not in old:
            continue
        for name in scope.nodes:
            book = out[name]
            if (
                book.held
                and not book.down
                and st.verdicts.get(name) is Verdict.UP
                and st.observed.servers.get(name) is ServerState.READY
            ):
                out[name] = replace(book, held=False, up_since=None, back_at=now)
    return out


class Throttle:
    """One cycle's engaged brakes: which drains and withdrawals go ahead, taking tokens.

    Made fresh by every ``decide`` and dropped with it: its state is the new book's brakes.
    """

    def __init__(
        self,
        s: FailoverBrake,
        brakes: Mapping[str, BrakeBook],
        nodes: Sequence[Node],
        books: Mapping[str, NodeBook],
        now: float,
    ) -> None:
        self._s = s
        self._now = now
        self._brakes = dict(brakes)
        self._held: dict[str, list[str]] = {key: [] for key in brakes}
        self._held_sites: dict[str, list[str]] = {key: [] for key in brakes}
        self._size: dict[str, int] = {}  # site -> nodes
        self._wave: dict[str, int] = {}  # site -> nodes down that fell in the fleet's wave
        fleet = self._brakes.get(FLEET)
        if fleet is not None:  # what withdrawal() weighs: where the fleet's wave fell
            for node in nodes:
                self._size[node.site] = self._size.get(node.site, 0) + 1
                book = books[node.name]
                if book.down and self._in_wave(book, fleet):
                    self._wave[node.site] = self._wave.get(node.site, 0) + 1

    @property
    def engaged(self) -> bool:
        """Whether any scope is braked (else every drain goes ahead untouched)."""
        return bool(self._brakes)

    def site_braked(self, site: str) -> bool:
        """Whether ``site``'s own brake is engaged."""
        return site_key(site) in self._brakes

    def _in_wave(self, book: NodeBook, brake: BrakeBook) -> bool:
        return book.down_since is not None and book.down_since >= brake.since - self._s.window

    def _tokens(self, brake: BrakeBook) -> float:
        at = brake.since if brake.refilled_at is None else brake.refilled_at
        return min(1.0, brake.tokens + max(0.0, self._now - at) * self._s.rate / 60.0)

    def _take(self, key: str) -> None:
        brake = self._brakes[key]
        self._brakes[key] = replace(brake, tokens=self._tokens(brake) - 1.0, refilled_at=self._now)

    def _reason(self, key: str) -> str:
        return _reason(_describe_key(key)[0], self._brakes[key], self._s)

    def drain(self, node: str, site: str, book: NodeBook) -> str | None:
        """None when ``node`` may be taken out of its local LB now (tokens taken), else why
        it is held. Only for a new drain: the node is in its LB and no operator drained it."""
        keys = [
            key
            for key in (site_key(site), FLEET)
            if key in self._brakes and self._in_wave(book, self._brakes[key])
        ]
        short = next((k for k in keys if self._tokens(self._brakes[k]) < _FULL), None)
        if short is not None:
            self._held[short].append(node)
            return self._reason(short)
        for key in keys:
            self._take(key)
        return None

    def hold_drains(
        self,
        site: str,
        desired: Mapping[str, tuple[ServerState, str]],
        st: ControllerState,
        books: Mapping[str, NodeBook],
    ) -> dict[str, tuple[ServerState, str]]:
        """A site's plan with the new drains the brakes hold kept in (in the plan's order, so
        the tokens go to the nodes it would take out first)."""
        out = dict(desired)
        for name, (want, why) in desired.items():
            if want is ServerState.READY or ("node", name) in st.overrides:
                continue  # staying in, or an operator's drain: never braked
            if st.observed.servers.get(name, ServerState.READY) is not ServerState.READY:
                continue  # already out: stays out
            held = self.drain(name, site, books[name])
            if held is not None:
                out[name] = (ServerState.READY, f"would drain ({why}), {held}")
        return out

    def hold_withdrawals(
        self, config: Config, st: ControllerState, sites: Mapping[str, SiteView]
    ) -> dict[str, SiteView]:
        """The sites' views with the withdrawals the fleet's brake holds kept published."""
        out = dict(sites)
        for site in config.sites if FLEET in self._brakes else ():
            view = sites.get(site.name)
            if view is None or view.serving or ("site", site.name) in st.overrides:
                continue
            if not _published_everywhere(config, site, st) or self.withdrawal(site.name) is None:
                continue
            out[site.name] = replace(view, serving=True, withdrawal_held=True)
        return out

    def withdrawal(self, site: str) -> str | None:
        """None when ``site`` may leave DNS now (tokens taken), else why it is held. Only for
        a withdrawal not yet begun, of a site no operator drained."""
        fleet = self._brakes.get(FLEET)
        if fleet is None:
            return None
        outside = sum(self._size.values()) - self._size.get(site, 0)
        fell_outside = sum(self._wave.values()) - self._wave.get(site, 0)
        if fell_outside <= self._s.share * outside:
            return None  # the rest of the fleet stands: the site's failure is its own
        if self._tokens(fleet) >= _FULL:
            self._take(FLEET)
            return None
        self._held_sites[FLEET].append(site)
        return self._reason(FLEET)

    def outcome(
        self, old: Mapping[str, BrakeBook], down: Mapping[str, int]
    ) -> tuple[dict[str, BrakeBook], dict[str, BrakeView]]:
        """The brakes for the new book, and what the decision shows of them."""
        books: dict[str, BrakeBook] = {}
        views: dict[str, BrakeView] = {}
        for key, brake in self._brakes.items():
            held, held_sites = tuple(self._held[key]), tuple(self._held_sites[key])
            before = old.get(key)
            seen = set(before.held) if before else set()
            seen_sites = set(before.held_sites) if before else set()
            books[key] = replace(brake, held=held, held_sites=held_sites)
            views[key] = BrakeView(
                key=key,
                site=_describe_key(key)[1],
                since=brake.since,
                nodes=brake.nodes,
                went_down=brake.went_down,
                down=down.get(key, 0),
                reason=self._reason(key),
                held=held,
                held_sites=held_sites,
                new_held=tuple(n for n in held if n not in seen),
                new_held_sites=tuple(s for s in held_sites if s not in seen_sites),
            )
        return books, views
