"""The example configuration's commented incident section is valid once uncommented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nodevigil.core.config import parse_config

EXAMPLE = Path(__file__).parents[2] / "configs" / "example.yaml"


def test_the_commented_incident_example_is_a_valid_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, tail = EXAMPLE.read_text().split("# --- incidents and notifications", 1)
    lines = tail.splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("# services:"))
    section = "\n".join(line[2:] if line.startswith("# ") else line for line in lines[start:])
    data = yaml.safe_load(head.replace("services: []\n", "") + section)
    config = parse_config(data, base_dir=tmp_path)
    assert config.customers[0].plan == "gold"
    assert [s.after for s in config.contingency_plans["gold"].steps] == [0.0, 900.0]
    assert set(config.notifiers) == {"acme-webhook", "acme-mail", "acme-phone-bridge", "ops-am"}
    assert config.maintenance[0].services == ["web"]
