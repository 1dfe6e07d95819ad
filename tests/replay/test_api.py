"""``POST /api/v1/replay`` on a real daemon, over the history the daemon itself records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.api.world import ACME, READER, World, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The API tests' daemon (acme-shop down, globex-mail up), saving its history each 200 ms."""
    path = write_config(tmp_path_factory.mktemp("replay-api"))
    data = yaml.safe_load(path.read_text())
    data["records"] = {"history_save_every": "200ms"}
    path.write_text(yaml.safe_dump(data))
    world = World(path)
    world.start()
    try:
        yield world
        assert world.running
        errors = [f"{r.name}: {r.getMessage()}" for r in world.errors.records]
        assert not errors, errors
    finally:
        world.stop()


def _config_text(world: World) -> str:
    return world.config.read_text()


def test_running_configuration_replays_with_no_difference(world: World) -> None:
    text = _config_text(world)
    answer: dict[str, Any] = {}

    def incident_replayed() -> bool:
        status, body = world.call(
            "POST", "/api/v1/replay", json={"config": text, "from": "-10m", "warmup": "0s"}
        )
        assert status == 200, body
        answer.update(body)
        return bool(body["running"]["counts"].get("incident.opened"))

    world.wait("acme-shop's outage in the replayed history", incident_replayed, within=60)
    assert answer["differences"] == []
    assert answer["candidate"] == answer["running"]
    assert answer["running"]["sla_minutes"]["acme-shop"] >= 1
    # acme-shop is down all along (globex-mail may blip on a loaded machine: its probe is the
    # daemon's own /healthz).
    outages = answer["sla"]["running"]["outages"]
    assert "acme-shop" in {o["service"] for o in outages}


def test_bad_candidate_is_422_with_every_problem(world: World) -> None:
    data = yaml.safe_load(_config_text(world))
    data["defaults"]["fall"] = 0
    data["nodes"][0]["site"] = "nowhere"
    status, body = world.call("POST", "/api/v1/replay", json={"config": yaml.safe_dump(data)})
    assert status == 422
    assert "defaults.fall" in body["error"] and "nowhere" in body["error"]
    status, body = world.call("POST", "/api/v1/replay", json={"config": "a: [1"})
    assert status == 422 and body["error"].startswith("config: ")


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"from": "yesterday"}, 422, "from: 'yesterday' is neither"),
        ({"from": "-1h", "to": "-2h"}, 422, "from must be before to"),
        ({"from": "-40d"}, 422, "at most 31 days"),
        ({"tolerance": 5}, 400, "tolerance: give a duration"),
        ({"speed": "fast"}, 400, "speed"),
    ],
)
def test_bad_requests_are_refused_clearly(
    world: World, fields: dict[str, Any], status: int, message: str
) -> None:
    got, body = world.call("POST", "/api/v1/replay", json={"config": _config_text(world), **fields})
    assert got == status and message in body["error"], body


@pytest.mark.parametrize("token", [READER, ACME])
def test_only_an_admin_may_replay(world: World, token: str) -> None:
    status, body = world.call("POST", "/api/v1/replay", token=token, json={"config": "{}"})
    assert status == 403, body
