"""check-config refuses what ``run`` refuses, for the same reasons, in one pass (issue 17.1)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodevigil.core.config import parse_config
from nodevigil.core.errors import ConfigError

PROBE = [{"type": "tcp", "address": "127.0.0.1:9"}]
WEBHOOK_SECRET = "whsec_c2VjcmV0LWtleS1mb3ItdGhlLXRlc3Q="
SHORT_AGENT_SECRET = "agent-secret-too-short"


def nodevigil(command: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NODEVIGIL_MQTT_PW"}
    return subprocess.run(
        [sys.executable, "-m", "nodevigil", command, "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
        env=env,
        check=False,
    )


def tsig_keygen_block(path: Path) -> str:
    """What `tsig-keygen` writes (a whole ``key "..." { ... };`` block); returns its secret."""
    keygen = shutil.which("tsig-keygen") or "/usr/sbin/tsig-keygen"
    done = subprocess.run(
        [keygen, "-a", "hmac-sha256", "nodevigil"], capture_output=True, text=True, check=True
    )
    path.write_text(done.stdout)
    return done.stdout.split('secret "', 1)[1].split('"', 1)[0]


def bad_config(tmp_path: Path) -> tuple[Path, list[str]]:
    """A configuration with schema, reference and secret problems; and the secrets it holds."""
    tsig = tsig_keygen_block(tmp_path / "tsig.key")
    (tmp_path / "no-prefix.whsec").write_text(WEBHOOK_SECRET.removeprefix("whsec_") + "\n")
    (tmp_path / "agent-secret").write_text(SHORT_AGENT_SECRET + "\n")
    (tmp_path / "pdns.key").write_text("\n")
    data: dict[str, Any] = {
        "state_dir": "state",
        "api": {"listen": "127.0.0.1:0"},
        "mqtt": {
            "url": "mqtt://127.0.0.1:1",
            "username": "nodevigil",
            "password": {"secret_env": "NODEVIGIL_MQTT_PW"},
            "agent_secret": {"secret_file": "agent-secret"},
        },
        "database": {
            "url": "postgresql://nodevigil@127.0.0.1:1/nodevigil",
            "password_file": "db.password",
        },
        "load_balancers": {
            "dns": {
                "type": "rfc2136",
                "server": "127.0.0.1:53",
                "zone": "example.test",
                "tsig": {"name": "nodevigil", "secret_file": "tsig.key"},
            },
            "pdns": {
                "type": "powerdns",
                "url": "http://127.0.0.1:1",
                "zone": "example.test",
                "api_key": {"secret_file": "pdns.key"},
            },
        },
        "sites": [{"name": "sh", "address": "203.0.113.10"}],
        "nodes": [
            {"name": "a", "site": "sh", "probes": [{**PROBE[0], "timeout": "5x"}]},
            {"name": "b", "site": "zz", "probes": PROBE},
            {"name": "b", "site": "sh", "probes": PROBE},
        ],
        "notifiers": {
            "missing": {
                "type": "webhook",
                "url": "https://hooks.example/a",
                "secret_file": "missing.whsec",
            },
            "unprefixed": {
                "type": "webhook",
                "url": "https://hooks.example/b",
                "secret_file": "no-prefix.whsec",
            },
        },
    }
    path = tmp_path / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, [tsig, WEBHOOK_SECRET.removeprefix("whsec_"), SHORT_AGENT_SECRET]


def test_check_config_and_run_refuse_the_same_config_with_the_same_lines(tmp_path: Path) -> None:
    path, secrets = bad_config(tmp_path)
    d = tmp_path
    expected = [
        # schema, then references, then secrets: all in one pass
        "nodes[0].probes[0].timeout: '5x' is not a duration (use e.g. 500ms, 1s, 10m, 1h30m)",
        "nodes: the name 'b' is used more than once",
        "nodes[1].site: no site is called 'zz'",
        f"load_balancers.dns.tsig: {d}/tsig.key: holds a BIND key {{ ... }} block, not the "
        'secret alone: put only the value of its secret "..." (base64) in the file; name and '
        "algorithm go in tsig",
        f"load_balancers.pdns.api_key: {d}/pdns.key: the secret is empty",
        "mqtt.password: environment variable NODEVIGIL_MQTT_PW is not set",
        f"mqtt.agent_secret: {d}/agent-secret: the secret is shorter than 32 characters; make "
        "one with `openssl rand -hex 32`",
        f"notifiers.missing: cannot read secret file {d}/missing.whsec: No such file or directory",
        f"notifiers.unprefixed: {d}/no-prefix.whsec: the webhook secret must start with whsec_",
        f"database.password_file: cannot read secret file {d}/db.password: No such file or "
        "directory",
    ]
    outputs = {}
    for command in ("check-config", "run"):
        done = nodevigil(command, path)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith(f"{path}: ")]
        outputs[command] = lines
        for secret in secrets:
            assert secret not in done.stdout + done.stderr, command
    assert outputs["check-config"] == outputs["run"]
    assert [line.removeprefix(f"{path}: ") for line in outputs["run"]] == expected
    assert not (tmp_path / "state").exists()  # run refused before touching anything


def test_the_same_files_fixed_pass_both_and_run_reads_them(tmp_path: Path) -> None:
    path, _ = bad_config(tmp_path)
    secret = tsig_keygen_block(tmp_path / "tsig.key")
    (tmp_path / "tsig.key").write_text(secret + "\n")  # the secret alone, as documented
    (tmp_path / "no-prefix.whsec").write_text(WEBHOOK_SECRET + "\n")
    (tmp_path / "missing.whsec").write_text(WEBHOOK_SECRET + "\n")
    # Random, not "000...": the secret audit (test_secret_audit.py) would find a run of zeros
    # in any fuzzed request and call it a leak.
    (tmp_path / "agent-secret").write_text(secrets.token_hex(32) + "\n")
    (tmp_path / "pdns.key").write_text("pdns-api-key\n")
    (tmp_path / "db.password").write_text("db-password\n")
    data = yaml.safe_load(path.read_text())
    data["nodes"] = [{"name": "a", "site": "sh", "probes": PROBE}]
    del data["mqtt"]["password"], data["database"]
    path.write_text(yaml.safe_dump(data))
    done = nodevigil("check-config", path)
    assert done.returncode == 0, done.stderr
    assert "site sh: 1 nodes, up to 0 may be drained at once" in done.stdout


def test_only_the_loader_with_secrets_reads_them(tmp_path: Path) -> None:
    # Commands that only talk to the API (drain, incident, ...) load the file without
    # reading secrets: an operator needs no access to them.
    data = {"notifiers": {"h": {"type": "webhook", "url": "https://x", "secret_file": "nope"}}}
    parse_config(data, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"notifiers\.h: cannot read secret file"):
        parse_config(data, base_dir=tmp_path, secrets=True)


def test_references_are_checked_beside_schema_errors_at_their_own_positions() -> None:
    data = {
        "sites": [
            {"name": "bad", "address": "not-an-ip"},
            {"name": "sh", "address": "203.0.113.10", "local_lb": "nowhere"},
        ],
        "nodes": [
            {"name": "x", "site": "bad", "probes": PROBE},  # refers to the invalid site: quiet
            {"name": "y", "site": "sh", "probes": "not a list"},
            {"name": "z", "site": "elsewhere", "probes": PROBE},
            {"name": "z", "site": "sh", "probes": PROBE},
        ],
        "services": [{"name": "web", "sites": ["sh", "gone"]}],
        "mqtt": {"url": "ftp://wrong"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = caught.value.problems
    assert any(p.startswith("sites[0].address:") for p in problems), problems
    assert any(p.startswith("nodes[1].probes:") for p in problems), problems
    assert any(p.startswith("mqtt.url:") for p in problems), problems
    assert "sites[1].local_lb: no load balancer is called 'nowhere'" in problems
    assert "nodes[2].site: no site is called 'elsewhere'" in problems  # index as written
    assert "nodes: the name 'z' is used more than once" in problems
    assert "services[0].sites[1]: no site is called 'gone'" in problems
    assert not any("'bad'" in p for p in problems), problems
    assert not any("mqtt section" in p for p in problems), problems
