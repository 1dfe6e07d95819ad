"""A lean HTTP/1.1 client for probes: keep-alive pools and bounded reads, nothing more.

A probe needs one request and a status: no redirects, cookies, decompression or streaming.
aiohttp's client costs about 130 µs of CPU per request on the 2-core benchmark machine, this
one about a third of that, which is what lets one process probe 10,000 nodes a second
(bench/load_bench.py). Every answer is parsed defensively: a node may send anything, and a
malformed or oversized answer is one failed try with a readable reason, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from yarl import URL

from monitor.probes.base import ProbeError, ProbeFailure, Try

MAX_HEAD = 64 * 1024  # status line and headers; a real health answer needs a few hundred bytes
MAX_CHUNK_LINE = 1024
KEEPALIVE = 15.0  # idle connections are closed after this long (aiohttp's default too)
ORPHAN_LIMIT = 5.0  # an abandoned try's late answer is awaited this long, then dropped
CONNECT_LIMIT = 5.0  # a connect that an abandoned try started may finish within this
MAX_ABANDONED_CONNECTS = 1024  # beyond this many, abandoned connects are cancelled
DNS_TTL = 60.0
USER_AGENT = "nodevigil-probe"

_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE = range(8)
_NO_BODY_STATUS = frozenset({204, 304})
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_HEX = frozenset(b"0123456789abcdefABCDEF")
_TLS_CONTEXTS: dict[bool, ssl.SSLContext] = {}


class HttpError(ProbeError):
    """The answer was not valid HTTP/1.x, or the server hung up in the middle of it."""


class ServerDisconnected(HttpError):
    """The server closed the connection before the answer was complete."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or "server closed the connection")


@dataclass(frozen=True, slots=True)
class Response:
    """A status and the first ``limit`` bytes of the body (empty unless asked for)."""

    status: int
    body: bytes


def tls_context(verify: bool) -> ssl.SSLContext:
    """The shared client context: verified with the system's CAs, or not verified at all."""
    context = _TLS_CONTEXTS.get(verify)
    if context is None:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _TLS_CONTEXTS[verify] = context
    return context


@dataclass(frozen=True, slots=True)
class Target:
    """One prepared request: where it goes and its bytes, built once per probe."""

    key: tuple[str, str, int, bool]  # scheme, host, port, verify: the connection pool
    host: str
    port: int
    tls: ssl.SSLContext | None
    literal: bool  # the host is an IP address: nothing to resolve
    request: bytes
    head_only: bool

    @classmethod
    def build(
        cls, url: str, *, method: str = "GET", headers: dict[str, str], verify: bool = True
    ) -> Target:
        """Prepare ``method url``; raises ValueError for a header that would break the request."""
        parsed = URL(url)
        host = parsed.host
        if parsed.scheme not in ("http", "https") or not host or parsed.port is None:
            raise ValueError(f"not an http(s) URL: {url!r}")
        fields = {"host": ("Host", parsed.host_port_subcomponent or host)}
        fields["user-agent"] = ("User-Agent", USER_AGENT)
        fields["accept"] = ("Accept", "*/*")
        if parsed.user is not None:
            token = f"{parsed.user}:{parsed.password or ''}".encode()
            fields["authorization"] = ("Authorization", f"Basic {base64.b64encode(token).decode()}")
        if method == "POST":
            fields["content-length"] = ("Content-Length", "0")
        for name, value in headers.items():
            if not name.isascii() or any(c in name for c in " \t\r\n:\0"):
                raise ValueError(f"invalid header name {name!r}")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name} has a line break in its value")
            fields[name.lower()] = (name, value)
        lines = [f"{method} {parsed.raw_path_qs} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in fields.values()]
        try:
            ipaddress.ip_address(host)
            literal = True
        except ValueError:
            literal = False
        tls = tls_context(verify) if parsed.scheme == "https" else None
        return cls(
            key=(parsed.scheme, host, parsed.port, verify),
            host=host,
            port=parsed.port,
            tls=tls,
            literal=literal,
            request=("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"),
            head_only=method == "HEAD",
        )


class Exchange(Try):
    """One request in flight: what to send, how to read the answer; a Try for ``hedged``."""

    __slots__ = (
        "conn",
        "connecting",
        "evaluate",
        "keep",
        "limit",
        "retried",
        "session",
        "started",
        "target",
    )

    def __init__(
        self,
        session: ProbeSession,
        target: Target,
        *,
        limit: int,
        keep: bool,
        evaluate: Callable[[Response, float], str],
    ) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.limit = limit
        self.keep = keep
        self.evaluate = evaluate
        self.started = time.monotonic()
        self.conn: _Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.retried = False

    def answer(self, response: Response) -> None:
        """Hand the answer to ``evaluate``; finish with its detail or its exception."""
        if self.done():
            return
        try:
            detail = self.evaluate(response, time.monotonic() - self.started)
        except Exception as exc:
            self.set_exception(exc)
        else:
            self.set_result(detail)

    def _abandon(self) -> None:
        # A try abandoned by ``hedged`` (the budget ran out, or the other try answered) keeps
        # its connection: the late answer is read and dropped and the connection pooled. If
        # an overloaded prober dropped every slow connection instead, the next round would
        # have to reconnect the whole fleet, which overloads it again: a storm that feeds
        # itself. Both waits are bounded (ORPHAN_LIMIT, CONNECT_LIMIT).
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.orphan()
        if self.connecting is not None and not self.session.keep_connecting(self.connecting):
            self.connecting.cancel()


@runtime_checkable
class StreamTransport(Protocol):
    """What a connection needs of its transport: a byte stream it can write to and drop.

    asyncio's own transports subclass ``asyncio.Transport``; uvloop's (``TCPTransport``, its
    SSL transport) implement the same methods without subclassing it, so the check is by
    shape: one the connection could not write to or drop (a read-only pipe's) is refused.
    """

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


class _Connection(asyncio.Protocol):
    """One keep-alive connection parsing one answer at a time."""

    def __init__(self) -> None:
        self.transport: StreamTransport | None = None
        self.key: tuple[str, str, int, bool] | None = None
        self.session: ProbeSession | None = None
        self.reusable = False
        self.served = 0  # answers completed on this connection
        self.idle_since = 0.0
        self._exchange: Exchange | None = None
        self._buffer = bytearray()
        self._state = _IDLE
        self._head_only = False
        self._limit = 0
        self._keep = False
        self._body = bytearray()
        self._read = 0
        self._remaining = 0
        self._status = 0
        self._keep_alive = False
        self.received = False  # any byte of the current answer arrived

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection always hands over a stream; checked by shape, not by class (uvloop)
        if not isinstance(transport, StreamTransport):
            transport.close()
            raise TypeError(f"not a stream transport: {type(transport).__name__}")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:  # bytes nobody asked for: the stream cannot be trusted
            self.abort()
            return
        self.received = True
        self._buffer += data
        try:
            self._parse()
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.transport = None
        if self._state == _UNTIL_CLOSE:
            self._finish(keep_alive=False)
        elif self._state != _IDLE:
            if exc is None or isinstance(exc, ConnectionError):
                # A hang-up, a reset or a broken pipe: the stale keep-alive race looks like this.
                reset = isinstance(exc, ConnectionResetError)
                self._fail(ServerDisconnected("connection reset" if reset else None))
            else:
                self._fail(exc)

    # --- requests --------------------------------------------------------------------------

    def send(self, exchange: Exchange) -> None:
        """Write the exchange's request; its waiter hears of the answer."""
        assert self.transport is not None and self._state == _IDLE
        exchange.conn = self
        self._exchange = exchange
        self._state, self._head_only = _HEAD, exchange.target.head_only
        self._limit, self._keep = exchange.limit, exchange.keep
        self._body.clear()
        self._read = 0
        self.received = False
        self.reusable = False
        self.transport.write(exchange.target.request)

    def orphan(self) -> None:
        """Nobody waits for the answer any more: read it, then pool the connection."""
        self._exchange = None
        if self.session is None or self._state == _IDLE:
            self.abort()
        else:
            self.session.adopt(self)

    def abort(self) -> None:
        """Drop the connection at once (a broken stream, a closing session)."""
        self.reusable = False
        self._state = _IDLE
        self._exchange = None
        if self.session is not None:
            self.session.orphaned.pop(self, None)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        exchange = self._exchange
        stale = self.served > 0 and not self.received and isinstance(exc, ServerDisconnected)
        self.abort()
        if exchange is None:
            return
        exchange.conn = None
        if stale and not exchange.retried:
            # The server closed the kept-alive connection just as the request went out:
            # once more on a new connection, as browsers and aiohttp do.
            exchange.retried = True
            exchange.session.connect_and_send(exchange)
        else:
            exchange.set_exception(exc)

    def _finish(self, *, keep_alive: bool) -> None:
        exchange, self._exchange = self._exchange, None
        self._state = _IDLE
        self.served += 1
        self.reusable = keep_alive and not self._buffer and self.transport is not None
        if exchange is None and self.session is not None:
            self.session.orphaned.pop(self, None)  # a late answer: the connection is saved
        if self.reusable and self.session is not None:
            self.session.release(self)
        elif self.transport is not None:
            self.transport.close()
        if exchange is not None:
            exchange.conn = None
            exchange.answer(Response(self._status, bytes(self._body)))

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        buffer = self._buffer
        while self._state != _IDLE:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0 or end > MAX_HEAD:
                    if len(buffer) > MAX_HEAD:
                        raise HttpError(f"response head over {MAX_HEAD // 1024} KiB")
                    return
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                self._start(head)
            elif state in (_LENGTH, _CHUNK_DATA, _UNTIL_CLOSE):
                if not buffer:
                    return
                size = len(buffer) if state == _UNTIL_CLOSE else min(self._remaining, len(buffer))
                if not self._take(size):
                    return
                if state == _UNTIL_CLOSE:
                    return
                self._remaining -= size
                if self._remaining:
                    return
                if state == _LENGTH:
                    self._finish(keep_alive=self._keep_alive)
                else:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise HttpError("malformed chunked body")
                del buffer[:2]
                self._state = _CHUNK_SIZE
            else:  # _CHUNK_SIZE or _TRAILERS: one line each
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_CHUNK_LINE:
                        raise HttpError("malformed chunked body")
                    return
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if state == _TRAILERS:
                    if not line:
                        self._finish(keep_alive=self._keep_alive)
                    continue
                digits = line.split(b";", 1)[0].strip()
                if not digits or len(digits) > 15 or not _HEX.issuperset(digits):
                    raise HttpError("malformed chunked body")
                self._remaining = int(digits, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _take(self, size: int) -> bool:
        """Consume ``size`` body bytes; False when the limit ended the answer early."""
        room = self._limit - self._read
        if self._keep and room > 0:
            self._body += self._buffer[: min(size, room)]
        del self._buffer[:size]
        self._read += size
        if self._read >= self._limit:  # read enough: stop here and drop the connection
            self._buffer.clear()
            self._finish(keep_alive=False)
            return False
        return True

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in _VERSIONS or len(parts[1]) != 3:
            raise HttpError(f"bad status line {lines[0][:80]!r}")
        if not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = encoded = False
        tokens: set[bytes] = set()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:].isspace() or name[:1].isspace():
                raise HttpError(f"malformed header line {line[:80]!r}")
            name = name.lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    raise HttpError(f"bad Content-Length {value[:40]!r}")
                if length is not None and length != int(value):
                    raise HttpError("conflicting Content-Length headers")
                length = int(value)
            elif name == b"transfer-encoding":
                encoded = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif name == b"connection":
                tokens.update(t.strip() for t in value.lower().split(b","))
        if 100 <= status < 200:
            if status == 101:
                raise HttpError("unexpected 101 Switching Protocols")
            return  # an interim answer: the final one follows on the same stream
        self._status = status
        if parts[0] == b"HTTP/1.1":
            self._keep_alive = b"close" not in tokens
        else:
            self._keep_alive = b"keep-alive" in tokens
        if self._head_only or status in _NO_BODY_STATUS:
            self._finish(keep_alive=self._keep_alive)
        elif encoded:
            self._keep_alive = self._keep_alive and chunked and length is None
            self._state = _CHUNK_SIZE if chunked else _UNTIL_CLOSE
        elif length is not None:
            self._remaining = length
            self._state = _LENGTH
            if not length:
                self._finish(keep_alive=self._keep_alive)
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE


class ProbeSession:
    """Connection pools shared by every HTTP probe; close it (or use ``async with``) at the end."""

    def __init__(self, *, keepalive: float = KEEPALIVE) -> None:
        self._keepalive = keepalive
        self._pools: dict[tuple[str, str, int, bool], deque[_Connection]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self._abandoned_connects = 0
        self.orphaned: dict[_Connection, float] = {}  # connection -> when to give up on it
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection and cancel the connects under way."""
        self.closed = True
        for pool in self._pools.values():
            for conn in pool:
                conn.abort()
        self._pools.clear()
        for conn in list(self.orphaned):
            conn.abort()
        self.orphaned.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._connecting):
            task.cancel()

    def stats(self) -> dict[str, int]:
        """Connections by state, for the load benchmark and debugging."""
        return {
            "idle": sum(len(pool) for pool in self._pools.values()),
            "connecting": len(self._connecting),
            "orphaned": len(self.orphaned),
        }

    def adopt(self, conn: _Connection) -> None:
        """Keep an abandoned try's connection until its answer is read (or ORPHAN_LIMIT)."""
        loop = asyncio.get_running_loop()
        self.orphaned[conn] = loop.time() + ORPHAN_LIMIT
        if self._sweeper is None:
            self._sweeper = loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn, deadline in list(self.orphaned.items()):
            if deadline <= now:
                del self.orphaned[conn]
                conn.abort()
        self._sweeper = loop.call_later(1.0, self._sweep) if self.orphaned else None

    def keep_connecting(self, task: asyncio.Task[None]) -> bool:
        """Whether an abandoned try's connect may finish in the background (then be pooled)."""
        if self._abandoned_connects >= MAX_ABANDONED_CONNECTS:
            return False
        self._abandoned_connects += 1
        task.add_done_callback(self._abandoned_done)
        return True

    def _abandoned_done(self, _: asyncio.Task[None]) -> None:
        self._abandoned_connects -= 1

    def request(
        self,
        target: Target,
        *,
        limit: int,
        keep_body: bool,
        evaluate: Callable[[Response, float], str],
    ) -> Exchange:
        """Send ``target``'s request; the exchange ends with ``evaluate(answer, latency)``.

        No task runs the exchange: the request goes out at once on an idle connection and
        the connection's parser completes it. ``evaluate`` may raise to fail it. Cancelling
        it abandons the try and drops its connection. At most ``limit`` body bytes are read
        (kept only with ``keep_body``); a longer answer ends there.
        """
        if self.closed:
            raise RuntimeError("the probe session is closed")
        exchange = Exchange(self, target, limit=limit, keep=keep_body, evaluate=evaluate)
        conn = self._idle(target.key)
        if conn is None:
            self.connect_and_send(exchange)
        else:
            conn.send(exchange)
        return exchange

    async def fetch(self, target: Target, *, limit: int = 1 << 20) -> Response:
        """The answer to ``target``'s request, body included (see ``request``)."""
        answers: list[Response] = []

        def keep(response: Response, _: float) -> str:
            answers.append(response)
            return ""

        await self.request(target, limit=limit, keep_body=True, evaluate=keep).wait()
        return answers[0]

    def release(self, conn: _Connection) -> None:
        """Put a connection that finished an answer cleanly back in its pool."""
        if self.closed or conn.key is None or conn.transport is None:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._pools.setdefault(conn.key, deque()).append(conn)

    def connect_and_send(self, exchange: Exchange) -> None:
        """Open a new connection for ``exchange`` in a task (the slow path)."""
        task = asyncio.get_running_loop().create_task(self._connect_and_send(exchange))
        exchange.connecting = task
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect_and_send(self, exchange: Exchange) -> None:
        try:
            async with asyncio.timeout(CONNECT_LIMIT):
                conn = await self._connect(exchange.target)
        except Exception as exc:
            exchange.set_exception(exc)
            return
        finally:
            exchange.connecting = None
        conn.key, conn.session = exchange.target.key, self
        if exchange.done():  # abandoned as the connection came up: keep it for the next try
            conn.reusable = True
            self.release(conn)
            return
        conn.send(exchange)

    def _idle(self, key: tuple[str, str, int, bool]) -> _Connection | None:
        pool = self._pools.get(key)
        if not pool:
            return None
        stale = time.monotonic() - self._keepalive
        while pool and pool[0].idle_since < stale:  # the oldest first: close expired ones
            pool.popleft().abort()
        while pool:
            conn = pool.pop()  # the most recently used: the fewest connections stay warm
            if conn.reusable and conn.transport is not None:
                return conn
        return None

    async def _connect(self, target: Target) -> _Connection:
        loop = asyncio.get_running_loop()
        hosts = [target.host] if target.literal else await self._resolve(target.host, target.port)
        error: OSError | None = None
        for host in hosts:
            try:
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    target.port,
                    ssl=target.tls,
                    server_hostname=target.host if target.tls is not None else None,
                )
            except ssl.SSLCertVerificationError as exc:
                raise ProbeFailure(f"certificate rejected: {exc.verify_message}") from None
            except ssl.SSLError as exc:
                raise ProbeFailure(f"TLS handshake failed: {exc.reason or exc}") from None
            except OSError as exc:
                error = error or exc  # the first address's error is the one worth telling
                continue
            return conn
        assert error is not None
        raise error

    async def _resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses, cached for DNS_TTL (a dead node reconnects every try)."""
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        self._dns[(host, port)] = (now + DNS_TTL, addresses)
        return addresses
