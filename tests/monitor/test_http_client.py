"""The probes' lean HTTP/1.1 client against a raw server that answers exactly what each test
scripts: framing, keep-alive reuse, and hostile or broken answers (each one a failed probe
with a readable reason, never a crash and never an unbounded read)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme

from monitor.probes import build_prober
from monitor.probes.httpclient import MAX_HEAD, ProbeSession, Target
from nodevigil.core.config import parse_config
from tests.failover.daemons import poll_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """A TCP server on loopback that runs ``handler`` per connection and keeps what it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request head (the probes send no body)."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head

    def url(self, path: str = "/health") -> str:
        """The server's URL for ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"


def probe(url: str, **extra: Any) -> Any:
    """An http probe spec as the daemon parses it."""
    config = parse_config(
        {
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {"name": "n", "site": "s", "probes": [{"type": "http", "url": url, **extra}]}
            ],
        }
    )
    return config.nodes[0].probes[0]


@pytest.fixture
async def session() -> AsyncIterator[ProbeSession]:
    async with ProbeSession() as s:
        yield s


def answering(*answers: bytes, then_close: bool = False) -> Scripted:
    """A server answering the requests on each connection with ``answers``, in order."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        for answer in answers:
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection until the client leaves

    server = Scripted(handler)
    return server


async def check(session: ProbeSession, url: str, **extra: Any) -> tuple[bool | None, str]:
    ok, detail, _ = await build_prober(probe(url, **extra), session).check()
    return ok, detail


async def test_keep_alive_reuses_one_connection_and_sends_a_plain_request(
    session: ProbeSession,
) -> None:
    async with answering(OK, OK, OK) as server:
        for _ in range(3):
            ok, detail = await check(session, server.url("/a%20b?x=1"), headers={"X-Key": "v"})
            assert ok is True, detail
        assert server.connections == 1
        head = server.requests[0].decode()
        assert head.startswith("GET /a%20b?x=1 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}\r\n" in head
        assert "User-Agent: nodevigil-probe\r\n" in head and "X-Key: v\r\n" in head
        assert "Accept-Encoding" not in head  # a body_match must see the body uncompressed


async def test_chunked_body_with_extensions_and_trailers_is_matched(
    session: ProbeSession,
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with answering(chunked, chunked) as server:
        assert (await check(session, server.url(), body_match="hello world"))[0] is True
        ok, detail = await check(session, server.url(), body_match="^nope$")
        assert ok is False and "body does not match" in detail
        assert server.connections == 1  # a complete chunked answer keeps the connection


async def test_connection_close_and_http10_bodies_end_with_the_connection(
    session: ProbeSession,
) -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with answering(close, then_close=True) as server:
        assert (await check(session, server.url()))[0] is True
        assert (await check(session, server.url()))[0] is True
        assert server.connections == 2
    old = b"HTTP/1.0 200 OK\r\n\r\nhealthy until the close"
    async with answering(old, then_close=True) as server:
        assert (await check(session, server.url(), body_match="until the close"))[0] is True


async def test_interim_answers_head_requests_and_status_checks(session: ProbeSession) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"  # no body follows a HEAD
    async with answering(interim, head, OK) as server:
        assert (await check(session, server.url()))[0] is True
        assert (await check(session, server.url(), method="HEAD"))[0] is True
        ok, detail = await check(session, server.url(), expect_status=[204])
        assert (ok, detail) == (False, "HTTP 200, expected [204]")
        assert server.connections == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunked"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10), "response head over 64 KiB"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "unexpected 101"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "server closed the connection"),
    ],
)
async def test_a_broken_answer_is_a_failed_probe_with_its_reason(
    session: ProbeSession, answer: bytes, reason: str
) -> None:
    async with answering(answer, then_close=True) as server:
        ok, detail = await check(session, server.url(), timeout="400ms")
        assert ok is False and reason in detail, detail
        assert session.stats()["idle"] == 0  # a broken stream is never pooled


async def test_an_endless_body_is_read_only_up_to_the_limit(session: ProbeSession) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        chunk = b"x" * 65536
        while True:  # until the client hangs up
            writer.write(chunk)
            await writer.drain()

    async with Scripted(flood) as server:
        target = Target.build(server.url(), headers={})
        response = await session.fetch(target, limit=200_000)
        assert response.status == 200 and len(response.body) == 200_000
        ok, detail = await check(session, server.url(), body_match="y", timeout="2s", interval="5s")
        assert ok is False and "body does not match" in detail
        assert session.stats()["idle"] == 0


async def test_a_kept_alive_connection_closed_by_the_server_is_retried_once(
    session: ProbeSession,
) -> None:
    async def close_after_one(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        if index == 0:
            await server.read_request(reader)  # the next request: hang up without answering
            return
        await reader.read()

    server = Scripted(close_after_one)
    async with server:
        assert (await check(session, server.url()))[0] is True
        ok, detail = await check(session, server.url())
        assert ok is True, detail
        assert server.connections == 2


async def test_unsolicited_bytes_on_an_idle_connection_drop_it(session: ProbeSession) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_request(reader)
        writer.write(OK + b"HTTP/1.1 200 OK\r\n")  # more than was asked for
        await writer.drain()
        await reader.read()

    server = Scripted(chatty)
    async with server:
        assert (await check(session, server.url()))[0] is True
        assert (await check(session, server.url()))[0] is True
        assert server.connections == 2


async def test_an_abandoned_try_keeps_its_connection_for_the_next_round(
    session: ProbeSession,
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await server.read_request(reader)
            await asyncio.sleep(0.3 if len(server.requests) == 1 else 0)
            writer.write(OK)
            await writer.drain()

    server = Scripted(slow)
    async with server:
        ok, detail = await check(session, server.url(), timeout="100ms", attempts=1)
        assert ok is False and "timed out" in detail
        assert session.stats()["orphaned"] == 1
        await poll_until(
            lambda: asyncio.sleep(0, session.stats()["idle"] == 1),
            within=5,
            what="the late answer read and its connection pooled",
        )
        assert (await check(session, server.url()))[0] is True
        assert server.connections == 1


async def test_an_unsendable_header_fails_the_probe_not_the_monitor(
    session: ProbeSession,
) -> None:
    ok, detail = await check(session, "http://127.0.0.1:9/", headers={"X-Bad": "a\r\nInjected: 1"})
    assert ok is False and detail.startswith("invalid request: header X-Bad"), detail


async def test_https_verifies_the_certificate_unless_told_not_to(session: ProbeSession) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()

    server = await asyncio.start_server(tls, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        ok, detail = await check(session, f"https://127.0.0.1:{port}/")
        assert ok is False and detail.startswith("certificate rejected"), detail
        ok, detail = await check(session, f"https://127.0.0.1:{port}/", tls_verify=False)
        assert ok is True, detail
    finally:
        server.close()
        await server.wait_closed()
