"""The Alertmanager transport against Debian's real Alertmanager."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from failover.notify.alertmanager import AlertmanagerTransport, alert_name, build_alert
from failover.notify.base import RESOLVES
from failover.notify.transports import build_transport
from nodevigil.core.config.schema import AlertmanagerNotifier
from tests.failover.daemons import free_port, poll_until
from tests.notify.receivers import Closer, get_alerts, make_message


def notifier(url: str, **extra: Any) -> AlertmanagerNotifier:
    return AlertmanagerNotifier.model_validate({"type": "alertmanager", "url": url, **extra})


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("node.down", "NodevigilNodeDown"),
        ("node.up", "NodevigilNodeDown"),
        ("failover.failed", "NodevigilFailoverFailed"),
        ("lb.recovered", "NodevigilFailoverFailed"),
        ("incident.opened", "NodevigilIncidentOpened"),
        ("incident.resolved", "NodevigilIncidentOpened"),
        ("service.available", "NodevigilServiceUnavailable"),
        ("failover.panic_over", "NodevigilFailoverPanic"),
        ("controller.decision", "NodevigilControllerDecision"),
        ("lb.action", "NodevigilLbAction"),
    ],
)
def test_alert_names(kind: str, name: str) -> None:
    assert alert_name(kind) == name


def test_a_recovery_carries_its_problems_labels() -> None:
    labels = {"team": "ops", "alertname": "overridden?"}
    for resolving, raising in RESOLVES.items():
        fire = build_alert(make_message(raising, "web"), labels, 3600)
        clear = build_alert(make_message(resolving, "web"), labels, 3600)
        assert fire["labels"] == clear["labels"]
        assert fire["labels"]["alertname"] == alert_name(raising)
        assert fire["labels"]["team"] == "ops"
        assert "startsAt" in fire and "endsAt" in clear and "startsAt" not in clear
        # A problem must outlive Alertmanager's resolve_timeout until its recovery comes.
        assert fire["endsAt"] > clear["endsAt"]


def test_a_problem_stays_firing_for_firing_for() -> None:
    message = make_message("node.down", "sh-1", created_at=1_767_225_600.0)
    alert = build_alert(message, {}, 900, firing_for=86400)
    assert alert["startsAt"] == "2026-01-01T00:00:00Z"
    assert alert["endsAt"] == "2026-01-02T00:00:00Z"


def test_a_one_shot_event_ends_after_resolve_after() -> None:
    message = make_message("lb.action", "sh-1", created_at=1_767_225_600.0)
    alert = build_alert(message, {}, 900)
    assert alert["startsAt"] == "2026-01-01T00:00:00Z"
    assert alert["endsAt"] == "2026-01-01T00:15:00Z"
    assert alert["annotations"]["message_id"] == message.id
    assert alert["annotations"]["kind"] == "lb.action"
    assert alert["labels"]["source"] == "nodevigil"


async def test_node_down_fires_and_node_up_resolves(alertmanager: str, closing: Closer) -> None:
    t = closing(AlertmanagerTransport("am", notifier(alertmanager, labels={"team": "ops"})))
    now = time.time()
    down = make_message("node.down", "sh-1", created_at=now - 2, summary="sh-1 is down")
    other = make_message("node.down", "sh-2", created_at=now - 2)

    assert (await t.send(down)).outcome == "delivered"
    assert (await t.send(other)).outcome == "delivered"

    active: list[dict[str, Any]] = []

    async def refresh() -> None:
        active[:] = await get_alerts(alertmanager, active="true", filter='source="nodevigil"')

    await refresh()
    subjects = {a["labels"]["subject"]: a for a in active}
    assert set(subjects) == {"sh-1", "sh-2"}
    alert = subjects["sh-1"]
    assert alert["labels"]["alertname"] == "NodevigilNodeDown"
    assert alert["labels"]["team"] == "ops"
    assert alert["annotations"]["summary"] == "sh-1 is down"
    assert alert["annotations"]["message_id"] == down.id
    assert alert["status"]["state"] == "active"
    assert abs(seconds(alert["startsAt"]) - down.created_at) < 0.01

    up = make_message("node.up", "sh-1", created_at=time.time())
    assert (await t.send(up)).outcome == "delivered"

    async def only_sh2_active() -> bool:
        await refresh()
        return {a["labels"]["subject"] for a in active} == {"sh-2"}

    await poll_until(only_sh2_active, within=10, what="node.up resolving sh-1 (only sh-1)")


async def test_a_one_shot_event_fires_until_resolve_after(
    alertmanager: str, closing: Closer
) -> None:
    t = closing(AlertmanagerTransport("am", notifier(alertmanager, resolve_after="10m")))
    message = make_message("lb.action", "sh-3", created_at=time.time())
    assert (await t.send(message)).outcome == "delivered"
    [alert] = await get_alerts(alertmanager, filter='alertname="NodevigilLbAction"')
    assert abs(seconds(alert["endsAt"]) - (message.created_at + 600)) < 0.01


async def test_unreachable_alertmanager_is_retried(closing: Closer, tmp_path: Path) -> None:
    config = notifier(f"http://127.0.0.1:{free_port()}/", timeout="1s")
    t = closing(build_transport("am", config, tmp_path, None))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "alertmanager am" in delivery.detail


async def test_a_wrong_path_is_retried_not_disabled(alertmanager: str, closing: Closer) -> None:
    t = closing(AlertmanagerTransport("am", notifier(alertmanager + "/nothing-here")))
    delivery = await t.send(make_message())
    assert delivery.outcome == "retry"
    assert "404" in delivery.detail
