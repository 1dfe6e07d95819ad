"""The controller's plain data: inputs of a decision, its bookkeeping, actions and notices.

Everything here is frozen: ``decide`` takes these and returns new ones, it never mutates.
Times named ``*_since``/``*_at`` inside books are monotonic seconds unless said otherwise;
wall-clock seconds appear only where a record is made (overrides, outages, events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import compress
from operator import is_not
from typing import Any, Literal, Protocol, TypeVar

from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.errors import NodevigilError
from nodevigil.core.events import Event

OverrideKind = Literal["node", "site"]
K = TypeVar("K")
V = TypeVar("V")


class UnknownNameError(NodevigilError, LookupError):
    """An override named a node or site that the configuration does not have."""


class VerdictSource(Protocol):
    """Where the controller reads each node's current verdict (the monitor implements it)."""

    def verdicts(self) -> Mapping[str, Verdict]:
        """Node name -> current verdict; a node missing here counts as unknown."""
        ...


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's drain of a node or a site; ``since``/``until`` are wall-clock seconds."""

    kind: OverrideKind
    name: str
    reason: str
    who: str
    since: float
    until: float | None = None

    def expired(self, wall: float) -> bool:
        """Whether the time box has run out at wall time ``wall``."""
        return self.until is not None and wall >= self.until

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "who": self.who,
            "since": self.since,
            "until": self.until,
        }


@dataclass(frozen=True, slots=True)
class NodeBook:
    """Hold-down bookkeeping of one node (monotonic times)."""

    down: bool = False  # the last known verdict was down
    held: bool = False  # the health policy wants it out (down, or up but inside its hold-down)
    down_since: float | None = None
    up_since: float | None = None  # start of the current up streak while held
    back_at: float | None = None  # when the policy last let it back in
    failures: int = 0  # recent re-failures: the exponent of the hold-down
    hold: float = 0.0  # the hold-down the current (or last) failure earned

    def hold_until(self) -> float | None:
        """Monotonic time the hold-down ends, if the node is up and held."""
        if self.held and not self.down and self.up_since is not None:
            return self.up_since + self.hold
        return None


@dataclass(frozen=True, slots=True)
class SiteBook:
    """What the controller remembers about a site between cycles."""

    can_serve: bool = True  # enough nodes up (by verdict); assumed at first so a start is quiet
    up: bool = True  # can_serve, with the site hold-down applied on recovery
    recovering_since: float | None = None
    panic: bool = False


@dataclass(frozen=True, slots=True)
class BrakeBook:
    """An engaged brake of one scope (``brake.py``); monotonic times.

    ``nodes`` and ``went_down`` are the counts that engaged it (its reason). The token bucket
    holds ``tokens`` as of ``refilled_at`` and refills at ``failover.brake.rate`` a minute up to
    one; ``held`` and ``held_sites`` are the drains and site withdrawals it held last cycle.
    """

    since: float
    nodes: int
    went_down: int
    tokens: float = 0.0
    refilled_at: float | None = None  # None: since
    held: tuple[str, ...] = ()
    held_sites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outage:
    """An open whole-service unavailability; ``started_at`` is wall-clock."""

    service: str
    started_at: float
    sites: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Book:
    """All of the controller's durable bookkeeping."""

    nodes: Mapping[str, NodeBook] = field(default_factory=dict)
    sites: Mapping[str, SiteBook] = field(default_factory=dict)
    outages: Mapping[str, Outage] = field(default_factory=dict)
    brakes: Mapping[str, BrakeBook] = field(default_factory=dict)  # engaged scopes only


@dataclass(frozen=True, slots=True)
class Observed:
    """Actual load-balancer state read back this cycle; a missing key means unreadable."""

    servers: Mapping[str, ServerState] = field(default_factory=dict)  # node name -> admin state
    records: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetServerState:
    """Put one node's server into ``new`` in its site's local load balancer."""

    lb: str
    backend: str
    server: str
    node: str
    site: str
    old: ServerState | None
    new: ServerState
    why: str

    def describe(self) -> str:
        """One phrase for the decision line."""
        old = self.old.value if self.old else "?"
        return f"{self.node} {old}->{self.new.value} in {self.lb}/{self.backend} ({self.why})"


@dataclass(frozen=True, slots=True)
class SetAddresses:
    """Replace the addresses a global load balancer publishes for a service's record."""

    lb: str
    record: str
    service: str
    old: frozenset[str]
    new: frozenset[str]
    why: str

    def describe(self) -> str:
        """One phrase for the decision line."""
        return (
            f"{self.service} record {self.record} in {self.lb} "
            f"{sorted(self.old)}->{sorted(self.new)} ({self.why})"
        )


Action = SetServerState | SetAddresses


@dataclass(frozen=True, slots=True)
class Notice:
    """An event ``decide`` wants published (the loop stamps its time and vantage)."""

    event: Event
    phrase: str = ""  # for the decision line; empty when not worth a mention


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the last decision wanted for a node."""

    verdict: Verdict
    desired: ServerState
    hold_until: float | None  # monotonic
    why: str


@dataclass(frozen=True, slots=True)
class SiteView:
    """What the last decision concluded about a site."""

    can_serve: bool
    serving: bool  # published by the global load balancers
    panic: bool
    nodes_out: int
    brake: bool = False  # the site's own brake is engaged
    withdrawal_held: bool = False  # cannot serve, but the fleet's brake keeps it published


@dataclass(frozen=True, slots=True)
class BrakeView:
    """An engaged brake as the last decision saw it (``key``: ``fleet`` or ``site:NAME``)."""

    key: str
    site: str | None  # None: the fleet
    since: float  # monotonic
    nodes: int
    went_down: int
    down: int  # nodes of the scope down now
    reason: str  # "braked: 6 of 8 nodes of site west went down within 1m"
    held: tuple[str, ...] = ()  # node drains held
    held_sites: tuple[str, ...] = ()  # site withdrawals held (the fleet's brake only)
    new_held: tuple[str, ...] = ()  # of which held for the first time this cycle
    new_held_sites: tuple[str, ...] = ()

    @property
    def scope(self) -> str:
        """``site`` or ``fleet``."""
        return "fleet" if self.site is None else "site"

    def phrases(self) -> list[str]:
        """What the decision line says about drains and withdrawals held for the first time."""
        out = []
        if self.new_held:
            out.append(f"would drain {_some(self.new_held)} ({self.reason})")
        if self.new_held_sites:
            sites = _some(self.new_held_sites)
            out.append(
                f"would withdraw site{'s' * (len(self.new_held_sites) > 1)} {sites} "
                f"from DNS ({self.reason})"
            )
        return out


def _some(names: tuple[str, ...], most: int = 20) -> str:
    """``a, b, c``; past ``most`` names, ``and N more`` (the status lists them all)."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


@dataclass(frozen=True, slots=True)
class ControllerState:
    """Everything ``decide`` looks at, gathered by the loop."""

    verdicts: Mapping[str, Verdict]
    observed: Observed
    overrides: Mapping[tuple[OverrideKind, str], Override]
    book: Book
    reasons: Mapping[str, str] = field(default_factory=dict)  # node -> last verdict reason


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one decision: actions to apply, notices to publish, the new book."""

    actions: tuple[Action, ...]
    notices: tuple[Notice, ...]
    book: Book
    nodes: Mapping[str, NodeView]
    sites: Mapping[str, SiteView]
    available: Mapping[str, bool]
    brakes: Mapping[str, BrakeView] = field(default_factory=dict)  # engaged scopes only
    # For the next decision to skip what cannot have changed (``changes.py``): per site, the
    # monotonic time its decision next changes by time alone (hold-downs ending, flaps
    # forgiven), and its nodes that went down within the brake's window as of this decision
    # (a site not redone keeps its older count, an upper bound). Hints, not the decision.
    wakes: Mapping[str, float] = field(default_factory=dict, compare=False)
    recent: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        """The one-line decision string; empty when the cycle had nothing to do."""
        phrases = [a.describe() for a in self.actions]
        phrases += [n.phrase for n in self.notices if n.phrase]
        phrases += [p for view in self.brakes.values() for p in view.phrases()]
        return "; ".join(phrases)


def shift_book(book: Book, delta: float) -> Book:
    """The same book with every monotonic time moved by ``delta`` (to or from wall time)."""

    def move(t: float | None) -> float | None:
        return None if t is None else t + delta

    nodes = {name: _shift_node(b, delta) for name, b in book.nodes.items()}
    sites = {
        name: SiteBook(b.can_serve, b.up, move(b.recovering_since), b.panic)
        for name, b in book.sites.items()
    }
    brakes = {
        key: replace(b, since=b.since + delta, refilled_at=move(b.refilled_at))
        for key, b in book.brakes.items()
    }
    return Book(nodes, sites, book.outages, brakes)


def _shift_node(b: NodeBook, delta: float) -> NodeBook:
    def move(t: float | None) -> float | None:
        return None if t is None else t + delta

    return NodeBook(
        b.down, b.held, move(b.down_since), move(b.up_since), move(b.back_at), b.failures, b.hold
    )


def changed_keys(new: Mapping[K, V], old: Mapping[K, V]) -> list[K]:
    """The keys of ``new`` whose value is not the very object ``old`` has (or that ``old``
    lacks). A fleet's maps keep their order from cycle to cycle: then this runs in C, ~20x
    faster than a loop in Python over 10,000 nodes."""
    if len(new) == len(old) and list(new) == list(old):
        return list(compress(new, map(is_not, new.values(), old.values())))
    return [k for k, v in new.items() if old.get(k) is not v]


def shift_changed(book: Book, delta: float, before: Book, shifted: Book) -> Book:
    """``shift_book(book, delta)`` when ``shifted`` is ``shift_book(before, delta)``: only the
    node entries that are not the very ones of ``before`` are shifted again (a fleet's book
    changes in a few nodes a cycle; the others keep their shifted entries, unchanged)."""
    nodes = dict(shifted.nodes)
    for name in changed_keys(book.nodes, before.nodes):
        nodes[name] = _shift_node(book.nodes[name], delta)
    if len(nodes) != len(book.nodes):
        for name in [n for n in nodes if n not in book.nodes]:
            del nodes[name]
    rest = shift_book(Book({}, book.sites, book.outages, book.brakes), delta)
    return Book(nodes, rest.sites, rest.outages, rest.brakes)
