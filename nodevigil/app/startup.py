"""The daemon's start-up line: what runs, from which file, and what each load balancer said.

Logged once, after the first cycle has read every load balancer back, so the first screen of
a new installation's log says whether nodevigil sees the HAProxy backends and DNS records the
operator meant (a backend name's typo shows here, not at the first failover).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from failover.controller.status import ControllerStatus, LoadBalancerStatus
from nodevigil.core.config import Config


def startup_line(version: str, path: Path, config: Config, status: ControllerStatus) -> str:
    """``nodevigil VERSION started: config PATH (counts); LB read back ...; LB ...``."""
    counts = ", ".join(
        f"{len(items)} {name}"
        for name, items in (
            ("nodes", config.nodes),
            ("sites", config.sites),
            ("services", config.services),
            ("customers", config.customers),
            ("load balancers", config.load_balancers),
        )
    )
    mode = "" if status.mode == "act" else f", mode {status.mode}"
    parts = [f"nodevigil {version} started: config {path} ({counts}{mode})"]
    parts += [_read_back(lb, config, status) for lb in status.load_balancers]
    return "; ".join(parts)


def _read_back(lb: LoadBalancerStatus, config: Config, status: ControllerStatus) -> str:
    """What one load balancer read back: servers by admin state, or each record's addresses."""
    if lb.kind == "local":
        sites = {s.name for s in config.sites if s.local_lb == lb.name}
        states = Counter(n.actual or "unread" for n in status.nodes if n.site in sites)
        got = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        text = f"{lb.name} read back {'/'.join(lb.backends)}: {got or 'no servers'}"
    else:
        records = [
            f"{r.record} unread"
            if r.addresses is None
            else f"{r.record} = {', '.join(r.addresses) or 'no address'}"
            for r in lb.records
        ]
        text = f"{lb.name} read back {'; '.join(records) or 'no records'}"
    if not lb.read_back:
        text += f" (NOT ALL READ: {'; '.join(lb.errors)})"
    return text
