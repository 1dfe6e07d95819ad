"""``/api/v1/cluster`` and the role in ``/api/v1/status`` on a single host (no ``cluster:``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.world import ACME, ADMIN, READER, World, running_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("cluster-api")) as world:
        yield world


def test_a_single_host_is_always_the_leader_without_an_epoch(world: World) -> None:
    status, body = world.call("GET", "/api/v1/cluster", token=READER)
    assert status == 200, body
    me = body["me"]
    assert body == {"me": me, "role": "leader", "leader": me, "epoch": None, "members": [me]}
    status, body = world.call("GET", "/api/v1/status", token=READER)
    assert status == 200 and body["role"] == "leader"


def test_step_down_needs_an_admin_and_a_cluster(world: World) -> None:
    assert world.call("GET", "/api/v1/cluster", token=ACME)[0] == 403
    assert world.call("POST", "/api/v1/cluster/step-down", token=READER)[0] == 403
    status, body = world.call("POST", "/api/v1/cluster/step-down", token=ADMIN)
    assert status == 409 and "nobody to hand over to" in body["error"]
