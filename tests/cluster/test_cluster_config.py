"""The cluster section's timing rules, and etcd's TLS and auth files, are checked with the rest of
the configuration: by check-config as by the start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodevigil.core.config import load_config, parse_config
from nodevigil.core.errors import ConfigError
from tests.etcd_cluster import TlsFiles, make_tls


def cluster(**lbs: dict[str, Any]) -> dict[str, Any]:
    return {
        "database": {"url": "postgresql://nodevigil@db/nodevigil"},
        "cluster": {
            "etcd": {"endpoints": ["http://127.0.0.1:2379"], "timeout": "300ms"},
            "lease_ttl": "2s",
            "renew_every": "500ms",
        },
        "load_balancers": lbs,
    }


def test_a_load_balancer_timeout_the_lease_never_leaves_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(cluster(h={"type": "haproxy", "socket": "/run/h.sock", "backend": "web"}))
    assert caught.value.problems == [
        "load_balancers.h.timeout: 2s does not fit in the leader lease: commands are sent only "
        "while this much of it is left, and at most 1.3s ever is "
        "(lease_ttl - renew_every - margin)"
    ]
    fits = {"type": "haproxy", "socket": "/run/h.sock", "backend": "web", "timeout": "500ms"}
    assert parse_config(cluster(h=fits)).cluster is not None


def test_renewals_must_fit_in_the_lease_and_a_cluster_needs_a_database() -> None:
    data = cluster()
    data["cluster"]["etcd"]["timeout"] = "1s"
    with pytest.raises(ConfigError, match="must not exceed lease_ttl"):
        parse_config(data)
    with pytest.raises(ConfigError, match="cluster: needs a database section"):
        parse_config({"cluster": cluster()["cluster"]})


# --- etcd's TLS and auth: check-config refuses what the start refuses, for the same reason ------


def etcd_file(tmp_path: Path, **etcd: Any) -> Path:
    """A configuration file in ``tmp_path`` whose ``cluster.etcd`` has ``etcd``'s keys."""
    data = cluster(
        h={"type": "haproxy", "socket": "/run/h.sock", "backend": "web", "timeout": "500ms"}
    )
    data["cluster"]["etcd"].update(etcd)
    path = tmp_path / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def problems(path: Path) -> list[str]:
    """What loading ``path`` (as check-config and the start do) refuses; [] when it passes."""
    try:
        load_config(path, secrets=True)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def https(**tls: str) -> dict[str, Any]:
    return {"endpoints": ["https://127.0.0.1:2379"], "tls": tls}


@pytest.fixture
def certs(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "certs")


def test_tls_without_a_ca_file_is_refused_by_check_config_and_run_alike(tmp_path: Path) -> None:
    # ``run`` refused it at start while ``check-config`` passed it: both refuse it now, with
    # the same line, before anything else happens.
    path = etcd_file(tmp_path, **https(cert_file="c.pem", key_file="c.key"))
    expected = (
        f"{path}: cluster.etcd.tls.ca_file: required with tls: nodevigil trusts only this CA "
        "for etcd, never the system's CAs"
    )
    for command in ("check-config", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "nodevigil", command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 1, (command, done.stderr)
        assert expected in done.stderr.splitlines(), (command, done.stderr)


def test_tls_files_are_found_relative_to_the_configuration_file(
    tmp_path: Path, certs: TlsFiles
) -> None:
    files = {"ca_file": "certs/ca.pem", "cert_file": "certs/client.pem"}
    path = etcd_file(tmp_path, **https(**files, key_file="certs/client.key"))
    assert problems(path) == []
    assert parse_config(yaml.safe_load(path.read_text())).cluster is not None  # no file: no I/O


def test_missing_unreadable_and_mismatched_tls_files_are_named_with_the_reason(
    tmp_path: Path, certs: TlsFiles
) -> None:
    (tmp_path / "a-directory").mkdir()
    cases = {
        "cluster.etcd.tls.ca_file: cannot read {d}/nowhere.pem: No such file or directory": {
            "ca_file": "nowhere.pem"
        },
        "cluster.etcd.tls.cert_file: cannot read {d}/a-directory: Is a directory": {
            "ca_file": "certs/ca.pem",
            "cert_file": "a-directory",
            "key_file": "certs/client.key",
        },
        "cluster.etcd.tls: ca_file: {d}/certs/client.key holds no PEM certificate": {
            "ca_file": "certs/client.key"
        },
        "cluster.etcd.tls: key_file: {d}/certs/named.key is not the key of cert_file "
        "{d}/certs/client.pem": {
            "ca_file": "certs/ca.pem",
            "cert_file": "certs/client.pem",
            "key_file": "certs/named.key",
        },
        "cluster.etcd.tls: key_file: required with the other: a client certificate needs its key": {
            "ca_file": "certs/ca.pem",
            "cert_file": "certs/client.pem",
        },
    }
    for expected, tls in cases.items():
        found = problems(etcd_file(tmp_path, **https(**tls)))
        assert len(found) == 1, (tls, found)
        assert found[0].startswith(expected.format(d=tmp_path)), (tls, found)


def test_an_encrypted_key_is_refused_instead_of_prompting(tmp_path: Path, certs: TlsFiles) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )
    (tmp_path / "locked.key").write_bytes(locked)
    tls = {"ca_file": "certs/ca.pem", "cert_file": "certs/client.pem", "key_file": "locked.key"}
    found = problems(etcd_file(tmp_path, **https(**tls)))
    assert found == [
        "cluster.etcd.tls: key_file: the key is encrypted: nodevigil cannot ask for a "
        "passphrase; give it an unencrypted key that only nodevigil's user can read"
    ]


def test_tls_needs_https_endpoints_and_auth_needs_both_keys(
    tmp_path: Path, certs: TlsFiles
) -> None:
    path = etcd_file(tmp_path, endpoints=["http://127.0.0.1:2379"], tls={"ca_file": "certs/ca.pem"})
    assert problems(path) == [
        "cluster.etcd: endpoints[0]: 'http://127.0.0.1:2379' must be https:// with tls"
    ]
    assert problems(etcd_file(tmp_path, username="nodevigil")) == [
        "cluster.etcd: password_file: required with username (etcd's auth needs both)"
    ]
    (tmp_path / "etcd.password").write_text("secret\n")
    assert problems(etcd_file(tmp_path, password_file="etcd.password")) == [
        "cluster.etcd: username: required with password_file (etcd's auth needs both)"
    ]


def test_the_etcd_password_file_is_read_as_run_reads_it(tmp_path: Path) -> None:
    login = {"username": "nodevigil", "password_file": "etcd.password"}
    assert problems(etcd_file(tmp_path, **login)) == [
        f"cluster.etcd.password_file: cannot read {tmp_path}/etcd.password: "
        "No such file or directory"
    ]
    (tmp_path / "etcd.password").write_text("\n")
    assert problems(etcd_file(tmp_path, **login)) == [
        f"cluster.etcd.password_file: {tmp_path}/etcd.password is empty: etcd would refuse "
        "the login"
    ]
    (tmp_path / "etcd.password").write_bytes(b"\xff\xfe")
    assert problems(etcd_file(tmp_path, **login)) == [
        f"cluster.etcd.password_file: {tmp_path}/etcd.password is not UTF-8 text"
    ]
    (tmp_path / "etcd.password").write_text("s3cret\n")
    assert problems(etcd_file(tmp_path, **login)) == []
