"""``nodevigil agent-key`` and the mqtt section's checks."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
import yaml

from monitor.agentauth import derive_key, format_key, parse_key
from nodevigil.app.cli import main
from nodevigil.core.config import load_config
from nodevigil.core.errors import ConfigError
from tests.leakcheck import register


def write_config(tmp_path: Path, name: str = "nodevigil.yaml", **mqtt: object) -> Path:
    path = tmp_path / name
    data = {
        "mqtt": {"url": "mqtt://127.0.0.1:1883", **mqtt},
        "sites": [{"name": "s", "address": "192.0.2.1"}],
        "nodes": [
            {"name": "n1", "site": "s", "probes": [{"type": "mqtt"}]},
            {"name": "n2", "site": "s", "probes": [{"type": "mqtt", "agent": "box-2"}]},
        ],
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def secret(tmp_path: Path) -> str:
    value = secrets.token_hex(32)
    register("agent secret (cli test)", value)
    (tmp_path / "agent-secret").write_text(value + "\n")
    return value


def test_agent_key_writes_the_node_key_readable_by_its_owner_only(
    tmp_path: Path, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, agent_secret={"secret_file": "agent-secret"})
    out = tmp_path / "box-2.key"
    assert main(["agent-key", "box-2", "-c", str(config), "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert parse_key(out.read_text()) == derive_key(secret, "box-2")
    assert main(["agent-key", "n1", "-c", str(config)]) == 0
    printed = capsys.readouterr().out.strip()
    register("agent key of n1 (cli test)", printed)
    assert printed == format_key(derive_key(secret, "n1"))


def test_agent_key_refuses_unknown_agents_and_a_missing_secret(
    tmp_path: Path, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, agent_secret={"secret_file": "agent-secret"})
    assert main(["agent-key", "n2", "-c", str(config)]) == 1  # n2's agent is box-2
    assert "no mqtt probe" in capsys.readouterr().err
    assert main(["agent-key", "n1", "-c", str(write_config(tmp_path, "plain.yaml"))]) == 1
    assert "mqtt.agent_secret: not set" in capsys.readouterr().err
    (tmp_path / "agent-secret").write_text("short\n")
    assert main(["agent-key", "n1", "-c", str(config)]) == 1
    assert "shorter than 32" in capsys.readouterr().err


def test_mqtt_section_problems_are_reported_with_their_path(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        tls={"cert_file": "c.pem"},
        agent_secret={"secret_file": "a", "secret_env": "B"},
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert set(caught.value.problems) >= {
        "mqtt.tls: TLS settings need an mqtts:// url",
        "mqtt.tls: give cert_file and key_file together",
        "mqtt.agent_secret: give exactly one of secret_file or secret_env",
    }
