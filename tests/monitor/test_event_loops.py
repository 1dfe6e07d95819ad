"""The probe engine on each event loop nodevigil can run on: asyncio's own, and uvloop's.

uvloop's transports implement asyncio's transport methods without subclassing
``asyncio.Transport``; the HTTP client once refused them, and every probe failed under uvloop.
Here the real Monitor probes real HTTP, HTTPS, TLS and TCP servers on loopback on each loop,
and the verdicts, keep-alive reuse and probe counts must come out the same.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.heartbeat import HeartbeatBoard
from monitor.metrics import MonitorMetrics
from monitor.monitor import Monitor
from monitor.probes.httpclient import StreamTransport, _Connection
from monitor.verdicts import Verdict
from nodevigil.core.clock import SystemClock
from nodevigil.core.config import parse_config
from nodevigil.core.eventloop import (
    LOOPS,
    LoopChoiceError,
    choose_loop,
    loop_factory,
    uvloop_installed,
)
from nodevigil.core.events import EventBus
from tests.failover.daemons import free_port

EXPECTED = {
    "http-ok": Verdict.UP,
    "http-503": Verdict.DOWN,
    "https-ok": Verdict.UP,
    "tls-ok": Verdict.UP,
    "tcp-ok": Verdict.UP,
    "tcp-dead": Verdict.DOWN,
}


def _factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (pip install '.[fast]')")
    factory = loop_factory(name)
    assert factory is not None
    return factory


async def _start(app: web.Application, context: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner


async def _probe_fleet(ca: trustme.CA, ca_file: Path) -> dict[str, Any]:
    requests: list[object] = []  # each HTTP request's client address: its connection

    def seen(request: web.Request) -> None:
        assert request.transport is not None
        requests.append(request.transport.get_extra_info("peername"))

    async def ok(request: web.Request) -> web.Response:
        seen(request)
        return web.Response(text="healthy")

    async def sick(request: web.Request) -> web.Response:
        seen(request)
        return web.Response(status=503, text="sick")

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/sick", sick)])
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    plain, secure = await _start(app), await _start(app, server_tls)
    port, tls_port = plain.addresses[0][1], secure.addresses[0][1]
    config = parse_config(
        {
            "defaults": {"interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2},
            "sites": [{"name": "s", "address": "192.0.2.1"}],
            "nodes": [
                {"name": name, "site": "s", "probes": [probe]}
                for name, probe in {
                    "http-ok": {"type": "http", "url": f"http://127.0.0.1:{port}/ok"},
                    "http-503": {"type": "http", "url": f"http://127.0.0.1:{port}/sick"},
                    "https-ok": {
                        "type": "http",
                        "url": f"https://127.0.0.1:{tls_port}/ok",
                        "tls_verify": False,
                    },
                    "tls-ok": {
                        "type": "tls",
                        "address": f"127.0.0.1:{tls_port}",
                        "ca_file": str(ca_file),
                    },
                    "tcp-ok": {"type": "tcp", "address": f"127.0.0.1:{port}"},
                    "tcp-dead": {"type": "tcp", "address": f"127.0.0.1:{free_port()}"},
                }.items()
            ],
        }
    )
    clock = SystemClock()
    registry = CollectorRegistry()
    try:
        async with Monitor(
            config,
            bus=EventBus(),
            clock=clock,
            metrics=MonitorMetrics(registry),
            board=HeartbeatBoard(clock),
        ) as monitor:
            deadline = asyncio.get_running_loop().time() + 10
            while dict(monitor.verdicts()) != EXPECTED:
                assert asyncio.get_running_loop().time() < deadline, dict(monitor.verdicts())
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a few more rounds on kept-alive connections
            stats = monitor.stats()
            return {
                "loop": type(asyncio.get_running_loop()).__module__,
                "verdicts": dict(monitor.verdicts()),
                "stats": stats,
                "http_ok": registry.get_sample_value(
                    "nodevigil_probe_results_total", {"type": "http", "result": "success"}
                ),
                "http_failed": registry.get_sample_value(
                    "nodevigil_probe_results_total", {"type": "http", "result": "failure"}
                ),
                "requests": len(requests),
                "connections": len(set(requests)),
            }
    finally:
        await plain.cleanup()
        await secure.cleanup()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_probe_engine_judges_alike_on_every_event_loop(tmp_path: Path, loop: str) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with asyncio.Runner(loop_factory=_factory(loop)) as runner:
        seen = runner.run(_probe_fleet(ca, ca_file))
    assert seen["loop"].startswith(loop), seen["loop"]  # the loop asked for really ran
    assert seen["verdicts"] == EXPECTED
    stats = seen["stats"]
    assert stats["inconclusive"] == 0  # no probe blamed an overloaded monitor
    assert seen["http_ok"] >= 2 * 2 and seen["http_failed"] >= 2
    # Keep-alive works on this loop's transports: connections serve request after request.
    assert seen["requests"] >= 3 * seen["connections"], seen


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_each_loops_stream_transports_pass_the_clients_check(loop: str) -> None:
    """The HTTP client checks its transport by shape: the loop's TCP and TLS transports pass,
    one it could not write to or drop (a read-only pipe's) is refused, and closed."""

    async def shapes() -> list[bool]:
        loop_ = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tcp, _ = await loop_.create_connection(asyncio.Protocol, "127.0.0.1", port)
        try:
            return [isinstance(tcp, StreamTransport), isinstance(object(), StreamTransport)]
        finally:
            tcp.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=_factory(loop)) as runner:
        assert runner.run(shapes()) == [True, False]
    reading = _ReadOnly()
    with pytest.raises(TypeError, match="not a stream transport: _ReadOnly"):
        _Connection().connection_made(reading)
    assert reading.closed


class _ReadOnly(asyncio.ReadTransport):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_operator_chooses_the_loop_and_auto_prefers_uvloop() -> None:
    installed = "uvloop" if uvloop_installed() else "asyncio"
    assert choose_loop(None, {}) == installed  # auto: uvloop when it is installed
    assert choose_loop(None, {"NODEVIGIL_LOOP": "auto"}) == installed
    assert choose_loop(None, {"NODEVIGIL_LOOP": "asyncio"}) == "asyncio"  # turned off
    assert choose_loop("asyncio", {"NODEVIGIL_LOOP": "uvloop"}) == "asyncio"  # --loop wins
    with pytest.raises(LoopChoiceError, match="unknown event loop 'tokio'"):
        choose_loop(None, {"NODEVIGIL_LOOP": "tokio"})
    if not uvloop_installed():
        with pytest.raises(LoopChoiceError, match="uvloop is not installed"):
            choose_loop("uvloop", {})
