"""Routes for the SLA ledger: credits, the ledger, causes, exclusions, charges, adjustments."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from aiohttp import web

from nodevigil.api.app import ApiError, json_body, principal, require_admin
from sla.errors import SlaError
from sla.inputs import parse_charges
from sla.ledger import Ledger
from sla.model import Cause

LEDGER = web.AppKey("ledger", Ledger)


def _date(request: web.Request, key: str) -> date | None:
    raw = request.query.get(key)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"{key}: {raw!r} is not a date (YYYY-MM-DD)") from None


def _query_instant(request: web.Request, key: str) -> datetime | None:
    raw = request.query.get(key)
    return _instant({key: raw}, key) if raw else None


def _instant(body: dict[str, Any], key: str) -> datetime:
    raw = body.get(key)
    try:
        value = datetime.fromisoformat(str(raw))
    except ValueError:
        raise ApiError(400, f"{key}: {raw!r} is not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise ApiError(400, f"{key}: {raw!r} has no UTC offset")
    return value


def _customer_scope(request: web.Request) -> str | None:
    """A customer token is limited to its own customer id; operators may pass ?customer=."""
    who = principal(request)
    if who.is_operator:
        return request.query.get("customer") or None
    asked = request.query.get("customer")
    if asked and asked != who.customer:
        raise ApiError(403, "a customer token sees only its own customer")
    return who.customer


async def credits(request: web.Request) -> web.Response:
    """Credit rows ``?from=&to=&customer=`` (dates inclusive, billing time zone)."""
    customer = _customer_scope(request)
    start = _date(request, "from") or date.min
    end = _date(request, "to") or date.max
    if end < start:
        raise ApiError(400, "to: is before from")
    rows = await request.app[LEDGER].credits(start, end, customer)
    return web.json_response({"credits": [r.as_dict() for r in rows]})


async def ledger(request: web.Request) -> web.Response:
    """Recorded unavailability intervals ``?service=&from=&to=`` (RFC 3339 times)."""
    customer = _customer_scope(request)
    start, end = _query_instant(request, "from"), _query_instant(request, "to")
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
    raw_id = request.match_info["id"]
    if not raw_id.isdigit():
        raise ApiError(400, "id: must be a whole number")
    body = await json_body(request)
    try:
        cause = Cause(str(body.get("cause")))
    except ValueError:
        allowed = ", ".join(c.value for c in Cause)
        raise ApiError(400, f"cause: must be one of {allowed}") from None
    note = body.get("note", "")
    if not isinstance(note, str):
        raise ApiError(400, "note: must be a string")
    try:
        await request.app[LEDGER].set_cause(int(raw_id), cause, who.name, note)
    except SlaError as exc:
        raise ApiError(404 if "no interval" in str(exc) else 400, str(exc)) from None
    return web.json_response({"id": int(raw_id), "cause": cause.value})


async def add_exclusion(request: web.Request) -> web.Response:
    """Declare an exclusion window (admin): start, end, cause, services, note."""
    who = require_admin(request)
    body = await json_body(request)
    start, end = _instant(body, "start"), _instant(body, "end")
    if end <= start:
        raise ApiError(400, "end: must be after start")
    services = body.get("services", [])
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise ApiError(400, "services: must be a list of service names")
    try:
        new_id = await request.app[LEDGER].add_exclusion(
            start,
            end,
            str(body.get("cause")),
            services=services,
            note=str(body.get("note", "")),
            who=who.name,
        )
    except (SlaError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response({"id": new_id}, status=201)


async def import_charges(request: web.Request) -> web.Response:
    """Charges CSV (admin), the same format as ``nodevigil sla charges import``."""
    who = require_admin(request)
    text = await request.text()
    try:
        rows = parse_charges(text.splitlines(), source="request body")
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
