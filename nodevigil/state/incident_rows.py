"""How both backends turn the incident store's rows into the domain's objects: the same
column order on SQLite and PostgreSQL, so one mapping serves both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from failover.incidents.model import Incident, IncidentState, OutboxRow, Window
from failover.notify.base import Message

INCIDENT_COLUMNS = (
    "id, service, state, cause, cause_note, maintenance, started_at, resolved_at, openings, "
    "opened_at, first_notice_at"
)
OUTBOX_COLUMNS = (
    "id, notifier, kind, subject, created_at, data, summary, text, state, not_before, next_at, "
    "attempts, last_error, delivered_at, incident, customer, step"
)


def incident_of(row: Sequence[Any]) -> Incident:
    """An ``incidents`` row (``INCIDENT_COLUMNS``) as an Incident."""
    return Incident(
        id=row[0],
        service=row[1],
        state=IncidentState(row[2]),
        cause=row[3],
        cause_note=row[4],
        maintenance=bool(row[5]),  # SQLite keeps 0/1
        started_at=row[6],
        resolved_at=row[7],
        openings=row[8],
        opened_at=row[9],
        first_notice_at=row[10],
    )


def outbox_row_of(row: Sequence[Any]) -> OutboxRow:
    """An ``outbox`` row (``OUTBOX_COLUMNS``) as an OutboxRow."""
    message = Message(
        id=row[0],
        notifier=row[1],
        kind=row[2],
        subject=row[3],
        created_at=row[4],
        data=json.loads(row[5]),
        summary=row[6],
        text=row[7],
    )
    return OutboxRow(
        message=message,
        state=row[8],
        not_before=row[9],
        next_at=row[10],
        attempts=row[11],
        last_error=row[12],
        delivered_at=row[13],
        incident=row[14],
        customer=row[15],
        step=row[16],
    )


def window_of(row: Sequence[Any]) -> Window:
    """A maintenance window row (the backend's ``WINDOW_COLUMNS``) as a Window."""
    services = row[3]
    return Window(
        id=row[0],
        start=row[1],
        end=row[2],
        services=tuple(json.loads(services) if isinstance(services, str) else services),
        note=row[4],
        source=row[5],
        who=row[6],
        exclusion_id=row[7],
        cancelled=bool(row[8]),  # SQLite keeps 0/1
    )
