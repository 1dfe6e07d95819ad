"""The brake on mass failure, as pure decisions: engage, hold, release, rate, min_nodes, fleet.

A small simulator applies each decision's actions to in-memory load balancers, as the loop
does to real ones, and feeds the read-back state to the next decision.
"""

from __future__ import annotations

from typing import Any

import pytest

from failover.controller import (
    Book,
    ControllerState,
    Decision,
    Observed,
    Override,
    SetAddresses,
    SetServerState,
    decide,
)
from failover.controller.brake import FLEET, site_key
from failover.events import BrakeEngaged, BrakeReleased
from failover.lb.base import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config

PROBE = [{"type": "tcp", "address": "127.0.0.1:9"}]
WALL = 1_767_225_600.0


def world(sites: dict[str, int], **brake: Any) -> Config:
    """Sites of ``sites[name]`` nodes (``a-1``...), each behind its own local LB, all serving
    one service ``web`` whose record ``www`` lives in ``gslb``."""
    names = list(sites)
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"hold_down": "30s", "site_hold_down": "20s", "brake": brake},
            "load_balancers": {f"{s}-lb": {"type": "recording"} for s in names}
            | {"gslb": {"type": "recording"}},
            "sites": [
                {"name": s, "address": f"192.0.2.{i + 1}", "local_lb": f"{s}-lb"}
                for i, s in enumerate(names)
            ],
            "nodes": [
                {"name": f"{s}-{k}", "site": s, "probes": PROBE}
                for s, count in sites.items()
                for k in range(1, count + 1)
            ],
            "services": [{"name": "web", "sites": names, "global_lb": "gslb", "record": "www"}],
        }
    )


class Sim:
    """Decisions in a row over in-memory load balancers, on a clock the test moves."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verdicts = {n.name: Verdict.UP for n in config.nodes}
        self.servers = {n.name: ServerState.READY for n in config.nodes}
        self.records = {("gslb", "www"): frozenset(s.address for s in config.sites)}
        self.overrides: dict[tuple[Any, str], Override] = {}
        self.book = Book()
        self.now = 100.0
        self.last: Decision | None = None

    def down(self, *names: str) -> None:
        """Judge ``names`` down (``a`` alone: every node of site a)."""
        self._set(Verdict.DOWN, names)

    def up(self, *names: str) -> None:
        """Judge ``names`` up."""
        self._set(Verdict.UP, names)

    def _set(self, verdict: Verdict, names: tuple[str, ...]) -> None:
        for name in names:
            site = self.config.site(name)
            if site is None:
                self.verdicts[name] = verdict
                continue
            for node in self.config.nodes:
                if node.site == site.name:
                    self.verdicts[node.name] = verdict

    def step(self, advance: float = 1.0) -> Decision:
        """Move the clock, decide, and apply the actions."""
        self.now += advance
        state = ControllerState(
            verdicts=dict(self.verdicts),
            observed=Observed(dict(self.servers), dict(self.records)),
            overrides=dict(self.overrides),
            book=self.book,
        )
        decision = decide(self.config, state, self.now, WALL + self.now)
        self.book = decision.book
        for action in decision.actions:
            if isinstance(action, SetServerState):
                self.servers[action.node] = action.new
            elif isinstance(action, SetAddresses):
                self.records[(action.lb, action.record)] = action.new
        self.last = decision
        return decision

    def out(self, site: str | None = None) -> set[str]:
        """Nodes out of their local LB (of one site, if given)."""
        return {
            n
            for n, state in self.servers.items()
            if state is not ServerState.READY and (site is None or n.startswith(f"{site}-"))
        }

    def published(self) -> set[str]:
        """Site names whose address the record holds."""
        record = self.records[("gslb", "www")]
        return {s.name for s in self.config.sites if s.address in record}

    def events(self, kind: type[Any]) -> list[Any]:
        """The last decision's events of one class."""
        assert self.last is not None
        return [n.event for n in self.last.notices if isinstance(n.event, kind)]


def nodes(site: str, *numbers: int) -> list[str]:
    """``nodes("a", 1, 2)`` -> ``["a-1", "a-2"]``."""
    return [f"{site}-{k}" for k in numbers]


def test_a_wave_over_share_engages_and_holds_every_new_drain() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}))
    sim.step()
    sim.down(*nodes("a", *range(1, 7)))  # 6 of 10 at once: more than half
    decision = sim.step()
    assert sim.out() == set()
    [engaged] = sim.events(BrakeEngaged)
    assert (engaged.subject, engaged.scope, engaged.site) == ("a", "site", "a")
    assert (engaged.nodes, engaged.went_down, engaged.down) == (10, 6, 6)
    reason = "braked: 6 of 10 nodes of site a went down within 1m"
    assert engaged.reason == reason
    view = decision.brakes[site_key("a")]
    # The plan wanted 5 out (max_unavailable 50%): the brake holds all 5.
    assert view.held == tuple(nodes("a", 1, 2, 3, 4, 5))
    assert f"would drain a-1, a-2, a-3, a-4, a-5 ({reason})" in decision.text
    assert "BRAKE on site a: 6 of 10 nodes went down within 1m; new drains: none" in decision.text
    assert decision.nodes["a-1"].why.startswith("would drain (verdict down")
    assert decision.nodes["a-1"].why.endswith(reason)
    assert decision.sites["a"].brake and not decision.sites["b"].brake
    assert FLEET not in decision.brakes  # 6 of 30
    assert sim.step().text == ""  # said once, not every cycle


def test_exactly_share_is_an_ordinary_failure() -> None:
    sim = Sim(world({"a": 10, "b": 10}))
    sim.down(*nodes("a", *range(1, 6)))  # 5 of 10: not more than half
    decision = sim.step()
    assert decision.brakes == {}
    assert sim.out() == set(nodes("a", *range(1, 6)))


def test_a_single_failure_in_a_big_site_drains_as_ever() -> None:
    sim = Sim(world({"a": 40}))
    sim.step()
    sim.down("a-7")
    decision = sim.step()
    assert sim.out() == {"a-7"}
    assert decision.brakes == {}
    assert "verdict down" in decision.nodes["a-7"].why


def test_failures_spread_wider_than_the_window_never_engage() -> None:
    sim = Sim(world({"a": 10, "b": 10}))
    for k in range(1, 7):
        sim.down(f"a-{k}")
        assert sim.step(40).brakes == {}  # at most 2 fell in any minute
    assert len(sim.out("a")) == 5  # max_unavailable 50% as ever, a-6 kept in (panic)


def test_holds_through_a_long_outage_and_releases_below_share() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}))
    sim.down(*nodes("a", *range(1, 9)))
    sim.step()
    for _ in range(10):
        assert site_key("a") in sim.step(60).brakes  # 10 minutes: far past the window
    assert sim.out() == set()
    sim.up(*nodes("a", 6, 7, 8))  # 5 of 10 down: not more than share
    decision = sim.step()
    [released] = sim.events(BrakeReleased)
    assert (released.subject, released.down, released.nodes) == ("a", 5, 10)
    assert released.duration == pytest.approx(601)
    assert "brake on site a released: 5 of 10 nodes of site a down" in decision.text
    assert decision.brakes == {}
    # Drained now, as the cap allows; the nodes that came back never left, so no hold-down.
    assert sim.out() == set(nodes("a", 1, 2, 3, 4, 5))
    sim.up("a")
    sim.step()
    assert sim.out() == set(nodes("a", 1, 2, 3, 4, 5))  # back after their hold-down
    sim.step(30)
    assert sim.out() == set()


def test_nodes_the_brake_kept_in_are_not_taken_out_when_they_recover() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}))
    sim.down("a")
    sim.step()
    sim.up("a")
    decision = sim.step()
    assert len(sim.events(BrakeReleased)) == 1
    assert sim.out() == set()
    assert decision.actions == ()


def test_nodes_already_out_stay_out_and_only_the_wave_is_held() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}))
    sim.down("a-1")
    sim.step()
    sim.step(300)  # a-1 fell long before the wave
    sim.down(*nodes("a", 2, 3))
    sim.step(1)
    assert sim.out() == set(nodes("a", 1, 2, 3))
    sim.down(*nodes("a", 4, 5, 6, 7))  # 6 of 10 fell within a minute: engaged
    decision = sim.step(10)
    assert sim.out() == set(nodes("a", 1, 2, 3))  # stays out; a-4 and a-5 held
    assert decision.brakes[site_key("a")].held == ("a-4", "a-5")
    assert decision.brakes[site_key("a")].went_down == 6


def test_rate_lets_one_drain_through_per_token() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}, rate=2))  # a drain every 30 s
    sim.down(*nodes("a", *range(1, 9)))
    sim.step()
    assert sim.out() == set()  # an empty bucket when it engages
    sim.step(29)
    assert sim.out() == set()
    decision = sim.step(1)
    assert sim.out() == {"a-1"}
    assert decision.brakes[site_key("a")].held == tuple(nodes("a", 2, 3, 4, 5))
    assert [p for p in decision.text.split("; ") if "would drain" in p] == []  # no news
    sim.step(15)
    assert sim.out() == {"a-1"}
    sim.step(15)
    assert sim.out() == set(nodes("a", 1, 2))
    sim.step(600)  # a full bucket holds one token: one drain, not twenty
    assert sim.out() == set(nodes("a", 1, 2, 3))


def test_min_nodes_small_scopes_never_brake() -> None:
    small = Sim(world({"a": 6, "b": 6}))  # default min_nodes 10
    small.down("a")
    assert small.step().brakes == {}
    assert len(small.out()) == 3  # as without a brake: 50% out, the rest kept in
    braked = Sim(world({"a": 6, "b": 6}, min_nodes=6))
    braked.down("a")
    assert set(braked.step().brakes) == {site_key("a")}
    assert braked.out() == set()


def test_share_one_turns_the_brake_off() -> None:
    sim = Sim(world({"a": 10}, share=1))
    sim.down("a")
    assert sim.step().brakes == {}
    assert len(sim.out()) == 5


def test_operator_drains_are_never_braked() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}))
    sim.down(*nodes("a", *range(1, 8)))
    sim.step()
    sim.overrides[("node", "a-9")] = Override("node", "a-9", "disk swap", "ops", WALL)
    sim.step()
    assert sim.out() == {"a-9"}


def test_a_dead_site_leaves_dns_under_its_own_brake() -> None:
    sim = Sim(world({"a": 10, "b": 10, "c": 10}))
    sim.down("a")
    decision = sim.step()
    assert set(decision.brakes) == {site_key("a")}
    assert sim.out() == set()
    assert sim.published() == {"b", "c"}
    assert not decision.sites["a"].withdrawal_held


def test_the_fleet_brakes_when_small_sites_fail_together() -> None:
    sim = Sim(world({f"s{i}": 4 for i in range(1, 6)}))  # 20 nodes; no site reaches min_nodes
    sim.step()
    for i in range(1, 5):
        sim.down(*nodes(f"s{i}", 1, 2, 3))  # 12 of 20 at once
    decision = sim.step()
    assert set(decision.brakes) == {FLEET}
    [engaged] = sim.events(BrakeEngaged)
    assert (engaged.subject, engaged.scope, engaged.site) == ("fleet", "fleet", None)
    assert "site" not in engaged.as_dict()["data"]
    assert engaged.reason == "braked: 12 of 20 nodes of the fleet went down within 1m"
    assert sim.out() == set()
    assert len(decision.brakes[FLEET].held) == 8  # 2 a site wanted out, 4 sites


def test_the_fleet_brake_holds_withdrawals_of_sites_failing_together() -> None:
    sim = Sim(world({f"s{i}": 4 for i in range(1, 6)}, rate=1))
    sim.step()
    for i in range(1, 5):
        sim.down(f"s{i}")  # 16 of 20: four whole sites at once
    decision = sim.step()
    assert sim.published() == {"s1", "s2", "s3", "s4", "s5"}
    assert decision.brakes[FLEET].held_sites == ("s1", "s2", "s3", "s4")
    assert decision.sites["s1"].withdrawal_held and decision.sites["s1"].serving
    assert not decision.sites["s1"].can_serve
    assert "would withdraw sites s1, s2, s3, s4 from DNS (braked: 16 of 20 nodes" in decision.text
    sim.step(60)  # one token a minute: one withdrawal or one drain
    assert len(sim.published()) + len(sim.out()) == 5 + 1


def test_the_fleet_brake_lets_a_site_failing_alone_leave_dns() -> None:
    sim = Sim(world({"big": 20, "b": 5, "c": 5}))
    sim.step()
    sim.down("big")  # 20 of 30: the fleet brakes, but the rest of it is healthy
    decision = sim.step()
    assert set(decision.brakes) == {site_key("big"), FLEET}
    assert sim.published() == {"b", "c"}  # a dead site fails over: the mission
    assert sim.out() == set()


def test_the_last_site_is_never_withdrawn_under_a_brake() -> None:
    sim = Sim(world({"a": 10, "b": 10}))
    sim.down("a", "b")
    decision = sim.step()
    assert set(decision.brakes) == {site_key("a"), site_key("b"), FLEET}
    assert sim.published() == {"a", "b"}
    assert decision.available == {"web": False}


def test_a_removed_site_releases_its_brake() -> None:
    config = world({"a": 10, "b": 10})
    sim = Sim(config)
    sim.down("a")
    sim.step()
    sim.config = world({"b": 10})
    decision = sim.step()
    [released] = sim.events(BrakeReleased)
    assert released.reason == "site a is no longer configured"
    assert decision.brakes == {}


def test_decide_stays_pure_under_a_brake() -> None:
    config = world({"a": 10, "b": 10}, rate=3)
    verdicts = {n.name: Verdict.DOWN if n.site == "a" else Verdict.UP for n in config.nodes}
    observed = Observed(
        {n.name: ServerState.READY for n in config.nodes},
        {("gslb", "www"): frozenset({"192.0.2.1", "192.0.2.2"})},
    )
    first = decide(config, ControllerState(verdicts, observed, {}, Book()), 10, WALL)
    state = ControllerState(verdicts, observed, {}, first.book)
    assert decide(config, state, 40, WALL + 30) == decide(config, state, 40, WALL + 30)
