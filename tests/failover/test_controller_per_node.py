"""Per-node decisions inside a changed site: the same decision as ``decide`` of the whole
fleet, with the site's floor, cap and brake still holding."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from failover.controller.changes import FleetIndex, decide_changed
from failover.controller.decide import decide
from failover.controller.state import (
    Book,
    ControllerState,
    Decision,
    Observed,
    Override,
    SetAddresses,
    SetServerState,
)
from failover.lb import ServerState
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config

SITES = ("a", "b", "c")
SIZE = 8


def _fleet(**failover: Any) -> Config:
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"hold_down": "10s", "hold_down_max": "60s", "site_hold_down": "5s"}
            | failover,
            "load_balancers": {f"{s}-lb": {"type": "recording"} for s in SITES}
            | {"gslb": {"type": "recording"}},
            "sites": [
                {
                    "name": s,
                    "address": f"192.0.2.{i + 1}",
                    "local_lb": f"{s}-lb",
                    "min_healthy": 3,
                    "max_unavailable": "50%",
                }
                for i, s in enumerate(SITES)
            ],
            "nodes": [
                {"name": f"{s}-{i}", "site": s, "probes": probe} for s in SITES for i in range(SIZE)
            ],
            "services": [
                {"name": "one", "sites": ["a", "b"], "global_lb": "gslb", "record": "one"},
                {"name": "two", "sites": ["c"], "global_lb": "gslb", "record": "two"},
            ],
        }
    )


def _applied(observed: Observed, decision: Decision, fail: set[str]) -> Observed:
    servers, records = dict(observed.servers), dict(observed.records)
    for a in decision.actions:
        if isinstance(a, SetServerState) and a.node not in fail:
            servers[a.node] = a.new
        elif isinstance(a, SetAddresses):
            records[(a.lb, a.record)] = a.new
    return Observed(servers, records)


def _same(decision: Decision) -> Decision:
    notices = tuple(replace(n, event=replace(n.event, id="")) for n in decision.notices)
    return replace(decision, notices=notices)


def test_per_node_decisions_equal_the_full_decision_on_random_histories() -> None:
    """Random verdicts (bursts that reach the floor and the cap), drains, failed actions,
    drift and time; the loop's promise kept: a narrowed site names every node whose input
    moved (its verdict, or its read-back state: last cycle's actions and drift)."""
    config = _fleet(brake={"share": 0.6, "window": "30s", "min_nodes": 6})
    index = FleetIndex.of(config)
    rng = random.Random(1616)
    names = [n.name for n in config.nodes]
    site_of = {n.name: n.site for n in config.nodes}
    verdicts = dict.fromkeys(names, Verdict.UP)
    records = {
        ("gslb", "one"): frozenset({"192.0.2.1", "192.0.2.2"}),
        ("gslb", "two"): frozenset({"192.0.2.3"}),
    }
    observed = Observed(dict.fromkeys(names, ServerState.READY), records)
    overrides: dict[Any, Override] = {}
    now, wall = 1000.0, 1_700_000_000.0
    last = decide(config, ControllerState(dict(verdicts), observed, {}, Book()), now, wall)
    before = observed
    observed = _applied(observed, last, set())
    whole: set[str] = set()
    per_node = kept = declined = tried = 0
    for _ in range(1500):
        moved = {a.node for a in last.actions if isinstance(a, SetServerState)}
        for node in rng.sample(names, rng.choice((0, 1, 1, 2, 3))):
            verdicts[node] = rng.choice((Verdict.UP,) * 3 + (Verdict.DOWN, Verdict.UNKNOWN))
            moved.add(node)
        if rng.random() < 0.01:  # a burst: most of a site down at once, for its brake
            site = rng.choice(SITES)
            for node in rng.sample([n for n in names if site_of[n] == site], 6):
                verdicts[node] = Verdict.DOWN
                moved.add(node)
        if rng.random() < 0.02:  # an operator's drain set or lifted: its site is redone whole
            if overrides:
                key = rng.choice(sorted(overrides))
                del overrides[key]
            else:
                key = ("node", rng.choice(names))
                overrides[key] = Override("node", key[1], "test", "op", wall, wall + 600)
            whole.add(site_of[key[1]])
        if rng.random() < 0.03:  # drift: a server changed behind nodevigil's back
            node = rng.choice(names)
            servers = dict(observed.servers)
            servers[node] = rng.choice((ServerState.READY, ServerState.MAINT))
            observed = Observed(servers, observed.records)
            moved.add(node)
        moved |= {n for n in names if observed.servers[n] is not before.servers[n]}
        narrow: dict[str, set[str]] = {}
        for node in sorted(moved):
            if site_of[node] not in whole:
                narrow.setdefault(site_of[node], set()).add(node)
        dirty = whole | set(narrow)
        now += rng.choice((0.0, 0.5, 1.0, 3.0, 12.0))
        wall += 1.0
        st = ControllerState(dict(verdicts), observed, dict(overrides), last.book)
        full = decide(config, st, now, wall)
        quick = decide_changed(config, index, st, now, wall, last=last, dirty=dirty, nodes=narrow)
        if quick is None:
            declined += 1
        else:
            assert _same(quick) == _same(full)
            tried += len(narrow)
            for site, changed in narrow.items():
                others = [n.name for n in index.nodes_of[site] if n.name not in changed]
                if all(quick.nodes[n] is last.nodes[n] for n in others):
                    per_node += 1
                    kept += len(others)
        fail = {a.node for a in full.actions if isinstance(a, SetServerState)}
        fail = {n for n in fail if rng.random() < 0.1}
        whole = {site_of[n] for n in fail}  # failed actions: their sites are redone whole
        before = st.observed
        observed = _applied(observed, full, fail)
        last = full
    assert per_node > tried // 2 and kept > 5000  # most narrowed sites kept the others
    assert declined > 0  # and the brake still sent some decisions back to the full pass


def test_a_change_that_meets_the_floor_redoes_the_site_whole() -> None:
    """Site a has 8 nodes, min_healthy 3, max_unavailable 50 %: its budget is 4. The fifth
    node down is not decided alone: the site is planned whole and the node kept in."""
    config = _fleet()
    index = FleetIndex.of(config)
    names = [n.name for n in config.nodes]
    verdicts = dict.fromkeys(names, Verdict.UP)
    observed = Observed(dict.fromkeys(names, ServerState.READY))
    last = decide(config, ControllerState(dict(verdicts), observed, {}, Book()), 1.0, 1.0)
    for i in range(5):
        verdicts[f"a-{i}"] = Verdict.DOWN
        st = ControllerState(dict(verdicts), observed, {}, last.book)
        quick = decide_changed(
            config, index, st, 2.0 + i, 2.0, last=last, dirty={"a"}, nodes={"a": {f"a-{i}"}}
        )
        assert quick is not None
        assert _same(quick) == _same(decide(config, st, 2.0 + i, 2.0))
        observed = _applied(observed, quick, set())
        if i < 4:
            assert quick.nodes["a-7"] is last.nodes["a-7"]  # decided per node
        last = quick
    assert last.nodes["a-4"].desired is ServerState.READY  # kept in at the site's budget
    assert last.sites["a"].panic
    assert last.sites["a"].nodes_out == 4


def test_a_node_kept_in_at_the_budget_goes_out_when_room_comes_back() -> None:
    """Budget 4: a fifth held node whose verdict is unknown is kept in (no panic: it is not
    down). When one of the four comes back, the room goes to it: a per-node decision of the
    returning node alone would leave it in, so the site is planned whole."""
    config = _fleet(hold_down="0s")
    index = FleetIndex.of(config)
    names = [n.name for n in config.nodes]
    verdicts = dict.fromkeys(names, Verdict.UP)
    observed = Observed(dict.fromkeys(names, ServerState.READY))
    for i in range(5):
        verdicts[f"a-{i}"] = Verdict.DOWN
    last = decide(config, ControllerState(dict(verdicts), observed, {}, Book()), 1.0, 1.0)
    observed = _applied(observed, last, set())
    verdicts["a-4"] = Verdict.UNKNOWN  # still held, kept in at the budget, no longer down
    st = ControllerState(dict(verdicts), observed, {}, last.book)
    last = decide(config, st, 2.0, 2.0)
    assert last.nodes["a-4"].desired is ServerState.READY and not last.sites["a"].panic
    verdicts["a-0"] = Verdict.UP
    st = ControllerState(dict(verdicts), observed, {}, last.book)
    quick = decide_changed(
        config, index, st, 3.0, 3.0, last=last, dirty={"a"}, nodes={"a": {"a-0"}}
    )
    assert quick is not None
    assert _same(quick) == _same(decide(config, st, 3.0, 3.0))
    assert quick.nodes["a-4"].desired is ServerState.MAINT  # the room went to it
