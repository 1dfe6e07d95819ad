"""A real Mosquitto broker for tests: re-exported from ``nodevigil.demo.servers.mosquitto``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from nodevigil.demo.servers import mosquitto
from nodevigil.demo.servers.mosquitto import Broker
from nodevigil.demo.servers.process import locate

MOSQUITTO = locate("mosquitto") or mosquitto.MOSQUITTO

__all__ = ["MOSQUITTO", "Broker", "run_mosquitto"]


@contextlib.asynccontextmanager
async def run_mosquitto(workdir: Path) -> AsyncIterator[Broker]:
    """Start a broker for the duration of the block."""
    async with mosquitto.run_mosquitto(workdir, program=MOSQUITTO) as broker:
        yield broker
