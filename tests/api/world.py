"""A real daemon with data behind every route, run in its own thread for the API tests.

Two customers: ``acme`` holds ``acme-shop``, whose only node probes a port nothing listens on,
so it is down: an incident opens, the ledger records the outage, the customer's webhook (also
a dead port) is retried until it is dead-lettered. ``globex`` holds ``globex-mail``, whose node
probes the daemon's own /healthz and is up. Charges for both are imported and a maintenance
window is announced, so every list the API has is non-empty.

The daemon runs on its own event loop in a thread, so synchronous clients (schemathesis,
requests) and asynchronous tests alike can call it; errors the API logs are collected.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from nodevigil.app.api.auth import token_digest
from nodevigil.app.daemon import Daemon
from tests.failover.daemons import free_port, poll_until

ADMIN = "api-admin-token"
READER = "api-read-token"
ACME = "api-acme-token"
GLOBEX = "api-globex-token"
TOKENS = {"admin": ADMIN, "read": READER, "acme": ACME, "globex": GLOBEX}


def write_config(directory: Path, api: dict[str, Any] | None = None) -> Path:
    """The world's configuration; ``api`` adds keys to the api section."""
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def token(name: str, role: str, secret: str) -> dict[str, str]:
        entry = {"name": name, "role": role, "sha256": token_digest(secret)}
        return {**entry, "customer": name} if role == "customer" else entry

    data: dict[str, Any] = {
        "timezone": "UTC",
        "state_dir": str(directory / "state"),
        "api": {
            "listen": f"127.0.0.1:{port}",
            "tokens": [
                token("ops", "admin", ADMIN),
                token("noc", "read", READER),
                token("acme", "customer", ACME),
                token("globex", "customer", GLOBEX),
            ],
            **(api or {}),
        },
        "defaults": {"interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 1},
        "failover": {"cycle": "200ms", "hold_down": "1s", "site_hold_down": "1s"},
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [
            {"name": "acme-site", "address": "192.0.2.1", "local_lb": "lb"},
            {"name": "globex-site", "address": "192.0.2.2", "local_lb": "lb"},
        ],
        "nodes": [
            {"name": "acme-1", "site": "acme-site", "probes": [{"type": "http", "url": dead}]},
            {
                "name": "globex-1",
                "site": "globex-site",
                "probes": [{"type": "http", "url": f"http://127.0.0.1:{port}/healthz"}],
            },
        ],
        "services": [
            {"name": "acme-shop", "sites": ["acme-site"]},
            {"name": "globex-mail", "sites": ["globex-site"]},
        ],
        "customers": [
            {"id": "acme", "services": ["acme-shop"], "plan": "acme-plan"},
            {"id": "globex", "services": ["globex-mail"]},
        ],
        "contingency_plans": {
            "acme-plan": {"steps": [{"notify": ["acme-hook"]}], "on_resolve": ["acme-hook"]}
        },
        "notifiers": {"acme-hook": {"type": "alertmanager", "url": dead}},
        "notifications": {"max_age": "1s", "backoff_initial": "100ms", "backoff_max": "200ms"},
        "maintenance": [
            {
                "start": "2098-01-01T00:00:00Z",
                "end": "2098-01-01T02:00:00Z",
                "services": ["acme-shop"],
                "note": "acme planned work",
            }
        ],
    }
    path = directory / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _Collect(logging.Handler):
    """Keeps the error records the API and aiohttp's server log."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("nodevigil.app.api", "aiohttp.server", "aiohttp.web")):
            self.records.append(record)


class World:
    """The daemon in its thread; ``call`` is a synchronous client."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.daemon: Daemon | None = None
        self._done: Future[None] = Future()
        self.errors = _Collect()
        self.thread = threading.Thread(target=self._main, name="api-world", daemon=True)
        self.base = ""

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
            self._done.set_result(None)
        except BaseException as exc:
            self._done.set_exception(exc)
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self.daemon = Daemon(self.config)
        await self.daemon.run()

    def start(self, within: float = 15) -> None:
        """Start the daemon; return when its API answers and the controller has cycled."""
        logging.getLogger().addHandler(self.errors)
        self.thread.start()

        async def ready() -> bool:
            if self._done.done():
                self._done.result()  # the daemon ended: raise why
            daemon = self.daemon
            return daemon is not None and daemon.api_port is not None and daemon.context.ready

        asyncio.run(poll_until(ready, within=within, what="the daemon ready"))
        assert self.daemon is not None
        self.base = f"http://127.0.0.1:{self.daemon.api_port}"

    def stop(self, within: float = 15) -> None:
        """Stop the daemon and join its thread."""
        try:
            if self.daemon is not None and not self._done.done():
                self.loop.call_soon_threadsafe(self.daemon.request_stop)
            self._done.result(timeout=within)
            self.thread.join(within)
        finally:
            logging.getLogger().removeHandler(self.errors)

    @property
    def running(self) -> bool:
        """Whether the daemon is still running."""
        return self.thread.is_alive() and not self._done.done()

    def call(self, method: str, path: str, token: str | None = ADMIN, **kw: Any) -> tuple[int, Any]:
        """One request; the JSON body, or the text when it is not JSON."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        response = requests.request(method, self.base + path, headers=headers, timeout=10, **kw)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def wait(self, what: str, check: Any, within: float = 15) -> None:
        """Poll the synchronous ``check()`` until it is true."""

        async def poll() -> bool:
            return bool(await asyncio.to_thread(check))

        asyncio.run(poll_until(poll, within=within, interval=0.1, what=what))

    def seed(self) -> None:
        """Fill every list: an open incident, a dead letter, charges, a declared window."""

        def incident_open() -> bool:
            _, body = self.call("GET", "/api/v1/incidents?state=open")
            return any(i["service"] == "acme-shop" for i in body["incidents"])

        self.wait("acme-shop's incident", incident_open)
        today = datetime.now(UTC).date()
        csv = (
            "customer,service,date,amount,currency\n"
            f"acme,acme-shop,{today},288.00,CNY\n"
            f"globex,globex-mail,{today},100.00,CNY\n"
        )
        status, body = self.call("POST", "/api/v1/sla/charges", data=csv)
        assert status == 200, body
        window = {
            "start": "2099-01-01T00:00:00Z",
            "end": "2099-01-01T01:00:00Z",
            "services": ["acme-shop"],
            "note": "acme declared work",
        }
        status, body = self.call("POST", "/api/v1/maintenance", json=window)
        assert status == 201, body
        self.wait(
            "a dead-lettered notification",
            lambda: self.call("GET", "/api/v1/notifications?state=dead")[1]["notifications"],
        )


@contextmanager
def running_world(directory: Path, api: dict[str, Any] | None = None) -> Iterator[World]:
    """A seeded world; on exit, the daemon must still be running and have logged no error."""
    world = World(write_config(directory, api))
    world.start()
    try:
        world.seed()
        yield world
        assert world.running, "the daemon stopped under the tests"
        errors = [f"{r.name}: {r.getMessage()}" for r in world.errors.records]
        assert not errors, errors
    finally:
        world.stop()
