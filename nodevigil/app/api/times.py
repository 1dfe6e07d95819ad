"""Times as the API answers them: RFC 3339 in UTC, whatever the part underneath keeps.

The monitor, the controller, the event log and the lease keep wall times as seconds since the
epoch (cheap to compare and store); the routes turn them into RFC 3339 strings on the way
out, in the same form as incidents and the SLA ledger (``2026-12-05T13:09:00Z``, with
microseconds when there are any). Each helper takes the JSON-ready dict a part hands out and
returns a converted copy; the part's own dict is not changed (others read it as numbers).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any


def rfc3339(seconds: float | None) -> str | None:
    """Wall seconds as RFC 3339 UTC (``Z``), or None.

    Cut down to the microsecond, never rounded up: a time read back from an answer and sent
    as ``?since=`` then still includes the event it came from (``until=`` still excludes it).
    """
    if seconds is None:
        return None
    whole = math.floor(seconds)
    micro = int((Decimal(seconds) - whole) * 1_000_000)  # exact: no float rounding up
    moment = datetime.fromtimestamp(whole, UTC) + timedelta(microseconds=micro)
    return moment.isoformat().replace("+00:00", "Z")


def _stamp(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A copy of ``row`` with the number at each of ``keys`` (where present) as RFC 3339."""
    out = dict(row)
    for key in keys:
        value = out.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = rfc3339(float(value))
    return out


def override(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """An operator drain: ``since`` and ``until``."""
    return None if row is None else _stamp(row, "since", "until")


def node_health(row: dict[str, Any]) -> dict[str, Any]:
    """``/api/v1/nodes``: the verdict's ``since``, each probe's last ``at``, each vote's
    ``since`` (with cluster votes)."""
    out = _stamp(row, "since")
    out["probes"] = [
        {**p, "last": None if p.get("last") is None else _stamp(p["last"], "at")}
        for p in row.get("probes", [])
    ]
    if "votes" in row:
        out["votes"] = [_stamp(v, "since") for v in row["votes"]]
    return out


def event(row: dict[str, Any]) -> dict[str, Any]:
    """An event-log row: its ``at`` (the facts in ``data`` are as the event was published)."""
    return _stamp(row, "at")


def action(row: dict[str, Any]) -> dict[str, Any]:
    """A load-balancer action log entry: its ``at``."""
    return _stamp(row, "at")


def cluster(view: dict[str, Any] | None) -> dict[str, Any] | None:
    """``/api/v1/cluster``: each member's ``last_seen`` (a single host lists bare names)."""
    if view is None:
        return None
    out = dict(view)
    out["members"] = [
        _stamp(m, "last_seen") if isinstance(m, dict) else m for m in view.get("members", [])
    ]
    return out


def controller_status(status: dict[str, Any]) -> dict[str, Any]:
    """``/api/v1/status``: the last cycle, hold-downs, drains, brakes and outages."""
    out = _stamp(status, "last_cycle_at")
    out["nodes"] = [
        {**_stamp(n, "hold_down_until"), "override": override(n.get("override"))}
        for n in status.get("nodes", [])
    ]
    out["sites"] = [{**s, "override": override(s.get("override"))} for s in status.get("sites", [])]
    out["services"] = [service(s) for s in status.get("services", [])]
    out["brakes"] = [_stamp(b, "since") for b in status.get("brakes", [])]
    return out


def service(row: dict[str, Any]) -> dict[str, Any]:
    """A service's availability: ``unavailable_since``."""
    return _stamp(row, "unavailable_since")
