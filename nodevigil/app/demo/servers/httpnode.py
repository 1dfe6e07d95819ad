"""A small HTTP server standing in for a cloud node; it can be killed and revived."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass
class HttpNode:
    """Answers its own name on ``/`` (counted in ``hits``) and ``ok`` on ``/healthz``."""

    name: str
    port: int = 0
    host: str = "127.0.0.1"
    runner: web.AppRunner | None = None
    hits: int = 0

    @property
    def running(self) -> bool:
        """True while it serves."""
        return self.runner is not None

    @property
    def url(self) -> str:
        """The node's own URL (valid once started)."""
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Start serving (on the same port when restarted)."""
        app = web.Application()
        app.router.add_get("/", self._answer)
        app.router.add_get("/healthz", self._health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.05)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self.runner = runner

    async def stop(self) -> None:
        """Stop abruptly: close the listener and every open connection."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.name)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")
