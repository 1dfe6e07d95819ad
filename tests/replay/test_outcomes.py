"""A candidate that turns a short blip into an outage: incidents, notices, SLA minutes, credit."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from monitor.history import ProbeRun
from nodevigil.app.replay.compare import differences, report, write_text
from nodevigil.app.replay.engine import replay
from nodevigil.core.config.schema import Config
from sla.model import Charge
from tests.replay.helpers import fold, results

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
END = T0 + 3600
BLIP = T0 + 1200  # every node fails two probes in a row (a switch reboot, say)


def _config(fall: int) -> Config:
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    return Config.model_validate(
        {
            "vantage": "v1",
            "defaults": {"fall": fall, "rise": 2},
            "failover": {"hold_down": "30s", "site_hold_down": "20s"},
            "load_balancers": {"lb": {"type": "recording"}, "gslb": {"type": "recording"}},
            "sites": [
                {"name": "a", "address": "203.0.113.1", "local_lb": "lb"},
                {"name": "b", "address": "203.0.113.2", "local_lb": "lb"},
            ],
            "nodes": [
                {"name": f"{s}-{i}", "site": s, "probes": probe} for s in "ab" for i in (1, 2)
            ],
            "services": [{"name": "web", "sites": ["a", "b"], "global_lb": "gslb", "record": "w"}],
            "notifiers": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/"}},
            "contingency_plans": {
                "p": {
                    "steps": [{"notify": ["hook"]}, {"after": "10m", "notify": ["hook"]}],
                    "on_resolve": ["hook"],
                }
            },
            "customers": [{"id": "acme", "services": ["web"], "plan": "p"}],
        }
    )


def _runs() -> list[ProbeRun]:
    names = ["a-1", "a-2", "b-1", "b-2"]
    return fold(
        results(
            names,
            lambda node, at: not BLIP <= at < BLIP + 2,
            start=T0,
            end=END,
            interval=1.0,
            vantage="v1",
        )
    )


async def test_fall_1_turns_a_blip_into_an_outage_with_notices_and_credit() -> None:
    runs = _runs()
    day = datetime.fromtimestamp(T0, UTC).date()
    charges = [Charge("acme", "web", day, Decimal("144.00"), "CNY")]
    running = await replay(_config(3), runs, T0, END, charges=charges)
    candidate = await replay(_config(1), runs, T0, END, charges=charges)
    assert running.outages == [] and running.credits == []
    kinds = {(d.change, d.happening.kind) for d in differences(candidate, running)}
    assert {
        ("extra", "drain"),
        ("extra", "withdraw"),
        ("extra", "incident.opened"),
        ("extra", "incident.resolved"),
        ("extra", "notice"),
    } <= kinds
    assert not any(change == "missing" for change, _ in kinds)
    # The outage lasts from the blip's first failed result until rise: 2 brings a node of a
    # site back: about 3 s, one started minute (per-outage rounding).
    [outage] = candidate.outages
    assert 2 <= (outage.end_us - outage.start_us) / 1e6 <= 4
    assert candidate.minutes == {("web", day.isoformat()): 1}
    [credit] = candidate.credits
    assert credit.credit == Decimal("0.10")  # 144.00 x 1 / 1440
    notices = [h for h in candidate.happenings if h.kind == "notice"]
    # The first step at once, the resolution; the 10-minute escalation never came due.
    assert sorted(h.what.split(" to ")[0] for h in notices) == [
        "incident.opened",
        "incident.resolved",
    ]
    data = report(candidate, running, 1.0)
    assert data["candidate"]["credit"] == {"CNY": "0.10"} and data["running"]["credit"] == {}
    assert data["candidate"]["sla_minutes"] == {"web": 1}


async def test_text_output_lists_the_outages_that_differ() -> None:
    runs = _runs()
    running = await replay(_config(3), runs, T0, END)
    candidate = await replay(_config(1), runs, T0, END)
    out = io.StringIO()
    write_text(report(candidate, running, 1.0), out)
    text = out.getvalue()
    assert "outage (candidate): web 2026-01-01T00:20:00" in text
    assert "outage (running)" not in text
    assert "+ 2026-01-01T00:20:00" in text and "incident.opened web wholly unavailable" in text


async def test_replayed_incidents_are_not_logged_as_real_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    candidate = await replay(_config(1), _runs(), T0, END)
    assert any(h.kind == "incident.opened" for h in candidate.happenings)
    assert not [r for r in caplog.records if "incident" in r.getMessage()]
    assert not logging.getLogger("failover.incidents.manager").disabled  # restored
