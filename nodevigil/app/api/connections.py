"""How many connections the API holds, so clients can never take the probes' descriptors.

aiohttp has no connection limit, and asyncio accepts until the process runs out of file
descriptors; then every probe and load-balancer read-back fails with EMFILE, and asyncio logs
a traceback for every failed ``accept()`` (up to 128 a tick). Here:

- ``CappedServer`` is aiohttp's low-level ``web.Server`` with a cap (``api.max_connections``,
  by default a quarter of the descriptor limit and at most 256). Past the cap, the oldest *idle*
  connection (no request in a route) is closed to make room, so an operator's request or a
  liveness probe still gets in while thousands of idle connections are held; only when every
  connection is busy is the new one closed at once. Both are counted; the episode is logged
  once when it starts and once when it ends.
- idle connections are closed after ``api.header_timeout`` by aiohttp's own keep-alive timer
  (``limits.api_runner``).
- ``QuietAcceptErrors`` turns asyncio's "socket.accept() out of system resource" tracebacks
  into one line per episode, counted by errno.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodevigil.core.config.schema import Api
from nodevigil.core.resources import LocalTrouble, descriptor_limit, local_errno

DEFAULT_CAP = 256
ACCEPT_MESSAGE = "socket.accept() out of system resource"  # asyncio's selector_events

log = logging.getLogger("nodevigil.app.api.connections")


def connection_limit(api: Api, *, descriptors: int | None = None) -> int:
    """``api.max_connections``, or a quarter of the descriptor limit, at most DEFAULT_CAP."""
    if api.max_connections is not None:
        return api.max_connections
    limit = descriptor_limit() if descriptors is None else descriptors
    return max(8, min(DEFAULT_CAP, limit // 4))


class ConnectionCap:
    """The API's open connections, which of them are busy, and what was shed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[RequestHandler, asyncio.Transport] = {}  # oldest first
        self.closing: set[RequestHandler] = set()  # shed, waiting for connection_lost
        self.busy: dict[RequestHandler, int] = {}  # requests of each connection in a route
        self.refused = 0
        self.evicted = 0
        self._full = False  # an episode at the cap is under way
        self._shed_in_episode = 0

    def opened(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """A connection was accepted: admit it, closing the oldest idle one if at the cap."""
        self.open[handler] = transport
        if len(self.open) - len(self.closing) <= self.limit:
            return
        if not self._full:
            self._full = True
            log.warning(
                "API at its limit of %d connections: closing the oldest idle ones to make room "
                "(api.max_connections; nodevigil_api_connections_evicted_total)",
                self.limit,
            )
        self._shed_in_episode += 1
        victim = self._oldest_idle(besides=handler)
        if victim is not None:
            self.evicted += 1
            self.closing.add(victim)
            victim.force_close()
        else:  # every connection is in a request: this one waits for nothing, close it now
            self.refused += 1
            self.closing.add(handler)
            # Not from inside connection_made: its start() task is created after this returns,
            # and a connection already lost by then trips an assertion in aiohttp.
            asyncio.get_running_loop().call_soon(handler.force_close)

    def closed(self, handler: RequestHandler) -> None:
        """A connection is gone."""
        self.open.pop(handler, None)
        self.closing.discard(handler)
        self.busy.pop(handler, None)
        if self._full and len(self.open) <= self.limit * 3 // 4:
            log.warning(
                "API below its connection limit again (%d open of %d); %d connections shed",
                len(self.open),
                self.limit,
                self._shed_in_episode,
            )
            self._full, self._shed_in_episode = False, 0

    def _oldest_idle(self, *, besides: RequestHandler) -> RequestHandler | None:
        for handler in self.open:
            if handler is not besides and handler not in self.closing and handler not in self.busy:
                return handler
        return None

    @web.middleware
    async def mark_busy(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Middleware: a connection with a request in a route is never closed to make room."""
        protocol = request.protocol
        self.busy[protocol] = self.busy.get(protocol, 0) + 1
        try:
            return await handler(request)
        finally:
            left = self.busy.get(protocol, 1) - 1
            if left > 0:
                self.busy[protocol] = left
            else:
                self.busy.pop(protocol, None)


class CappedServer(web.Server):
    """aiohttp's low-level server, telling a ConnectionCap about every connection."""

    def __init__(self, handler: Any, *, cap: ConnectionCap, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.cap = cap

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Called by each connection's RequestHandler as it starts."""
        super().connection_made(handler, transport)
        ACCEPT.clear()  # an accept succeeded: an episode of accept errors may be over
        self.cap.opened(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Called by each connection's RequestHandler as it ends."""
        super().connection_lost(handler, exc)
        self.cap.closed(handler)


class CappedRunner(web.AppRunner):
    """An AppRunner whose server is a CappedServer; otherwise the same as aiohttp's."""

    def __init__(
        self,
        app: web.Application,
        *,
        cap: ConnectionCap,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, **kwargs
        )
        self._cap = cap
        # What aiohttp's Application hands each RequestHandler (the runner's own are above).
        self._handler_args = {"access_log_class": AccessLogger, **kwargs}

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the app, as aiohttp does
        return CappedServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            cap=self._cap,
            **self._handler_args,
        )


class QuietAcceptErrors(logging.Filter):
    """asyncio logs a traceback for every ``accept()`` that fails for want of descriptors or
    memory, up to 128 a tick and again every second; count them and let ``ACCEPT`` log one
    line when an episode starts and one when it ends."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(ACCEPT_MESSAGE):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        ACCEPT.hit(local_errno(exc) or "other")
        return False


ACCEPT = LocalTrouble(
    "API accept",
    consequence="new connections wait in the listen backlog; asyncio retries every second",
)
ACCEPT_FILTER = QuietAcceptErrors()


class ConnectionCollector(Collector):
    """The API's connection figures, read at scrape time; never raises."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def collect(self) -> Iterator[Metric]:
        """Open connections, the cap, what was shed, and failed accepts by errno."""
        cap = self._cap
        yield GaugeMetricFamily(
            "nodevigil_api_connections", "Connections open to the API.", value=len(cap.open)
        )
        yield GaugeMetricFamily(
            "nodevigil_api_connections_limit",
            "The API's connection cap (api.max_connections).",
            value=cap.limit,
        )
        yield CounterMetricFamily(
            "nodevigil_api_connections_refused",
            "New API connections closed at once because every connection was busy at the cap.",
            value=cap.refused,
        )
        yield CounterMetricFamily(
            "nodevigil_api_connections_evicted",
            "Idle API connections closed to make room for a new one at the cap.",
            value=cap.evicted,
        )
        errors = CounterMetricFamily(
            "nodevigil_api_accept_errors",
            "Failed accept() calls of the API's listening socket, by errno (EMFILE...).",
            labels=["errno"],
        )
        for name, count in sorted(list(ACCEPT.counts.items())):
            errors.add_metric([name], count)
        yield errors


def cap_for(api: Api) -> ConnectionCap:
    """The cap of the ``api`` section; warns when it leaves too few descriptors for the rest."""
    limit = connection_limit(api)
    descriptors = descriptor_limit()
    if limit > descriptors // 2:
        log.warning(
            "api.max_connections is %d with a descriptor limit of %d: API clients can take "
            "the descriptors probes and load-balancer calls need (raise the limit: "
            "docs/operations.md)",
            limit,
            descriptors,
        )
    return ConnectionCap(limit)


CONNECTIONS = web.AppKey("connections", ConnectionCap)
