"""The HTTP surface: /healthz, /readyz, /metrics and the token-protected /api/v1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nodevigil.api.auth import Principal, TokenBook
from nodevigil.clock import Clock, SystemClock
from nodevigil.config import Config
from nodevigil.eventlog import EventLog

if TYPE_CHECKING:
    from monitor.monitor import Monitor

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiContext:
    """What the routes read: the live parts of the daemon."""

    config: Config
    registry: CollectorRegistry
    monitor: Monitor
    events: EventLog
    tokens: TokenBook
    ready: bool = False
    readiness: list[Callable[[], bool]] = field(default_factory=list)
    clock: Clock = field(default_factory=SystemClock)


CONTEXT = web.AppKey("context", ApiContext)
PRINCIPAL = web.RequestKey("principal", Principal)


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error body ``{"error": message, ...}``."""
    return web.json_response({"error": message, **extra}, status=status)


class ApiError(Exception):
    """Raised by a route: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; an unexpected one is logged and answered 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("API error on %s %s", request.method, request.path)
        return json_error(500, "internal error; see the daemon's log")


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /api/ route needs a valid bearer token."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return json_error(401, "missing bearer token", hint="send 'Authorization: Bearer <token>'")
    principal = request.app[CONTEXT].tokens.identify(token.strip())
    if principal is None:
        return json_error(401, "invalid token")
    request[PRINCIPAL] = principal
    return await handler(request)


def principal(request: web.Request) -> Principal:
    """The authenticated caller of an /api/ route."""
    return request[PRINCIPAL]


def require_operator(request: web.Request) -> Principal:
    """The caller, who must hold an admin or read token."""
    who = principal(request)
    if not who.is_operator:
        raise ApiError(403, "this route needs an operator token")
    return who


def require_admin(request: web.Request) -> Principal:
    """The caller, who must hold an admin token."""
    who = principal(request)
    if not who.is_admin:
        raise ApiError(403, "this route needs an admin token")
    return who


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when optional and empty), else a 400."""
    if optional and not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: configuration loaded, probes running, first reconcile done."""
    ctx = request.app[CONTEXT]
    if not ctx.ready or not all(check() for check in ctx.readiness):
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition, rendered off the event loop."""
    body = await asyncio.to_thread(generate_latest, request.app[CONTEXT].registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def list_nodes(request: web.Request) -> web.Response:
    """Every node with its verdict and the last result of each probe."""
    require_operator(request)
    ctx = request.app[CONTEXT]
    nodes = [ctx.monitor.node_status(n) for n in ctx.monitor.node_names()]
    return web.json_response({"nodes": [n for n in nodes if n is not None]})


async def get_node(request: web.Request) -> web.Response:
    """One node."""
    require_operator(request)
    name = request.match_info["name"]
    status = request.app[CONTEXT].monitor.node_status(name)
    if status is None:
        raise ApiError(404, f"no node is called {name!r}")
    return web.json_response(status)


def _float_param(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{key}: {raw!r} is not a number (seconds since the epoch)") from None


async def list_events(request: web.Request) -> web.Response:
    """Recorded events, newest first: ?kind=node.&subject=&since=&until=&limit=."""
    require_operator(request)
    raw_limit = request.query.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise ApiError(400, "limit: must be a whole number from 1 to 1000")
    events = await request.app[CONTEXT].events.query(
        since=_float_param(request, "since"),
        until=_float_param(request, "until"),
        kind=request.query.get("kind") or None,
        subject=request.query.get("subject") or None,
        limit=int(raw_limit),
    )
    return web.json_response({"events": events})


def build_app(context: ApiContext, routes: list[web.RouteDef] | None = None) -> web.Application:
    """The aiohttp application; ``routes`` adds the controller's and the ledger's routes."""
    app = web.Application(
        middlewares=[errors_as_json, bearer_auth], client_max_size=context.config.api.max_body
    )
    app[CONTEXT] = context
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/api/v1/nodes", list_nodes),
            web.get("/api/v1/nodes/{name}", get_node),
            web.get("/api/v1/events", list_events),
        ]
    )
    if routes:
        app.add_routes(routes)
    return app
