"""Helpers for the traffic-proof tests: nodes that hold sessions open, live client traffic."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from failover.controller.store import ActionRecord
from failover.events import TrafficProof
from nodevigil.app.demo.servers.httpnode import HttpNode


@dataclass
class SlowNode(HttpNode):
    """An HTTP node whose ``/slow`` answers only once ``release`` is set: a long-lived
    session through HAProxy, open until the test ends it."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    open_slow: int = 0

    async def start(self) -> None:
        """Serve ``/``, ``/healthz`` and ``/slow`` (on the same port when restarted)."""
        app = web.Application()
        app.router.add_get("/", self._answer)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/slow", self._slow)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.05)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self.runner = runner

    async def _slow(self, request: web.Request) -> web.Response:
        self.open_slow += 1
        try:
            await self.release.wait()
        finally:
            self.open_slow -= 1
        return web.Response(text=self.name)


@dataclass
class Traffic:
    """Live client traffic through the frontend: a new connection per request."""

    url: str
    answers: Counter[str] = field(default_factory=Counter)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Traffic]:
        """Send requests one after the other until the block ends."""
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            task = asyncio.create_task(self._send(http), name="client traffic")
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _send(self, http: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with http.get(self.url) as response:
                    body = await response.text() if response.status == 200 else ""
                    self.answers[body or str(response.status)] += 1
            except aiohttp.ClientError:
                self.answers["error"] += 1
            await asyncio.sleep(0.01)  # a steady trickle, not a flood on 2 shared cores


@contextlib.asynccontextmanager
async def slow_sessions(url: str, count: int) -> AsyncIterator[list[asyncio.Task[str]]]:
    """``count`` long-lived requests to ``url``/slow, each on its own connection."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> str:
            async with http.get(url + "slow") as response:
                return await response.text()

        tasks = [asyncio.create_task(one(), name=f"slow session {i}") for i in range(count)]
        try:
            yield tasks
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class FlipAuthority:
    """A lease the test takes away: ``leading = False`` deposes this host."""

    epoch: int | None = 7

    def __init__(self) -> None:
        self.leading = True

    def may_act(self) -> bool:
        """While the test says so."""
        return self.leading

    def remaining(self) -> float:
        """Plenty while leading."""
        return 60.0 if self.leading else 0.0


@dataclass
class Recorded:
    """What a ProofRunner emitted and wrote to the action log."""

    events: list[TrafficProof] = field(default_factory=list)
    records: list[ActionRecord] = field(default_factory=list)

    def emit(self, event: TrafficProof) -> None:
        """The runner's ``emit``."""
        self.events.append(event)

    async def record(self, records: list[ActionRecord]) -> None:
        """The runner's ``record`` (the store's ``record_actions``)."""
        self.records += records
