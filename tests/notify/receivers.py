"""Real receivers for the notification transports: reusable by any test that sends notices.

- ``WebhookReceiver``: an aiohttp server that checks Standard Webhooks signatures with its own
  implementation of the spec, records what it accepted, and fails, gives up or stalls on demand.
- ``run_alertmanager``: Debian's real Prometheus Alertmanager on ephemeral loopback ports.
- ``SmtpSink``: an aiosmtpd server (plain, STARTTLS or implicit TLS, optionally with AUTH).

Run ``python -m tests.notify.receivers --secret whsec_... --record FILE`` for a webhook receiver
in its own process: it prints its URL, appends each accepted delivery to FILE as a JSON line and
stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import hmac
import json
import os
import shutil
import signal
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from failover.notify.base import Message, Transport
from failover.notify.transports import close_all

# The receiver's check is written from the spec, apart from nodevigil's sender (webhook.py).
from nodevigil.app.demo.receiver import TOLERANCE, check_signature, new_secret
from tests.failover.daemons import Daemon, free_port, poll_until
from tests.failover.daemons.process import spawn, start_with_retries, wait_ready


async def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, named as callers expect
    what: str = "",
) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError after ``timeout`` seconds."""

    async def check() -> bool:
        return predicate()

    await poll_until(check, within=timeout, interval=0.01, what=what or "the condition")


def make_message(
    kind: str = "node.down",
    subject: str = "sh-1",
    *,
    message_id: str | None = None,
    created_at: float | None = None,
    data: Mapping[str, Any] | None = None,
    summary: str | None = None,
    text: str | None = None,
) -> Message:
    """A message as the outbox hands it to a transport (``created_at`` defaults to now)."""
    return Message(
        id=message_id or f"msg-{os.urandom(6).hex()}",
        notifier="test",
        kind=kind,
        subject=subject,
        created_at=time.time() if created_at is None else created_at,
        data={"node": subject, "site": "sh"} if data is None else data,
        summary=f"{subject}: {kind}" if summary is None else summary,
        text=f"{kind} {subject}\n" if text is None else text,
    )


T = TypeVar("T", bound=Transport)


class Closer:
    """Collects transports so a fixture closes them all after the test."""

    def __init__(self) -> None:
        self.opened: list[Transport] = []

    def __call__(self, transport: T) -> T:
        """Register ``transport`` and hand it back."""
        self.opened.append(transport)
        return transport

    async def close(self) -> None:
        """Close every registered transport."""
        opened, self.opened = self.opened, []
        await close_all(opened)


# --- webhooks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedWebhook:
    """One delivery the receiver accepted (signature valid, answered 200)."""

    id: str
    type: str
    timestamp: int
    body: bytes
    payload: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class WebhookAttempt:
    """One request as it arrived, whatever the receiver answered."""

    id: str | None
    timestamp: str | None
    body: bytes
    status: int


@dataclass
class _Failures:
    remaining: int = 0
    status: int = 503
    retry_after: str | None = None


class WebhookReceiver:
    """A Standard Webhooks receiver on 127.0.0.1 (port 0 unless given); an async context manager.

    ``accepted`` holds the verified deliveries, ``requests`` every attempt; ``fail_next``,
    ``gone`` and ``hold`` program its answers. ``wall`` is its clock for the timestamp check.
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        path: str = "/hook",
        port: int = 0,
        tolerance: float = TOLERANCE,
        wall: Callable[[], float] = time.time,
        on_accept: Callable[[ReceivedWebhook], None] | None = None,
    ) -> None:
        self.secret = secret or new_secret()
        self.accepted: list[ReceivedWebhook] = []
        self.requests: list[WebhookAttempt] = []
        self.rejected: list[str] = []
        self.waiting = 0  # requests held at the gate right now
        self._path = path
        self._port = port
        self._tolerance = tolerance
        self._wall = wall
        self._on_accept = on_accept
        self._failures = _Failures()
        self._gone = False
        self._gate = asyncio.Event()
        self._gate.set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self._port}{self._path}"

    @property
    def attempts(self) -> int:
        """Requests received so far, accepted or not."""
        return len(self.requests)

    def deliveries(self, message_id: str) -> int:
        """How many times the delivery with this webhook-id was accepted (1 means no duplicate)."""
        return Counter(d.id for d in self.accepted)[message_id]

    def attempts_for(self, message_id: str) -> list[WebhookAttempt]:
        """Every request that carried this webhook-id."""
        return [r for r in self.requests if r.id == message_id]

    def fail_next(self, n: int, status: int = 503, retry_after: str | float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``Retry-After`` when given)."""
        header = None if retry_after is None else str(retry_after)
        self._failures = _Failures(n, status, header)

    def gone(self) -> None:
        """Answer 410 Gone from now on: the sender should stop for good."""
        self._gone = True

    def hold(self) -> None:
        """Keep requests open (unanswered) until ``release()``: for crash tests."""
        self._gate.clear()

    def release(self) -> None:
        """Let held requests, and later ones, through."""
        self._gate.set()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline
        what: str = "",
    ) -> None:
        """Poll ``predicate`` with a deadline (TimeoutError, with the receiver's state, after)."""
        try:
            await wait_for(predicate, timeout, what)
        except TimeoutError as exc:
            state = f"{self.attempts} requests, {len(self.accepted)} accepted"
            raise TimeoutError(f"{exc} ({state}; rejected: {self.rejected[-3:]})") from None

    async def start(self) -> None:
        """Listen."""
        app = web.Application()
        app.router.add_post(self._path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Let held requests finish, then stop listening."""
        self.release()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
        if not self._gate.is_set():
            self.waiting += 1
            try:
                await self._gate.wait()
            finally:
                self.waiting -= 1
        status, reply_headers, reason = self._decide(headers, body)
        self.requests.append(WebhookAttempt(msg_id, stamp, body, status))
        if reason:
            self.rejected.append(reason)
        if status == 200:
            payload = json.loads(body)
            assert msg_id is not None and stamp is not None
            delivery = ReceivedWebhook(msg_id, payload["type"], int(stamp), body, payload, headers)
            self.accepted.append(delivery)
            if self._on_accept is not None:
                self._on_accept(delivery)
        text = reason or ("ok" if status == 200 else "failing as told")
        return web.Response(status=status, headers=reply_headers, text=text)

    def _decide(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], str]:
        if self._gone:
            return 410, {}, "gone"
        failures = self._failures
        if failures.remaining > 0:
            failures.remaining -= 1
            extra = {} if failures.retry_after is None else {"Retry-After": failures.retry_after}
            return failures.status, extra, ""
        problem = check_signature(self.secret, headers, body, self._wall(), self._tolerance)
        if problem is not None:
            return 401, {}, problem
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, {}, "body is not JSON"
        if not isinstance(payload, dict) or payload.get("id") != headers["webhook-id"]:
            return 400, {}, "body is not an envelope with the webhook-id as its id"
        if not isinstance(payload.get("type"), str):
            return 400, {}, "the envelope has no type"
        return 200, {}, ""


# --- Alertmanager -----------------------------------------------------------------------------

ALERTMANAGER = Path(shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager")
ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
  group_wait: 1s
receivers:
  - name: blackhole
"""


@contextlib.asynccontextmanager
async def run_alertmanager(
    tmp_path: Path, config_text: str = ALERTMANAGER_CONFIG
) -> AsyncIterator[str]:
    """Start Debian's Alertmanager (no clustering; by default a null receiver); yield its base
    URL.

    Skips the calling test when the prometheus-alertmanager package is not installed.
    """
    if not ALERTMANAGER.exists():
        pytest.skip(
            f"{ALERTMANAGER} is missing: install the Debian package prometheus-alertmanager"
        )
    workdir = tmp_path / "alertmanager"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(config_text)

    async def start() -> tuple[Daemon, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [
            str(ALERTMANAGER),
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        daemon = await spawn("alertmanager", argv, workdir / "alertmanager.log", workdir)

        async def ready() -> bool:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{url}/-/ready", timeout=aiohttp.ClientTimeout(total=1)) as response,
            ):
                return response.status == 200

        await wait_ready(daemon, ready)
        return daemon, url

    daemon, url = await start_with_retries(start)
    try:
        yield url
    finally:
        await daemon.stop()


async def get_alerts(base_url: str, **filters: str) -> list[dict[str, Any]]:
    """``GET /api/v2/alerts`` (``filter=`` label matchers and flags such as ``active=true``)."""
    params: list[tuple[str, str]] = []
    for key, value in filters.items():
        if key == "filter":
            params.extend(("filter", part) for part in value.split(";"))
        else:
            params.append((key, value))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/api/v2/alerts", params=params) as response,
    ):
        response.raise_for_status()
        alerts: list[dict[str, Any]] = await response.json()
        return alerts


# --- SMTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    """One mail the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    tls: bool
    login: str | None


@dataclass
class _SmtpFailures:
    remaining: int = 0
    reply: str = "451 4.3.0 try again later"
    at: Literal["RCPT", "DATA"] = "RCPT"


@dataclass
class _SinkHandler:
    sink: SmtpSink
    failures: _SmtpFailures = field(default_factory=_SmtpFailures)

    def _fail(self, at: str) -> str | None:
        f = self.failures
        if f.remaining > 0 and f.at == at:
            f.remaining -= 1
            return f.reply
        return None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        failure = self._fail("RCPT")
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self._fail("DATA")
        if failure is not None:
            return failure
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        transport = server.transport
        implicit = transport is not None and transport.get_extra_info("ssl_object") is not None
        login = session.auth_data if isinstance(session.auth_data, str) else None
        self.sink.messages.append(
            ReceivedMail(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                parsed,
                raw,
                session.ssl is not None or implicit,
                login,
            )
        )
        return "250 2.0.0 accepted"


class SmtpSink:
    """An SMTP server on 127.0.0.1 in this event loop; an async context manager.

    ``mode``: ``plain``, ``starttls`` (required before MAIL) or ``tls`` (implicit). TLS modes
    use a trustme CA whose certificate is in ``ca_file``. With ``users`` (login -> password),
    AUTH is required (after TLS when there is TLS).
    """

    def __init__(
        self,
        mode: Literal["plain", "starttls", "tls"] = "plain",
        *,
        users: Mapping[str, str] | None = None,
        ca: trustme.CA | None = None,
    ) -> None:
        self.mode = mode
        self.users = dict(users or {})
        self.messages: list[ReceivedMail] = []
        self.port = 0
        self.host = "127.0.0.1"
        self.ca = ca or trustme.CA()
        self._tmp = tempfile.TemporaryDirectory(prefix="smtp-sink-")
        self.ca_file = Path(self._tmp.name) / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._handler = _SinkHandler(self)
        self._server: asyncio.Server | None = None

    def fail_next(
        self, n: int, reply: str = "451 4.3.0 try again later", at: Literal["RCPT", "DATA"] = "RCPT"
    ) -> None:
        """Answer ``reply`` to the next ``n`` RCPT (or DATA) commands."""
        self._handler.failures = _SmtpFailures(n, reply, at)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline
        what: str = "",
    ) -> None:
        """Poll ``predicate`` with a deadline."""
        await wait_for(predicate, timeout, what)

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = login in self.users and hmac.compare_digest(self.users[login], password)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    async def start(self) -> None:
        """Listen on an ephemeral port."""
        loop = asyncio.get_running_loop()
        tls = self._server_context() if self.mode != "plain" else None
        kwargs: dict[str, Any] = {"hostname": "sink.test", "enable_SMTPUTF8": True, "loop": loop}
        if self.mode == "starttls":
            kwargs.update(tls_context=tls, require_starttls=True)
        if self.users:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=self.mode != "plain",
            )
        self._server = await loop.create_server(
            lambda: SMTP(self._handler, **kwargs),
            self.host,
            0,
            ssl=tls if self.mode == "tls" else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and remove the CA file."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()
        self._tmp.cleanup()

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# --- a webhook receiver in its own process -----------------------------------------------------


async def _serve(secret: str, port: int, record: Path) -> None:
    def append(delivery: ReceivedWebhook) -> None:
        line = {"id": delivery.id, "type": delivery.type, "payload": delivery.payload}
        with record.open("a") as out:
            out.write(json.dumps(line, sort_keys=True) + "\n")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with WebhookReceiver(secret, port=port, on_accept=append) as receiver:
        print(receiver.url, flush=True)
        await stop.wait()


def main() -> None:
    """Run a webhook receiver until SIGTERM, recording accepted deliveries as JSON lines."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--secret", required=True, help="whsec_ secret")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path, required=True, help="JSON-lines file to append")
    args = parser.parse_args()
    asyncio.run(_serve(args.secret, args.port, args.record))


if __name__ == "__main__":
    main()
