"""Times in the API: every answer says RFC 3339 (UTC); a query takes RFC 3339 or epoch seconds.

Before, nodes, events, the controller's status, actions and the cluster answered epoch floats
while incidents and the ledger answered RFC 3339, and ``events?since=2026-12-05T13:09:00Z``
was refused as "not a number".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.world import World

# The keys that hold a time somewhere in the answers below.
TIME_KEYS = {
    "at",
    "since",
    "until",
    "last_cycle_at",
    "hold_down_until",
    "unavailable_since",
    "last_seen",
    "started_at",
    "resolved_at",
}
RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def times_in(value: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) under a time key, at any depth (an event's ``data`` aside: its
    facts are as the event was published)."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "data":
                continue
            if key in TIME_KEYS and item is not None:
                found.append((f"{where}.{key}", item))
            found += times_in(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += times_in(item, f"{where}[{index}]")
    return found


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nodes",
        "/api/v1/nodes/acme-1",
        "/api/v1/events",
        "/api/v1/status",
        "/api/v1/services",
        "/api/v1/sites",
        "/api/v1/actions",
        "/api/v1/overrides",
        "/api/v1/cluster",
        "/api/v1/incidents",
        "/api/v1/incidents/1",
    ],
)
def test_every_time_in_an_answer_is_rfc3339_utc(world: World, path: str) -> None:
    status, body = world.call("GET", path)
    assert status == 200, body
    found = times_in(body)
    for where, value in found:
        assert isinstance(value, str) and RFC3339_UTC.fullmatch(value), (where, value)
        assert datetime.fromisoformat(value).tzinfo is not None


def test_the_world_has_times_to_show(world: World) -> None:
    """The parametrized test above would pass on empty answers: these are not empty."""
    assert times_in(world.call("GET", "/api/v1/nodes")[1])  # verdicts' since, probes' at
    assert times_in(world.call("GET", "/api/v1/events")[1])
    status = world.call("GET", "/api/v1/status")[1]
    assert status["last_cycle_at"] and status["services"][0]["unavailable_since"]


def test_events_since_takes_rfc3339_and_epoch_seconds_alike(world: World) -> None:
    _, body = world.call("GET", "/api/v1/events?limit=1000")
    events = body["events"]
    assert len(events) >= 2
    # The middle event's time, as the API said it, and as epoch seconds.
    middle = sorted(events, key=lambda e: instant(e["at"]))[len(events) // 2]["at"]
    seconds = instant(middle).timestamp()
    by_text = world.call("GET", f"/api/v1/events?limit=1000&since={quote(middle)}")
    by_number = world.call("GET", f"/api/v1/events?limit=1000&since={seconds:.6f}")
    assert by_text[0] == by_number[0] == 200, (by_text, by_number)
    ids_text = {e["id"] for e in by_text[1]["events"]}
    assert ids_text == {e["id"] for e in by_number[1]["events"]}
    later = {e["id"] for e in events if instant(e["at"]) >= instant(middle)}
    assert ids_text >= later and ids_text  # events recorded since the first call may be in too
    assert all(instant(e["at"]) >= instant(middle) for e in by_text[1]["events"])
    # Another offset names the same instant.
    shifted = instant(middle).astimezone(timezone(timedelta(hours=-7))).isoformat()
    by_offset = world.call("GET", f"/api/v1/events?limit=1000&since={quote(shifted)}")
    assert {e["id"] for e in by_offset[1]["events"]} == ids_text
    # The example from the issue is accepted; far in the future, nothing is that new.
    assert world.call("GET", "/api/v1/events?since=2026-12-05T13:09:00Z")[0] == 200
    assert world.call("GET", "/api/v1/events?since=2999-01-01T00:00:00Z")[1] == {"events": []}
    until = world.call("GET", f"/api/v1/events?limit=1000&until={quote(middle)}")[1]["events"]
    assert {e["id"] for e in until}.isdisjoint(ids_text)


def test_the_ledger_takes_epoch_seconds_too(world: World) -> None:
    text = world.call("GET", "/api/v1/sla/ledger?from=2020-01-01T00:00:00Z")
    epoch = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    number = world.call("GET", f"/api/v1/sla/ledger?from={epoch:.0f}")
    assert text[0] == number[0] == 200
    assert text[1] == number[1] and text[1]["intervals"]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("since=2026-12-05T13:09:00", 400, "since: '2026-12-05T13:09:00' has no UTC offset"),
        ("since=yesterday", 400, "since: 'yesterday' is neither an RFC 3339 time nor seconds"),
        ("until=1e9", 400, "until: '1e9' is neither"),
        ("until=-5", 400, "until: '-5' is neither"),
        ("since=2026-13-01T00:00:00Z", 400, "since: '2026-13-01T00:00:00Z' is not an RFC 3339"),
        ("since=999999999999", 422, "since: must fall between 1970 and 9998"),
    ],
)
def test_a_bad_time_is_a_json_400_naming_the_parameter(
    world: World, query: str, status: int, message: str
) -> None:
    got, body = world.call("GET", f"/api/v1/events?{query}")
    assert (got, isinstance(body, dict)) == (status, True), body
    assert message in body["error"], body
