"""Webhooks signed per the Standard Webhooks specification (https://www.standardwebhooks.com)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

import aiohttp

from failover.notify.base import Delivery, Message
from nodevigil import __version__
from nodevigil.core.config.schema import WebhookNotifier
from nodevigil.core.config.secrets import WEBHOOK_PREFIX, webhook_key
from nodevigil.core.errors import ConfigError

SECRET_PREFIX = WEBHOOK_PREFIX
USER_AGENT = f"nodevigil/{__version__}"
_BODY_EXCERPT = 200  # bytes of an error answer quoted in the delivery detail


def parse_secret(text: str, where: str = "secret") -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ConfigError (without the value) otherwise."""
    try:
        return webhook_key(text)  # the check check-config makes too
    except ValueError as exc:
        raise ConfigError([f"{where}: {exc}"]) from None


def encode_body(message: Message) -> bytes:
    """The envelope as compact JSON with sorted keys: the same bytes on every retry."""
    return json.dumps(
        message.envelope(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """An HTTP ``Retry-After`` (seconds or HTTP-date) as seconds from ``now``, never negative."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form may lack the zone
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    time_limit: float,
    wall: Callable[[], float],
    what: str,
    disable_on_gone: bool = True,
) -> Delivery:
    """POST ``body`` once and turn the answer (or the failure) into a Delivery; never raises."""
    try:
        async with session.post(
            url,
            data=body,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=time_limit),
            allow_redirects=False,  # a redirected POST would lose its body and signature
        ) as response:
            status = response.status
            reason = response.reason or ""
            retry_after = response.headers.get("Retry-After")
            location = response.headers.get("Location", "")
            excerpt = (await response.content.read(_BODY_EXCERPT)).decode("utf-8", "replace")
    except TimeoutError:
        return Delivery.retry(f"{what}: no answer within {time_limit:g}s")
    except aiohttp.ClientError as exc:
        return Delivery.retry(f"{what}: {type(exc).__name__}: {exc}")
    except OSError as exc:
        return Delivery.retry(f"{what}: {exc.strerror or exc}")
    answer = f"{what}: answered {status} {reason}".rstrip()
    if 200 <= status < 300:
        return Delivery.ok(answer)
    if status == 410 and disable_on_gone:
        return Delivery("disabled", f"{answer}: the receiver asked never to be sent to again")
    if 300 <= status < 400:
        return Delivery.retry(f"{answer}: redirects are not followed (Location: {location})")
    excerpt = " ".join(excerpt.split())
    detail = f"{answer}: {excerpt}" if excerpt else answer
    return Delivery.retry(detail, retry_after_seconds(retry_after, wall()))


class SessionHolder:
    """An HTTP session: one passed in stays the caller's to close; otherwise one is made on
    first use (and again after it was closed) and closed by ``close``."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._own = session is None

    def get(self) -> aiohttp.ClientSession:
        """The session to send with."""
        if self._session is None or (self._own and self._session.closed):
            self._session = aiohttp.ClientSession()
            self._own = True
        return self._session

    async def close(self) -> None:
        """Close the session this holder made (never one passed in)."""
        if self._own and self._session is not None:
            session, self._session = self._session, None
            await session.close()


class WebhookTransport:
    """POSTs each message's envelope as JSON, signed with the notifier's ``whsec_`` secret.

    A session passed in stays the caller's to close; otherwise one is made on first use.
    """

    def __init__(
        self,
        name: str,
        config: WebhookNotifier,
        secret: str,
        session: aiohttp.ClientSession | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._config = config
        self._key = parse_secret(secret, f"notifiers.{name}")
        self._sessions = SessionHolder(session)
        self._wall = wall

    def headers(self, message: Message, body: bytes, timestamp: int) -> dict[str, str]:
        """Every header of one attempt: configured extras first, the signature last."""
        return {
            "User-Agent": USER_AGENT,
            **self._config.headers,
            "Content-Type": "application/json",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, message.id, timestamp, body),
        }

    async def send(self, message: Message) -> Delivery:
        """POST ``message`` once; 2xx delivered, 410 disabled, anything else retry."""
        body = encode_body(message)
        timestamp = int(self._wall())
        return await post_json(
            self._sessions.get(),
            self._config.url,
            body,
            self.headers(message, body, timestamp),
            time_limit=self._config.timeout,
            wall=self._wall,
            what=f"webhook {self.name}",
        )

    async def close(self) -> None:
        """Close the session this transport made (never one passed in)."""
        await self._sessions.close()
