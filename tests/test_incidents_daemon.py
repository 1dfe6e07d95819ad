"""Incidents through the whole daemon, told to real receivers.

A signature-checking webhook receiver, an SMTP server (aiosmtpd), Prometheus Alertmanager and
Mosquitto stand in for the customer and the operators. The crash test kills the daemon with
SIGKILL between the outbox write and the delivery and shows the notification still arrives,
once per webhook-id, after a restart (on both state backends: SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import yaml

from nodevigil.app.api.auth import token_digest
from nodevigil.app.daemon import Daemon
from tests.brokers import Broker
from tests.cli import run_cli
from tests.conftest import StateBackend
from tests.daemon_process import spawn_daemon
from tests.failover.daemons import free_port, poll_until
from tests.notify.receivers import SmtpSink, WebhookReceiver, get_alerts, run_alertmanager
from tests.test_sla_daemon import Target, start_daemon, stop_daemon

ADMIN = "incident-admin-token"
READER = "incident-read-token"
ACME = "incident-acme-token"
GLOBEX = "incident-globex-token"


def write_config(
    path: Path,
    *,
    target: str,
    hook: WebhookReceiver,
    listen: str = "127.0.0.1:0",
    smtp_port: int | None = None,
    alertmanager: str | None = None,
    mqtt: str | None = None,
    backoff: str = "50ms",
) -> None:
    (path.parent / "acme.whsec").write_text(hook.secret + "\n")
    notifiers: dict[str, Any] = {
        "acme-hook": {"type": "webhook", "url": hook.url, "secret_file": "acme.whsec"},
        # A step an hour in: still scheduled when the outage ends, so it must be cancelled.
        "acme-late": {"type": "webhook", "url": hook.url, "secret_file": "acme.whsec"},
    }
    first_step = ["acme-hook"]
    on_resolve = ["acme-hook"]
    alerts: list[dict[str, Any]] = []
    if smtp_port is not None:
        notifiers["acme-mail"] = {
            "type": "email",
            "to": ["ops@acme.example"],
            "sender": "nodevigil@provider.example",
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "timeout": "5s"},
        }
        first_step.append("acme-mail")
        on_resolve.append("acme-mail")
    ops: list[str] = []
    if alertmanager is not None:
        notifiers["ops-am"] = {"type": "alertmanager", "url": alertmanager}
        ops.append("ops-am")
    if mqtt is not None:
        notifiers["bus"] = {"type": "mqtt", "topic": "nodevigil/events"}
        ops.append("bus")
    if ops:
        alerts.append(
            {"events": ["service.unavailable", "service.available", "node.down"], "notify": ops}
        )

    def customer_token(name: str, secret: str) -> dict[str, str]:
        return {"name": name, "role": "customer", "customer": name, "sha256": token_digest(secret)}

    data: dict[str, Any] = {
        "timezone": "UTC",
        "state_dir": "state",
        "api": {
            "listen": listen,
            "tokens": [
                {"name": "ops", "role": "admin", "sha256": token_digest(ADMIN)},
                {"name": "noc", "role": "read", "sha256": token_digest(READER)},
                customer_token("acme", ACME),
                customer_token("globex", GLOBEX),
            ],
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms", "hold_down": "1s", "site_hold_down": "1s"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [{"name": "a", "site": "s", "probes": [{"type": "http", "url": target}]}],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [
            {"id": "acme", "services": ["web"], "plan": "gold"},
            {"id": "globex", "services": [], "plan": "gold"},
        ],
        "contingency_plans": {
            "gold": {
                "steps": [
                    {"after": "0s", "notify": first_step},
                    {"after": "1h", "notify": ["acme-late"]},
                ],
                "on_resolve": on_resolve,
            }
        },
        "notifiers": notifiers,
        "alerts": alerts,
        "notifications": {"backoff_initial": backoff, "backoff_max": "200ms"},
    }
    if mqtt is not None:
        data["mqtt"] = {"url": mqtt}
    path.write_text(yaml.safe_dump(data))


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    async def call(
        self, method: str, path: str, token: str | None = ADMIN, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.base + path, headers=headers, **kw) as r,
        ):
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


async def start(path: Path) -> tuple[Daemon, asyncio.Task[None], Api]:
    daemon, task, client = await start_daemon(path, within=15)
    return daemon, task, Api(client.base)


async def stop(daemon: Daemon, task: asyncio.Task[None]) -> None:
    await stop_daemon(daemon, task, within=15)


def accepted_of(hook: WebhookReceiver, kind: str) -> list[Any]:
    return [d for d in hook.accepted if d.type == kind]


async def test_an_outage_reaches_customer_and_operators_through_every_notifier(
    tmp_path: Path, target: Target, mosquitto: Broker
) -> None:
    async with (
        WebhookReceiver() as hook,
        SmtpSink() as smtp,
        run_alertmanager(tmp_path) as alertmanager,
        aiomqtt.Client(hostname="127.0.0.1", port=mosquitto.port) as subscriber,
    ):
        await subscriber.subscribe("nodevigil/events", qos=1)
        path = tmp_path / "nodevigil.yaml"
        write_config(
            path,
            target=target.url,
            hook=hook,
            smtp_port=smtp.port,
            alertmanager=alertmanager,
            mqtt=mosquitto.url,
        )
        # acme reads times in its own zone; notices link the public status page.
        data = yaml.safe_load(path.read_text())
        data["customers"][0]["timezone"] = "Asia/Shanghai"
        data["status_page"] = {"url": "https://status.provider.example/"}
        path.write_text(yaml.safe_dump(data))
        daemon, task, api = await start(path)
        try:
            target.healthy = False
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), timeout=15)
            (opened,) = accepted_of(hook, "incident.opened")
            incident = opened.payload["data"]["incident"]
            assert opened.payload["data"]["customer"] == "acme"
            assert incident["service"] == "web" and incident["state"] == "investigating"
            # The webhook-id starts with the installation id kept in the state directory.
            with sqlite3.connect(tmp_path / "state" / "ledger.db") as db:
                (installation,) = db.execute(
                    "SELECT value FROM meta WHERE key = 'installation'"
                ).fetchone()
            assert opened.id.startswith(f"{installation}.inc{incident['id']}-")

            await smtp.wait_for(lambda: len(smtp.messages) >= 1, timeout=15)
            mail = smtp.messages[0].message
            assert mail["Subject"] == f"[nodevigil] web is unavailable (incident {incident['id']})"
            assert mail["To"] == "ops@acme.example"
            body = mail.get_content().replace("\r\n", "\n")  # SMTP lines end in CRLF
            assert "Customer:  acme" in body
            assert re.search(
                r"\nStarted:   \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+08:00 \(Asia/Shanghai\)\n", body
            )
            assert "\nStatus:    https://status.provider.example/\n" in body

            async def alert_firing() -> bool:
                alerts = await get_alerts(alertmanager)
                return any(
                    a["labels"].get("alertname") == "NodevigilServiceUnavailable"
                    and a["status"]["state"] == "active"
                    for a in alerts
                )

            await poll_until(alert_firing, within=15, what="the Alertmanager alert")

            async def published() -> dict[str, Any]:
                async for message in subscriber.messages:
                    body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    if body["type"] == "service.unavailable":
                        return dict(body)
                raise AssertionError("subscription ended")

            event = await asyncio.wait_for(published(), 15)
            assert event["data"]["subject"] == "web"

            # The API: the incident, its timeline, who may see it.
            status, body = await api.call("GET", "/api/v1/incidents?state=open")
            assert status == 200 and [i["id"] for i in body["incidents"]] == [incident["id"]]
            status, body = await api.call("GET", "/api/v1/incidents", token=ACME)
            assert [i["id"] for i in body["incidents"]] == [incident["id"]]
            status, body = await api.call("GET", "/api/v1/incidents", token=GLOBEX)
            assert (status, body) == (200, {"incidents": []})
            status, body = await api.call(
                "GET", f"/api/v1/incidents/{incident['id']}", token=GLOBEX
            )
            assert status == 404

            async def first_steps_delivered() -> bool:
                _, detail = await api.call("GET", f"/api/v1/incidents/{incident['id']}")
                states = {(n["notifier"], n["state"]) for n in detail["notifications"]}
                return {("acme-hook", "delivered"), ("acme-mail", "delivered")} <= states

            await poll_until(first_steps_delivered, within=10, what="delivery states")
            _, detail = await api.call("GET", f"/api/v1/incidents/{incident['id']}")
            assert detail["updates"][0]["state"] == "investigating"
            assert any(e["kind"] == "service.unavailable" for e in detail["events"])
            late = next(n for n in detail["notifications"] if n["notifier"] == "acme-late")
            assert late["state"] == "pending" and late["step"] == "s1"

            # An operator's update reaches the customer; the cause reaches the ledger.
            status, _ = await api.call(
                "POST",
                f"/api/v1/incidents/{incident['id']}/updates",
                token=READER,
                json={"message": "x"},
            )
            assert status == 403
            status, body = await api.call(
                "POST",
                f"/api/v1/incidents/{incident['id']}/updates",
                json={"message": "carrier fibre cut near DC1", "state": "identified"},
            )
            assert status == 201 and body["incident"]["state"] == "identified"
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.updated")), timeout=10)
            status, body = await api.call(
                "POST",
                f"/api/v1/incidents/{incident['id']}/cause",
                json={"cause": "telecom_failure", "note": "carrier ticket 123"},
            )
            assert status == 200 and body["incident"]["cause"] == "telecom_failure"

            async def ledger_follows() -> bool:
                _, body = await api.call("GET", "/api/v1/sla/ledger")
                return [i["cause"] for i in body["intervals"]] == ["telecom_failure"]

            await poll_until(ledger_follows, within=10, what="the ledger's cause")

            # Recovery: resolution notices, the late step cancelled, the alert resolved.
            target.healthy = True

            def took() -> str:
                (resolved,) = accepted_of(hook, "incident.resolved")
                return str(resolved.payload["data"]["message"]).split("unavailable for ")[1][:-2]

            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.resolved")), timeout=15)
            subjects = lambda: [m.message["Subject"] for m in smtp.messages]  # noqa: E731
            await smtp.wait_for(lambda: len(smtp.messages) >= 3, timeout=15)
            assert subjects() == [
                f"[nodevigil] web is unavailable (incident {incident['id']})",
                f"[nodevigil] web: identified (incident {incident['id']})",
                f"[nodevigil] web is available again after {took()} (incident {incident['id']})",
            ]

            async def alert_resolved() -> bool:
                alerts = await get_alerts(alertmanager, active="true")
                return not any(
                    a["labels"].get("alertname") == "NodevigilServiceUnavailable" for a in alerts
                )

            await poll_until(alert_resolved, within=15, what="the alert resolved")
            _, detail = await api.call("GET", f"/api/v1/incidents/{incident['id']}")
            assert detail["incident"]["state"] == "resolved"
            late = next(n for n in detail["notifications"] if n["notifier"] == "acme-late")
            assert late["state"] == "cancelled"
            assert all(hook.deliveries(d.id) == 1 for d in hook.accepted)

            _, metrics = await api.call("GET", "/metrics", token=None)
            assert "nodevigil_incident_first_notice_seconds_count 1.0" in metrics
            assert 'nodevigil_notifications_sent_total{notifier="acme-hook"} 3.0' in metrics
            assert "nodevigil_incidents_open 0.0" in metrics
        finally:
            await stop(daemon, task)


async def test_a_receiver_failing_five_times_gets_the_notice_once(
    tmp_path: Path, target: Target
) -> None:
    async with WebhookReceiver() as hook:
        hook.fail_next(5, status=503, retry_after="0")
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook)
        daemon, task, api = await start(path)
        try:
            target.healthy = False
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), timeout=20)
            (opened,) = accepted_of(hook, "incident.opened")
            assert len(hook.attempts_for(opened.id)) == 6
            assert hook.deliveries(opened.id) == 1
            # Every attempt carried the same id and body; only the timestamp is re-signed.
            assert len({a.body for a in hook.attempts_for(opened.id)}) == 1

            async def recorded() -> bool:
                _, body = await api.call("GET", "/api/v1/notifications?state=delivered")
                return any(
                    n["id"] == opened.id and n["attempts"] == 6 for n in body["notifications"]
                )

            await poll_until(recorded, within=10, what="six attempts recorded")
        finally:
            await stop(daemon, task)


@pytest.mark.parametrize("state_backend", ["sqlite", "postgres"], indirect=True)
async def test_killed_between_outbox_write_and_delivery_it_still_delivers_once(
    tmp_path: Path, target: Target, state_backend: StateBackend
) -> None:
    async with WebhookReceiver() as hook:
        port = free_port()
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook, listen=f"127.0.0.1:{port}")
        state_backend.configure(path)  # SQLite in state_dir, or a fresh PostgreSQL database
        target.healthy = False  # the service is down from the start
        log = tmp_path / "daemon.log"
        proc = await spawn_daemon(path, log, failpoints="outbox.before_send")
        code = await asyncio.wait_for(proc.wait(), 30)
        assert code == -signal.SIGKILL, log.read_text()
        assert hook.attempts == 0  # it died with the notification written, not yet sent
        proc = await spawn_daemon(path, log)
        try:
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), timeout=20)
            api = Api(f"http://127.0.0.1:{port}")
            _, body = await api.call("GET", "/api/v1/incidents")
            assert len(body["incidents"]) == 1  # the restart did not open a second incident
            target.healthy = True
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.resolved")), timeout=20)
            ids = [d.id for d in hook.accepted]
            assert len(ids) == len(set(ids)) == 2, ids
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()


async def test_bad_incident_requests_get_json_4xx(tmp_path: Path, target: Target) -> None:
    async with WebhookReceiver() as hook:
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook)
        daemon, task, api = await start(path)
        try:
            cases: list[tuple[str, str, dict[str, Any], int]] = [
                ("GET", "/api/v1/incidents?state=bogus", {}, 400),
                ("GET", "/api/v1/incidents?limit=0", {}, 400),
                ("GET", "/api/v1/incidents/abc", {}, 400),
                ("GET", "/api/v1/incidents/999", {}, 404),
                ("POST", "/api/v1/incidents/999/updates", {"json": {"message": "x"}}, 404),
                ("POST", "/api/v1/incidents/999/updates", {"json": {"message": ""}}, 400),
                ("POST", "/api/v1/incidents/999/updates", {"data": "not json"}, 400),
                ("POST", "/api/v1/incidents/999/updates", {"json": {"message": "x", "y": 1}}, 400),
                ("POST", "/api/v1/incidents/999/cause", {"json": {"cause": "aliens"}}, 400),
                ("POST", "/api/v1/incidents/999/cause", {"json": {"cause": "provider"}}, 404),
                ("GET", "/api/v1/notifications?state=lost", {}, 400),
                ("POST", "/api/v1/notifications/nope/retry", {}, 404),
                ("POST", "/api/v1/notifiers/nope/enable", {}, 404),
                ("POST", "/api/v1/maintenance", {"json": {"start": "tomorrow"}}, 400),
                ("DELETE", "/api/v1/maintenance/77", {}, 409),
            ]
            for method, route, kw, expected in cases:
                status, body = await api.call(method, route, **kw)
                assert status == expected and "error" in body, (route, status, body)
            status, body = await api.call("GET", "/api/v1/notifiers")
            assert status == 200
            assert {n["name"] for n in body["notifiers"]} == {"acme-hook", "acme-late"}
            assert "secret" not in json.dumps(body).lower()
        finally:
            await stop(daemon, task)


async def test_maintenance_is_announced_then_marks_the_incident_and_is_excluded(
    tmp_path: Path, target: Target
) -> None:
    async with WebhookReceiver() as hook:
        path = tmp_path / "nodevigil.yaml"
        write_config(path, target=target.url, hook=hook)
        daemon, task, api = await start(path)
        try:
            now = daemon.clock.wall()
            from datetime import UTC, datetime

            def stamp(offset: float) -> str:
                return datetime.fromtimestamp(now + offset, UTC).isoformat()

            # Announced ahead from the CLI, then cancelled before it begins.
            code, out = await run_cli(
                "maintenance", "add", "--start", stamp(3600), "--end", stamp(7200),
                "--service", "web", "--note", "x", "--url", api.base, token=ADMIN,
            )  # fmt: skip
            assert code == 0, out
            later = json.loads(out)["maintenance"]["id"]
            code, out = await run_cli("maintenance", "cancel", str(later), "--url", api.base,
                                      token=ADMIN)  # fmt: skip
            assert code == 0, out  # not begun: can be cancelled
            code, out = await run_cli("maintenance", "cancel", str(later), "--url", api.base,
                                      token=ADMIN)  # fmt: skip
            assert code == 1 and "yet to start" in out
            status, body = await api.call(
                "POST",
                "/api/v1/maintenance",
                json={
                    "start": stamp(-1),
                    "end": stamp(3600),
                    "services": ["web"],
                    "note": "kernel upgrade",
                },
            )
            assert status == 201
            _, body = await api.call("GET", "/api/v1/maintenance", token=ACME)
            assert [w["note"] for w in body["maintenance"]] == ["kernel upgrade"]
            target.healthy = False
            await hook.wait_for(lambda: bool(accepted_of(hook, "incident.opened")), timeout=15)
            (opened,) = accepted_of(hook, "incident.opened")
            data = opened.payload["data"]
            assert data["incident"]["maintenance"] is True
            assert data["incident"]["cause"] == "scheduled_maintenance"
            assert data["maintenance_window"]["note"] == "kernel upgrade"
            code, out = await run_cli("incident", "list", "--open", "--url", api.base, token=ACME)
            assert code == 0 and json.loads(out)["incidents"][0]["maintenance"] is True

            async def excluded() -> bool:
                _, body = await api.call("GET", "/api/v1/maintenance")
                return all(w["excluded_in_ledger"] for w in body["maintenance"])

            await poll_until(excluded, within=15, what="the window excluded in the ledger")
        finally:
            await stop(daemon, task)
