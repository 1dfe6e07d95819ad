"""Configuration: every error reported with its path; the example works as shipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodevigil.core.config import load_config, parse_config
from nodevigil.core.durations import format_duration, parse_duration
from nodevigil.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def minimal(**extra: Any) -> dict[str, Any]:
    """A small valid configuration, with ``extra`` keys merged in."""
    data: dict[str, Any] = {
        "sites": [{"name": "sh", "address": "203.0.113.10"}],
        "nodes": [
            {
                "name": "sh-1",
                "site": "sh",
                "probes": [{"type": "http", "url": "http://127.0.0.1:1/healthz"}],
            }
        ],
    }
    data.update(extra)
    return data


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1s", 1.0), ("10m", 600.0), ("1h30m", 5400.0), ("2d", 172800.0)],
)
def test_durations_parse_and_format(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1s2", "-1s", "1 s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_fill_each_probe() -> None:
    config = parse_config(minimal(defaults={"interval": "2s", "timeout": "1s", "attempts": 3}))
    probe = config.nodes[0].probes[0]
    assert (probe.name, probe.interval, probe.timeout, probe.attempts) == ("http", 2.0, 1.0, 3)


def test_a_short_interval_needs_no_timeout_of_its_own() -> None:
    # The built-in 900 ms timeout shrinks to 90 % of a shorter interval; one set in defaults or
    # on the probe is taken as it is (and must be shorter than the interval).
    data = minimal(defaults={"interval": "500ms"})
    data["nodes"][0]["probes"].append({"type": "tcp", "address": "h:1", "interval": "200ms"})
    probes = parse_config(data).nodes[0].probes
    assert [(p.interval, p.timeout) for p in probes] == [(0.5, 0.45), (0.2, 0.18)]
    assert parse_config(minimal()).nodes[0].probes[0].timeout == 0.9
    assert problems(minimal(defaults={"interval": "500ms", "timeout": "900ms"})) == [
        "nodes[0].probes[0].timeout: 900ms is not shorter than interval 500ms"
    ]


def test_timeout_not_shorter_than_interval_names_the_path() -> None:
    data = minimal()
    data["nodes"][0]["probes"][0].update(interval="1s", timeout="2s")
    assert problems(data) == ["nodes[0].probes[0].timeout: 2s is not shorter than interval 1s"]


def test_every_error_is_reported_together_with_its_path() -> None:
    data = minimal(defaults={"interval": 1, "rise": 0})
    data["nodes"][0]["probes"].append({"type": "tcp", "address": "nohost", "bogus": True})
    data["nodes"].append({"name": "bad name!", "site": "sh", "probes": []})
    found = problems(data)
    assert "defaults.interval: 1 has no unit; write e.g. 1s or 1ms" in found
    assert any(p.startswith("defaults.rise:") for p in found)
    assert "nodes[0].probes[1].address: 'nohost' has no port" in found
    assert "nodes[0].probes[1].bogus: unknown key" in found
    assert any(p.startswith("nodes[1].name:") for p in found)
    assert any(p.startswith("nodes[1].probes:") for p in found)


def test_cross_references_are_checked() -> None:
    data = minimal(
        services=[{"name": "web", "sites": ["sh", "bj"]}],
        customers=[{"id": "acme", "services": ["nope"]}],
        load_balancers={"gslb": {"type": "haproxy", "socket": "/x", "backend": "web"}},
    )
    data["nodes"][0]["site"] = "nowhere"
    data["sites"][0]["local_lb"] = "missing"
    found = problems(data)
    assert "nodes[0].site: no site is called 'nowhere'" in found
    assert "services[0].sites[1]: no site is called 'bj'" in found
    assert "services[0].global_lb: a service on several sites needs a global_lb" in found
    assert "customers[0].services[0]: no service is called 'nope'" in found
    assert "sites[0].local_lb: no load balancer is called 'missing'" in found


def test_unknown_probe_type_and_duplicate_names() -> None:
    data = minimal()
    data["nodes"][0]["probes"] = [
        {"type": "http", "url": "http://a:1/"},
        {"type": "http", "url": "http://b:1/"},
    ]
    data["nodes"].append(dict(data["nodes"][0]))
    found = problems(data)
    assert "nodes: the name 'sh-1' is used more than once" in found
    assert any("two probes are called 'http'" in p for p in found)
    bad = minimal()
    bad["nodes"][0]["probes"] = [{"type": "smtp"}]
    assert any(p.startswith("nodes[0].probes[0]") for p in problems(bad))


def test_retention_below_ninety_days_is_refused() -> None:
    assert problems(minimal(records={"retention": "30d"})) == [
        "records.retention: 30d is shorter than the 90 days clause IV.3 requires"
    ]


def test_bad_timezone_and_token_digest() -> None:
    found = problems(
        minimal(
            timezone="Mars/Olympus",
            api={"tokens": [{"name": "ops", "role": "admin", "sha256": "not-hex"}]},
        )
    )
    assert any(p.startswith("api.tokens[0].sha256:") for p in found)
    found = problems(minimal(timezone="Mars/Olympus"))
    assert found == ["timezone: 'Mars/Olympus' is not an IANA time zone (e.g. Asia/Shanghai)"]


def test_config_objects_are_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(ValueError):
        config.nodes[0].name = "other"  # type: ignore[misc]


def test_example_config_works_as_shipped() -> None:
    config = load_config(ROOT / "configs" / "example.yaml")
    assert config.nodes and config.api.tokens
    assert config.state_dir == (ROOT / "configs" / "state").resolve()


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sites:\n  - {name: sh\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "line" in caught.value.problems[0] and "not valid YAML" in caught.value.problems[0]


def test_check_config_exits_1_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "sites: [{name: sh, address: 203.0.113.10}]\n"
        "nodes:\n"
        "  - {name: a, site: sh, probes: [{type: tcp, address: 'x:1', timeout: 2s}]}\n"
        "  - {name: b, site: zz, probes: [{type: tcp, address: 'x:1'}]}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "nodevigil", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert f"{path}: nodes[0].probes[0].timeout: 2s is not shorter than interval 1s" in run.stderr
    assert f"{path}: nodes[1].site: no site is called 'zz'" in run.stderr


def test_check_config_accepts_the_example() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nodevigil", "check-config", "-c", "configs/example.yaml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "ok (1 nodes" in run.stdout


def test_configuration_reference_is_generated_from_the_schema() -> None:
    from nodevigil.core.config.reference import render

    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == render(), "run: python -m nodevigil.core.config.reference > docs/configuration.md"


def test_a_relative_tls_ca_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = parse_config(
        {
            "sites": [{"name": "s", "address": "192.0.2.1", "max_unavailable": "100%"}],
            "nodes": [
                {
                    "name": "a",
                    "site": "s",
                    "probes": [{"type": "tls", "address": "127.0.0.1:443", "ca_file": "ca.pem"}],
                }
            ],
        },
        base_dir=tmp_path,
    )
    assert getattr(config.nodes[0].probes[0], "ca_file", None) == (tmp_path / "ca.pem").resolve()
    with pytest.raises(ConfigError, match=r"sites\[0\]\.max_unavailable.*more than 100%"):
        parse_config({"sites": [{"name": "s", "address": "192.0.2.1", "max_unavailable": "150%"}]})
