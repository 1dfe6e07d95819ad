"""Fixtures shared by every test package, and the session-wide secret-leak audit's hooks."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.brokers import MOSQUITTO, Broker, run_mosquitto
from tests.leakcheck import SECRETS, LeakAudit, Spies, Tee, TeeHandler

AUDIT_LAST = "audit_last"


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Broker]:
    """A real Mosquitto broker on an ephemeral loopback port."""
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is missing: install the Debian package mosquitto")
    async with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


# --- the secret-leak audit (tests/leakcheck.py, tests/test_secret_audit.py) -------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{AUDIT_LAST}: run after every other test (the secret-leak audit)"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The audit scans what every other test produced, so it runs last."""
    items.sort(key=lambda item: item.get_closest_marker(AUDIT_LAST) is not None)


@pytest.fixture(scope="session", autouse=True)
def leak_audit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeakAudit]:
    """Learn every secret the session uses and tee everything it produces (leakcheck.py).

    Every log record of every logger is created (the root logger at DEBUG, as under
    ``--log-level DEBUG``) and copied; Python subprocesses tee their output through
    ``tests/leaktee/sitecustomize.py``.
    """
    root = tmp_path_factory.getbasetemp()
    tee = Tee(root / "leak-audit")
    spies = Spies(SECRETS, tee)
    spies.install()
    handler = TeeHandler(tee)
    logger = logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    saved = {name: os.environ.get(name) for name in tee.child_environment()}
    os.environ.update(tee.child_environment())
    try:
        yield LeakAudit(root, SECRETS, tee)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        logger.setLevel(level)
        logger.removeHandler(handler)
        spies.uninstall()
        tee.close()
