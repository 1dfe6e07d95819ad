"""The customer's webhook endpoint: checks each delivery's Standard Webhooks signature."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOLERANCE = 300.0  # seconds a webhook-timestamp may be off, as the specification recommends
PATH = "/hooks/acme"


def new_secret() -> str:
    """A fresh ``whsec_`` secret with a 32-byte key."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = TOLERANCE,
) -> str | None:
    """None when the delivery is signed with ``secret`` and fresh, else what is wrong.

    Written from the specification (HMAC-SHA256 of ``id.timestamp.body``, base64, ``v1,``
    prefix, key = the base64 part of the secret), not with nodevigil's sender code.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if not stamp.isdigit():
        return f"webhook-timestamp {stamp!r} is not whole seconds"
    if abs(now - int(stamp)) > tolerance:
        return f"webhook-timestamp {stamp} is more than {tolerance:g}s from now"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return None
    return "no v1 signature matches"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST that arrived: its type, payload, arrival time and the signature verdict."""

    id: str
    type: str
    payload: dict[str, Any]
    arrived_at: float  # wall-clock
    problem: str | None  # None when the signature is valid

    @property
    def valid(self) -> bool:
        """Whether the signature checked out."""
        return self.problem is None


@dataclass
class CustomerReceiver:
    """An aiohttp server standing in for customer acme's webhook endpoint."""

    secret: str = field(default_factory=new_secret)
    deliveries: list[Delivery] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        """Where nodevigil posts."""
        return f"http://127.0.0.1:{self.port}{PATH}"

    async def __aenter__(self) -> CustomerReceiver:
        app = web.Application()
        app.router.add_post(PATH, self._receive)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, kind: str, within: float) -> Delivery:
        """The first delivery of ``kind`` (waiting up to ``within`` seconds for it)."""
        async with asyncio.timeout(within), self._arrived:
            while True:
                for delivery in self.deliveries:
                    if delivery.type == kind:
                        return delivery
                await self._arrived.wait()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        problem = check_signature(self.secret, request.headers, body, now)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        delivery = Delivery(
            id=request.headers.get("webhook-id", ""),
            type=str(payload.get("type", "")),
            payload=payload,
            arrived_at=now,
            problem=problem,
        )
        async with self._arrived:
            if not any(d.id == delivery.id and d.valid for d in self.deliveries):
                self.deliveries.append(delivery)  # retries of one webhook-id count once
            self._arrived.notify_all()
        if problem is not None:
            return web.json_response({"error": problem}, status=401)
        return web.json_response({"ok": True})
