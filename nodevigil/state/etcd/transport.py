"""HTTP to etcd's v3 JSON gateway: endpoints tried in turn, every call bounded by ``timeout``.

What it guards against (the pitfalls Patroni's ``patroni/dcs/etcd3.py`` meets too):

- A member cut off from the raft leader still answers serializable reads with old data. Every
  request carries the gRPC metadata ``hasleader: true`` (header ``Grpc-Metadata-Hasleader``),
  so such a member refuses at once with "etcdserver: no leader" instead of answering or
  waiting out etcd's own request timeout; reads are linearizable (etcd's default). As a second
  guard, an answer whose revision is older than one already seen is treated as stale and the
  next endpoint is asked.
- A member that hangs (SIGSTOP, a dead network path): each attempt has its own deadline, a
  share of ``timeout``, so the other endpoints are still tried within ``timeout``.
- etcd's "simple" auth tokens are valid on the member that issued them only, so tokens are
  kept per endpoint and a new one is fetched on the first call to an endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import aiohttp

from nodevigil.state.etcd.errors import (
    EtcdError,
    EtcdLeaseNotFound,
    EtcdRejected,
    EtcdUnavailable,
)

log = logging.getLogger(__name__)

Json = dict[str, Any]

# google.golang.org/grpc/codes that mean "ask another member or later" (etcd: no leader,
# leader changed, request timed out, too many requests).
RETRIABLE_CODES = frozenset({1, 4, 8, 10, 14})
UNAUTHENTICATED = 16
NOT_FOUND = 5
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
INVALID_TOKEN = "etcdserver: invalid auth token"
HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-Hasleader": "true"}


# etcd's JSON gateway answers this (HTTP 400, plain text) to every call made with a client
# certificate that has a Common Name while etcd's auth is on: the gateway cannot pass the name on.
GATEWAY_CN = "CommonName of client sending a request against gateway will be ignored"
# TLS alerts by which etcd refuses this client's certificate (or the lack of one).
CLIENT_CERT_ALERTS = (
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_UNKNOWN",
)


class Retry(Exception):
    """This endpoint gave no usable answer: try the next one (never leaves this module)."""


def b64(data: bytes) -> str:
    """``data`` as etcd's gateway wants bytes fields: base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """A gateway bytes field back to bytes."""
    return base64.b64decode(text)


def error_from(body: Mapping[str, Any] | None, status: int, endpoint: str) -> Exception:
    """The exception for an error answer: ``Retry`` when another member may do better."""
    body = body or {}
    error = body.get("error")
    if isinstance(error, dict):  # streaming answers: {"error": {"grpc_code", "message"}}
        code, message = int(error.get("grpc_code", 2)), str(error.get("message", ""))
    else:
        code, message = int(body.get("code", 2)), str(error or body.get("message", ""))
    text = f"{endpoint}: {message or f'HTTP {status}'}"
    if GATEWAY_CN in message:
        text += (
            " (etcd's JSON gateway refuses a client certificate with a Common Name while etcd's "
            "auth is on: give nodevigil a client certificate without one, names in its "
            "subjectAltName only)"
        )
    if code in RETRIABLE_CODES or (status >= 500 and not message):
        return Retry(text)
    if code == NOT_FOUND and message == LEASE_NOT_FOUND:
        return EtcdLeaseNotFound(f"etcd: {text}", code=code)
    return EtcdRejected(f"etcd: {text}", code=code)


def describe(endpoint: str, exc: BaseException) -> str:
    """One endpoint's failure in words: TLS trouble says which side refused what."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        why = getattr(error, "verify_message", None) or str(error)
        return (
            f"{endpoint}: TLS: etcd's certificate is not trusted with the CA given "
            f"(tls ca_file): {why}"
        )
    text = str(exc)
    if any(alert in text for alert in CLIENT_CERT_ALERTS):
        return (
            f"{endpoint}: TLS: etcd refused this client's certificate (none given, or one "
            f"etcd does not trust: tls cert_file): {text}"
        )
    return f"{endpoint}: {type(exc).__name__} {exc}".strip()


def error_body(text: str, status: int) -> Json:
    """The body of a refusal: etcd's JSON error, or a plain-text 4xx refusal (the gateway's
    own) kept as its message, since it says why. A plain 5xx stays empty: retried elsewhere."""
    try:
        return first_object(text)
    except ValueError:
        return {} if status >= 500 else {"message": text.strip()[:300]}


def first_object(text: str) -> Json:
    """The first JSON object of a body; a streaming answer's ``result`` is unwrapped."""
    data, _ = json.JSONDecoder().raw_decode(text.lstrip())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    result = data.get("result")
    return result if isinstance(result, dict) and "error" not in data else data


class Transport:
    """Sends gateway calls to the first endpoint that answers, remembering which one did."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        credentials: tuple[str, str] | None,
    ) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self._ssl = ssl_context
        self._credentials = credentials
        self._current = 0
        self._tokens: dict[str, str] = {}
        self._revision = 0  # the highest cluster revision any fresh answer carried
        self._session: aiohttp.ClientSession | None = None
        self._failing = False  # log the first failure and the recovery, not every call
        # Endpoints whose last attempt failed: tried after the others, so a hung member does
        # not cost every call its attempt timeout.
        self._suspects: set[int] = set()

    @property
    def attempt_timeout(self) -> float:
        """One endpoint's share of ``timeout``, so a hung member leaves time for the others."""
        return max(self.timeout / len(self.endpoints), min(self.timeout, 0.25))

    @property
    def current(self) -> str:
        """The endpoint that answered last (tried first next time)."""
        return self.endpoints[self._current]

    async def open(self) -> None:
        """Create the HTTP session."""
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        """Close the HTTP session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
            # A transport closed just now closes its socket in a callback on the next loop
            # turn: give it that turn, so a caller that stops the loop next leaks no socket.
            await asyncio.sleep(0)

    def _order(self) -> list[int]:
        count = len(self.endpoints)
        order = [(self._current + step) % count for step in range(count)]
        return sorted(order, key=lambda index: index in self._suspects)

    async def call(self, method: str, body: Json, *, fresh: bool = False) -> Json:
        """POST ``body`` to ``/v3/<method>`` and return the answer (``result`` unwrapped).

        ``fresh``: the answer must be linearizable: one whose revision is below one already
        seen came from a stale member and is not returned. Raises EtcdUnavailable when no
        endpoint answered usably within ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        problems: dict[str, str] = {}
        rounds = 0
        while True:
            for index in self._order():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                endpoint = self.endpoints[index]
                try:
                    async with asyncio.timeout(min(remaining, self.attempt_timeout)):
                        answer = await self._attempt(endpoint, method, body)
                    revision = int(answer.get("header", {}).get("revision", 0))
                    if fresh and revision < self._revision:
                        raise Retry(f"{endpoint}: stale answer, revision {revision}")
                except Retry as exc:
                    problems[endpoint] = str(exc)
                    self._suspects.add(index)
                    continue
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    problems[endpoint] = describe(endpoint, exc)
                    self._suspects.add(index)
                    continue
                self._revision = max(self._revision, revision)
                self._recovered(index)
                return answer
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._unavailable(problems)
            # Every endpoint failed this round: back off a little (jittered), then go again.
            rounds += 1
            pause = min(0.05 * 2**rounds, 0.5) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(pause, remaining))

    def _recovered(self, index: int) -> None:
        if self._failing:
            log.info("etcd: answering again through %s", self.endpoints[index])
            self._failing = False
        self._current = index
        self._suspects.discard(index)

    def _unavailable(self, problems: Mapping[str, str]) -> EtcdUnavailable:
        detail = "; ".join(problems.values()) or "no attempt finished"
        if not self._failing:
            log.warning("etcd: no endpoint answered within %.1fs: %s", self.timeout, detail)
            self._failing = True
        return EtcdUnavailable(f"etcd: no endpoint answered within {self.timeout:g}s: {detail}")

    async def _attempt(self, endpoint: str, method: str, body: Json) -> Json:
        """One request to one endpoint; an expired token is renewed once."""
        for renewed in (False, True):
            headers = await self._headers(endpoint)
            status, data = await self._post(endpoint, method, body, headers)
            if status == 200 and "error" not in data:
                return data
            error = error_from(data, status, endpoint)
            if not renewed and self._token_refused(error):
                self._tokens.pop(endpoint, None)
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def forget_token(self, endpoint: str) -> None:
        """Log in again on ``endpoint`` before its next call (etcd refused the token)."""
        self._tokens.pop(endpoint, None)

    def _token_refused(self, error: Exception) -> bool:
        """Whether ``error`` refused the auth token (expired, or etcd forgot it): get another."""
        return (
            self._credentials is not None
            and isinstance(error, EtcdRejected)
            and (error.code == UNAUTHENTICATED or INVALID_TOKEN in str(error))
        )

    async def _post(
        self, endpoint: str, method: str, body: Json, headers: Mapping[str, str]
    ) -> tuple[int, Json]:
        if self._session is None:
            raise EtcdError("etcd client is not open: use it as `async with EtcdClient(...)`")
        async with self._session.post(
            f"{endpoint}/v3/{method}", data=json.dumps(body), headers=headers
        ) as response:
            text = await response.text()
            if response.status == 200:
                return response.status, first_object(text)
            return response.status, error_body(text, response.status)

    async def _headers(self, endpoint: str) -> dict[str, str]:
        if self._credentials is None:
            return HEADERS
        token = self._tokens.get(endpoint)
        if token is None:
            name, password = self._credentials
            status, data = await self._post(
                endpoint, "auth/authenticate", {"name": name, "password": password}, HEADERS
            )
            if status != 200 or "token" not in data:
                raise error_from(data, status, endpoint)
            token = self._tokens[endpoint] = str(data["token"])
        return {**HEADERS, "Authorization": token}

    async def stream(self, method: str, body: Json) -> AsyncGenerator[Json]:
        """POST ``body`` to a streaming method through the first endpoint that opens it and
        yield each JSON message. The first message is read within the call's deadline; later
        ones may take as long as they take (the caller bounds the idle time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        problems: dict[str, str] = {}
        while True:
            for index in self._order():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._unavailable(problems)
                endpoint = self.endpoints[index]
                if self._session is None:
                    raise EtcdError("etcd client is not open")
                response: aiohttp.ClientResponse | None = None
                try:
                    async with asyncio.timeout(min(remaining, self.attempt_timeout)):
                        headers = await self._headers(endpoint)
                        response = await self._session.post(
                            f"{endpoint}/v3/{method}", data=json.dumps(body), headers=headers
                        )
                        if response.status == 200:
                            messages = _messages(response)
                            first = await anext(messages)
                        else:  # a refusal, as JSON or as the gateway's plain text
                            first = error_body(await response.text(), response.status)
                    if response.status != 200 or "error" in first:
                        raise error_from(first, response.status, endpoint)
                except Retry as exc:
                    problems[endpoint] = str(exc)
                    self._suspects.add(index)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    problems[endpoint] = describe(endpoint, exc)
                    self._suspects.add(index)
                except StopAsyncIteration:
                    problems[endpoint] = f"{endpoint}: stream closed at once"
                    self._suspects.add(index)
                else:
                    self._recovered(index)
                    try:
                        yield first
                        async for message in messages:
                            yield message
                    finally:
                        cut(response)
                    return
                if response is not None:
                    cut(response)
            await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0)))


def cut(response: aiohttp.ClientResponse) -> None:
    """Drop a streaming answer's connection at once. Closing a TLS connection mid-stream
    waits for etcd's close_notify and can outlive the session (its socket then left to the
    garbage collector); a stream that is given up is aborted instead."""
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.abort()
    response.close()


async def _messages(response: aiohttp.ClientResponse) -> AsyncIterator[Json]:
    """The JSON objects of a streaming gateway answer, one per line."""
    buffer = b""
    while True:
        chunk = await response.content.readany()
        if not chunk:
            if buffer.strip():
                yield json.loads(buffer)
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("not a JSON object")
                yield message
