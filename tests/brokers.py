"""A real Mosquitto broker for tests: re-exported from ``nodevigil.app.demo.servers.mosquitto``."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import trustme

from nodevigil.app.demo.servers import mosquitto
from nodevigil.app.demo.servers.mosquitto import AGENT_ACL, DAEMON_USER, Broker, BrokerTls
from nodevigil.app.demo.servers.process import locate
from tests.leakcheck import register

MOSQUITTO = locate("mosquitto") or mosquitto.MOSQUITTO

__all__ = ["DAEMON_USER", "MOSQUITTO", "Broker", "run_mosquitto", "run_secure_mosquitto"]


@contextlib.asynccontextmanager
async def run_mosquitto(workdir: Path) -> AsyncIterator[Broker]:
    """Start a broker for the duration of the block."""
    async with mosquitto.run_mosquitto(workdir, program=MOSQUITTO) as broker:
        yield broker


def make_tls(workdir: Path) -> BrokerTls:
    """A test CA and a server certificate for ``localhost`` and 127.0.0.1, as PEM files."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    tls = BrokerTls(workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    server.private_key_pem.write_to_path(str(tls.key_file))
    with tls.cert_file.open("wb") as file:
        for blob in server.cert_chain_pems:
            file.write(blob.bytes())
    return tls


@contextlib.asynccontextmanager
async def run_secure_mosquitto(
    workdir: Path, agents: Iterable[str], *, prefix: str = "nodevigil"
) -> AsyncIterator[Broker]:
    """A broker set up as docs/operations.md says: a login per agent and one for the daemon,
    no anonymous clients, the agents' ACL, and a TLS listener (``broker.tls_url``) beside the
    plain one. ``broker.users`` holds the passwords."""
    users = {DAEMON_USER: secrets.token_urlsafe(12)}
    users.update({agent: secrets.token_urlsafe(12) for agent in agents})
    for user, password in users.items():
        register(f"mqtt password of {user}", password)
    tls = make_tls(workdir / "tls")
    async with mosquitto.run_mosquitto(
        workdir,
        program=MOSQUITTO,
        users=users,
        acl=AGENT_ACL.format(prefix=prefix, daemon=DAEMON_USER),
        tls=tls,
    ) as broker:
        yield broker
