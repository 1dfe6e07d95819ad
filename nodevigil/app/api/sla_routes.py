"""Routes for the SLA ledger: credits, the ledger, causes, exclusions, charges, adjustments."""

from __future__ import annotations

from datetime import date

from aiohttp import web

from nodevigil.app.api.app import ApiError, json_body, principal, require_admin, text_body
from nodevigil.app.api.openapi_schemas import MAX_TEXT
from nodevigil.app.api.params import (
    check_keys,
    instant,
    path_id,
    query_date,
    query_instant,
    text,
)
from sla.errors import SlaError
from sla.inputs import parse_charges
from sla.ledger import Ledger
from sla.model import EXCLUDED_CAUSES, Cause

LEDGER = web.AppKey("ledger", Ledger)


def _customer_scope(request: web.Request) -> str | None:
    """A customer token is limited to its own customer id; operators may pass ?customer=."""
    who = principal(request)
    if who.is_operator:
        return request.query.get("customer") or None
    asked = request.query.get("customer")
    if who.customer is None or (asked and asked != who.customer):
        raise ApiError(403, "a customer token sees only its own customer")
    return who.customer


async def credits(request: web.Request) -> web.Response:
    """Credit rows ``?from=&to=&customer=`` (dates inclusive, billing time zone)."""
    customer = _customer_scope(request)
    start = query_date(request, "from") or date.min
    end = query_date(request, "to") or date.max
    if end < start:
        raise ApiError(422, "to: is before from")
    rows = await request.app[LEDGER].credits(start, end, customer)
    return web.json_response({"credits": [r.as_dict() for r in rows]})


async def ledger(request: web.Request) -> web.Response:
    """Recorded unavailability intervals ``?service=&from=&to=`` (RFC 3339 times)."""
    customer = _customer_scope(request)
    start, end = query_instant(request, "from"), query_instant(request, "to")
    entries = await request.app[LEDGER].ledger(
        service=request.query.get("service") or None,
        from_=start,
        to=end,
        customer=customer,
    )
    return web.json_response({"intervals": [e.as_dict() for e in entries]})


async def adjustments(request: web.Request) -> web.Response:
    """Changes to final days: who, when, why, old and new credit."""
    customer = _customer_scope(request)
    rows = await request.app[LEDGER].adjustments(customer)
    return web.json_response({"adjustments": [a.as_dict() for a in rows]})


async def set_cause(request: web.Request) -> web.Response:
    """Tag an interval's cause (admin): ``{"cause": "force_majeure", "note": "..."}``."""
    who = require_admin(request)
    interval = path_id(request)
    body = await json_body(request)
    check_keys(body, {"cause", "note"})
    try:
        cause = Cause(str(body.get("cause")))
    except ValueError:
        allowed = ", ".join(c.value for c in Cause)
        raise ApiError(400, f"cause: must be one of {allowed}") from None
    note = text(body, "note", max_length=MAX_TEXT)
    try:
        await request.app[LEDGER].set_cause(interval, cause, who.name, note)
    except SlaError as exc:
        raise ApiError(404 if "no interval" in str(exc) else 422, str(exc)) from None
    return web.json_response({"id": interval, "cause": cause.value})


async def add_exclusion(request: web.Request) -> web.Response:
    """Declare an exclusion window (admin): start, end, cause, services, note."""
    who = require_admin(request)
    body = await json_body(request)
    check_keys(body, {"start", "end", "cause", "services", "note"})
    start, end = instant(body.get("start"), "start"), instant(body.get("end"), "end")
    try:
        cause = Cause(str(body.get("cause")))
        if cause not in EXCLUDED_CAUSES:
            raise ValueError
    except ValueError:
        allowed = ", ".join(sorted(c.value for c in EXCLUDED_CAUSES))
        raise ApiError(400, f"cause: must be one of {allowed}") from None
    services = body.get("services", [])
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise ApiError(400, "services: must be a list of service names")
    note = text(body, "note", max_length=MAX_TEXT)
    if end <= start:
        raise ApiError(422, "end: must be after start")
    try:
        new_id = await request.app[LEDGER].add_exclusion(
            start, end, cause, services=services, note=note, who=who.name
        )
    except SlaError as exc:
        raise ApiError(422, str(exc)) from None
    return web.json_response({"id": new_id}, status=201)


async def import_charges(request: web.Request) -> web.Response:
    """Charges CSV (admin), the same format as ``nodevigil sla charges import``."""
    who = require_admin(request)
    csv = await text_body(request)
    try:
        rows = parse_charges(csv.splitlines(), source="request body")
        count = await request.app[LEDGER].import_charges(rows, who=who.name)
    except SlaError as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response({"imported": count})


def routes() -> list[web.RouteDef]:
    """The ledger's routes."""
    return [
        web.get("/api/v1/sla/credits", credits),
        web.get("/api/v1/sla/ledger", ledger),
        web.get("/api/v1/sla/adjustments", adjustments),
        web.post("/api/v1/sla/intervals/{id}/cause", set_cause),
        web.post("/api/v1/sla/exclusions", add_exclusion),
        web.post("/api/v1/sla/charges", import_charges),
    ]
