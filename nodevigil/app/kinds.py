"""Every kind of event nodevigil publishes: the kernel's and each domain's, joined here.

Each package declares the kinds it publishes; the configuration's alert routes are checked
against the union, which the application hands to ``load_config`` wherever it reads a file.
"""

from __future__ import annotations

from failover.events import EVENT_KINDS as FAILOVER_KINDS
from monitor.verdicts import EVENT_KINDS as MONITOR_KINDS
from nodevigil.core.events import EVENT_KINDS as KERNEL_KINDS
from sla.events import EVENT_KINDS as SLA_KINDS

EVENT_KINDS = KERNEL_KINDS | MONITOR_KINDS | FAILOVER_KINDS | SLA_KINDS
