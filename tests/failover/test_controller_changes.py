"""Work in proportion to change: a cycle redoes only the sites whose inputs moved, gives the
same decision as deciding in full, and the full pass still repairs what it did not look at."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from failover.controller.changes import FleetIndex, decide_changed
from failover.controller.decide import decide
from failover.controller.state import (
    Book,
    ControllerState,
    Decision,
    NodeBook,
    Observed,
    Override,
    SetAddresses,
    SetServerState,
    changed_keys,
    shift_book,
    shift_changed,
)
from failover.lb import RetryPolicy, ServerState
from failover.lb.haproxy import HAProxyLoadBalancer
from failover.lb.recording import RecordingLocalLoadBalancer
from monitor.verdicts import Verdict, VerdictChange
from nodevigil.core.config.schema import Config
from nodevigil.state.controller_rows import book_changes
from tests.failover.controller_helpers import BJ, SH, Rig, make_config
from tests.failover.daemons import HAProxyInstance

SITES = ("a", "b", "c", "d")
FAST = RetryPolicy(attempts=2, total=1.0, initial=0.01, maximum=0.05)


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
                {"name": s, "address": f"192.0.2.{i + 1}", "local_lb": f"{s}-lb"}
                for i, s in enumerate(SITES)
            ],
            "nodes": [
                {"name": f"{s}-{i}", "site": s, "probes": probe} for s in SITES for i in range(5)
            ],
            "services": [
                {"name": "one", "sites": ["a", "b"], "global_lb": "gslb", "record": "one"},
                {"name": "two", "sites": ["b", "c", "d"], "global_lb": "gslb", "record": "two"},
            ],
        }
    )


def _applied(observed: Observed, decision: Decision, fail: set[str]) -> Observed:
    """The load balancers after the decision's actions, but those of the ``fail`` nodes."""
    servers, records = dict(observed.servers), dict(observed.records)
    for a in decision.actions:
        if isinstance(a, SetServerState) and a.node not in fail:
            servers[a.node] = a.new
        elif isinstance(a, SetAddresses):
            records[(a.lb, a.record)] = a.new
    return Observed(servers, records)


def _same(decision: Decision) -> Decision:
    """``decision`` with its events' random ids blanked, to compare two decisions."""
    notices = tuple(replace(n, event=replace(n.event, id="")) for n in decision.notices)
    return replace(decision, notices=notices)


def test_deciding_the_changed_sites_gives_the_full_decision() -> None:
    """Random verdicts, overrides, failed actions and time: every decision of the changed
    sites only equals ``decide`` of the whole fleet (or declines, for the brakes)."""
    config = _fleet(brake={"share": 0.5, "window": "30s", "min_nodes": 4})
    index = FleetIndex.of(config)
    rng = random.Random(16)
    names = [n.name for n in config.nodes]
    site_of = {n.name: n.site for n in config.nodes}
    verdicts = dict.fromkeys(names, Verdict.UP)
    records = {
        ("gslb", "one"): frozenset({"192.0.2.1", "192.0.2.2"}),
        ("gslb", "two"): frozenset({"192.0.2.2", "192.0.2.3", "192.0.2.4"}),
    }
    observed = Observed(dict.fromkeys(names, ServerState.READY), records)
    overrides: dict[Any, Override] = {}
    now, wall = 1000.0, 1_700_000_000.0
    last = decide(config, ControllerState(dict(verdicts), observed, {}, Book()), now, wall)
    observed = _applied(observed, last, set())
    unsettled: set[str] = set()
    used = 0
    for _ in range(400):
        dirty = set(unsettled)
        for node in rng.sample(names, rng.choice((0, 1, 1, 2))):
            verdicts[node] = rng.choice((Verdict.UP, Verdict.UP, Verdict.DOWN, Verdict.UNKNOWN))
            dirty.add(site_of[node])
        if rng.random() < 0.05:
            node = rng.choice(names)
            key = ("node", node)
            if key in overrides:
                del overrides[key]
            else:
                overrides[key] = Override("node", node, "test", "op", wall, wall + 600)
            dirty.add(site_of[node])
        if rng.random() < 0.03:
            site = rng.choice(SITES)
            key = ("site", site)
            if key in overrides:
                del overrides[key]
            else:
                overrides[key] = Override("site", site, "test", "op", wall, wall + 600)
            dirty.add(site)
        now += rng.choice((0.0, 0.5, 1.0, 3.0, 12.0))
        wall += 1.0
        st = ControllerState(dict(verdicts), observed, dict(overrides), last.book)
        full = decide(config, st, now, wall)
        quick = decide_changed(config, index, st, now, wall, last=last, dirty=dirty)
        if quick is not None:
            used += 1
            assert _same(quick) == _same(full)
        fail = {a.node for a in full.actions if isinstance(a, SetServerState)}
        fail = {n for n in fail if rng.random() < 0.2}
        unsettled = {site_of[n] for n in fail}
        observed = _applied(observed, full, fail)
        last = full
    assert used > 200  # most cycles took the short way


def test_a_brake_sends_the_decision_back_to_the_full_pass() -> None:
    config = _fleet(brake={"share": 0.5, "window": "30s", "min_nodes": 4})
    names = [n.name for n in config.nodes]
    verdicts = dict.fromkeys(names, Verdict.UP)
    observed = Observed(dict.fromkeys(names, ServerState.READY))
    last = decide(config, ControllerState(dict(verdicts), observed, {}, Book()), 1.0, 1.0)
    for i in range(4):
        verdicts[f"a-{i}"] = Verdict.DOWN  # 4 of site a's 5 nodes at once: its brake engages
    st = ControllerState(dict(verdicts), observed, {}, last.book)
    index = FleetIndex.of(config)
    assert decide_changed(config, index, st, 2.0, 2.0, last=last, dirty={"a"}) is None
    assert decide(config, st, 2.0, 2.0).brakes


def test_a_hold_down_ending_is_redone_without_any_change() -> None:
    config = _fleet()
    names = [n.name for n in config.nodes]
    verdicts = dict.fromkeys(names, Verdict.UP)
    verdicts["b-1"] = Verdict.DOWN
    st = ControllerState(
        dict(verdicts), Observed(dict.fromkeys(names, ServerState.READY)), {}, Book()
    )
    first = decide(config, st, 1.0, 1.0)
    verdicts["b-1"] = Verdict.UP
    observed = Observed({**st.observed.servers, "b-1": ServerState.MAINT})
    up = decide(config, ControllerState(dict(verdicts), observed, {}, first.book), 2.0, 2.0)
    assert up.nodes["b-1"].desired is ServerState.MAINT  # up, in its 10 s hold-down
    later = ControllerState(dict(verdicts), observed, {}, up.book)
    index = FleetIndex.of(config)
    quick = decide_changed(config, index, later, 12.5, 12.5, last=up, dirty=set())
    assert quick is not None
    assert _same(quick) == _same(decide(config, later, 12.5, 12.5))
    assert [a.node for a in quick.actions if isinstance(a, SetServerState)] == ["b-1"]


def test_saving_writes_and_shifts_only_what_changed() -> None:
    nodes = {f"n{i}": NodeBook(down_since=float(i)) for i in range(100)}
    before = Book(nodes=nodes)
    after = Book(nodes={**nodes, "n7": NodeBook(down=True, held=True, down_since=99.0)})
    assert changed_keys(after.nodes, before.nodes) == ["n7"]
    shifted = shift_book(before, 10.0)
    again = shift_changed(after, 10.0, before, shifted)
    assert again == shift_book(after, 10.0)
    assert again.nodes["n3"] is shifted.nodes["n3"]  # unchanged entries are not rebuilt
    changes = book_changes(again, shifted)
    assert [(kind, name) for kind, name, _ in changes.entries] == [("node", "n7")]
    gone = shift_changed(Book(nodes={"n1": nodes["n1"]}), 10.0, before, shifted)
    assert list(gone.nodes) == ["n1"]


def _event(node: str, new: Verdict) -> Any:
    old = Verdict.UP if new is not Verdict.UP else Verdict.DOWN
    site = node.split("-", maxsplit=1)[0]
    return VerdictChange(node, site, old, new, f"{node}: test", "tcp", 0.0, "test").to_event()


async def test_a_verdict_redoes_and_reads_back_only_its_site(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = await rig.cycle()
    reads = {lb: len(rig.local[lb].calls_to("servers")) for lb in ("sh-lb", "bj-lb")}
    rig.given(sh_2="down")
    rig.bus.publish(_event("sh-2", Verdict.DOWN))
    rig.clock.advance(1)
    second = await rig.controller.run_once(full=False)
    assert rig.out() == {"sh-2"}
    assert len(rig.local["sh-lb"].calls_to("servers")) == reads["sh-lb"] + 1
    assert len(rig.local["bj-lb"].calls_to("servers")) == reads["bj-lb"]  # not read again
    assert second.nodes["bj-1"] is first.nodes["bj-1"]  # bj kept, not decided again
    # Inside sh, only sh-2 is decided: its budget allows it (test_controller_per_node.py).
    assert second.nodes["sh-1"] is first.nodes["sh-1"]
    assert second.nodes["sh-2"] is not first.nodes["sh-2"]
    # Nothing changed since: the next short cycle reads nothing and decides nothing anew.
    third = await rig.controller.run_once(full=False)
    assert not third.actions
    assert len(rig.local["sh-lb"].calls_to("servers")) == reads["sh-lb"] + 1
    assert third.nodes["sh-1"] is second.nodes["sh-1"]
    await rig.store.close()


async def test_an_unreadable_load_balancer_is_read_again_by_the_short_cycles(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    await rig.cycle()
    rig.local["sh-lb"].fail_with()
    rig.given(sh_1="down")
    failed = await rig.controller.run_once(full=False)
    assert not failed.actions  # never written blind
    assert rig.controller.not_ready() == ["sh-lb: cannot read backend web: recording failure"]
    rig.local["sh-lb"].recover()
    await rig.controller.run_once(full=False)  # no new verdict: read again all the same
    assert rig.out() == {"sh-1"}
    assert rig.controller.not_ready() == []
    await rig.store.close()


async def test_the_full_pass_repairs_drift_the_short_cycles_do_not_see(
    haproxy: HAProxyInstance, tmp_path: Path
) -> None:
    """Real HAProxy behind site sh: an operator's change there is not read back by a short
    cycle about site bj, and is undone by the next full pass."""
    lb = HAProxyLoadBalancer(name="sh-lb", socket_path=haproxy.socket_path, retry=FAST)
    config = make_config(sh_nodes=0, bj_nodes=2)
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["load_balancers"]["sh-lb"] = {
        "type": "haproxy",
        "socket": str(haproxy.socket_path),
        "backend": "web",
    }
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    raw["nodes"] += [
        {"name": f"sh-{s}", "site": "sh", "lb_server": s, "probes": probe} for s in ("n1", "n2")
    ]
    config = Config.model_validate(raw)
    bj = RecordingLocalLoadBalancer("bj-lb", clock=lambda: 0.0)
    for name in ("bj-1", "bj-2"):
        bj.add_server("web", name)
    rig = Rig(tmp_path, config, local={"sh-lb": lb, "bj-lb": bj})  # type: ignore[dict-item]
    try:
        await rig.cycle()
        assert rig.record() == {SH, BJ}
        await lb.set_state("web", "n1", ServerState.MAINT)  # by hand, behind nodevigil's back
        rig.given(bj_1="down")
        rig.bus.publish(_event("bj-1", Verdict.DOWN))
        await rig.controller.run_once(full=False)
        assert bj.backends["web"]["bj-1"].admin is ServerState.MAINT
        assert (await lb.servers("web"))["n1"].admin is ServerState.MAINT  # not seen yet
        await rig.controller.run_once()  # the full pass reads everything back
        assert (await lb.servers("web"))["n1"].admin is ServerState.READY
    finally:
        await lb.close()
        await rig.store.close()
