"""Routes for incidents, the notification outbox, notifiers and maintenance windows."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from failover.incidents.manager import IncidentError, IncidentManager
from failover.incidents.model import CAUSES, Incident, IncidentState, iso
from failover.incidents.ports import IncidentStore
from failover.notify.outbox import Dispatcher
from nodevigil.app.api import times
from nodevigil.app.api.app import (
    CONTEXT,
    ApiError,
    json_body,
    principal,
    require_admin,
    require_operator,
)
from nodevigil.app.api.auth import Principal
from nodevigil.app.api.openapi_schemas import MAX_TEXT, OUTBOX_STATES
from nodevigil.app.api.params import check_keys, instant, limit, path_id, text

INCIDENTS = web.AppKey("incidents", IncidentManager)
INCIDENT_STORE = web.AppKey("incident_store", IncidentStore)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)


def _own_services(request: web.Request, who: Principal) -> list[str] | None:
    """None for operators (everything); a customer's services otherwise."""
    if who.is_operator:
        return None
    config = request.app[CONTEXT].config
    return sorted({s for c in config.customers if c.id == who.customer for s in c.services})


def _failed(exc: IncidentError) -> ApiError:
    """The manager's refusal as an API error: its 400s are about values the route already
    found well formed (an unknown service, an end in the past), so they are 422s."""
    return ApiError(422 if exc.status == 400 else exc.status, str(exc))


async def _visible(request: web.Request, incident_id: int) -> tuple[Incident, Principal]:
    who = principal(request)
    try:
        incident = await request.app[INCIDENTS].get(incident_id)
    except IncidentError as exc:
        raise _failed(exc) from None
    own = _own_services(request, who)
    if own is not None and incident.service not in own:
        # Not 403: a customer must not learn that another customer's incident exists.
        raise ApiError(404, f"no incident {incident_id}")
    return incident, who


async def list_incidents(request: web.Request) -> web.Response:
    """Incidents, newest first: ``?state=open|resolved|all&service=&limit=``."""
    who = principal(request)
    state = request.query.get("state", "all")
    if state not in ("open", "resolved", "all"):
        raise ApiError(400, "state: must be open, resolved or all")
    services = _own_services(request, who)
    wanted = request.query.get("service")
    if wanted:
        services = [wanted] if services is None or wanted in services else []
    rows = await request.app[INCIDENT_STORE].incidents(
        open_only=state == "open", services=services, limit=limit(request)
    )
    if state == "resolved":
        rows = [i for i in rows if not i.is_open]
    return web.json_response({"incidents": [i.as_dict() for i in rows]})


async def get_incident(request: web.Request) -> web.Response:
    """One incident with its timeline: updates, events, notifications and delivery state."""
    incident, who = await _visible(request, path_id(request))
    store = request.app[INCIDENT_STORE]
    updates = await store.updates(incident.id)
    notifications = await store.notifications(incident=incident.id)
    if not who.is_operator:
        notifications = [n for n in notifications if n.customer == who.customer]
    ctx = request.app[CONTEXT]
    subjects = [incident.service]
    if who.is_operator:
        service = next((s for s in ctx.config.services if s.name == incident.service), None)
        subjects += list(service.sites) if service else []
    until = (incident.resolved_at or ctx.clock.wall()) + 60
    events: list[dict[str, Any]] = []
    for subject in subjects:
        events += await ctx.events.query(
            subject=subject, since=incident.started_at - 60, until=until, limit=200
        )
    events.sort(key=lambda e: (e["at"], e["id"]))
    return web.json_response(
        {
            "incident": incident.as_dict(),
            "updates": [u.as_dict() for u in updates],
            "events": [times.event(e) for e in events],  # sorted by the numbers first
            "notifications": [n.as_dict() for n in notifications],
        }
    )


async def post_update(request: web.Request) -> web.Response:
    """An operator's update (admin): ``{"message", "state"?, "notify"?: true}``."""
    who = require_admin(request)
    incident_id = path_id(request)
    body = await json_body(request)
    check_keys(body, {"message", "state", "notify"})
    message = text(body, "message", max_length=MAX_TEXT, required=True)
    state = None
    if body.get("state") is not None:
        try:
            state = IncidentState(str(body["state"]))
        except ValueError:
            allowed = ", ".join(s.value for s in IncidentState)
            raise ApiError(400, f"state: must be one of {allowed}") from None
    notify = body.get("notify", True)
    if not isinstance(notify, bool):
        raise ApiError(400, "notify: must be true or false")
    try:
        incident = await request.app[INCIDENTS].post_update(
            incident_id, message=message, state=state, author=who.name, notify=notify
        )
    except IncidentError as exc:
        raise _failed(exc) from None
    return web.json_response({"incident": incident.as_dict()}, status=201)


async def set_cause(request: web.Request) -> web.Response:
    """Tag the cause (admin): ``{"cause": "telecom_failure", "note": "..."}``; SLA follows."""
    who = require_admin(request)
    incident_id = path_id(request)
    body = await json_body(request)
    check_keys(body, {"cause", "note"})
    cause = body.get("cause")
    if not isinstance(cause, str) or cause not in CAUSES:
        raise ApiError(400, f"cause: must be one of {', '.join(CAUSES)}")
    note = text(body, "note", max_length=MAX_TEXT)
    try:
        incident = await request.app[INCIDENTS].set_cause(
            incident_id, cause=str(cause), note=note, author=who.name
        )
    except IncidentError as exc:
        raise _failed(exc) from None
    return web.json_response({"incident": incident.as_dict()})


async def list_notifications(request: web.Request) -> web.Response:
    """The outbox (operators): ``?state=pending|delivered|dead|cancelled&limit=``."""
    require_operator(request)
    state = request.query.get("state")
    if state is not None and state not in OUTBOX_STATES:
        raise ApiError(400, f"state: must be one of {', '.join(OUTBOX_STATES)}")
    rows = await request.app[INCIDENT_STORE].notifications(state=state, limit=limit(request))
    return web.json_response({"notifications": [r.as_dict() for r in rows]})


async def retry_notification(request: web.Request) -> web.Response:
    """Put a dead-lettered notification back in line (admin)."""
    require_admin(request)
    message_id = request.match_info["id"]
    dispatcher = request.app[DISPATCHER]
    store = request.app[INCIDENT_STORE]
    if not await store.requeue(message_id, request.app[CONTEXT].clock.wall()):
        raise ApiError(404, f"no dead-lettered notification {message_id!r}")
    dispatcher.wake()
    return web.json_response({"id": message_id, "state": "pending"})


async def list_notifiers(request: web.Request) -> web.Response:
    """Configured notifiers (no secrets) and whether a receiver disabled them."""
    require_operator(request)
    disabled = request.app[DISPATCHER].disabled
    config = request.app[CONTEXT].config
    out = []
    for name, notifier in sorted(config.notifiers.items()):
        since, reason = disabled.get(name, (None, None))
        out.append(
            {
                "name": name,
                "type": notifier.type,
                "disabled": name in disabled,
                "disabled_since": iso(since),
                "reason": reason,
            }
        )
    return web.json_response({"notifiers": out})


async def enable_notifier(request: web.Request) -> web.Response:
    """Enable a notifier that a 410 disabled (admin)."""
    require_admin(request)
    name = request.match_info["name"]
    if name not in request.app[CONTEXT].config.notifiers:
        raise ApiError(404, f"no notifier is called {name!r}")
    was = await request.app[DISPATCHER].enable(name)
    return web.json_response({"name": name, "was_disabled": was})


async def list_windows(request: web.Request) -> web.Response:
    """Maintenance windows; a customer token sees those of its own services."""
    who = principal(request)
    own = _own_services(request, who)
    windows = await request.app[INCIDENTS].windows()
    if own is not None:
        windows = [w for w in windows if set(w.services) & set(own)]
    return web.json_response({"maintenance": [w.as_dict() for w in windows]})


async def add_window(request: web.Request) -> web.Response:
    """Announce maintenance (admin): ``{"start", "end", "services": [...], "note"}``."""
    who = require_admin(request)
    body = await json_body(request)
    check_keys(body, {"start", "end", "services", "note"})
    start, end = instant(body.get("start"), "start"), instant(body.get("end"), "end")
    services = body.get("services")
    if (
        not isinstance(services, list)
        or not services
        or not all(isinstance(s, str) for s in services)
    ):
        raise ApiError(400, "services: must be a non-empty list of service names")
    note = text(body, "note", max_length=MAX_TEXT)
    try:
        window = await request.app[INCIDENTS].declare_window(
            start=start.timestamp(),
            end=end.timestamp(),
            services=services,
            note=note,
            who=who.name,
        )
    except IncidentError as exc:
        raise _failed(exc) from None
    return web.json_response({"maintenance": window.as_dict()}, status=201)


async def cancel_window(request: web.Request) -> web.Response:
    """Cancel a window that has not begun (admin)."""
    who = require_admin(request)
    try:
        window = await request.app[INCIDENTS].cancel_window(path_id(request), who.name)
    except IncidentError as exc:
        raise _failed(exc) from None
    return web.json_response({"maintenance": window.as_dict()})


def routes() -> list[web.RouteDef]:
    """The incident, outbox and maintenance routes."""
    return [
        web.get("/api/v1/incidents", list_incidents),
        web.get("/api/v1/incidents/{id}", get_incident),
        web.post("/api/v1/incidents/{id}/updates", post_update),
        web.post("/api/v1/incidents/{id}/cause", set_cause),
        web.get("/api/v1/notifications", list_notifications),
        web.post("/api/v1/notifications/{id}/retry", retry_notification),
        web.get("/api/v1/notifiers", list_notifiers),
        web.post("/api/v1/notifiers/{name}/enable", enable_notifier),
        web.get("/api/v1/maintenance", list_windows),
        web.post("/api/v1/maintenance", add_window),
        web.delete("/api/v1/maintenance/{id}", cancel_window),
    ]
