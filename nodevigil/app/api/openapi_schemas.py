"""The JSON schemas of the OpenAPI document: request bodies and every response body.

Responses list each field the routes always send (``required``) and allow more, so a field
added later does not break a client; request bodies allow no unknown key, as the routes do.
"""

from __future__ import annotations

from typing import Any

from failover.incidents.model import CAUSES, IncidentState
from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import NAME_PATTERN
from sla.model import EXCLUDED_CAUSES, Cause

Schema = dict[str, Any]

MAX_TEXT = 2000  # incident updates, notes
MAX_REASON = 500  # a drain's reason
# A duration as the configuration writes it: 30m, 1h30m, 500ms (ASCII digits only).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
OUTBOX_STATES = ("pending", "delivered", "dead", "cancelled")
NOTIFIER_TYPES = ("webhook", "email", "alertmanager", "mqtt")


def ref(name: str) -> Schema:
    """A reference to a schema under ``components/schemas``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (OpenAPI 3.1 is JSON Schema 2020-12)."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """A response object: every field in ``required`` is always present."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def body(properties: dict[str, Schema], *required: str) -> Schema:
    """A request body object: no key beyond ``properties``."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def listing(key: str, item: str) -> Schema:
    """``{key: [item, ...]}``."""
    return obj({key: {"type": "array", "items": ref(item)}})


STRING: Schema = {"type": "string"}
NAME: Schema = {"type": "string", "pattern": NAME_PATTERN}
NUMBER: Schema = {"type": "number"}
COUNT: Schema = {"type": "integer", "minimum": 0}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
# A time a query takes: RFC 3339 with its offset, or seconds since the epoch.
QUERY_TIME: Schema = {
    "anyOf": [TIME, {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,9})?$"}],
    "examples": ["2026-12-05T13:09:00Z", "1796476140"],
}
DAY: Schema = {"type": "string", "format": "date"}
MONEY: Schema = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
VERDICT: Schema = {"type": "string", "enum": [v.value for v in Verdict]}
LB_STATE: Schema = {"type": "string", "enum": [s.value for s in ServerState]}
INCIDENT_STATE: Schema = {"type": "string", "enum": [s.value for s in IncidentState]}
TEXT: Schema = {"type": "string", "maxLength": MAX_TEXT}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {"error": {"type": "string", "description": "what was wrong, naming the value"}},
        {"hint": STRING},
    ),
    "Health": obj(
        {"status": {"type": "string", "enum": ["ok", "ready", "starting", "not_ready"]}},
        {
            # In a cluster (/readyz): this process's role and why it may or may not act.
            "role": {"type": "string", "enum": ["leader", "standby", "fenced"]},
            "reason": {"type": ["string", "null"]},
            # /readyz 503: each load balancer not read back (and its error), or the database.
            "not_ready": {"type": "array", "items": STRING},
        },
    ),
    "ProbeResult": obj(
        {
            "ok": {
                **nullable(BOOL),
                "description": "null: inconclusive (nodevigil itself was overloaded)",
            },
            "detail": STRING,
            "duration_ms": NUMBER,
            "at": TIME,
            "vantage": STRING,
        }
    ),
    "ProbeHealth": obj(
        {
            "name": STRING,
            "type": STRING,
            "state": VERDICT,
            "consecutive_successes": COUNT,
            "consecutive_failures": COUNT,
            "last": nullable(ref("ProbeResult")),
        }
    ),
    "NodeHealth": obj(
        {
            "name": STRING,
            "site": STRING,
            "lb_server": STRING,
            "labels": {"type": "object", "additionalProperties": STRING},
            "verdict": VERDICT,
            "since": nullable(TIME),
            "flapping": BOOL,
            "vantage": STRING,
            "probes": {"type": "array", "items": ref("ProbeHealth")},
        }
    ),
    "Event": obj(
        {
            "id": STRING,
            "at": TIME,
            "kind": STRING,
            "subject": STRING,
            "vantage": STRING,
            "data": {"description": "the event's facts; their keys depend on its kind"},
        }
    ),
    "Override": obj(
        {
            "kind": {"type": "string", "enum": ["node", "site"]},
            "name": STRING,
            "reason": STRING,
            "who": STRING,
            "since": TIME,
            "until": nullable(TIME),
        }
    ),
    "NodeStatus": obj(
        {
            "name": STRING,
            "site": STRING,
            "verdict": VERDICT,
            "desired": nullable({"type": "string", "enum": ["in", "out"]}),
            "desired_state": nullable(LB_STATE),
            "actual": nullable(LB_STATE),
            "why": STRING,
            "hold_down_until": nullable(TIME),
            "override": nullable(ref("Override")),
        }
    ),
    "SiteStatus": obj(
        {
            "name": STRING,
            "can_serve": BOOL,
            "serving": BOOL,
            "panic": BOOL,
            "nodes_out": COUNT,
            "override": nullable(ref("Override")),
            "brake": BOOL,
            "withdrawal_held": BOOL,
        }
    ),
    "BrakeStatus": obj(
        {
            "scope": {"type": "string", "enum": ["site", "fleet"]},
            "site": nullable(STRING),
            "since": TIME,
            "nodes": COUNT,
            "went_down": COUNT,
            "down": COUNT,
            "reason": STRING,
            "held": {"type": "array", "items": STRING},
            "held_sites": {"type": "array", "items": STRING},
        }
    ),
    "ServiceStatus": obj({"name": STRING, "available": BOOL, "unavailable_since": nullable(TIME)}),
    "ControllerStatus": obj(
        {
            "nodes": {"type": "array", "items": ref("NodeStatus")},
            "sites": {"type": "array", "items": ref("SiteStatus")},
            "services": {"type": "array", "items": ref("ServiceStatus")},
            "last_cycle_at": nullable(TIME),
            "brakes": {"type": "array", "items": ref("BrakeStatus")},
            "role": {"type": "string", "enum": ["leader", "standby", "fenced"]},
            "mode": {"type": "string", "enum": ["act", "observe"]},
            "would": {"type": "array", "items": ref("WouldAction")},
            "load_balancers": {"type": "array", "items": ref("LoadBalancerStatus")},
        }
    ),
    "WouldAction": obj(
        {
            "lb": STRING,
            "action": {"type": "string", "enum": ["set_state", "set_addresses"]},
            "target": STRING,
            "old": STRING,
            "new": STRING,
            "why": STRING,
            "text": {"type": "string", "description": "what observe mode did not do"},
            "summary": {
                "type": "string",
                "description": "the same without its evidence (the public status page's line)",
            },
        }
    ),
    "LoadBalancerStatus": obj(
        {
            "name": STRING,
            "kind": {"type": "string", "enum": ["local", "global"]},
            "read_back": BOOL,
            "errors": {"type": "array", "items": STRING},
            "backends": {"type": "array", "items": STRING},
            "records": {"type": "array", "items": ref("RecordStatus")},
        }
    ),
    "RecordStatus": obj(
        {
            "record": STRING,
            "service": STRING,
            "addresses": nullable({"type": "array", "items": STRING}),
            "sites": {"type": "object", "additionalProperties": nullable(BOOL)},
        }
    ),
    "Cluster": obj(
        {
            "me": STRING,
            "role": {"type": "string", "enum": ["leader", "standby", "fenced"]},
            "leader": nullable(STRING),
            "epoch": nullable({"type": "integer"}),
            "members": {
                "type": "array",
                "items": {"anyOf": [STRING, ref("ClusterMember")]},
            },
        },
        {"reason": STRING},
    ),
    "ClusterMember": obj({"name": STRING, "alive": BOOL, "last_seen": nullable(TIME)}),
    "Action": obj(
        {
            "at": TIME,
            "lb": STRING,
            "what": STRING,
            "target": STRING,
            "old": STRING,
            "new": STRING,
            "why": STRING,
            "result": {"type": "string", "enum": ["ok", "error"]},
            "error": nullable(STRING),
            "vantage": STRING,  # the host that acted ("" in entries older than this field)
            "epoch": nullable({"type": "integer"}),  # its leader epoch; null on a single host
        }
    ),
    "OverrideCleared": obj(
        {"kind": {"type": "string", "enum": ["node", "site"]}, "name": STRING, "cleared": BOOL}
    ),
    "Credit": obj(
        {
            "customer": STRING,
            "service": STRING,
            "date": DAY,
            "unavailable_minutes": COUNT,
            "minutes_in_day": COUNT,
            "charge": MONEY,
            "credit": MONEY,
            "currency": STRING,
        }
    ),
    "LedgerInterval": obj(
        {
            "id": COUNT,
            "service": STRING,
            "start": TIME,
            "end": nullable(TIME),
            "cause": {"type": "string", "enum": [c.value for c in Cause]},
            "evidence": {"type": "object"},
        }
    ),
    "Adjustment": obj(
        {
            "customer": STRING,
            "service": STRING,
            "date": DAY,
            "old_minutes": COUNT,
            "new_minutes": COUNT,
            "old_credit": MONEY,
            "new_credit": MONEY,
            "currency": STRING,
            "who": STRING,
            "at": TIME,
            "why": STRING,
        }
    ),
    "Incident": obj(
        {
            "id": COUNT,
            "service": STRING,
            "state": INCIDENT_STATE,
            "cause": STRING,
            "cause_note": STRING,
            "maintenance": BOOL,
            "started_at": TIME,
            "resolved_at": nullable(TIME),
            "openings": COUNT,
            "first_notice_at": nullable(TIME),
        }
    ),
    "IncidentUpdate": obj(
        {"at": TIME, "state": INCIDENT_STATE, "message": STRING, "author": STRING}
    ),
    "Notification": obj(
        {
            "id": STRING,
            "notifier": STRING,
            "kind": STRING,
            "subject": STRING,
            "summary": STRING,
            "customer": nullable(STRING),
            "step": nullable(STRING),
            "state": {"type": "string", "enum": list(OUTBOX_STATES)},
            "created_at": TIME,
            "not_before": TIME,
            "next_attempt_at": nullable(TIME),
            "attempts": COUNT,
            "last_error": STRING,
            "delivered_at": nullable(TIME),
        }
    ),
    "IncidentTimeline": obj(
        {
            "incident": ref("Incident"),
            "updates": {"type": "array", "items": ref("IncidentUpdate")},
            "events": {"type": "array", "items": ref("Event")},
            "notifications": {"type": "array", "items": ref("Notification")},
        }
    ),
    "IncidentChanged": obj({"incident": ref("Incident")}),
    "Notifier": obj(
        {
            "name": STRING,
            "type": {"type": "string", "enum": list(NOTIFIER_TYPES)},
            "disabled": BOOL,
            "disabled_since": nullable(TIME),
            "reason": nullable(STRING),
        }
    ),
    "MaintenanceWindow": obj(
        {
            "id": COUNT,
            "start": TIME,
            "end": TIME,
            "services": {"type": "array", "items": STRING},
            "note": STRING,
            "source": {"type": "string", "enum": ["config", "api"]},
            "who": STRING,
            "excluded_in_ledger": BOOL,
            "cancelled": BOOL,
        }
    ),
    "MaintenanceChanged": obj({"maintenance": ref("MaintenanceWindow")}),
    "StatusSnapshot": obj(
        {
            "generated_at": TIME,
            "services": {
                "type": "array",
                "items": obj(
                    {
                        "name": STRING,
                        "state": {
                            "type": "string",
                            "enum": ["operational", "unavailable", "maintenance", "unknown"],
                        },
                        "since": nullable(TIME),
                    },
                    {  # with the SLA ledger: the daily history, oldest day first
                        "uptime": nullable(NUMBER),
                        "history": {
                            "type": "array",
                            "items": obj(
                                {
                                    "date": {"type": "string", "format": "date"},
                                    "minutes": COUNT,
                                    "unavailable_minutes": nullable(COUNT),
                                }
                            ),
                        },
                    },
                ),
            },
            "incidents": {"type": "array", "items": {"type": "object"}},
            "maintenance": {"type": "array", "items": {"type": "object"}},
        },
        {"history": obj({"days": COUNT, "timezone": STRING})},
    ),
    # --- request bodies -------------------------------------------------------------------
    "DrainRequest": body(
        {
            "for": nullable(
                {
                    "type": "string",
                    "pattern": DURATION_PATTERN,
                    "description": (
                        "a time box (30m, 1h30m; longer than 0s, at most failover.drain_max, "
                        "24h unless configured: longer is a 422); absent: failover.drain_max"
                    ),
                }
            ),
            "reason": {"type": "string", "maxLength": MAX_REASON},
        }
    ),
    "IncidentUpdateRequest": body(
        {
            "message": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TEXT,
                "description": "shown to customers; blank is refused (422)",
            },
            "state": nullable(INCIDENT_STATE),
            "notify": BOOL,
        },
        "message",
    ),
    "IncidentCauseRequest": body(
        {"cause": {"type": "string", "enum": list(CAUSES)}, "note": TEXT}, "cause"
    ),
    "MaintenanceRequest": body(
        {
            "start": TIME,
            "end": {**TIME, "description": "after start and in the future (else 422)"},
            "services": {"type": "array", "items": STRING, "minItems": 1},
            "note": TEXT,
        },
        "start",
        "end",
        "services",
    ),
    "IntervalCauseRequest": body(
        {"cause": {"type": "string", "enum": [c.value for c in Cause]}, "note": TEXT}, "cause"
    ),
    "ExclusionRequest": body(
        {
            "start": TIME,
            "end": {**TIME, "description": "after start (else 422)"},
            "cause": {"type": "string", "enum": sorted(c.value for c in EXCLUDED_CAUSES)},
            "services": {
                "type": "array",
                "items": STRING,
                "description": "the services it covers; none = all",
            },
            "note": TEXT,
        },
        "start",
        "end",
        "cause",
    ),
}
