"""The failover defaults an operator expects (issue 17.5): with the default floor and cap a
three-node site drains two dead nodes and keeps the last one; percentages round up."""

from __future__ import annotations

from pathlib import Path

import pytest

from failover.controller import Controller
from failover.lb import RetryPolicy, ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from monitor.verdicts import Verdict
from nodevigil.app.cli import drain_budgets
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config, Site
from nodevigil.core.events import EventBus
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.controller_helpers import SH, FakeVerdicts
from tests.failover.daemons import HAProxyInstance

FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)
PROBE = [{"type": "tcp", "address": "127.0.0.1:9"}]


@pytest.mark.parametrize(
    ("cap", "size", "allowed"),
    [
        ("50%", 1, 1),
        ("50%", 2, 1),
        ("50%", 3, 2),
        ("50%", 4, 2),
        ("50%", 5, 3),
        ("10%", 3, 1),
        ("0%", 3, 0),
        ("100%", 3, 3),
        ("33%", 100, 33),
        ("1%", 150, 2),
        (2, 3, 2),
    ],
)
def test_percentages_round_up(cap: int | str, size: int, allowed: int) -> None:
    site = Site(name="s", address=SH, max_unavailable=cap)
    assert site.max_unavailable_count(size) == allowed


@pytest.mark.parametrize(
    ("size", "budget", "limit"),
    [
        (1, 0, "min_healthy"),
        (2, 1, "min_healthy"),
        (3, 2, "min_healthy"),
        (4, 2, "max_unavailable"),
        (10, 5, "max_unavailable"),
    ],
)
def test_default_drain_budget(size: int, budget: int, limit: str) -> None:
    assert Site(name="s", address=SH).drain_budget(size) == (budget, limit)


def test_check_config_lines_name_the_budget_and_its_limit() -> None:
    config = Config.model_validate(
        {
            "sites": [
                {"name": "sh", "address": SH},
                {"name": "bj", "address": "198.51.100.10", "max_unavailable": 1},
            ],
            "nodes": [
                {"name": f"{s}-{i}", "site": s, "probes": PROBE}
                for s, n in (("sh", 3), ("bj", 4))
                for i in range(n)
            ],
        }
    )
    assert drain_budgets(config) == [
        "site sh: 3 nodes, up to 2 may be drained at once (min_healthy 1, max_unavailable "
        "50% of 3 rounded up = 2; set by min_healthy)",
        "site bj: 4 nodes, up to 1 may be drained at once (min_healthy 1, max_unavailable 1; "
        "set by max_unavailable)",
    ]


async def test_three_node_site_with_defaults_drains_two_in_real_haproxy(
    haproxy: HAProxyInstance, tmp_path: Path
) -> None:
    # Before: 50% of 3 rounded down to 1, so the second dead node stayed ready (panic).
    lb = HAProxyLoadBalancer(name="sh-haproxy", socket_path=haproxy.socket_path, retry=FAST)
    config = Config.model_validate(
        {
            "vantage": "test",
            "load_balancers": {
                "sh-haproxy": {
                    "type": "haproxy",
                    "socket": str(haproxy.socket_path),
                    "backend": "web",
                }
            },
            "sites": [{"name": "sh", "address": SH, "local_lb": "sh-haproxy"}],  # defaults
            "nodes": [
                {"name": f"sh-{s}", "site": "sh", "lb_server": s, "probes": PROBE}
                for s in ("n1", "n2", "n3")
            ],
        }
    )
    source = FakeVerdicts()
    source.current = {"sh-n1": Verdict.DOWN, "sh-n2": Verdict.DOWN, "sh-n3": Verdict.UP}
    store = SqliteControllerStore(tmp_path / "state.db")
    controller = Controller(
        config=config,
        verdicts=source,
        bus=EventBus(),
        clock=ManualClock(),
        local_lbs={"sh-haproxy": lb},
        global_lbs={},
        store=store,
    )
    try:
        decision = await controller.run_once()
        servers = await lb.servers("web")
        assert {n: s.admin for n, s in servers.items()} == {
            "n1": ServerState.MAINT,
            "n2": ServerState.MAINT,
            "n3": ServerState.READY,
        }
        assert not decision.sites["sh"].panic
        # The third failure: the last server stays in (min_healthy 1) and the site panics.
        source.current["sh-n3"] = Verdict.DOWN
        decision = await controller.run_once()
        assert (await lb.servers("web"))["n3"].admin is ServerState.READY
        assert decision.sites["sh"].panic
        [panic] = [n.event for n in decision.notices if n.event.kind == "failover.panic"]
        assert getattr(panic, "limit", None) == "min_healthy"
    finally:
        await lb.close()
        await store.close()
