"""HTTPS, mutual TLS and the /metrics token on nodevigil's own endpoints, with real TLS clients
(aiohttp over ssl, a throwaway CA from trustme) and promtool checking what the token reads."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml

from nodevigil.app.api.auth import token_digest
from nodevigil.app.daemon import Daemon, api_tls
from nodevigil.core.config import parse_config
from nodevigil.core.errors import ConfigError, StartError
from tests.failover.daemons import poll_until

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
METRICS_TOKEN = "prometheus-scrape-token"
READER = "reader-secret-token"
CUSTOMER = "customer-secret-token"


@dataclass
class Pki:
    ca: trustme.CA
    directory: Path

    def client_context(self, *, with_cert: bool, ca: trustme.CA | None = None) -> ssl.SSLContext:
        """A client trusting our CA; with a client certificate signed by ``ca`` (ours)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_cert:
            (ca or self.ca).issue_cert("prometheus@example.net").configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA; the server's certificate for 127.0.0.1, its key, the client CA."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    tls = tmp_path / "tls"
    tls.mkdir()
    server.cert_chain_pems[0].write_to_path(str(tls / "api.crt"))
    server.private_key_pem.write_to_path(str(tls / "api.key"))
    ca.cert_pem.write_to_path(str(tls / "clients-ca.crt"))
    return Pki(ca, tls)


def write_config(path: Path, api: dict[str, Any]) -> None:
    data = {
        "state_dir": "state",
        "api": {
            "listen": "127.0.0.1:0",
            "tokens": [
                {"name": "noc", "role": "read", "sha256": token_digest(READER)},
                {
                    "name": "acme",
                    "role": "customer",
                    "customer": "acme",
                    "sha256": token_digest(CUSTOMER),
                },
            ],
            **api,
        },
        "defaults": {"interval": "200ms", "timeout": "100ms"},
        "sites": [{"name": "s", "address": "192.0.2.1"}],
        "nodes": [
            {"name": "n", "site": "s", "probes": [{"type": "tcp", "address": "127.0.0.1:9"}]}
        ],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [{"id": "acme", "services": ["web"]}],
    }
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
async def daemon(tmp_path: Path, pki: Pki) -> AsyncIterator[Daemon]:
    """A daemon serving HTTPS with mutual TLS and a /metrics token; files relative to the
    configuration file, as an operator writes them."""
    path = tmp_path / "nodevigil.yaml"
    tls = {
        "cert_file": "tls/api.crt",
        "key_file": "tls/api.key",
        "client_ca_file": "tls/clients-ca.crt",
    }
    write_config(path, {"tls": tls, "metrics_token_sha256": token_digest(METRICS_TOKEN)})
    running = Daemon(path)
    task = asyncio.create_task(running.run())

    async def serving() -> bool:
        if task.done():
            task.result()
        return running.api_port is not None and running.context.ready

    await poll_until(serving, within=10, what="daemon ready")
    yield running
    running.request_stop()
    await asyncio.wait_for(task, 10)


async def fetch(
    url: str, context: ssl.SSLContext | None, token: str | None = None
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=context) if context else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, await response.text()


async def test_https_with_a_client_certificate_and_the_metrics_token(
    daemon: Daemon, pki: Pki
) -> None:
    base = f"https://127.0.0.1:{daemon.api_port}"
    client = pki.client_context(with_cert=True)
    assert await fetch(base + "/healthz", client) == (200, '{"status": "ok"}')
    status, text = await fetch(base + "/metrics", client, METRICS_TOKEN)
    assert status == 200 and "nodevigil_build_info" in text
    if PROMTOOL is not None:  # what the token reads is still valid exposition
        check = await asyncio.to_thread(
            subprocess.run,
            [PROMTOOL, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    # An operator's read token reads it too; a customer's, a wrong one or none do not.
    assert (await fetch(base + "/metrics", client, READER))[0] == 200
    for token in (None, "wrong", CUSTOMER):
        status, text = await fetch(base + "/metrics", client, token)
        assert status == 401 and "api.metrics_token_sha256" in text, token
    # The token guards /metrics only: health stays open to the certificate holder.
    assert (await fetch(base + "/readyz", client))[0] == 200


async def test_mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca(
    daemon: Daemon, pki: Pki
) -> None:
    base = f"https://127.0.0.1:{daemon.api_port}"
    with pytest.raises(aiohttp.ClientError):
        await fetch(base + "/healthz", pki.client_context(with_cert=False))
    stranger = trustme.CA()
    with pytest.raises(aiohttp.ClientError):
        await fetch(base + "/healthz", pki.client_context(with_cert=True, ca=stranger))
    with pytest.raises(aiohttp.ClientError):  # plain HTTP gets no answer
        await fetch(f"http://127.0.0.1:{daemon.api_port}/healthz", None)


async def test_metrics_stay_open_without_a_token_and_tls_without_a_client_ca(
    tmp_path: Path, pki: Pki
) -> None:
    path = tmp_path / "nodevigil.yaml"
    write_config(path, {"tls": {"cert_file": "tls/api.crt", "key_file": "tls/api.key"}})
    running = Daemon(path)
    task = asyncio.create_task(running.run())

    async def serving() -> bool:
        if task.done():
            task.result()
        return running.api_port is not None and running.context.ready

    try:
        await poll_until(serving, within=10, what="daemon ready")
        url = f"https://127.0.0.1:{running.api_port}/metrics"
        status, text = await fetch(url, pki.client_context(with_cert=False))
        assert status == 200 and "nodevigil_build_info" in text
    finally:
        running.request_stop()
        await asyncio.wait_for(task, 10)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodevigil.app.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("tls", "reason"),
    [
        ({"cert_file": "tls/api.crt", "key_file": "tls/missing.key"}, "key_file: cannot read"),
        ({"cert_file": "tls/api.crt", "key_file": "tls/other.key"}, "is not the key of cert_file"),
        (
            {
                "cert_file": "tls/api.crt",
                "key_file": "tls/api.key",
                "client_ca_file": "tls/api.key",
            },
            "client_ca_file:",
        ),
    ],
    ids=["missing", "mismatched", "not-a-ca"],
)
async def test_check_config_and_run_refuse_unusable_tls_files_alike(
    tmp_path: Path, pki: Pki, tls: dict[str, str], reason: str
) -> None:
    pki.ca.issue_cert("elsewhere").private_key_pem.write_to_path(str(pki.directory / "other.key"))
    path = tmp_path / "nodevigil.yaml"
    write_config(path, {"tls": tls})
    result = await asyncio.to_thread(check_config, path)
    assert result.returncode != 0, result.stdout
    output = result.stdout + result.stderr
    assert "api.tls" in output and reason in output, output
    # run loads the configuration with the same validation: refused before anything starts.
    with pytest.raises(ConfigError) as refused:
        Daemon(path)
    assert "api.tls" in str(refused.value) and reason in str(refused.value)


def test_run_names_the_file_when_it_changed_after_the_check(tmp_path: Path, pki: Pki) -> None:
    api = parse_config(
        {"api": {"tls": {"cert_file": "api.crt", "key_file": "api.key"}}}, source="test"
    ).api
    (pki.directory / "api.key").write_text("not a key")
    with pytest.raises(StartError, match=r"^api\.tls\.cert_file: .*api\.crt with key_file"):
        api_tls(api, pki.directory)


async def test_the_cli_speaks_https_with_the_ca_and_client_certificate_it_is_given(
    daemon: Daemon, pki: Pki, tmp_path: Path
) -> None:
    client = pki.ca.issue_cert("noc@example.net")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "cli.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "cli.key"))
    pki.ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    url = f"https://127.0.0.1:{daemon.api_port}"
    env = {**os.environ, "NODEVIGIL_TOKEN": READER}

    def nodes(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nodevigil", "nodes", "--url", url, "-o", "json"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    # Without the CA the daemon's certificate is not trusted; without a client certificate
    # the daemon (api.tls.client_ca_file) refuses the connection: both say why, no traceback.
    untrusted = await asyncio.to_thread(nodes)
    assert untrusted.returncode != 0 and "Traceback" not in untrusted.stderr
    assert "certificate" in untrusted.stderr.lower()
    no_cert = await asyncio.to_thread(nodes, NODEVIGIL_CA_FILE=str(tmp_path / "ca.crt"))
    assert no_cert.returncode != 0 and "Traceback" not in no_cert.stderr
    done = await asyncio.to_thread(
        nodes,
        NODEVIGIL_CA_FILE=str(tmp_path / "ca.crt"),
        NODEVIGIL_CLIENT_CERT=str(tmp_path / "cli.crt"),
        NODEVIGIL_CLIENT_KEY=str(tmp_path / "cli.key"),
    )
    assert done.returncode == 0, done.stderr
    assert '"n"' in done.stdout
