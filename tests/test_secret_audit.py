"""The secret-leak audit: no secret the suite used appears in anything the suite produced.

How secrets are learnt and output is collected is in ``tests/leakcheck.py``; the hooks are in
``tests/conftest.py``. ``test_nothing_the_suite_produced_holds_a_secret`` runs last in the
session and scans everything under the basetemp. So that the audit means something when this
module runs alone, ``test_a_daemon_using_every_kind_of_secret`` first drives a daemon that holds
one secret of each kind through its error paths (refused deliveries, unreachable load balancers,
brokers and SMTP servers, wrong tokens), where leaks usually hide.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import sqlite3
import sys
import tempfile
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.failover.daemons import poll_until
from tests.leakcheck import SECRETS, LeakAudit, Registry, Scanned, learn_inputs, scan
from tests.test_sla_daemon import Target, start_daemon, stop_daemon

# --- the audit can fail -----------------------------------------------------------------------


def test_the_audit_finds_planted_leaks_and_spares_inputs() -> None:
    # Outside the basetemp: the session's own audit must not read these planted files.
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        registry = Registry()
        token, password = "planted-token-" + "q" * 20, "planted/pass+word=="
        registry.add("planted API token", token)
        registry.add("planted password", password)
        registry.add("too short to find", "abc")
        key = base64.b64encode(b"planted tsig key bytes 32 long!!").decode()
        (root / "named.conf").write_text(f'key "k" {{ algorithm hmac-sha256; secret "{key}"; }};')
        (root / "token").write_text(token + "\n")  # a token file: input
        (root / "hook.whsec").write_text("whsec_cGxhbnRlZCB3ZWJob29rIHNlY3JldA==\n")  # input
        (root / "nodevigil.yaml").write_text(
            yaml.safe_dump({"notifiers": {"h": {"type": "webhook", "secret_file": "hook.whsec"}}})
        )
        (root / "daemon.log").write_text(f"INFO sent with Authorization: Bearer {token}\n")
        (root / "quoted.log").write_text("GET /x?p=planted%2Fpass%2Bword%3D%3D\n")
        (root / "body.log").write_text("signed with key cGxhbnRlZCB3ZWJob29rIHNlY3JldA==\n")
        (root / "again.conf").write_text(f'# secret "{key}" is fine here, {key} is not\n')
        (root / "refused.yaml").write_text(yaml.safe_dump({"api": {"tokens": [{"token": token}]}}))
        digest = hashlib.sha256(token.encode()).hexdigest()
        registry.add("API token", digest)  # as when a test presents a digest as a token
        (root / "digest.log").write_text(f"configured sha256 {digest}\n")
        with sqlite3.connect(root / "outbox.db") as db:
            db.execute("CREATE TABLE outbox (body TEXT)")
            db.execute("INSERT INTO outbox VALUES (?)", ("x" * 5000 + password + "y" * 5000,))
        db.close()
        learn_inputs(root, registry)
        leaks = {(leak.file.name, leak.secret) for leak in scan(root, registry)}
    assert leaks == {
        ("daemon.log", "planted API token"),
        ("quoted.log", "planted password"),
        ("outbox.db", "planted password"),
        ("body.log", "secret_file hook.whsec of nodevigil.yaml"),
        ("again.conf", "TSIG key in named.conf"),
    }


def test_a_leak_report_names_the_file_and_the_secret_never_its_value() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        registry = Registry()
        registry.add("SMTP password of mail", "hunter2-hunter2")
        (Path(scratch) / "x.log").write_text("login hunter2-hunter2 failed")
        (leak,) = scan(Path(scratch), registry)
    assert str(leak) == f"{Path(scratch) / 'x.log'}: SMTP password of mail (bytes at offset 6)"


# --- a daemon holding every kind of secret, driven through its error paths --------------------


class RefusingHook:
    """A webhook receiver that refuses the first deliveries with 500, then accepts."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> RefusingHook:
        async def hook(request: web.Request) -> web.Response:
            self.requests.append((dict(request.headers), await request.read()))
            if len(self.requests) <= self.refuse:
                return web.Response(status=500, text="try again later")
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


def _every_kind(directory: Path, hook_url: str, target_url: str, tokens: dict[str, str]) -> Path:
    """A configuration with a secret of every kind; files and variables hold the secrets."""
    data: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [
                {"name": "ops", "role": "admin", "sha256": tokens["admin"]},
                {"name": "acme", "role": "customer", "customer": "acme", "sha256": tokens["acme"]},
            ],
        },
        "mqtt": {  # nothing listens: the heartbeat listener keeps failing to connect
            "url": "mqtt://127.0.0.1:1",
            "username": "nodevigil",
            "password": {"secret_file": "mqtt.password"},
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms", "hold_down": "1s", "site_hold_down": "1s"},
        "load_balancers": {
            "lb": {"type": "recording"},
            "dns": {  # nothing answers: every update fails
                "type": "rfc2136",
                "server": "127.0.0.1:1",
                "zone": "example.test.",
                "timeout": "300ms",
                "tsig": {"name": "nodevigil", "secret_file": "tsig.key"},
            },
            "pdns": {
                "type": "powerdns",
                "url": "http://127.0.0.1:1",
                "zone": "example.org.",
                "timeout": "300ms",
                "api_key": {"secret_env": "AUDIT_PDNS_KEY"},
            },
        },
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [{"name": "a", "site": "s", "probes": [{"type": "http", "url": target_url}]}],
        "services": [
            {"name": "web", "sites": ["s"], "global_lb": "dns", "record": "www"},
            {"name": "shop", "sites": ["s"], "global_lb": "pdns", "record": "shop"},
        ],
        "customers": [{"id": "acme", "services": ["web", "shop"], "plan": "gold"}],
        "notifiers": {
            "hook": {"type": "webhook", "url": hook_url, "secret_file": "hook.whsec"},
            "mail": {
                "type": "email",
                "to": ["ops@acme.example"],
                "smtp": {
                    "host": "127.0.0.1",
                    "port": 1,
                    "timeout": "1s",
                    "username": "nodevigil",
                    "password": {"secret_env": "AUDIT_SMTP_PASSWORD"},
                },
            },
        },
        "contingency_plans": {
            "gold": {"steps": [{"after": "0s", "notify": ["hook", "mail"]}], "on_resolve": ["hook"]}
        },
        "alerts": [{"events": ["*"], "notify": ["hook"]}],
        "notifications": {"backoff_initial": "100ms", "backoff_max": "200ms"},
    }
    path = directory / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_a_daemon_using_every_kind_of_secret(
    tmp_path: Path, target: Target, monkeypatch: pytest.MonkeyPatch, leak_audit: LeakAudit
) -> None:
    (tmp_path / "mqtt.password").write_text(f"mqtt-{secrets.token_urlsafe(16)}\n")
    (tmp_path / "tsig.key").write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    webhook = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    (tmp_path / "hook.whsec").write_text(webhook + "\n")
    monkeypatch.setenv("AUDIT_PDNS_KEY", f"pdns-{secrets.token_urlsafe(16)}")
    monkeypatch.setenv("AUDIT_SMTP_PASSWORD", f"smtp-{secrets.token_urlsafe(16)}")
    admin, acme = f"admin-{secrets.token_urlsafe(16)}", f"acme-{secrets.token_urlsafe(16)}"
    from nodevigil.app.api.auth import token_digest

    tokens = {"admin": token_digest(admin), "acme": token_digest(acme)}
    async with RefusingHook(refuse=2) as hook:
        hook_url = f"http://127.0.0.1:{hook.port}/hook"
        path = _every_kind(tmp_path, hook_url, target.url, tokens)
        daemon, task, _ = await start_daemon(path)
        base = f"http://127.0.0.1:{daemon.api_port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def get(path: str, token: str) -> int:
                    headers = {"Authorization": f"Bearer {token}"}
                    async with http.get(base + path, headers=headers) as response:
                        await response.read()
                        return response.status

                target.healthy = False  # the whole service fails: an incident, notices

                async def noticed() -> bool:
                    return any(b'"incident.opened"' in body for _, body in hook.requests)

                await poll_until(noticed, within=20, what="the incident's notice")
                target.healthy = True

                async def resolved() -> bool:
                    return any(b'"incident.resolved"' in body for _, body in hook.requests)

                await poll_until(resolved, within=20, what="the resolution notice")
                for route in ("/metrics", "/api/v1/nodes", "/api/v1/events", "/api/v1/status",
                              "/api/v1/notifications", "/api/v1/notifiers", "/api/v1/actions",
                              "/api/v1/incidents", "/status.json", "/readyz"):  # fmt: skip
                    assert await get(route, admin) in (200, 503), route
                assert await get("/api/v1/sla/credits", acme) == 200
                assert await get("/api/v1/nodes", f"wrong-{secrets.token_urlsafe(16)}") == 401
        finally:
            await stop_daemon(daemon, task)
    assert all("webhook-signature" in headers for headers, _ in hook.requests)
    # Each secret was read through read_secret or hashed by token_digest: the audit knows it.
    names = set(leak_audit.registry.needles().values())
    for expected in (
        "secret mqtt.password",
        "secret tsig.key",
        "secret hook.whsec",
        "secret AUDIT_PDNS_KEY",
        "secret AUDIT_SMTP_PASSWORD",
        "API token",
    ):
        assert expected in names, (expected, sorted(names))


async def test_the_spies_learn_secrets_handed_to_libraries_directly() -> None:
    """Adapters built by tests from literal secrets are learnt where the library gets them."""
    import aiomqtt
    import aiosmtplib
    import dns.tsig

    from failover.lb.powerdns import PowerDnsLoadBalancer
    from failover.notify.webhook import parse_secret

    tsig = base64.b64encode(secrets.token_bytes(32)).decode()
    mqtt, smtp, pdns = (f"{kind}-{secrets.token_urlsafe(12)}" for kind in ("m", "s", "p"))
    webhook = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    dns.tsig.Key("spied.", tsig)
    aiomqtt.Client("127.0.0.1", password=mqtt)
    aiosmtplib.SMTP(hostname="127.0.0.1", username="u", password=smtp)
    lb = PowerDnsLoadBalancer(name="p", url="http://127.0.0.1:1", zone="z.", api_key=pdns)
    await lb.close()
    parse_secret(webhook, "notifiers.spied")
    needles = SECRETS.needles()
    assert needles[tsig.encode()] == "TSIG key spied."
    assert needles[mqtt.encode()] == "MQTT password"
    assert needles[smtp.encode()] == "SMTP password"
    assert needles[pdns.encode()] == "PowerDNS API key"
    assert needles[webhook.encode()] == "webhook secret (notifiers.spied)"
    assert needles[webhook.removeprefix("whsec_").encode()] == "webhook secret (notifiers.spied)"


async def test_python_subprocesses_tee_their_output(leak_audit: LeakAudit) -> None:
    """A child's stdout and stderr reach its parent's pipe and the audit's copy alike."""
    marks = [f"tee-check-{secrets.token_hex(8)}" for _ in range(2)]
    code = f"import sys; print({marks[0]!r}); print({marks[1]!r}, file=sys.stderr)"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=PIPE, stderr=PIPE
    )
    out, err = await child.communicate()
    assert (out.decode().strip(), err.decode().strip()) == (marks[0], marks[1])
    copies = leak_audit.tee.children / f"{child.pid}.txt"
    assert marks[0] in copies.read_text() and marks[1] in copies.read_text()


# --- the audit itself -------------------------------------------------------------------------


@pytest.mark.audit_last
def test_nothing_the_suite_produced_holds_a_secret(leak_audit: LeakAudit) -> None:
    """Every file under the basetemp, the tees included: no secret outside its input files."""
    leak_audit.tee.flush()
    learn_inputs(leak_audit.root, leak_audit.registry)
    if not len(leak_audit.registry):
        pytest.skip("no test of this session used a secret")
    assert (leak_audit.tee.directory / "log.tee").exists(), "the log tee saw nothing"
    scanned = Scanned()
    leaks = scan(leak_audit.root, leak_audit.registry, scanned)
    summary = (
        f"{scanned.secrets} secret forms in {scanned.files} files ({scanned.bytes:,} bytes); "
        f"{scanned.inputs} configuration files passed over as input"
    )
    (leak_audit.tee.directory / "summary.txt").write_text(summary + "\n")
    print(summary)
    assert not leaks, "secrets leaked:\n" + "\n".join(str(leak) for leak in leaks)
