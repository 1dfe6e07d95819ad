"""One seeded daemon for the API tests that only read or are refused (the fuzz test has its
own: it changes things). Its request limits are short so the limit tests stay quick."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.world import World, running_world

LIMITS = {"header_timeout": "1s", "body_timeout": "1s", "max_body": 65536}


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("api"), LIMITS) as world:
        yield world
