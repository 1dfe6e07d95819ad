"""Each probe type against a real server started by the test."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from monitor.probes import build_prober
from monitor.probes.base import ProbeFailure, hedged
from monitor.probes.http import make_session
from nodevigil.core.config import parse_config
from tests.failover.daemons import NAMED, free_port, run_bind


def spec(probe: dict[str, Any]) -> Any:
    """A probe spec parsed and resolved exactly as the daemon does."""
    config = parse_config(
        {
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [{"name": "n", "site": "s", "probes": [probe]}],
        }
    )
    return config.nodes[0].probes[0]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session() as s:
        yield s


@pytest.fixture
async def web_server() -> AsyncIterator[str]:
    """An HTTP server: /ok, /slow (300 ms), /fail (503), /body (text)."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="healthy")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text="slow")

    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=503, text="sick")

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/slow", slow), web.get("/fail", fail)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_probe_outcomes(web_server: str, session: aiohttp.ClientSession) -> None:
    ok = await build_prober(spec({"type": "http", "url": f"{web_server}/ok"}), session).check()
    assert ok[0] is True and ok[1].startswith("HTTP 200 in")

    bad = await build_prober(spec({"type": "http", "url": f"{web_server}/fail"}), session).check()
    assert bad[:2] == (False, "HTTP 503, expected [200]")

    accepted = spec({"type": "http", "url": f"{web_server}/fail", "expect_status": [503]})
    assert (await build_prober(accepted, session).check())[0] is True

    body = spec({"type": "http", "url": f"{web_server}/ok", "body_match": "^sick$"})
    result = await build_prober(body, session).check()
    assert result[0] is False and "body does not match" in result[1]

    latency = spec(
        {"type": "http", "url": f"{web_server}/slow", "max_latency": "100ms", "timeout": "900ms"}
    )
    result = await build_prober(latency, session).check()
    assert result[0] is False and "over 100ms" in result[1]


async def test_http_probe_times_out_and_refused(
    web_server: str, session: aiohttp.ClientSession
) -> None:
    slow = spec({"type": "http", "url": f"{web_server}/slow", "timeout": "100ms"})
    result = await build_prober(slow, session).check()
    assert result[0] is False and "timed out" in result[1]

    dead = spec({"type": "http", "url": f"http://127.0.0.1:{free_port()}/"})
    result = await build_prober(dead, session).check()
    assert result[:2] == (False, "connection refused")


async def test_tcp_probe(web_server: str, session: aiohttp.ClientSession) -> None:
    port = web_server.rsplit(":", 1)[1]
    up = await build_prober(spec({"type": "tcp", "address": f"127.0.0.1:{port}"}), session).check()
    assert up[0] is True
    down = spec({"type": "tcp", "address": f"127.0.0.1:{free_port()}"})
    assert (await build_prober(down, session).check())[:2] == (False, "connection refused")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def _tls_server(cert: trustme.LeafCert) -> tuple[asyncio.Server, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def test_tls_probe_checks_certificate_days_left(
    ca: trustme.CA, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    fresh = ca.issue_cert("node.test")
    expiring = ca.issue_cert("node.test", not_after=soon)
    for cert, min_days, expect in ((fresh, 14, True), (expiring, 14, False), (expiring, 2, True)):
        server, port = await _tls_server(cert)
        try:
            probe = spec(
                {
                    "type": "tls",
                    "address": f"127.0.0.1:{port}",
                    "server_name": "node.test",
                    "ca_file": str(ca_file),
                    "min_days_left": min_days,
                }
            )
            ok, detail, _ = await build_prober(probe, session).check()
            assert ok is expect, detail
        finally:
            server.close()
            await server.wait_closed()


async def test_tls_probe_rejects_an_unknown_issuer(
    ca: trustme.CA, session: aiohttp.ClientSession
) -> None:
    server, port = await _tls_server(ca.issue_cert("node.test"))
    try:
        probe = spec({"type": "tls", "address": f"127.0.0.1:{port}", "server_name": "node.test"})
        ok, detail, _ = await build_prober(probe, session).check()
        assert ok is False and detail.startswith("certificate rejected")
    finally:
        server.close()
        await server.wait_closed()


async def test_dns_probe_against_bind(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    if not NAMED.exists():
        pytest.skip("named is missing: install the Debian package bind9")
    async with run_bind(tmp_path / "bind") as bind:
        good = spec(
            {
                "type": "dns",
                "server": bind.server,
                "query": "ns1.example.test",
                "expect": ["127.0.0.1"],
            }
        )
        assert (await build_prober(good, session).check())[0] is True
        wrong = spec(
            {
                "type": "dns",
                "server": bind.server,
                "query": "ns1.example.test",
                "expect": ["10.9.9.9"],
            }
        )
        ok, detail, _ = await build_prober(wrong, session).check()
        assert ok is False and "lacks" in detail
        missing = spec({"type": "dns", "server": bind.server, "query": "nope.example.test"})
        assert (await build_prober(missing, session).check())[:2] == (
            False,
            "DNS answered NXDOMAIN",
        )


async def test_icmp_probe_loopback(session: aiohttp.ClientSession) -> None:
    if os.geteuid() != 0:
        pytest.skip("raw ICMP sockets need root here")
    ok, detail, _ = await build_prober(
        spec({"type": "icmp", "address": "127.0.0.1"}), session
    ).check()
    assert ok is True, detail


async def test_hedged_attempt_rescues_a_lost_first_try() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)  # this packet was "lost"
        return "answered"

    assert await hedged(attempt, budget=0.4, attempts=2) == (True, "answered")
    assert calls == 2


async def test_hedged_definitive_failure_is_not_retried() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise ProbeFailure("HTTP 500")

    assert await hedged(attempt, budget=0.4, attempts=3) == (False, "HTTP 500")
    assert calls == 1


async def test_hedged_all_tries_failing_fast() -> None:
    async def attempt() -> str:
        raise ConnectionRefusedError

    assert await hedged(attempt, budget=0.4, attempts=3) == (False, "connection refused")
