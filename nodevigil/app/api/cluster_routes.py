"""Routes for the cluster: who leads, and a planned hand-over (step-down)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from nodevigil.app.api import times
from nodevigil.app.api.app import ApiError, require_admin, require_operator
from nodevigil.app.leadership import Leadership, Role

LEADERSHIP: web.AppKey[Leadership] = web.AppKey("leadership")
# With cluster.vantages: each vantage's health and votes (nodevigil.app.vantages.Vantages.view).
VANTAGES: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("vantages")


def cluster_view(app: web.Application) -> dict[str, Any] | None:
    """Role, leader, epoch, members and (when they vote) the vantages; None without a lease."""
    leadership = app.get(LEADERSHIP)
    if leadership is None:
        return None
    view = leadership.view()
    vantages = app.get(VANTAGES)
    if vantages is not None:
        view["vantages"] = vantages()
    return view


def role_of(request: web.Request) -> str:
    """This process's role (``leader`` on a single host, or where no lease is wired in)."""
    leadership = request.app.get(LEADERSHIP)
    return Role.LEADER.value if leadership is None else leadership.role.value


async def cluster(request: web.Request) -> web.Response:
    """This process's role, the leader, the fencing epoch and the members."""
    require_operator(request)
    return web.json_response(times.cluster(cluster_view(request.app)))


async def step_down(request: web.Request) -> web.Response:
    """Revoke the leader lease held by this process so another host takes over (admin)."""
    require_admin(request)
    leadership = request.app[LEADERSHIP]
    if leadership.role is not Role.LEADER:
        raise ApiError(409, f"{leadership.me} is not the leader ({leadership.role.value})")
    if not await leadership.step_down():
        raise ApiError(409, f"{leadership.me} runs alone (no cluster:): nobody to hand over to")
    return web.json_response(times.cluster(leadership.view()))


def routes() -> list[web.RouteDef]:
    """The cluster's routes."""
    return [
        web.get("/api/v1/cluster", cluster),
        web.post("/api/v1/cluster/step-down", step_down),
    ]
