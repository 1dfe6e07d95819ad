"""Events are one frozen dataclass per kind: the JSON form stays as served, and rebuilds typed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from failover.events import (
    AddressesSet,
    FailoverFailed,
    IncidentCauseSet,
    NotificationDead,
    OverrideDropped,
    ServerStateSet,
    ServiceUnavailable,
)
from monitor.verdicts import NodeDown, Verdict, VerdictChange
from nodevigil.app.kinds import EVENT_KINDS, EVENT_TYPES
from nodevigil.core.events import EVENT_SCHEMA, ClockStepped, GenericEvent, stored_form
from sla.events import SlaUnknown

STAMP = {"at": 100.5, "vantage": "ops-1", "id": "e1"}


def test_a_verdict_change_is_served_as_before() -> None:
    change = VerdictChange("sh-1", "sh", Verdict.UP, Verdict.DOWN, "tcp: refused", "tcp", 1.0, "v")
    event = change.to_event()
    assert isinstance(event, NodeDown) and event.new is Verdict.DOWN
    assert event.as_dict() == {
        "id": event.id,
        "kind": "node.down",
        "subject": "sh-1",
        "at": 1.0,
        "vantage": "v",
        "data": {
            "site": "sh",
            "old": "up",
            "new": "down",
            "reason": "tcp: refused",
            "probe": "tcp",
            "flapping": False,
        },
    }


def test_facts_named_like_the_envelope_keep_their_json_keys() -> None:
    dead = NotificationDead(
        subject="hook", **STAMP, message_id="m1", message_kind="incident.opened", about="web",
        reason="gone",
    )  # fmt: skip
    assert dead.as_dict()["data"] == {
        "id": "m1", "kind": "incident.opened", "about": "web", "reason": "gone",
    }  # fmt: skip
    failed = FailoverFailed(
        subject="lb", **STAMP, lb="lb", what="read", target="backend web", error="refused",
        failure="unreachable",
    )  # fmt: skip
    assert "code" not in failed.as_dict()["data"]  # only a rejection has a code
    assert failed.as_dict()["data"]["kind"] == "unreachable"
    unknown = SlaUnknown(subject="nodevigil", at=5.0, vantage="", start=1.0, end=4.0, clean=False)
    assert unknown.as_dict()["data"] == {"from": 1.0, "to": 4.0, "clean": False}


@pytest.mark.parametrize(
    "event",
    [
        ServiceUnavailable(
            subject="web", **STAMP, service="web", sites=("sh", "bj"),
            evidence={"sh-1": {"verdict": "down"}}, started_at=99.0,
        ),
        ServerStateSet(
            subject="sh-2", **STAMP, lb="sh-lb", why="verdict down", backend="web",
            server="sh-2", node="sh-2", site="sh", old=None, new="maint",
        ),
        AddressesSet(
            subject="web", **STAMP, lb="dns", why="bj down", record="www", service="web",
            old=("192.0.2.1", "192.0.2.2"), new=("192.0.2.1",),
        ),
        IncidentCauseSet(
            subject="web", **STAMP, incident=3, service="web", state="investigating",
            cause="telecom_failure", cause_note="", maintenance=False,
            started_at="2026-01-01T00:00:00Z", resolved_at=None, openings=1,
            first_notice_at=None, started=1.0, ended=None, note="carrier", author="ops",
        ),
        OverrideDropped(
            subject="sh-1", **STAMP, target="node", name="sh-1", reason="disk", who="alice",
            since=1.0, until=None, cleared_by="reload", why="node sh-1 is gone",
        ),
        ClockStepped(subject="clock", **STAMP, step=-3600.0, offset=-3600.0),
    ],
)  # fmt: skip
def test_the_stored_form_rebuilds_the_same_typed_event(event: object) -> None:
    assert dataclasses.is_dataclass(event)
    record = json.loads(json.dumps(stored_form(event)))  # type: ignore[arg-type]
    assert record["schema"] == EVENT_SCHEMA
    rebuilt = EVENT_TYPES.from_dict(record)
    assert rebuilt == event and type(rebuilt) is type(event)


def test_an_unknown_or_newer_kind_is_kept_generic_never_an_error() -> None:
    record = {"id": "x", "kind": "lease.lost", "subject": "ops-2", "at": 3.0, "vantage": "v",
              "data": {"reason": "etcd away"}}  # fmt: skip
    event = EVENT_TYPES.from_dict(record)
    assert isinstance(event, GenericEvent)
    assert event.kind == "lease.lost" and event.as_dict() == record
    assert event.detail() == "etcd away"
    newer = {**record, "kind": "node.down", "schema": EVENT_SCHEMA + 1}
    assert isinstance(EVENT_TYPES.from_dict(newer), GenericEvent)
    broken = {**record, "kind": "node.down"}  # facts that do not fit NodeDown
    assert EVENT_TYPES.from_dict(broken).as_dict() == broken


def test_every_kind_has_a_class() -> None:
    assert EVENT_TYPES.kinds == EVENT_KINDS
