"""Values that used to crash a route (a 500, or a stored record that broke a read later), and
their neighbours: each gets a JSON 4xx that names the value, and nothing is stored."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests
from aiohttp.http_exceptions import LineTooLong

from nodevigil.app.api.limits import QuietClientErrors
from tests.api.world import READER, World

DEEP = b"[" * 30_000 + b"]" * 30_000  # within max_body
HUGE_ID = str(2**63)  # one past SQLite's INTEGER

CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # "²".isdigit() is true and int("²") fails: these were 500s.
    ("GET", "/api/v1/events?limit=%C2%B2", {}, 400, "limit: must be a whole number"),
    ("GET", "/api/v1/incidents/%C2%B2", {}, 400, "id: must be a whole number"),
    ("GET", "/api/v1/actions?limit=%D9%A3", {}, 400, "limit: must be a whole number"),
    # An id past SQLite's INTEGER overflowed in the driver: a 500.
    ("POST", f"/api/v1/sla/intervals/{HUGE_ID}/cause", {"json": {"cause": "provider"}}, 400, "id:"),
    ("GET", f"/api/v1/incidents/{HUGE_ID}", {}, 400, "id:"),
    ("GET", f"/api/v1/incidents/{'0' * 30}7", {}, 404, "no incident 7"),
    # A window in year 1 was stored, then every GET /maintenance and the status page failed.
    (
        "POST",
        "/api/v1/maintenance",
        {
            "json": {
                "start": "0001-01-01T00:00:00+14:00",
                "end": "9999-12-31T23:00:00-10:00",
                "services": ["acme-shop"],
            }
        },
        422,
        "start: must fall between 1970 and 9998",
    ),
    # JSON nested 30,000 deep raised RecursionError: a 500.
    ("POST", "/api/v1/incidents/1/updates", {"data": DEEP}, 400, "not valid JSON"),
    # Python's json reads NaN; JSON does not.
    ("POST", "/api/v1/nodes/acme-1/drain", {"data": b'{"reason": NaN}'}, 400, "not valid JSON"),
    # A body that is not UTF-8 was a UnicodeDecodeError: a 500.
    ("POST", "/api/v1/sla/charges", {"data": b"\xff\xfe\x00"}, 400, "not UTF-8"),
    ("POST", "/api/v1/incidents/1/cause", {"data": b'{"cause": "\xff"}'}, 400, "not valid JSON"),
    # A 400-digit time box was an infinite drain, answered as the invalid JSON `Infinity`.
    ("POST", "/api/v1/nodes/acme-1/drain", {"json": {"for": "9" * 400 + "s"}}, 422, "drain_max"),
    ("POST", "/api/v1/nodes/acme-1/drain", {"json": {"for": "\u0663s"}}, 400, "for: write"),
    ("POST", "/api/v1/nodes/acme-1/drain", {"json": {"forr": "1h"}}, 400, "unknown key(s): forr"),
    # A mistyped filter used to be ignored, widening the answer.
    ("GET", "/api/v1/incidents?sevice=acme-shop", {}, 400, "unknown query parameter(s): sevice"),
    ("GET", "/api/v1/events?limit=1&limit=1000", {}, 400, "limit: given more than once"),
    ("GET", "/api/v1/events?since=nan", {}, 400, "since:"),
    ("GET", "/api/v1/sla/credits?to=", {}, 400, "to:"),
    ("GET", "/api/v1/sla/credits?from=20260101", {}, 400, "from:"),
    ("GET", "/api/v1/sla/ledger?from=2026-01-01T00:00%2B08:00", {}, 400, "from:"),
    ("POST", "/api/v1/incidents/1/updates", {"json": {"message": "\u2003 "}}, 422, "blank"),
    ("PATCH", "/api/v1/nodes", {}, 405, "PATCH is not allowed here (allowed: GET, HEAD)"),
    ("GET", "/api/v1/nope", {}, 404, "no route '/api/v1/nope'"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{m} {p[:48]}" for m, p, *_ in CASES])
def test_hostile_value_gets_a_json_4xx(
    world: World, case: tuple[str, str, dict[str, Any], int, str]
) -> None:
    method, path, kw, status, message = case
    before = world.call("GET", "/api/v1/maintenance")[1], world.call("GET", "/api/v1/overrides")[1]
    got, body = world.call(method, path, **kw)
    assert (got, message in str(body.get("error"))) == (status, True), body
    after = world.call("GET", "/api/v1/maintenance")[1], world.call("GET", "/api/v1/overrides")[1]
    assert after == before  # nothing was stored
    status_page, _ = world.call("GET", "/status.json", token=None)
    assert status_page == 200


def test_405_names_the_allowed_methods(world: World) -> None:
    url = world.base + "/api/v1/incidents"
    assert requests.delete(url, timeout=10).status_code == 401  # no token: nothing more said
    response = requests.delete(url, headers={"Authorization": f"Bearer {READER}"}, timeout=10)
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD"}
    assert response.json() == {"error": "DELETE is not allowed here (allowed: GET, HEAD)"}


def test_malformed_requests_are_logged_one_line_at_a_time() -> None:
    quiet = QuietClientErrors(every=60)

    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord("x", logging.ERROR, __file__, 1, "Error handling", (), info)

    first = record(LineTooLong("header", "8190", "100000"))
    assert quiet.filter(first)
    assert (first.levelno, first.exc_info) == (logging.WARNING, None)
    line = first.getMessage()
    assert line.startswith("refused a malformed request: 400") and "8190" in line, line
    assert "\n" not in line
    assert not quiet.filter(record(LineTooLong("header", "8190", "1")))  # within the minute
    other = record(RuntimeError("a real bug"))
    assert quiet.filter(other) and other.levelno == logging.ERROR and other.exc_info is not None
