"""The failover controller: verdicts and overrides in, load-balancer actions and events out."""

from failover.controller.decide import decide
from failover.controller.loop import Controller
from failover.controller.metrics import ControllerMetrics
from failover.controller.state import (
    Action,
    Book,
    BrakeBook,
    BrakeView,
    ControllerState,
    Decision,
    NodeBook,
    Notice,
    Observed,
    Outage,
    Override,
    SetAddresses,
    SetServerState,
    SiteBook,
    UnknownNameError,
    VerdictSource,
)
from failover.controller.status import (
    BrakeStatus,
    ControllerStatus,
    NodeStatus,
    ServiceStatus,
    SiteStatus,
)
from failover.controller.store import ActionRecord, Store, StoredState

__all__ = [
    "Action",
    "ActionRecord",
    "Book",
    "BrakeBook",
    "BrakeStatus",
    "BrakeView",
    "Controller",
    "ControllerMetrics",
    "ControllerState",
    "ControllerStatus",
    "Decision",
    "NodeBook",
    "NodeStatus",
    "Notice",
    "Observed",
    "Outage",
    "Override",
    "ServiceStatus",
    "SetAddresses",
    "SetServerState",
    "SiteBook",
    "SiteStatus",
    "Store",
    "StoredState",
    "UnknownNameError",
    "VerdictSource",
    "decide",
]
