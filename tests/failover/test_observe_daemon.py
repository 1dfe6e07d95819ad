"""Observe mode and readiness through the whole daemon, against a real HAProxy and a webhook
receiver standing in for the customer and the operators."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from failover.lb import ServerState
from nodevigil.app.daemon import Daemon
from tests.failover.daemons import HAProxyInstance, poll_until
from tests.failover.haproxy_daemon import admin_states, write_haproxy_daemon_config
from tests.notify.receivers import WebhookReceiver

TOKEN = "observe-admin-token"


def configure(path: Path, haproxy: HAProxyInstance, hook: WebhookReceiver, mode: str) -> None:
    """The HAProxy daemon configuration, with a customer of ``web`` and an operator route,
    both to ``hook``; ``failover.mode`` is ``mode``."""
    write_haproxy_daemon_config(path, haproxy, admin_token=TOKEN)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    (path.parent / "hook.whsec").write_text(hook.secret + "\n")
    hook_cfg = {"type": "webhook", "url": hook.url, "secret_file": "hook.whsec"}
    data["failover"]["mode"] = mode
    data["notifiers"] = {"customer-hook": hook_cfg, "ops-hook": hook_cfg}
    data["customers"] = [{"id": "acme", "services": ["web"], "plan": "gold"}]
    data["contingency_plans"] = {
        "gold": {
            "steps": [{"after": "0s", "notify": ["customer-hook"]}],
            "on_resolve": ["customer-hook"],
        }
    }
    data["alerts"] = [{"events": ["service.unavailable", "node.down"], "notify": ["ops-hook"]}]
    data["notifications"] = {"backoff_initial": "50ms", "backoff_max": "200ms"}
    path.write_text(yaml.safe_dump(data))


async def get(base: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        return response.status, await response.json()


async def test_observe_mode_drains_nothing_tells_no_customer_and_a_reload_acts(
    tmp_path: Path, haproxy: HAProxyInstance
) -> None:
    async with WebhookReceiver() as hook:
        path = tmp_path / "nodevigil.yaml"
        configure(path, haproxy, hook, "observe")
        daemon = Daemon(path)
        task = asyncio.create_task(daemon.run())
        try:
            await poll_until(
                lambda: asyncio.sleep(0, daemon.api_port is not None and daemon.context.ready),
                within=15,
                what="daemon ready",
            )
            base = f"http://127.0.0.1:{daemon.api_port}"
            await haproxy.nodes["n2"].stop()

            async def would_drain_n2() -> bool:
                _, status = await get(base, "/api/v1/status")
                return any(w["text"].startswith("drain sh-n2 ") for w in status["would"])

            await poll_until(would_drain_n2, within=10, what="would drain sh-n2")
            _, status = await get(base, "/api/v1/status")
            assert status["mode"] == "observe"
            assert (await admin_states(haproxy))["n2"] is ServerState.READY
            _, page = await get(base, "/status.json")
            assert "would drain sh-n2 from sh-haproxy/web" in page["observe"]
            async with aiohttp.ClientSession() as http, http.get(base + "/status") as r:
                html = await r.text()
            assert "would drain sh-n2 from sh-haproxy/web" in html
            # The public page (no token) names what would move, never the evidence behind it.
            assert "connection refused" not in html and "connection refused" not in str(page)
            assert any("connection refused" in w["why"] for w in status["would"])

            # The whole service down: an incident opens, operators hear of it, customers not.
            await haproxy.nodes["n1"].stop()
            await haproxy.nodes["n3"].stop()

            async def operators_told() -> bool:
                return any(d.type == "service.unavailable" for d in hook.accepted)

            await poll_until(operators_told, within=15, what="the operator alert")
            alert = next(d for d in hook.accepted if d.type == "service.unavailable")
            assert alert.payload["data"]["observe"] is True
            _, incidents = await get(base, "/api/v1/incidents")
            (incident,) = incidents["incidents"]
            _, outbox = await get(base, "/api/v1/notifications")
            kinds = {n["kind"] for n in outbox["notifications"]}
            assert "incident.opened" not in kinds and "service.unavailable" in kinds
            assert not [d for d in hook.accepted if d.type.startswith("incident.")]
            assert all(s is ServerState.READY for s in (await admin_states(haproxy)).values())
            _, detail = await get(base, f"/api/v1/incidents/{incident['id']}")
            assert "observe mode: no customer is notified" in str(detail)

            for name in ("n1", "n3"):
                await haproxy.nodes[name].start()

            async def resolved() -> bool:
                _, body = await get(base, "/api/v1/incidents")
                return body["incidents"][0]["resolved_at"] is not None

            await poll_until(resolved, within=15, what="the incident resolved")

            # A reload to act: the dead node is drained at the next cycle; the switch is an event.
            configure(path, haproxy, hook, "act")
            assert daemon.reload()

            async def n2_out() -> bool:
                return (await admin_states(haproxy))["n2"] is ServerState.MAINT

            await poll_until(n2_out, within=10, what="n2 drained after the reload")
            _, events = await get(base, "/api/v1/events?kind=failover.mode")
            (changed,) = events["events"]
            assert (changed["data"]["previous"], changed["data"]["mode"]) == ("observe", "act")
            assert not [d for d in hook.accepted if d.type.startswith("incident.")]
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 15)


async def test_readyz_is_503_naming_an_unreadable_backend_until_it_reads_back(
    tmp_path: Path, haproxy: HAProxyInstance
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_haproxy_daemon_config(path, haproxy, admin_token=TOKEN)
    data = yaml.safe_load(path.read_text())
    data["sites"][0]["backend"] = "wbe"  # a typo
    path.write_text(yaml.safe_dump(data))
    daemon = Daemon(path)
    task = asyncio.create_task(daemon.run())
    try:
        await poll_until(
            lambda: asyncio.sleep(0, daemon.api_port is not None and daemon.context.ready),
            within=15,
            what="daemon started",
        )
        base = f"http://127.0.0.1:{daemon.api_port}"

        async def readyz() -> tuple[int, Any]:
            async with aiohttp.ClientSession() as http, http.get(base + "/readyz") as r:
                return r.status, await r.json()

        async def read_once() -> bool:
            return daemon.controller.last_cycle_at is not None

        await poll_until(read_once, within=10, what="a first cycle")
        code, body = await readyz()
        assert code == 503, body
        assert body["status"] == "not_ready"
        (reason,) = body["not_ready"]
        assert reason.startswith("sh-haproxy: cannot read backend wbe: ") and "wbe" in reason[36:]
        _, status = await get(base, "/api/v1/status")
        (lb,) = status["load_balancers"]
        assert lb["read_back"] is False and lb["backends"] == ["wbe"]

        data["sites"][0]["backend"] = "web"
        path.write_text(yaml.safe_dump(data))
        assert daemon.reload()

        async def ready() -> bool:
            return (await readyz())[0] == 200

        await poll_until(ready, within=10, what="/readyz 200 once the backend reads back")
        _, status = await get(base, "/api/v1/status")
        assert status["load_balancers"][0]["read_back"] is True
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)


def test_run_observe_keeps_observe_mode_whatever_the_file_and_a_reload_say(tmp_path: Path) -> None:
    from nodevigil.app.cli import build_parser

    args = build_parser().parse_args(["run", "--observe", "-c", str(tmp_path / "x.yaml")])
    assert args.observe is True
    assert build_parser().parse_args(["run"]).observe is False
    path = tmp_path / "nodevigil.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "failover": {"mode": "act"},
                "load_balancers": {"lb": {"type": "recording"}},
                "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
                "nodes": [
                    {
                        "name": "a",
                        "site": "s",
                        "probes": [{"type": "tcp", "address": "127.0.0.1:9"}],
                    }
                ],
            }
        )
    )
    assert Daemon(path).config.failover.mode == "act"
    observing = Daemon(path, observe=True)
    assert observing.config.failover.mode == "observe"
    assert observing._load().failover.mode == "observe"  # what a reload reads
