"""Replaying the running configuration over what the daemon recorded reproduces its actions.

The "daemon" here is the real controller (``Controller.run_once``, recording load balancers,
its SQLite action log) fed by the monitor's judges as the monitor feeds them, on a manual
clock, every result folded into history by ``RunFolder`` as the monitor does. The replay then
sees only the history.
"""

from __future__ import annotations

import math
from pathlib import Path

from failover.controller.state import Action, SetAddresses, SetServerState
from failover.events import ServiceUnavailable
from monitor.history import RunFolder
from monitor.verdict import NodeJudge
from nodevigil.app.replay.engine import replay
from nodevigil.core.clock import ManualClock
from nodevigil.core.config.schema import Config
from tests.failover.controller_helpers import Rig, make_config
from tests.replay.helpers import MemoryHistory, results

T0 = 1_767_225_600.0
END = T0 + 1200


def script(node: str, at: float) -> bool:
    """sh-1 fails for 100 s; then bj fails (site withdrawn); then everything (an outage)."""
    t = at - T0
    if 700 <= t < 820:
        return False  # the whole service
    if node == "sh-1":
        return not 100 <= t < 200
    if node.startswith("bj"):
        return not 300 <= t < 420
    return True


async def record(tmp_path: Path, config: Config) -> tuple[Rig, MemoryHistory]:
    """Run the controller live over the scripted results; keep the history it would keep."""
    clock = ManualClock(start=T0, wall_offset=T0)
    rig = Rig(tmp_path, config, clock=clock)
    rig.source.current.clear()  # a fresh daemon: every verdict unknown
    d = config.defaults
    judges = {
        n.name: NodeJudge.create(
            [p.label for p in n.probes],
            rise=n.rise or d.rise,
            fall=n.fall or d.fall,
            require=n.require,
            flap=d.flap,
        )
        for n in config.nodes
    }
    folder, history = RunFolder(), MemoryHistory()
    cycle = config.failover.cycle
    next_cycle = T0
    names = [n.name for n in config.nodes]
    for node, result in results(
        names, script, start=T0, end=END, interval=1.0, vantage=config.vantage
    ):
        while next_cycle <= result.at:  # the loop's cycle, as time passes
            clock.advance(next_cycle - clock.monotonic())
            await rig.controller.run_once()
            next_cycle += cycle
        clock.advance(result.at - clock.monotonic())
        closed = folder.observe(node, "tcp", result)
        if closed is not None:
            await history.save([closed])
        change = judges[node].observe("tcp", result, clock.monotonic())
        if change is not None:  # the loop wakes on the verdict event
            rig.source.current[node] = change.new
            await rig.controller.run_once()
    await history.save(folder.close_all())
    return rig, history


def _replayed(actions: list[tuple[float, Action]]) -> list[tuple[float, str, str, str, str]]:
    out = []
    for at, a in actions:
        if isinstance(a, SetServerState):
            old = a.old.value if a.old else "None"
            out.append((at, a.lb, f"{a.backend}/{a.server}", old, a.new.value))
        elif isinstance(a, SetAddresses):
            out.append((at, a.lb, a.record, str(sorted(a.old)), str(sorted(a.new))))
    return out


async def test_replay_of_the_running_configuration_reproduces_the_recorded_actions(
    tmp_path: Path,
) -> None:
    config = make_config()
    rig, history = await record(tmp_path, config)
    recorded = sorted(await rig.controller.actions(1000), key=lambda r: r.at)
    assert {r.what for r in recorded} == {"set_state", "set_addresses"}  # drains and DNS
    runs = await history.runs(T0, END)
    result = await replay(config, runs, T0, END)
    replayed = _replayed(result.actions)
    live = [(r.at, r.lb, r.target, r.old, r.new) for r in recorded]
    # The same actions in the same order, each at the moment the live loop sent it (a verdict
    # change's result, or for what time alone brought, the loop's next cycle).
    assert [x[1:] for x in replayed] == [x[1:] for x in live]
    for (at, *_), (live_at, *_) in zip(replayed, live, strict=True):
        assert abs(live_at - at) < 1e-3, (at - T0, live_at - T0)
    # The whole-service outage, as the controller published it.
    published = [e for e in rig.events if isinstance(e, ServiceUnavailable)]
    assert [(o.service, o.start_us) for o in result.outages] == [
        (e.service, math.floor(e.started_at * 1_000_000)) for e in published
    ]
    kinds = {h.kind for h in result.happenings}
    assert {"drain", "restore", "withdraw", "publish", "incident.opened"} <= kinds
