"""The OpenAPI 3.1 document of the daemon's HTTP surface, served at ``/api/v1/openapi.json``.

The document needs no token: it describes shapes, names no node, customer or secret, and
is the same text as this open-source file; a client needs it before it holds a token.
It is written here by hand, one entry per route, and a test compares its paths and methods
with the application's router, so a route added without its description fails the suite.
(aiohttp answers HEAD for every GET route; HEAD is not listed.)
"""

from __future__ import annotations

import json
from typing import Any

from nodevigil.app.api.openapi_schemas import (
    DURATION_PATTERN,
    NAME,
    OUTBOX_STATES,
    QUERY_TIME,
    SCHEMAS,
    STRING,
    TIME,
    Schema,
    body,
    obj,
    ref,
)

PATH = "/api/v1/openapi.json"

DESCRIPTION = """\
nodevigil watches cloud nodes, drives the load balancers, records incidents and the SLA ledger.

Every route under `/api/` except this document needs `Authorization: Bearer <token>`.
Tokens have a role: `admin` may change things, `read` may read everything, `customer`
sees only its own customer's services, incidents, maintenance and credits.

Every time in an answer is RFC 3339 in UTC (`2026-12-05T13:09:00Z`, with a fraction when
there is one); a time in a query is RFC 3339 with its offset or seconds since the epoch.

Errors are JSON, `{"error": "..."}`: 400 the request does not match this document (the message
names the value), 401 no valid token, 403 the token's role may not do this, 404 what the path
names does not exist (also for another customer's incident), 408 the body was too slow,
409 it conflicts with the current state, 413 the body is larger than `api.max_body`, 422 it is
well formed but cannot be applied (an end before its start, an unknown service).
"""

ERROR_TEXT = {
    "400": "The request does not match this document; the message names the value.",
    "401": "No token, or not a valid one.",
    "403": "The token's role may not do this.",
    "404": "What the path names does not exist.",
    "408": "The body did not arrive within api.body_timeout.",
    "409": "It conflicts with the current state.",
    "413": "The body is larger than api.max_body.",
    "422": "Well formed, but it cannot be applied.",
    "503": "Not ready, or the status is unavailable for a moment.",
}
JSON = "application/json"


def _content(schema: Schema, media: str = JSON) -> dict[str, Any]:
    return {media: {"schema": schema}}


def _error(status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_TEXT[status],
        "content": _content(ref("Error")),
    }
    if status == "401":
        response["headers"] = {
            "WWW-Authenticate": {"schema": STRING, "description": "the Bearer challenge"}
        }
    return response


def _param(name: str, where: str, schema: Schema, about: str) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "schema": schema, "description": about}
    if where == "path":
        param["required"] = True
    return param


def _op(
    summary: str,
    tag: str,
    ok: Schema | None,
    *,
    role: str,
    status: str = "200",
    params: tuple[dict[str, Any], ...] = (),
    body: Schema | None = None,
    body_media: str = JSON,
    body_required: bool = True,
    errors: tuple[str, ...] = (),
    ok_media: str = JSON,
) -> dict[str, Any]:
    """One operation; ``role`` is admin, operator (admin or read), any (a customer too) or
    public (no token)."""
    responses: dict[str, Any] = {
        status: {"description": "Done.", **({"content": _content(ok, ok_media)} if ok else {})}
    }
    codes = set(errors)
    if role != "public":
        codes.add("401")
    if role in ("admin", "operator"):
        codes.add("403")
    if body is not None:
        codes |= {"400", "408", "413"}
    if params and any(p["in"] in ("query", "path") for p in params):
        codes.add("400")
    responses.update({code: _error(code) for code in sorted(codes)})
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "x-nodevigil-role": role,
        "responses": responses,
    }
    if role == "public":
        op["security"] = []
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": _content(body, body_media)}
    return op


def _name(about: str) -> dict[str, Any]:
    return _param("name", "path", NAME, about)


ID = _param("id", "path", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}, "its id")
LIMIT = _param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows (default 100)"
)
CUSTOMER = _param(
    "customer", "query", STRING, "one customer's rows (operators; a customer token: its own)"
)


def _since(name: str, about: str) -> dict[str, Any]:
    return _param(name, "query", QUERY_TIME, about)


def _operations() -> dict[str, dict[str, Any]]:
    drain_errors = ("404", "422")
    return {
        "/healthz": {"get": _op("Liveness", "health", ref("Health"), role="public")},
        "/readyz": {
            "get": _op("Readiness", "health", ref("Health"), role="public", errors=("503",))
        },
        "/metrics": {
            "get": _op("Prometheus metrics", "health", STRING, role="public", ok_media="text/plain")
        },
        "/status": {
            "get": _op(
                "The public status page (HTML)",
                "status",
                STRING,
                role="public",
                ok_media="text/html",
                errors=("503",),
            )
        },
        "/status.json": {
            "get": _op(
                "The public status page's data",
                "status",
                ref("StatusSnapshot"),
                role="public",
                errors=("503",),
            )
        },
        PATH: {"get": _op("This document", "meta", {"type": "object"}, role="public")},
        "/api/v1/nodes": {
            "get": _op(
                "Every node's health", "nodes", _list("nodes", "NodeHealth"), role="operator"
            )
        },
        "/api/v1/nodes/{name}": {
            "get": _op(
                "One node's health",
                "nodes",
                ref("NodeHealth"),
                role="operator",
                params=(_name("the node"),),
                errors=("404",),
            )
        },
        "/api/v1/events": {
            "get": _op(
                "Recorded events, newest first",
                "events",
                _list("events", "Event"),
                role="operator",
                params=(
                    _param("kind", "query", STRING, "kinds starting with this (node., site.down)"),
                    _param("subject", "query", STRING, "a node, site or service"),
                    _since("since", "from this time (RFC 3339, or seconds since the epoch)"),
                    _since("until", "before this time (RFC 3339, or seconds since the epoch)"),
                    LIMIT,
                ),
                errors=("422",),  # a time outside 1970 to 9998
            )
        },
        "/api/v1/status": {
            "get": _op(
                "The controller's view", "failover", ref("ControllerStatus"), role="operator"
            )
        },
        "/api/v1/services": {
            "get": _op(
                "Each service's availability (a customer: its own)",
                "failover",
                _list("services", "ServiceStatus"),
                role="any",
            )
        },
        "/api/v1/sites": {
            "get": _op("Each site", "failover", _list("sites", "SiteStatus"), role="operator")
        },
        "/api/v1/overrides": {
            "get": _op(
                "Operator drains in force",
                "failover",
                _list("overrides", "Override"),
                role="operator",
            )
        },
        "/api/v1/actions": {
            "get": _op(
                "Load-balancer actions, newest first",
                "failover",
                _list("actions", "Action"),
                role="operator",
                params=(LIMIT,),
            )
        },
        **{
            f"/api/v1/{kind}s/{{name}}/drain": {
                "post": _op(
                    f"Drain a {kind}",
                    "failover",
                    ref("Override"),
                    role="admin",
                    params=(_name(f"the {kind}"),),
                    body=ref("DrainRequest"),
                    body_required=False,
                    errors=drain_errors,
                )
            }
            for kind in ("node", "site")
        },
        **{
            f"/api/v1/{kind}s/{{name}}/undrain": {
                "post": _op(
                    f"Clear an operator drain of a {kind} (idempotent: `cleared` is false "
                    "when no drain was in force, e.g. a racing second undrain)",
                    "failover",
                    ref("OverrideCleared"),
                    role="admin",
                    params=(_name(f"the {kind}"),),
                    errors=("404",),
                )
            }
            for kind in ("node", "site")
        },
        **_sla_operations(),
        **_incident_operations(),
        **_cluster_operations(),
        **_replay_operations(),
    }


def _replay_operations() -> dict[str, dict[str, Any]]:
    moment = {"type": "string", "examples": ["2026-12-05T13:09:00Z", "-24h", "now"]}
    diff = obj(
        {
            "change": {"type": "string", "enum": ["extra", "missing"]},
            "kind": STRING,
            "subject": STRING,
            "at": TIME,
            "what": STRING,
            "evidence": {"type": "object"},
        }
    )
    outcome = {"type": "object"}
    return {
        "/api/v1/replay": {
            "post": _op(
                "Replay a candidate configuration over the probe history against the running "
                "one: the drains, withdrawals, incidents, notices and SLA minutes and credit "
                "that would have differed, with their evidence (changes nothing; one at a "
                "time, 409 while one runs; 503 past its time limit)",
                "replay",
                obj(
                    {
                        "from": TIME,
                        "to": TIME,
                        "candidate": outcome,
                        "running": outcome,
                        "differences": {"type": "array", "items": diff},
                        "sla": outcome,
                        "replay": outcome,
                    }
                ),
                role="admin",
                body=body(
                    {
                        "config": {
                            "type": "string",
                            "minLength": 1,
                            "description": "the candidate, as YAML",
                        },
                        "from": moment,
                        "to": moment,
                        "tolerance": {"type": "string", "pattern": DURATION_PATTERN},
                        "warmup": {"type": "string", "pattern": DURATION_PATTERN},
                    },
                    "config",
                ),
                errors=("409", "422", "503"),
            )
        },
    }


def _cluster_operations() -> dict[str, dict[str, Any]]:
    return {
        "/api/v1/cluster": {
            "get": _op(
                "This process's role, the leader, the fencing epoch and the members "
                "(on a single host: always the leader, epoch null)",
                "cluster",
                ref("Cluster"),
                role="operator",
            )
        },
        "/api/v1/cluster/step-down": {
            "post": _op(
                "Hand over: this process stops acting and revokes its leader lease, so "
                "another host takes over within about a second (409: not the leader, or no "
                "cluster)",
                "cluster",
                ref("Cluster"),
                role="admin",
                errors=("409",),
            )
        },
    }


def _list(key: str, item: str) -> Schema:
    return {
        "type": "object",
        "required": [key],
        "properties": {key: {"type": "array", "items": ref(item)}},
    }


def _sla_operations() -> dict[str, dict[str, Any]]:
    day = {"type": "string", "format": "date"}
    return {
        "/api/v1/sla/credits": {
            "get": _op(
                "Credits per customer, service and day",
                "sla",
                _list("credits", "Credit"),
                role="any",
                params=(
                    _param("from", "query", day, "first day (billing time zone)"),
                    _param("to", "query", day, "last day, inclusive"),
                    CUSTOMER,
                ),
                errors=("403", "422"),
            )
        },
        "/api/v1/sla/ledger": {
            "get": _op(
                "Recorded unavailability intervals",
                "sla",
                _list("intervals", "LedgerInterval"),
                role="any",
                params=(
                    _param("service", "query", STRING, "one service"),
                    _param("from", "query", QUERY_TIME, "overlapping from this time"),
                    _param("to", "query", QUERY_TIME, "overlapping before this time"),
                    CUSTOMER,
                ),
                errors=("403", "422"),
            )
        },
        "/api/v1/sla/adjustments": {
            "get": _op(
                "Changes to final days' credits",
                "sla",
                _list("adjustments", "Adjustment"),
                role="any",
                params=(CUSTOMER,),
                errors=("403",),
            )
        },
        "/api/v1/sla/intervals/{id}/cause": {
            "post": _op(
                "Tag an interval's cause",
                "sla",
                {
                    "type": "object",
                    "required": ["id", "cause"],
                    "properties": {"id": {"type": "integer"}, "cause": STRING},
                },
                role="admin",
                params=(ID,),
                body=ref("IntervalCauseRequest"),
                errors=("404",),
            )
        },
        "/api/v1/sla/exclusions": {
            "post": _op(
                "Declare an exclusion window",
                "sla",
                {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
                role="admin",
                status="201",
                body=ref("ExclusionRequest"),
                errors=("422",),
            )
        },
        "/api/v1/sla/charges": {
            "post": _op(
                "Import charges (CSV: customer,service,date,amount,currency)",
                "sla",
                {
                    "type": "object",
                    "required": ["imported"],
                    "properties": {"imported": {"type": "integer"}},
                },
                role="admin",
                body={"type": "string"},
                body_media="text/csv",
            )
        },
    }


def _incident_operations() -> dict[str, dict[str, Any]]:
    state = {"type": "string", "enum": ["open", "resolved", "all"]}
    outbox = {"type": "string", "enum": list(OUTBOX_STATES)}
    return {
        "/api/v1/incidents": {
            "get": _op(
                "Incidents, newest first (a customer: its own services')",
                "incidents",
                _list("incidents", "Incident"),
                role="any",
                params=(
                    _param("state", "query", state, "default all"),
                    _param("service", "query", STRING, "one service"),
                    LIMIT,
                ),
            )
        },
        "/api/v1/incidents/{id}": {
            "get": _op(
                "One incident with its timeline",
                "incidents",
                ref("IncidentTimeline"),
                role="any",
                params=(ID,),
                errors=("404",),
            )
        },
        "/api/v1/incidents/{id}/updates": {
            "post": _op(
                "Post an update (and tell the customers)",
                "incidents",
                ref("IncidentChanged"),
                role="admin",
                status="201",
                params=(ID,),
                body=ref("IncidentUpdateRequest"),
                errors=("404", "409", "422"),
            )
        },
        "/api/v1/incidents/{id}/cause": {
            "post": _op(
                "Tag an incident's cause (the SLA ledger follows)",
                "incidents",
                ref("IncidentChanged"),
                role="admin",
                params=(ID,),
                body=ref("IncidentCauseRequest"),
                errors=("404",),
            )
        },
        "/api/v1/notifications": {
            "get": _op(
                "The notification outbox",
                "notifications",
                _list("notifications", "Notification"),
                role="operator",
                params=(_param("state", "query", outbox, "one state"), LIMIT),
            )
        },
        "/api/v1/notifications/{id}/retry": {
            "post": _op(
                "Put a dead-lettered notification back in line",
                "notifications",
                {
                    "type": "object",
                    "required": ["id", "state"],
                    "properties": {"id": STRING, "state": {"const": "pending"}},
                },
                role="admin",
                params=(_param("id", "path", STRING, "the notification's id"),),
                errors=("404",),
            )
        },
        "/api/v1/notifiers": {
            "get": _op(
                "Configured notifiers and whether a receiver disabled them",
                "notifications",
                _list("notifiers", "Notifier"),
                role="operator",
            )
        },
        "/api/v1/notifiers/{name}/enable": {
            "post": _op(
                "Enable a notifier a 410 Gone disabled",
                "notifications",
                {
                    "type": "object",
                    "required": ["name", "was_disabled"],
                    "properties": {"name": STRING, "was_disabled": {"type": "boolean"}},
                },
                role="admin",
                params=(_name("the notifier"),),
                errors=("404",),
            )
        },
        "/api/v1/maintenance": {
            "get": _op(
                "Maintenance windows (a customer: its own services')",
                "maintenance",
                _list("maintenance", "MaintenanceWindow"),
                role="any",
            ),
            "post": _op(
                "Announce maintenance",
                "maintenance",
                ref("MaintenanceChanged"),
                role="admin",
                status="201",
                body=ref("MaintenanceRequest"),
                errors=("422",),
            ),
        },
        "/api/v1/maintenance/{id}": {
            "delete": _op(
                "Cancel a window that has not begun",
                "maintenance",
                ref("MaintenanceChanged"),
                role="admin",
                params=(ID,),
                errors=("409",),
            )
        },
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "nodevigil", "version": "1", "description": DESCRIPTION},
        "security": [{"bearer": []}],
        "paths": _operations(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token whose sha256 digest is in api.tokens",
                }
            },
            "schemas": SCHEMAS,
        },
    }


DOCUMENT_JSON = json.dumps(document(), indent=1).encode()


def _query_names() -> dict[tuple[str, str], frozenset[str]]:
    names = {}
    for path, item in document()["paths"].items():
        for method, op in item.items():
            query = {p["name"] for p in op.get("parameters", ()) if p["in"] == "query"}
            names[method.upper(), path] = frozenset(query)
    return names


QUERY_NAMES = _query_names()


def query_names(method: str, path: str) -> frozenset[str] | None:
    """The query parameters the route ``method path`` (its pattern) takes; None if unknown."""
    return QUERY_NAMES.get(("GET" if method == "HEAD" else method, path))
