"""Drain requests: refused duplicate keys, and the failover.drain_max time box (issue 12, 9)."""

from __future__ import annotations

import pytest

from tests.api.world import World

DRAIN = "/api/v1/nodes/acme-1/drain"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"for": "1m", "for": "10d"}', "for"),
        (b'{"reason": "a", "for": "1m", "reason": "b"}', "reason"),
    ],
)
def test_a_key_given_twice_is_a_400_naming_it(world: World, body: bytes, key: str) -> None:
    before = world.call("GET", "/api/v1/overrides")[1]
    status, answer = world.call("POST", DRAIN, data=body)
    # Before the fix: 200, the last value silently won (a 10-day drain).
    assert status == 400, answer
    assert answer == {"error": f"the body gives the key {key!r} more than once"}
    assert world.call("GET", "/api/v1/overrides")[1] == before  # nothing was stored


def test_a_drain_longer_than_drain_max_is_a_422(world: World) -> None:
    status, answer = world.call("POST", DRAIN, json={"for": "2d"})
    assert status == 422, answer  # before the fix: accepted (anything up to 365d)
    assert answer["error"] == "for: must be longer than 0s and at most 1d (failover.drain_max)"


@pytest.mark.parametrize(
    "path",
    ["/api/v1/maintenance", "/api/v1/sla/exclusions", "/api/v1/sla/intervals/1/cause"],
)
def test_every_json_route_refuses_a_key_given_twice(world: World, path: str) -> None:
    body = b'{"note": "a", "cause": "force_majeure", "note": "b"}'
    status, answer = world.call("POST", path, data=body)
    assert status == 400, answer
    assert answer == {"error": "the body gives the key 'note' more than once"}
