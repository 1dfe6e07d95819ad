"""Routes for the failover controller: status, overrides (drain/undrain) and the action log."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from aiohttp import web

from failover.controller import Controller, UnknownNameError
from nodevigil.app.api import times
from nodevigil.app.api.app import (
    CONTEXT,
    ApiError,
    principal,
    require_admin,
    require_operator,
)
from nodevigil.app.api.cluster_routes import cluster_view, role_of
from nodevigil.app.api.openapi_schemas import DURATION_PATTERN, MAX_REASON
from nodevigil.app.api.params import check_keys, json_object, limit
from nodevigil.core.durations import format_duration, parse_duration

CONTROLLER = web.AppKey("controller", Controller)
_DURATION = re.compile(DURATION_PATTERN)


def _controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER]


def _parse_override(body: dict[str, Any], longest: float) -> tuple[float | None, str]:
    """``for`` and ``reason``; ``for`` at most ``longest`` (failover.drain_max), absent: that."""
    check_keys(body, {"for", "reason"})
    duration = None
    raw = body.get("for")
    if raw is not None:
        if not isinstance(raw, str) or not _DURATION.fullmatch(raw):
            raise ApiError(400, "for: write a duration such as '30m' or '1h30m'")
        duration = parse_duration(raw)
        if not 0 < duration <= longest:
            raise ApiError(
                422,
                f"for: must be longer than 0s and at most {format_duration(longest)} "
                "(failover.drain_max)",
            )
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ApiError(400, f"reason: must be a string of at most {MAX_REASON} characters")
    return duration, reason


async def status(request: web.Request) -> web.Response:
    """Nodes, sites and services as the controller sees them, and this process's role."""
    require_operator(request)
    status = {**_controller(request).status().as_dict(), "role": role_of(request)}
    status = times.controller_status(status)
    cluster = cluster_view(request.app)
    if cluster is not None and request.app[CONTEXT].config.cluster is not None:
        status["cluster"] = times.cluster(cluster)  # one host shows no cluster block
    return web.json_response(status)


async def services(request: web.Request) -> web.Response:
    """Each service's availability; a customer token sees only its own services."""
    who = principal(request)
    snapshot = _controller(request).status().as_dict()["services"]
    if not who.is_operator:
        config = request.app[CONTEXT].config
        own = {s for c in config.customers if c.id == who.customer for s in c.services}
        snapshot = [s for s in snapshot if s["name"] in own]
    return web.json_response({"services": [times.service(s) for s in snapshot]})


async def sites(request: web.Request) -> web.Response:
    """Each site: can it serve, is it published, is it in panic."""
    require_operator(request)
    sites = _controller(request).status().as_dict()["sites"]
    return web.json_response(
        {"sites": [{**s, "override": times.override(s["override"])} for s in sites]}
    )


async def overrides(request: web.Request) -> web.Response:
    """Operator drains in force."""
    require_operator(request)
    drains = [times.override(o.as_dict()) for o in _controller(request).overrides()]
    return web.json_response({"overrides": drains})


async def actions(request: web.Request) -> web.Response:
    """The durable log of load-balancer actions, newest first."""
    require_operator(request)
    records = await _controller(request).actions(limit(request))
    return web.json_response({"actions": [times.action(asdict(r)) for r in records]})


def _drain(kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        who = require_admin(request)
        name = request.match_info["name"]
        longest = request.app[CONTEXT].config.failover.drain_max
        duration, reason = _parse_override(await json_object(request, optional=True), longest)
        controller = _controller(request)
        drain = controller.drain_node if kind == "node" else controller.drain_site
        try:
            override = await drain(name, duration=duration, reason=reason, who=who.name)
        except UnknownNameError as exc:
            raise ApiError(404, str(exc)) from None
        return web.json_response(times.override(override.as_dict()))

    handler.__doc__ = f"Drain a {kind} (admin): body {{'for': '30m', 'reason': '...'}}."
    return handler


def _undrain(kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        who = require_admin(request)
        name = request.match_info["name"]
        controller = _controller(request)
        undrain = controller.undrain_node if kind == "node" else controller.undrain_site
        config = request.app[CONTEXT].config
        known = config.node(name) if kind == "node" else config.site(name)
        if known is None:
            raise ApiError(404, f"no {kind} is called {name!r}")
        cleared = await undrain(name, who=who.name)
        return web.json_response({"kind": kind, "name": name, "cleared": cleared})

    handler.__doc__ = f"Clear an operator drain of a {kind} (admin)."
    return handler


def routes() -> list[web.RouteDef]:
    """The controller's routes."""
    return [
        web.get("/api/v1/status", status),
        web.get("/api/v1/services", services),
        web.get("/api/v1/sites", sites),
        web.get("/api/v1/overrides", overrides),
        web.get("/api/v1/actions", actions),
        web.post("/api/v1/nodes/{name}/drain", _drain("node")),
        web.post("/api/v1/nodes/{name}/undrain", _undrain("node")),
        web.post("/api/v1/sites/{name}/drain", _drain("site")),
        web.post("/api/v1/sites/{name}/undrain", _undrain("site")),
    ]
