"""The HTTP surface: /healthz, /readyz, /metrics and the token-protected /api/v1.

Hostile input is bounded before any route runs (``limits.py``); the OpenAPI document
(``openapi.py``) says what each route takes, and every error leaves as ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from nodevigil.app.api import times
from nodevigil.app.api.auth import Principal, TokenBook, token_digest
from nodevigil.app.api.connections import CONNECTIONS, ConnectionCollector, cap_for
from nodevigil.app.api.errors import ApiError, json_error
from nodevigil.app.api.limits import api_runner, read_body_in_time
from nodevigil.app.api.openapi import DOCUMENT_JSON, query_names
from nodevigil.app.api.openapi import PATH as OPENAPI_PATH
from nodevigil.app.api.params import json_object, limit, query_time
from nodevigil.core.clock import Clock, SystemClock
from nodevigil.core.config import Config
from nodevigil.core.errors import StateError
from nodevigil.core.eventlog import EventLog
from nodevigil.core.exposition import exposition

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NodeView(Protocol):
    """What the node routes read: the monitor, or with votes the quorum's view of it."""

    def node_names(self) -> list[str]: ...
    def node_status(self, name: str) -> dict[str, Any] | None: ...


@dataclass
class ApiContext:
    """What the routes read: the live parts of the daemon."""

    config: Config
    registry: CollectorRegistry
    monitor: NodeView
    events: EventLog
    tokens: TokenBook
    ready: bool = False
    # Each says why this process is not ready (empty: ready): the controller, while a load
    # balancer is not read back; the PostgreSQL watch, while the database is away.
    readiness: list[Callable[[], list[str]]] = field(default_factory=list)
    # Said by /readyz besides ready or not: in a cluster, this process's role and why (a
    # fenced process still serves the API, so it stays ready, and says it cannot act).
    cluster: Callable[[], dict[str, Any]] | None = None
    clock: Clock = field(default_factory=SystemClock)


CONTEXT = web.AppKey("context", ApiContext)
PRINCIPAL = web.RequestKey("principal", Principal)


# Routes under /api/ that need no token: the API's own description (it holds no data).
PUBLIC_API_PATHS = frozenset({OPENAPI_PATH})
BEARER_HINT = "send 'Authorization: Bearer <token>'"

__all__ = [
    "CONTEXT",
    "PRINCIPAL",
    "ApiContext",
    "ApiError",
    "api_runner",
    "build_app",
    "json_error",
]


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
        response = json_error(exc.status, _http_error_message(request, exc))
        if "Allow" in exc.headers:  # RFC 9110: a 405 says which methods the resource has
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except StateError as exc:
        # The database is away (PostgreSQL restarting, a full disk): the client may retry.
        log.warning("API %s %s: state unavailable: %s", request.method, request.path, exc)
        response = json_error(503, f"state unavailable, try again: {exc}")
        response.headers["Retry-After"] = "5"
        return response
    except Exception:
        log.exception("API error on %s %s", request.method, request.path)
        return json_error(500, "internal error; see the daemon's log")


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed here (allowed: {allowed})"
    if isinstance(exc, web.HTTPNotFound):
        return f"no route {request.path[:200]!r}; the API is described at {OPENAPI_PATH}"
    return exc.reason


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /api/ route but the public ones needs a valid bearer token (RFC 6750)."""
    if not request.path.startswith("/api/") or request.path in PUBLIC_API_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("missing bearer token", 'Bearer realm="nodevigil"', hint=BEARER_HINT)
    principal = request.app[CONTEXT].tokens.identify(token.strip())
    if principal is None:
        return _unauthorized("invalid token", 'Bearer realm="nodevigil", error="invalid_token"')
    request[PRINCIPAL] = principal
    return await handler(request)


def _unauthorized(message: str, challenge: str, **extra: Any) -> web.Response:
    response = json_error(401, message, **extra)
    response.headers["WWW-Authenticate"] = challenge
    return response


@web.middleware
async def known_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An /api/ route refuses query parameters it does not take, or takes twice: a typo such
    as ``?sevice=`` must not silently widen what a request returns."""
    resource = request.match_info.route.resource
    if request.path.startswith("/api/") and resource is not None:
        allowed = query_names(request.method, resource.canonical)
        if allowed is not None:
            unknown = sorted(set(request.query) - allowed)
            if unknown:
                takes = ", ".join(sorted(allowed)) or "none"
                raise ApiError(
                    400, f"unknown query parameter(s): {', '.join(unknown)[:200]} (takes: {takes})"
                )
            for key in allowed:
                if len(request.query.getall(key, ())) > 1:
                    raise ApiError(400, f"{key}: given more than once")
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
    """The request's JSON object body (``{}`` when optional and empty), else a 400; a key
    given twice is a 400 too (``params.json_object``)."""
    return await json_object(request, optional=optional)


async def text_body(request: web.Request) -> str:
    """The request's body as UTF-8 text (a spreadsheet's byte-order mark dropped), else a 400."""
    try:
        return (await request.read()).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8 text (byte {exc.start})") from None


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: started, and every load balancer read back in the last cycle (503 naming
    each one not read and its error, as ``not_ready``)."""
    ctx = request.app[CONTEXT]
    extra: dict[str, Any] = {}
    if ctx.cluster is not None:
        view = ctx.cluster()
        extra = {"role": view.get("role"), "reason": view.get("reason")}
    if not ctx.ready:
        return web.json_response({"status": "starting", **extra}, status=503)
    problems = [problem for check in ctx.readiness for problem in check()]
    if problems:
        body = {"status": "not_ready", "not_ready": problems, **extra}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", **extra})


def metrics_token_accepted(request: web.Request) -> bool:
    """Whether ``/metrics`` may be read: no ``api.metrics_token_sha256``, or the bearer token is
    that one or an admin or read token (compared in constant time)."""
    ctx = request.app[CONTEXT]
    wanted = ctx.config.api.metrics_token_sha256
    if wanted is None:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    if hmac.compare_digest(token_digest(token).encode(), wanted.encode()):
        return True
    principal = ctx.tokens.identify(token)
    return principal is not None and principal.is_operator


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition (behind a token when configured), rendered in a thread: the series
    that grow with the fleet are kept as lines, so a scrape formats only what changed."""
    if not metrics_token_accepted(request):
        return _unauthorized(
            "/metrics needs the metrics token (api.metrics_token_sha256)",
            'Bearer realm="nodevigil-metrics"',
            hint=BEARER_HINT,
        )
    body = await asyncio.to_thread(exposition, request.app[CONTEXT].registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def list_nodes(request: web.Request) -> web.Response:
    """Every node with its verdict and the last result of each probe."""
    require_operator(request)
    ctx = request.app[CONTEXT]
    nodes = [ctx.monitor.node_status(n) for n in ctx.monitor.node_names()]
    return web.json_response({"nodes": [times.node_health(n) for n in nodes if n is not None]})


async def get_node(request: web.Request) -> web.Response:
    """One node."""
    require_operator(request)
    name = request.match_info["name"]
    status = request.app[CONTEXT].monitor.node_status(name)
    if status is None:
        raise ApiError(404, f"no node is called {name!r}")
    return web.json_response(times.node_health(status))


async def list_events(request: web.Request) -> web.Response:
    """Recorded events, newest first: ?kind=node.&subject=&since=&until=&limit= (times in
    RFC 3339 or seconds since the epoch)."""
    require_operator(request)
    events = await request.app[CONTEXT].events.query(
        since=query_time(request, "since"),
        until=query_time(request, "until"),
        kind=request.query.get("kind") or None,
        subject=request.query.get("subject") or None,
        limit=limit(request),
    )
    return web.json_response({"events": [times.event(e) for e in events]})


async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI document of this API (public: it describes shapes, holds no data)."""
    return web.Response(body=DOCUMENT_JSON, content_type="application/json", charset="utf-8")


def build_app(context: ApiContext, routes: list[web.RouteDef] | None = None) -> web.Application:
    """The aiohttp application; ``routes`` adds the controller's and the ledger's routes.

    The ``api`` section's limits are read here and by ``api_runner`` once, at start.
    """
    api = context.config.api
    cap = cap_for(api)
    app = web.Application(
        # mark_busy first: a connection is busy from the moment its request enters a route.
        middlewares=[
            cap.mark_busy,
            errors_as_json,
            bearer_auth,
            known_query,
            read_body_in_time(api),
        ],
        client_max_size=api.max_body,
    )
    app[CONTEXT] = context
    app[CONNECTIONS] = cap
    context.registry.register(ConnectionCollector(cap))
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get(OPENAPI_PATH, openapi_document),
            web.get("/api/v1/nodes", list_nodes),
            web.get("/api/v1/nodes/{name}", get_node),
            web.get("/api/v1/events", list_events),
        ]
    )
    if routes:
        app.add_routes(routes)
    return app
