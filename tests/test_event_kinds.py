"""Each package declares the event kinds it publishes; the application checks alert routes
against all of them, as before the kinds were split by package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from failover.events import EVENT_KINDS as FAILOVER_KINDS
from monitor.verdicts import EVENT_KINDS as MONITOR_KINDS
from nodevigil.app.cluster_events import EVENT_KINDS as CLUSTER_KINDS
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.core.config import load_config
from nodevigil.core.errors import ConfigError
from nodevigil.core.events import EVENT_KINDS as KERNEL_KINDS
from sla.events import EVENT_KINDS as SLA_KINDS

# Every kind nodevigil published when one list in the kernel held them all, and
# ``override.dropped``, published all along but missing from that list (the kinds now come
# from the event classes, so such a drift cannot happen again).
PUBLISHED = {
    "node.up", "node.down", "node.unknown", "site.up", "site.down", "service.available",
    "service.unavailable", "lb.action", "lb.proof", "lb.recovered", "failover.failed",
    "failover.panic", "failover.panic_over", "failover.brake", "failover.brake_released",
    "controller.decision", "failover.mode", "override.set", "override.cleared",
    "override.expired", "override.below_floor", "incident.opened", "incident.reopened",
    "incident.updated", "incident.cause", "incident.resolved", "maintenance.declared",
    "maintenance.cancelled", "notification.dead", "notification.disabled", "sla.unknown",
    "state.error", "state.recovered", "clock.stepped", "override.dropped",
    "cluster.leader", "cluster.standby", "cluster.fenced", "vantage.isolated", "vantage.rejoined",
}  # fmt: skip


def test_the_packages_kinds_are_the_published_kinds_once_each() -> None:
    parts = [KERNEL_KINDS, MONITOR_KINDS, FAILOVER_KINDS, SLA_KINDS, CLUSTER_KINDS]
    assert EVENT_KINDS == PUBLISHED
    assert sum(len(p) for p in parts) == len(PUBLISHED)  # no kind declared twice


def write(tmp_path: Path, events: str) -> Path:
    path = tmp_path / "nodevigil.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "sites: [{name: a, address: 127.0.0.1}]\n"
        "nodes: [{name: n1, site: a, probes: [{type: tcp, address: '127.0.0.1:1'}]}]\n"
        "notifiers: {ops: {type: alertmanager, url: 'http://127.0.0.1:9093'}}\n"
        f"alerts: [{{events: [{events}], notify: [ops]}}]\n"
    )
    return path


def test_alert_routes_are_checked_against_every_package(tmp_path: Path) -> None:
    good = write(tmp_path, "node.*, lb.action, sla.unknown, clock.stepped")
    load_config(good, event_kinds=EVENT_KINDS)
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.events\[1\]: 'nodes\.down' matches no"):
        load_config(write(tmp_path, "node.down, nodes.down"), event_kinds=EVENT_KINDS)


def test_check_config_refuses_an_unknown_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "incident.*, lb.acton")
    done = subprocess.run(
        [sys.executable, "-m", "nodevigil", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "alerts[0].events[1]: 'lb.acton' matches no event nodevigil publishes" in done.stderr
