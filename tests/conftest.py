"""Fixtures shared by every test package, and the session-wide secret-leak audit's hooks."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from tests.brokers import MOSQUITTO, Broker, run_mosquitto
from tests.leakcheck import SECRETS, LeakAudit, Spies, Tee, TeeHandler
from tests.postgres_server import PostgresAddress, postgres_for_session

AUDIT_LAST = "audit_last"


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Broker]:
    """A real Mosquitto broker on an ephemeral loopback port."""
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is missing: install the Debian package mosquitto")
    async with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


# --- state backends: SQLite (state_dir) and a real PostgreSQL ------------------------------


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresAddress]:
    """One real PostgreSQL for the whole session; each test makes its own database on it."""
    with postgres_for_session(tmp_path_factory.mktemp("postgres")) as address:
        yield address


class StateBackend:
    """Where a daemon's configuration puts its state: ``sqlite`` (state_dir, the default) or
    ``postgres`` (a ``database:`` section naming a fresh database of the session's server)."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self._request = request
        self.database: str | None = None

    def configure(self, path: Path) -> None:
        """Add the ``database:`` section to the YAML configuration at ``path`` (PostgreSQL)."""
        if self.name == "sqlite":
            return
        address: PostgresAddress = self._request.getfixturevalue("postgres")
        if self.database is None:
            self.database = address.create_database()
        data = yaml.safe_load(path.read_text())
        data["database"] = {
            "url": address.url(self.database),
            "password_file": str(address.password_file),
            "connect_timeout": "2s",
        }
        path.write_text(yaml.safe_dump(data))


@pytest.fixture
def state_backend(request: pytest.FixtureRequest) -> Iterator[StateBackend]:
    """Parametrize with ``indirect=True`` over ``"sqlite"`` and ``"postgres"``."""
    backend = StateBackend(getattr(request, "param", "sqlite"), request)
    yield backend
    if backend.database is not None:
        request.getfixturevalue("postgres").drop_database(backend.database)


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
