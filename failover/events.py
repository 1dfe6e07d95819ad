"""The events the failover package publishes: one frozen dataclass per kind.

``EVENT_KINDS`` (alert routes are checked against it) comes from these classes, so the list
cannot drift from what is published. Field names are the JSON keys of ``as_dict()["data"]``
except where ``key(...)`` says otherwise (a fact called ``kind`` or ``id`` in the JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from nodevigil.core.events import Event, kinds_of
from nodevigil.core.events import key as json_key

# --- sites and services (the controller's judgement) ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteEvent(Event):
    """A site went up or down (``subject`` is the site)."""

    site: str
    address: str
    nodes_up: tuple[str, ...]
    min_healthy: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteUp(SiteEvent):
    """Enough of the site's nodes are up again."""

    KIND = "site.up"


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteDown(SiteEvent):
    """Fewer of the site's nodes are up than its ``min_healthy``."""

    KIND = "site.down"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceUnavailable(Event):
    """No site of the service can serve (``subject`` is the service) since ``started_at``."""

    KIND = "service.unavailable"
    service: str
    sites: tuple[str, ...]
    evidence: Mapping[str, Any]
    started_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceAvailable(Event):
    """The service can serve again: the outage ran from ``started_at`` to ``ended_at``."""

    KIND = "service.available"
    service: str
    started_at: float
    ended_at: float
    duration: float


# --- load balancers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LbAction(Event):
    """A change nodevigil made in a load balancer: ``ServerStateSet`` or ``AddressesSet``."""

    KIND = "lb.action"
    lb: str
    why: str
    # The leader lease's fencing epoch the command was sent under (None on a single host):
    # with ``vantage``, which leader did it, across a change of leader.
    epoch: int | None = None

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Self:
        """The action's class is told by ``data.what``."""
        if cls is not LbAction:
            return super(LbAction, cls).from_dict(record)
        what = (record.get("data") or {}).get("what")
        by_what: dict[Any, type[LbAction]] = {
            "set_state": ServerStateSet,
            "set_addresses": AddressesSet,
        }
        if what not in by_what:
            raise ValueError(f"lb.action of unknown what {what!r}")
        return by_what[what].from_dict(record)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStateSet(LbAction):
    """A local load balancer's server put in another admin state (``subject`` is the node)."""

    what: str = field(init=False, default="set_state")
    backend: str
    server: str
    node: str
    site: str
    old: str | None
    new: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressesSet(LbAction):
    """A global load balancer's record given other addresses (``subject`` is the service)."""

    what: str = field(init=False, default="set_addresses")
    record: str
    service: str
    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficProof(Event):
    """Whether traffic followed a load-balancer action (``subject``: the node or service):
    ``outcome`` proved, no_traffic (a quiet restore), timeout or abandoned; ``text`` says it
    ("traffic left n1 in 1.4 s (3 sessions drained)")."""

    KIND = "lb.proof"
    lb: str
    lb_type: str  # haproxy, rfc2136: the metric's label
    target: str  # backend/server or record, as in the action log
    direction: str  # drain, restore, withdraw, publish, replace
    outcome: str
    seconds: float | None  # from the action to the traffic moving (proved only)
    text: str
    action_at: float  # wall time of the action proved
    sessions: int | None = field(default=None, metadata=json_key("sessions", omit_none=True))
    ttl: int | None = field(default=None, metadata=json_key("ttl", omit_none=True))
    epoch: int | None = None  # the leader epoch the action was sent under


@dataclass(frozen=True, slots=True, kw_only=True)
class LbRecovered(Event):
    """A load-balancer call that kept failing works again (``subject`` is the load balancer)."""

    KIND = "lb.recovered"
    lb: str
    what: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverFailed(Event):
    """A load-balancer call started failing; ``failure`` says whose trouble it is."""

    KIND = "failover.failed"
    lb: str
    what: str
    target: str
    error: str
    failure: str = field(metadata=json_key("kind"))  # local, timeout, unreachable, rejected...
    code: str | None = field(default=None, metadata=json_key("code", omit_none=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverPanic(Event):
    """Down nodes of a site are kept in at its ``limit`` (possibly a monitoring fault)."""

    KIND = "failover.panic"
    site: str
    kept_in: tuple[str, ...]
    limit: str
    min_healthy: int
    max_unavailable: int | str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverPanicOver(Event):
    """The site's panic is over."""

    KIND = "failover.panic_over"
    site: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrakeEngaged(Event):
    """More than ``share`` of a scope's nodes went down within ``window``: new drains there
    slow to ``rate`` a minute (``subject`` is the site, or ``fleet``)."""

    KIND = "failover.brake"
    scope: str  # "site" or "fleet"
    site: str | None = field(default=None, metadata=json_key("site", omit_none=True))
    nodes: int
    went_down: int
    down: int
    window: float
    share: float
    rate: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BrakeReleased(Event):
    """No more than ``share`` of the scope's nodes are down: drains go ahead again."""

    KIND = "failover.brake_released"
    scope: str
    site: str | None = field(default=None, metadata=json_key("site", omit_none=True))
    nodes: int
    down: int
    duration: float  # seconds the brake held
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerDecision(Event):
    """One cycle's decision line (``subject`` is the vantage) and the evidence behind it."""

    KIND = "controller.decision"
    decision: str
    actions: int
    failed: int
    evidence: Mapping[str, Mapping[str, str]]
    epoch: int | None = None  # the lease's epoch while acting; None on one host or a standby


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverModeChanged(Event):
    """``failover.mode`` changed (a reload): ``observe`` writes nothing to the load balancers
    and notifies no customer, ``act`` acts again from this cycle on (``subject``: vantage)."""

    KIND = "failover.mode"
    mode: str  # "act" or "observe"
    previous: str
    reason: str


# --- operator overrides -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideEvent(Event):
    """An operator's drain of a node or site (``subject`` is its name)."""

    target: str = field(metadata=json_key("kind"))  # "node" or "site"
    name: str
    reason: str
    who: str
    since: float
    until: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideSet(OverrideEvent):
    """A drain was set or replaced."""

    KIND = "override.set"


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideCleared(OverrideEvent):
    """An operator lifted the drain."""

    KIND = "override.cleared"
    cleared_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideExpired(OverrideEvent):
    """The drain's time box ran out."""

    KIND = "override.expired"
    cleared_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideDropped(OverrideEvent):
    """The drained node or site left the configuration (a reload)."""

    KIND = "override.dropped"
    cleared_by: str
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideBelowFloor(Event):
    """An operator's drain takes a site below its ``min_healthy``."""

    KIND = "override.below_floor"
    node: str
    site: str
    min_healthy: int


# --- incidents and maintenance ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentEvent(Event):
    """An incident changed (``subject`` is the service); the incident's API form and its times.

    ``started``/``ended`` are wall seconds; ``started_at``/``resolved_at`` the ISO forms.
    """

    incident: int = field(metadata=json_key("id"))
    service: str
    state: str
    cause: str
    cause_note: str
    maintenance: bool
    started_at: str | None
    resolved_at: str | None
    openings: int
    first_notice_at: str | None
    started: float
    ended: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentOpened(IncidentEvent):
    """A whole service is unavailable: a new incident."""

    KIND = "incident.opened"


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentReopened(IncidentEvent):
    """A quick relapse reopened the same incident."""

    KIND = "incident.reopened"


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentResolved(IncidentEvent):
    """The service is available again."""

    KIND = "incident.resolved"


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentUpdated(IncidentEvent):
    """An update was written to the incident's timeline."""

    KIND = "incident.updated"
    message: str
    author: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentCauseSet(IncidentEvent):
    """The incident's cause was tagged (the SLA ledger follows)."""

    KIND = "incident.cause"
    note: str
    author: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceEvent(Event):
    """A maintenance window (its API form; ``subject`` is its services joined by commas)."""

    window: int = field(metadata=json_key("id"))
    start: str | None
    end: str | None
    services: tuple[str, ...]
    note: str
    source: str
    who: str
    excluded_in_ledger: bool
    cancelled: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceDeclared(MaintenanceEvent):
    """A window was announced ahead."""

    KIND = "maintenance.declared"


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceCancelled(MaintenanceEvent):
    """A window was cancelled before it started (``who`` cancelled it)."""

    KIND = "maintenance.cancelled"


# --- notifications ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationDead(Event):
    """A notification was given up (``subject`` is its notifier)."""

    KIND = "notification.dead"
    message_id: str = field(metadata=json_key("id"))
    message_kind: str = field(metadata=json_key("kind"))  # the event kind it reported
    about: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationDisabled(Event):
    """A receiver disabled the notifier until an operator enables it."""

    KIND = "notification.disabled"
    notifier: str
    reason: str


EVENT_TYPES: tuple[type[Event], ...] = (
    SiteUp,
    SiteDown,
    ServiceAvailable,
    ServiceUnavailable,
    LbAction,
    TrafficProof,
    LbRecovered,
    FailoverFailed,
    FailoverPanic,
    FailoverPanicOver,
    BrakeEngaged,
    BrakeReleased,
    ControllerDecision,
    FailoverModeChanged,
    OverrideSet,
    OverrideCleared,
    OverrideExpired,
    OverrideDropped,
    OverrideBelowFloor,
    IncidentOpened,
    IncidentReopened,
    IncidentUpdated,
    IncidentCauseSet,
    IncidentResolved,
    MaintenanceDeclared,
    MaintenanceCancelled,
    NotificationDead,
    NotificationDisabled,
)
EVENT_KINDS = kinds_of(EVENT_TYPES)
