"""What a client may make the API wait for or hold, from the ``api`` section.

What aiohttp 3.14 offers, and what is added here:

- a request head: ``max_line_size``/``max_field_size`` (``api.max_header_size``) and
  ``max_headers`` are RequestHandler arguments; a head over them is answered 400 by the
  parser, before any route runs;
- a slow or absent head: aiohttp has no header deadline of its own, but its keep-alive timer
  (``keepalive_timeout``) also runs from the moment a connection opens and closes it while no
  complete head has arrived, however many bytes dribble in; ``api.header_timeout`` sets it;
- a slow body: aiohttp has none (a handler's ``await request.read()`` waits forever), so
  ``read_body_in_time`` reads every body before its route, within ``api.body_timeout``;
- a large body: ``client_max_size`` (``api.max_body``) counts bytes after decompression, so a
  gzip bomb stops at the limit; a declared Content-Length over it is refused unread;
- many connections: none in aiohttp; ``connections.py`` caps them (``api.max_connections``)
  and closes the oldest idle one to make room. Idle keep-alive connections, and connections
  that never send a head, are closed after ``api.header_timeout`` by the keep-alive timer.

aiohttp logs each malformed request at ERROR with a traceback; one client could fill the log.
``QuietClientErrors`` turns those into one WARNING line at most every ``LOG_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from nodevigil.app.api.connections import ACCEPT_FILTER, CONNECTIONS, CappedRunner
from nodevigil.app.api.errors import json_error
from nodevigil.core.config.schema import Api

LINGER = 2.0  # how long a refused request may still send its body before the connection closes
LOG_EVERY = 10.0  # seconds between two log lines about malformed requests
HTTP_LOG = logging.getLogger("nodevigil.app.api.http")


def read_body_in_time(api: Api) -> Middleware:
    """A middleware that reads each request body before its route, within ``body_timeout``;
    the body is cached for ``request.json()``, ``text()`` and ``read()``."""

    too_large = f"the body is larger than the limit of {api.max_body} bytes"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.can_read_body:
            declared = request.content_length
            if declared is not None and declared > api.max_body:
                return _refuse(413, too_large)
            try:
                async with asyncio.timeout(api.body_timeout):
                    await request.read()
            except TimeoutError:
                return _refuse(408, f"the body did not arrive within {api.body_timeout:g}s")
            except web.HTTPRequestEntityTooLarge:
                return _refuse(413, too_large)
            except web.RequestPayloadError as exc:  # a broken chunk or content encoding
                return _refuse(400, f"the body cannot be read: {_one_line(exc)}")
        return await handler(request)

    return middleware


def _refuse(status: int, message: str) -> web.Response:
    """An error after which the connection closes: the client may still be sending."""
    response = json_error(status, message)
    response.force_close()
    return response


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


class QuietClientErrors(logging.Filter):
    """Malformed requests are the client's fault: one WARNING line, no traceback, at most one
    every ``every`` seconds (with how many were not logged). Other records pass unchanged."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        super().__init__()
        self.every = every
        self.last = -every
        self.unlogged = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | web.RequestPayloadError):
            return True
        now = time.monotonic()
        if now - self.last < self.every:
            self.unlogged += 1
            return False
        more = f" ({self.unlogged} more since the last one)" if self.unlogged else ""
        record.msg = f"refused a malformed request: %s{more}"
        record.args = (_one_line(exc),)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self.last, self.unlogged = now, 0
        return True


HTTP_LOG.addFilter(QuietClientErrors())


def api_runner(app: web.Application, api: Api) -> web.AppRunner:
    """The runner that serves ``app`` with the request-head limits of the ``api`` section and
    its connection cap (``connections.py``; ``build_app`` made the cap)."""
    # One line per episode instead of a traceback per failed accept (connections.py).
    logging.getLogger("asyncio").addFilter(ACCEPT_FILTER)
    return CappedRunner(
        app,
        cap=app[CONNECTIONS],
        access_log=None,
        handle_signals=False,
        logger=HTTP_LOG,
        keepalive_timeout=api.header_timeout,
        max_line_size=api.max_header_size,
        max_field_size=api.max_header_size,
        max_headers=api.max_headers,
        lingering_time=LINGER,
    )
