"""The API's connection cap: idle connections make room, busy ones are kept, accept errors are
one line per episode (nodevigil/app/api/connections.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from nodevigil.app.api.connections import (
    ACCEPT,
    ACCEPT_MESSAGE,
    CONNECTIONS,
    ConnectionCap,
    ConnectionCollector,
    connection_limit,
)
from nodevigil.app.api.limits import api_runner
from nodevigil.core.config.schema import Api
from tests.failover.daemons import poll_until

CAP = 8


@contextlib.asynccontextmanager
async def served(release: asyncio.Event) -> AsyncIterator[tuple[str, ConnectionCap]]:
    api = Api.model_validate({"max_connections": CAP})
    cap = ConnectionCap(connection_limit(api))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slow(_: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"status": "done"})

    app = web.Application(middlewares=[cap.mark_busy])
    app[CONNECTIONS] = cap
    app.add_routes([web.get("/healthz", healthz), web.get("/slow", slow)])
    runner = api_runner(app, api)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", cap
    finally:
        release.set()
        await runner.cleanup()


async def idle_connections(base: str, count: int) -> list[asyncio.StreamWriter]:
    port = int(base.rsplit(":", 1)[1])
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    return writers


async def healthz(base: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
        http.get(f"{base}/healthz") as response,
    ):
        return response.status


def test_the_default_cap_is_a_quarter_of_the_descriptor_limit_at_most_256() -> None:
    api = Api()
    assert connection_limit(api, descriptors=1024) == 256
    assert connection_limit(api, descriptors=65536) == 256
    assert connection_limit(api, descriptors=256) == 64
    assert connection_limit(Api(max_connections=1000), descriptors=1024) == 1000


async def test_idle_connections_over_the_cap_make_room_and_healthz_still_answers() -> None:
    async with served(asyncio.Event()) as (base, cap):
        writers = await idle_connections(base, 50)
        try:
            for _ in range(5):
                assert await healthz(base) == 200

            async def settled() -> bool:
                return len(cap.open) - len(cap.closing) <= CAP

            await poll_until(settled, within=5, what="idle connections shed")
            assert cap.evicted >= 50 - CAP
            assert cap.refused == 0
            registry = CollectorRegistry()
            registry.register(ConnectionCollector(cap))
            assert registry.get_sample_value("nodevigil_api_connections") is not None
            assert registry.get_sample_value("nodevigil_api_connections_limit") == CAP
            evicted = registry.get_sample_value("nodevigil_api_connections_evicted_total")
            assert evicted == cap.evicted
        finally:
            for writer in writers:
                writer.close()


async def test_busy_connections_are_kept_and_a_new_one_is_refused() -> None:
    release = asyncio.Event()
    async with served(release) as (base, cap):
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as http:

            async def slow() -> int:
                async with http.get(f"{base}/slow") as response:
                    return response.status

            busy = [asyncio.create_task(slow()) for _ in range(CAP)]

            async def all_busy() -> bool:
                return len(cap.busy) >= CAP

            await poll_until(all_busy, within=5, what="every connection in a request")
            with pytest.raises((aiohttp.ClientError, TimeoutError)):
                await healthz(base)
            assert cap.refused >= 1
            release.set()
            assert await asyncio.gather(*busy) == [200] * CAP  # none was cut short
        assert cap.evicted == 0


async def test_accept_errors_are_counted_and_logged_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with served(asyncio.Event()) as (base, _):
        loop = asyncio.get_running_loop()
        before = ACCEPT.counts["EMFILE"]
        with caplog.at_level(logging.DEBUG):
            for _ in range(300):  # what asyncio does per failed accept, 128 a tick
                loop.call_exception_handler(
                    {
                        "message": ACCEPT_MESSAGE,
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
        assert ACCEPT.counts["EMFILE"] - before == 300
        assert not [r for r in caplog.records if r.name == "asyncio"]
        lines = [r.getMessage() for r in caplog.records if "API accept" in r.getMessage()]
        assert len(lines) <= 1, lines  # 0 when an earlier test's episode is still under way
        assert await healthz(base) == 200
