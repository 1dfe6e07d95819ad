"""Routes for the failover controller: status, overrides (drain/undrain) and the action log."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from failover.controller import Controller, UnknownNameError
from nodevigil.api.app import (
    CONTEXT,
    ApiError,
    json_body,
    principal,
    require_admin,
    require_operator,
)
from nodevigil.durations import parse_duration

CONTROLLER = web.AppKey("controller", Controller)


def _controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER]


def _parse_override(body: dict[str, Any]) -> tuple[float | None, str]:
    unknown = sorted(set(body) - {"for", "reason"})
    if unknown:
        raise ApiError(400, f"unknown key(s): {', '.join(unknown)} (allowed: for, reason)")
    duration = None
    if body.get("for") is not None:
        if not isinstance(body["for"], str):
            raise ApiError(400, "for: write a duration such as '30m'")
        try:
            duration = parse_duration(body["for"])
        except ValueError as exc:
            raise ApiError(400, f"for: {exc}") from None
        if duration <= 0:
            raise ApiError(400, "for: must be longer than 0s")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ApiError(400, "reason: must be a string of at most 500 characters")
    return duration, reason


async def status(request: web.Request) -> web.Response:
    """Nodes, sites and services as the controller sees them."""
    require_operator(request)
    return web.json_response(_controller(request).status().as_dict())


async def services(request: web.Request) -> web.Response:
    """Each service's availability; a customer token sees only its own services."""
    who = principal(request)
    snapshot = _controller(request).status().as_dict()["services"]
    if not who.is_operator:
        config = request.app[CONTEXT].config
        own = {s for c in config.customers if c.id == who.customer for s in c.services}
        snapshot = [s for s in snapshot if s["name"] in own]
    return web.json_response({"services": snapshot})


async def sites(request: web.Request) -> web.Response:
    """Each site: can it serve, is it published, is it in panic."""
    require_operator(request)
    return web.json_response({"sites": _controller(request).status().as_dict()["sites"]})


async def overrides(request: web.Request) -> web.Response:
    """Operator drains in force."""
    require_operator(request)
    return web.json_response({"overrides": [o.as_dict() for o in _controller(request).overrides()]})


async def actions(request: web.Request) -> web.Response:
    """The durable log of load-balancer actions, newest first."""
    require_operator(request)
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError(400, "limit: must be a whole number from 1 to 1000")
    records = await _controller(request).actions(int(raw))
    return web.json_response({"actions": [asdict(r) for r in records]})


def _drain(kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        who = require_admin(request)
        name = request.match_info["name"]
        duration, reason = _parse_override(await json_body(request, optional=True))
        controller = _controller(request)
        drain = controller.drain_node if kind == "node" else controller.drain_site
        try:
            override = await drain(name, duration=duration, reason=reason, who=who.name)
        except UnknownNameError as exc:
            raise ApiError(404, str(exc)) from None
        return web.json_response(override.as_dict())

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
