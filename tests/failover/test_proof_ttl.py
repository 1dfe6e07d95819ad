"""check-config warns when a DNS record's TTL is longer than the failover is worth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from failover.proof.ttl import detection_seconds, ttl_warnings
from nodevigil.app.cli import main
from nodevigil.core.config.schema import Config


def config_data(ttl: int, interval: str = "1s", fall: int = 3) -> dict[str, Any]:
    probe = {"type": "tcp", "address": "127.0.0.1:9", "interval": interval}
    return {
        "vantage": "test",
        "load_balancers": {
            "gslb": {"type": "rfc2136", "server": "127.0.0.1:53", "zone": "ex.", "ttl": ttl}
        },
        "sites": [
            {"name": "sh", "address": "203.0.113.10"},
            {"name": "bj", "address": "203.0.113.20"},
        ],
        "nodes": [
            {"name": "a", "site": "sh", "probes": [probe]},
            {"name": "b", "site": "bj", "fall": fall, "probes": [probe]},
        ],
        "services": [{"name": "web", "sites": ["sh", "bj"], "global_lb": "gslb", "record": "www"}],
    }


def test_detection_is_the_slowest_interval_times_fall() -> None:
    config = Config.model_validate(config_data(30, interval="30s", fall=5))
    assert detection_seconds(config, {"sh", "bj"}) == 150.0  # b: 30 s x 5
    assert detection_seconds(config, {"sh"}) == 90.0  # a: 30 s x the default fall 3


@pytest.mark.parametrize(
    ("ttl", "interval", "warned"),
    [
        (60, "1s", False),  # a minute: at most about one more counted SLA minute
        (61, "1s", True),
        (300, "1s", True),
        (300, "30s", True),  # detection 90 s: still shorter than the TTL
        (90, "30s", False),  # not longer than detection (30 s x 3)
    ],
)
def test_the_rule(ttl: int, interval: str, warned: bool) -> None:
    lines = ttl_warnings(Config.model_validate(config_data(ttl, interval)))
    assert bool(lines) is warned
    if warned:
        assert lines[0].startswith(f"services.web: load_balancers.gslb.ttl is {ttl}s: ")


def test_check_config_prints_the_warning_and_still_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nodevigil.yaml"
    data = config_data(3600) | {"state_dir": str(tmp_path / "state")}
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "warning: services.web: load_balancers.gslb.ttl is 3600s: after a site is withdrawn, "
        "clients may keep the old answer for 1h, longer than a minute and than detecting the "
        "failure takes (3s); at most 1m keeps the failover worth its speed"
    ) in out
