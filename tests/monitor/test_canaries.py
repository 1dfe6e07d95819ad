"""Canaries against real listeners on loopback: answering, refusing, black-holed, HTTP 503."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import trustme
from aiohttp import web

from monitor.canaries import Canaries, parse_canary
from nodevigil.core.clock import SystemClock
from tests.failover.daemons import poll_until
from tests.monitor.test_local_errors import out_of_descriptors

TIMEOUT = 0.3


@contextlib.contextmanager
def tcp_listener() -> Iterator[int]:
    """A listening socket: the kernel completes the handshake, nobody needs to accept."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port bound but not listening (held, so nothing else takes it): connects are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A listener whose accept queue is full: new SYNs are dropped, connects time out.

    (192.0.2.1, TEST-NET-1, is this machine's gateway and refuses at once: no black hole.)
    """
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # takes the one place in the queue
        yield port


@contextlib.asynccontextmanager
async def http_server(status: int, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """An aiohttp server answering ``status`` to every GET of /readyz."""

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(status=status, text="not ready\n")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def self_signed() -> ssl.SSLContext:
    """A server context with a certificate no client trusts."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


async def rounds_done(canaries: Canaries, count: int) -> None:
    """Wait until ``count`` more rounds have completed."""
    goal = canaries.rounds + count

    async def done() -> bool:
        return canaries.rounds >= goal

    await poll_until(done, within=10, what=f"{count} canary rounds")


async def test_each_kind_of_target_is_judged_as_the_network_answers() -> None:
    with tcp_listener() as open_port, closed_port() as shut, black_hole() as hole:
        async with (
            http_server(503) as http_port,
            http_server(503, self_signed()) as https_port,
        ):
            targets = {
                f"tcp://127.0.0.1:{open_port}": True,
                f"tcp://127.0.0.1:{shut}": False,
                f"tcp://127.0.0.1:{hole}": False,
                f"http://127.0.0.1:{http_port}/readyz": True,  # a 503 still proves the path
                f"https://127.0.0.1:{https_port}/readyz": True,  # not verified: any answer
                f"http://127.0.0.1:{shut}/readyz": False,
                f"http://127.0.0.1:{hole}/readyz": False,
                "ftp://127.0.0.1:21": None,  # never checked
            }
            clock = SystemClock()
            async with Canaries(
                lambda: list(targets), interval=0.2, timeout=TIMEOUT, clock=clock
            ) as canaries:
                assert dict(canaries.results()) == {}  # nothing read before the first round
                await rounds_done(canaries, 1)
                assert dict(canaries.results()) == targets
                detail = canaries.detail()
    assert set(detail) == {t for t, ok in targets.items() if ok is not True}
    assert detail[f"tcp://127.0.0.1:{shut}"] == "connection refused"
    assert detail[f"http://127.0.0.1:{shut}/readyz"] == "connection refused"
    limit = f"timed out (no answer within {TIMEOUT * 1000:g}ms)"
    assert detail[f"tcp://127.0.0.1:{hole}"] == limit
    assert detail[f"http://127.0.0.1:{hole}/readyz"] == limit
    assert detail["ftp://127.0.0.1:21"].startswith("not a canary: 'ftp://127.0.0.1:21'")


def wants_client_certificate() -> ssl.SSLContext:
    """A server context that refuses a client without a certificate (as etcd's mTLS does)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@contextlib.asynccontextmanager
async def hanging_up() -> AsyncIterator[int]:
    """A server that accepts and closes at once, never a word of HTTP."""

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_far_end_that_speaks_but_not_http_still_proves_the_path() -> None:
    async with http_server(200, wants_client_certificate()) as mtls, hanging_up() as rude:
        targets = [f"https://127.0.0.1:{mtls}/health", f"http://127.0.0.1:{rude}/readyz"]
        async with Canaries(
            lambda: targets, interval=0.2, timeout=TIMEOUT, clock=SystemClock()
        ) as canaries:
            await rounds_done(canaries, 1)
            assert dict(canaries.results()) == dict.fromkeys(targets, True)
            assert canaries.detail() == {}  # only targets not answering have a detail


async def test_the_targets_are_read_every_round(caplog: pytest.LogCaptureFixture) -> None:
    with tcp_listener() as first, closed_port() as second:
        a, b = f"tcp://127.0.0.1:{first}", f"tcp://127.0.0.1:{second}"
        current = [a]
        broken = False

        def targets() -> list[str]:
            if broken:
                raise RuntimeError("peer list unavailable")
            return current

        async with Canaries(targets, interval=0.05, timeout=TIMEOUT, clock=SystemClock()) as c:
            await rounds_done(c, 1)
            assert dict(c.results()) == {a: True}
            current = [a, b]  # a peer joins

            async def b_checked() -> bool:
                return c.results().get(b) is False

            await poll_until(b_checked, within=10, what="the new canary checked")
            assert dict(c.detail()) == {b: "connection refused"}
            current = [b]  # a peer leaves: its result goes with it
            await rounds_done(c, 2)
            assert dict(c.results()) == {b: False}
            broken = True  # the list cannot be read: the last one is checked, logged once
            with caplog.at_level(logging.ERROR, logger="monitor.canaries"):
                await rounds_done(c, 3)
            assert dict(c.results()) == {b: False}
            assert len([r for r in caplog.records if "cannot read the targets" in r.message]) == 1


async def test_rounds_keep_to_the_interval() -> None:
    with tcp_listener() as port:
        started = time.monotonic()
        interval = 0.1
        targets = [f"tcp://127.0.0.1:{port}"]
        async with Canaries(
            lambda: targets, interval=interval, timeout=TIMEOUT, clock=SystemClock()
        ) as c:
            await rounds_done(c, 4)  # rounds start at 0, 0.1, 0.2, 0.3 s
            elapsed = time.monotonic() - started
            assert elapsed >= 3 * interval, elapsed  # no busy loop
            assert elapsed < 3 * interval + 1.0, elapsed


async def test_out_of_descriptors_is_inconclusive_never_a_failure() -> None:
    with tcp_listener() as port, closed_port() as shut:
        answering, refusing = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{shut}"
        targets = [answering, refusing]
        async with Canaries(
            lambda: targets, interval=0.05, timeout=TIMEOUT, clock=SystemClock()
        ) as c:
            await rounds_done(c, 1)
            assert dict(c.results()) == {answering: True, refusing: False}
            with out_of_descriptors():
                await rounds_done(c, 2)
                results, detail = dict(c.results()), dict(c.detail())
            assert results == {answering: None, refusing: None}  # neither failed nor answered
            assert all("out of file descriptors (EMFILE)" in text for text in detail.values())
            await rounds_done(c, 2)
            assert dict(c.results()) == {answering: True, refusing: False}


async def test_leaving_the_block_stops_the_rounds_and_keeps_its_exception() -> None:
    with tcp_listener() as port, pytest.raises(RuntimeError, match="the caller's own"):
        target = [f"tcp://127.0.0.1:{port}"]
        async with Canaries(lambda: target, interval=0.05, timeout=TIMEOUT, clock=SystemClock()):
            raise RuntimeError("the caller's own")
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "canaries"]


@pytest.mark.parametrize(
    ("url", "host", "port", "http"),
    [
        ("tcp://127.0.0.1:2379", "127.0.0.1", 2379, False),
        ("tcp://[::1]:2379", "::1", 2379, False),
        ("tcp://etcd1.example:2379/", "etcd1.example", 2379, False),
        ("http://ops-2.example:9470/readyz", "ops-2.example", 9470, True),
        ("https://ops-2.example/readyz", "ops-2.example", 443, True),
    ],
)
def test_canary_urls(url: str, host: str, port: int, http: bool) -> None:
    canary = parse_canary(url)
    assert (canary.url, canary.host, canary.port, canary.http is not None) == (
        url,
        host,
        port,
        http,
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("tcp://127.0.0.1", "has no port"),
        ("tcp://127.0.0.1:2379/health", "nothing after"),
        ("udp://127.0.0.1:53", "a canary is tcp://host:port or an http"),
        ("127.0.0.1:2379", "a canary is tcp://host:port or an http"),
        ("http:///readyz", "has no host"),
    ],
)
def test_what_is_not_a_canary(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_canary(url)


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_interval_and_timeout_are_checked_at_once(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Canaries(list, interval=interval, timeout=timeout, clock=SystemClock())
