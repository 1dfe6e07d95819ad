"""Every kind of event nodevigil publishes: the kernel's and each domain's, joined here.

Each package declares the event classes it publishes (and its kinds from them); the
configuration's alert routes are checked against the union, which the application hands to
``load_config`` wherever it reads a file, and ``EVENT_TYPES`` rebuilds typed events from
their stored form.
"""

from __future__ import annotations

from failover.events import EVENT_TYPES as FAILOVER_TYPES
from monitor.verdicts import EVENT_TYPES as MONITOR_TYPES
from nodevigil.app.cluster_events import EVENT_TYPES as CLUSTER_TYPES
from nodevigil.core.events import EVENT_TYPES as KERNEL_TYPES
from nodevigil.core.events import EventTypes
from sla.events import EVENT_TYPES as SLA_TYPES

EVENT_TYPES = EventTypes(
    (*KERNEL_TYPES, *MONITOR_TYPES, *FAILOVER_TYPES, *SLA_TYPES, *CLUSTER_TYPES)
)
EVENT_KINDS = EVENT_TYPES.kinds
