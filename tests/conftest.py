"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.brokers import MOSQUITTO, Broker, run_mosquitto


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Broker]:
    """A real Mosquitto broker on an ephemeral loopback port."""
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is missing: install the Debian package mosquitto")
    async with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
