"""schemathesis against a real daemon: every route, generated valid and invalid requests.

No response may be a 5xx; every response must match the OpenAPI document (status, content
type, body schema); every error is a JSON 4xx ``{"error": ...}``; a request the document
calls valid is never refused as malformed (400), one it calls invalid never accepted; the
daemon logs no error and still runs afterwards. Bounded and deterministic: derandomized,
a few examples per route.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from nodevigil.app.api.openapi import document
from tests.api.world import ADMIN, World, running_world

CONFIG = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"bearer": {"bearer": ADMIN}}},
        "checks": {
            # With an admin token, valid data may still name nothing (404), conflict (409),
            # or fail a rule no JSON schema can state, such as an end after its start (422).
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]},
        },
    }
)
SCHEMA = schemathesis.openapi.from_dict(document(), config=CONFIG)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("fuzz")) as world:
        yield world


def error_is_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Every 4xx carries ``{"error": "<text>"}``."""
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body


@SCHEMA.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_conforms(case: schemathesis.Case, world: World) -> None:
    # A CSV grammar is beyond a JSON schema: a generated string is rarely a valid charges file.
    csv = case.operation.path == "/api/v1/sla/charges"
    case.call_and_validate(
        base_url=world.base,
        additional_checks=[error_is_json],
        excluded_checks=[positive_data_acceptance] if csv else [],
        timeout=10,
    )
