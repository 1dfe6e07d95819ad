"""``nodevigil replay`` over the real SQLite probe history: differences, errors, JSON shape."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from nodevigil.app.api.times import rfc3339
from nodevigil.app.cli import main
from nodevigil.state.sqlite.history import SqliteHistoryStore
from tests.replay.helpers import fold, results

# The history ends an hour ago: --to must not be in the future.
T0 = math.floor(time.time()) - 3 * 3600.0
END = T0 + 1800
BURSTS = [(T0 + 300, 2), (T0 + 900, 1), (T0 + 1500, 2)]  # (first failure, failed results) on sh-2


def script(node: str, at: float) -> bool:
    """sh-2 fails one or two probes in a row now and then (never ``fall: 3``)."""
    if node != "sh-2":
        return True
    return not any(start <= at < start + n for start, n in BURSTS)


def _config(state_dir: Path, fall: int) -> dict[str, Any]:
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    nodes = [{"name": f"sh-{i}", "site": "sh", "probes": probe} for i in range(1, 5)]
    nodes += [{"name": f"bj-{i}", "site": "bj", "probes": probe} for i in range(1, 3)]
    return {
        "vantage": "ops1",
        "state_dir": str(state_dir),
        "defaults": {"fall": fall, "rise": 2},
        "failover": {"cycle": "1s", "hold_down": "30s", "hold_down_max": "240s"},
        "load_balancers": {
            "sh-lb": {"type": "haproxy", "socket": "/run/sh.sock", "backend": "web"},
            "bj-lb": {"type": "haproxy", "socket": "/run/bj.sock", "backend": "web"},
            "gslb": {"type": "recording"},
        },
        "sites": [
            {"name": "sh", "address": "203.0.113.10", "local_lb": "sh-lb"},
            {"name": "bj", "address": "203.0.113.20", "local_lb": "bj-lb"},
        ],
        "nodes": nodes,
        "services": [{"name": "web", "sites": ["sh", "bj"], "global_lb": "gslb", "record": "www"}],
    }


@pytest.fixture
async def world(tmp_path: Path) -> dict[str, Path]:
    """A running and a candidate configuration (JSON is YAML) and the recorded history."""
    state = tmp_path / "state"
    state.mkdir()
    running = tmp_path / "running.yaml"
    running.write_text(json.dumps(_config(state, fall=3)))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(json.dumps(_config(state, fall=1)))
    names = [f"sh-{i}" for i in range(1, 5)] + ["bj-1", "bj-2"]
    runs = fold(results(names, script, start=T0, end=END, interval=1.0, vantage="ops1"))
    store = SqliteHistoryStore(state / "history.db")
    await store.open()
    await store.save(runs)
    await store.close()
    return {"running": running, "candidate": candidate, "state": state}


def _replay(world: dict[str, Path], *extra: str) -> list[str]:
    return [
        "replay",
        "--config",
        str(world["candidate"]),
        "--running",
        str(world["running"]),
        "--from",
        rfc3339(T0) or "",
        "--to",
        rfc3339(END) or "",
        *extra,
    ]


def _json(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(_replay(world, "--output", "json", "--warmup", "0s")) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_fall_1_drains_on_every_short_failure_burst(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _json(world, capsys)
    drains = [d for d in data["differences"] if d["kind"] == "drain"]
    # One extra drain per burst, at its first failed result, all of sh-2; none missing.
    assert [d["subject"] for d in drains] == ["sh-2"] * len(BURSTS)
    assert all(d["change"] == "extra" for d in data["differences"])
    for d, (start, _) in zip(drains, BURSTS, strict=True):
        at = d["evidence"]["verdict"]["at"]
        assert d["at"] == at
        assert abs(_epoch(at) - start) < 1.0  # the burst's first result (phase within 1 s)
        failed = [r for r in d["evidence"]["verdict"]["results"] if r["outcome"] == "fail"]
        assert failed and failed[0]["detail"] == "connection refused"
    restores = [d for d in data["differences"] if d["kind"] == "restore"]
    assert [d["subject"] for d in restores] == ["sh-2"] * len(BURSTS)
    assert data["running"]["counts"] == {}  # fall: 3 never drained
    assert data["candidate"]["counts"] == {"drain": 3, "restore": 3}


def test_running_configuration_as_candidate_differs_in_nothing(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    world = {**world, "candidate": world["running"]}
    data = _json(world, capsys)
    assert data["differences"] == []
    assert main(_replay(world)) == 0
    assert "no differences" in capsys.readouterr().out


def test_text_output_names_each_difference_with_its_evidence(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_replay(world, "--warmup", "0s")) == 0
    out = capsys.readouterr().out
    assert "6 differences" in out
    lines = out.splitlines()
    assert sum(line.startswith("+ ") for line in lines) == 6
    assert "drain sh-2 ready->maint" in out
    assert "sh-2 up->down at" in out and "tcp@ops1: 1 x fail" in out


def test_json_shape(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(world, capsys)
    assert set(data) == {"from", "to", "candidate", "running", "differences", "sla", "replay"}
    assert data["from"] == rfc3339(T0) and data["to"] == rfc3339(END)
    assert set(data["candidate"]) == {"counts", "sla_minutes", "credit"}
    assert set(data["sla"]["candidate"]) == {"minutes", "credits", "outages"}
    diff = data["differences"][0]
    assert set(diff) == {"change", "kind", "subject", "at", "what", "evidence"}
    assert diff["evidence"]["verdict"]["results"][0].keys() == {
        "probe",
        "vantage",
        "outcome",
        "count",
        "first",
        "last",
        "detail",
    }
    assert data["replay"]["runs"] > 0 and data["replay"]["ignored_runs"] == 0


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_bad_candidate_gets_the_errors_check_config_gives(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _config(world["state"], fall=1)
    bad["defaults"]["fall"] = 0
    bad["nodes"][0]["site"] = "nowhere"
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    assert main(["check-config", "-c", str(path)]) == 1
    expected = capsys.readouterr().err
    assert "defaults.fall" in expected
    assert main(_replay({**world, "candidate": path})) == 1
    captured = capsys.readouterr()
    assert captured.err == expected and captured.out == ""


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday", "now", "from: 'yesterday' is neither an RFC 3339 time"),
        ("2026-12-01T00:00:00", "now", "from: '2026-12-01T00:00:00' has no UTC offset"),
        ("-1h", "-2h", "from must be before to"),
        ("-1h", "2999-01-01T00:00:00Z", "to: '2999-01-01T00:00:00Z' is in the future"),
        ("2026-13-01T00:00:00Z", "now", "from: '2026-13-01T00:00:00Z' is not a valid time"),
    ],
)
def test_bad_times_get_clear_errors(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str], since: str, until: str, message: str
) -> None:
    args = _replay(world)
    at = args.index("--from")
    del args[at : at + 4]
    args += [f"--from={since}", f"--to={until}"]  # an age's minus is not an option's
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("nodevigil: ") and message in err


def test_missing_history_is_a_clear_error_and_creates_nothing(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (world["state"] / "history.db").unlink()
    assert main(_replay(world)) == 1
    assert "no probe history at" in capsys.readouterr().err
    assert not (world["state"] / "history.db").exists()
