"""The loop's cycles in proportion to change: the sweep for drift a slice at a time, the
action log written behind the cycle, and a save that rewrites only what changed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from failover.controller import loop
from failover.controller.decide import site_backend
from failover.controller.state import Book
from failover.controller.store import ActionRecord
from failover.lb.base import ServerState
from failover.lb.recording import RecordingGlobalLoadBalancer, RecordingLocalLoadBalancer
from nodevigil.core.config.schema import Config
from nodevigil.state.sqlite.controller import SqliteControllerStore
from tests.failover.controller_helpers import Rig

SITES = 6


def _fleet() -> Config:
    probe = [{"type": "tcp", "address": "127.0.0.1:9"}]
    return Config.model_validate(
        {
            "vantage": "test",
            "failover": {"cycle": "1s", "hold_down": "10s"},
            "load_balancers": {f"lb{s}": {"type": "recording"} for s in range(SITES)}
            | {"gslb": {"type": "recording"}},
            "sites": [
                {"name": f"s{s}", "address": f"192.0.2.{s + 1}", "local_lb": f"lb{s}"}
                for s in range(SITES)
            ],
            "nodes": [
                {"name": f"s{s}-{i}", "site": f"s{s}", "probes": probe}
                for s in range(SITES)
                for i in range(3)
            ],
            "services": [
                {"name": f"svc{v}", "sites": [f"s{2 * v}", f"s{2 * v + 1}"]}
                for v in range(SITES // 2)
            ],
        }
    )


def _rig(tmp_path: Path) -> Rig:
    config = _fleet()
    local: dict[str, RecordingLocalLoadBalancer] = {}
    for node in config.nodes:
        site = config.site(node.site)
        assert site is not None and site.local_lb is not None
        lb = local.setdefault(site.local_lb, RecordingLocalLoadBalancer(site.local_lb))
        lb.add_server(site_backend(config, site), node.server_name)
    glob = RecordingGlobalLoadBalancer("gslb")
    return Rig(tmp_path, config, local=local, glob=glob)


async def test_the_sweep_reads_every_site_back_a_slice_at_a_time(tmp_path: Path) -> None:
    """An operator's change behind nodevigil's back, on a site no verdict touches: the
    loop's short cycles read the sites back a few at a time (never the whole fleet at
    once), and the sweep puts the server back and marks the fleet reconciled."""
    rig = _rig(tmp_path)
    await rig.cycle()  # the first cycle is a full pass
    gauge = "nodevigil_last_reconcile_timestamp_seconds"
    first = rig.metric(gauge)
    lbs = sorted(rig.local)
    reads = {lb: len(rig.local[lb].calls_to("servers")) for lb in lbs}
    await rig.local["lb4"].set_state("s4", "s4-1", ServerState.MAINT)  # drift
    most = 0
    seen: set[str] = set()
    repaired_at = None
    for i in range(200):  # 50 s of 0.25 s cycles: past FULL_PASS_MAX
        rig.clock.advance(0.25)
        await rig.controller.run_once(full=False, sweep=True)
        now = {lb: len(rig.local[lb].calls_to("servers")) for lb in lbs}
        read = {lb for lb in lbs if now[lb] > reads[lb]}
        reads = now
        most = max(most, len(read))
        seen |= read
        if repaired_at is None and rig.local["lb4"].backends["s4"]["s4-1"].admin is (
            ServerState.READY
        ):
            repaired_at = i
    assert seen == set(lbs)  # every site read back within the run
    assert 0 < most <= 2  # a slice a cycle (6 sites over at least 4 cycles), never all
    assert repaired_at is not None  # the drift was undone by a slice
    reconciled = rig.metric(gauge)
    assert first is not None and reconciled is not None and reconciled > first
    await rig.store.close()


async def test_short_cycles_without_the_sweep_read_nothing_new(tmp_path: Path) -> None:
    """``run_once(full=False)`` (no sweep) still reads back only what changed."""
    rig = _rig(tmp_path)
    await rig.cycle()
    calls = sum(len(lb.calls_to("servers")) for lb in rig.local.values())
    for _ in range(20):
        rig.clock.advance(1.0)
        await rig.controller.run_once(full=False)
    assert sum(len(lb.calls_to("servers")) for lb in rig.local.values()) == calls
    await rig.store.close()


class SlowLog(SqliteControllerStore):
    """The SQLite store whose action log writes wait for the test's go-ahead."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.go = asyncio.Event()
        self.books: list[Book] = []
        self.saved_with: list[list[str]] = []  # per save, the targets of the records in it
        self.alone: list[list[str]] = []  # per record_actions, the targets written

    async def record_actions(self, records: list[ActionRecord]) -> None:
        """Wait for ``go``, then write."""
        await self.go.wait()
        self.alone.append([r.target for r in records])
        await super().record_actions(records)

    async def save_book(self, book: Book, records: Sequence[ActionRecord] = ()) -> None:
        """Note the book and the records, then save them."""
        self.books.append(book)
        self.saved_with.append([r.target for r in records])
        await super().save_book(book, records)


async def test_the_action_log_is_written_behind_the_cycle(tmp_path: Path) -> None:
    """A loop cycle returns before its action record is written; the book that explains
    the action was saved before the action; ``actions()`` waits for the record."""
    rig = _rig(tmp_path)
    store = SlowLog(tmp_path / "slow" / "nodevigil.db")
    rig.store = store
    rig.controller = rig.new_controller()
    store.go.set()
    await rig.cycle()
    store.go.clear()
    rig.given(s2_1="down")
    await asyncio.wait_for(
        rig.controller.run_once(full=False, sweep=True, write_behind=True), timeout=10
    )
    assert rig.local["lb2"].backends["s2"]["s2-1"].admin is ServerState.MAINT  # acted
    assert store.books[-1].nodes["s2-1"].held  # after the book that says why was saved
    pending = asyncio.ensure_future(rig.controller.actions())
    await asyncio.sleep(0)
    assert not pending.done()  # the record is still being written
    store.go.set()
    records = await asyncio.wait_for(pending, timeout=10)
    assert [(r.target, r.new) for r in records][-1] == ("s2/s2-1", "maint")
    await store.close()


async def test_the_action_log_rides_with_the_next_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loop cycles that act: the first one's record is written in the second one's book
    save (one transaction, one sync), not on its own; the log keeps their order."""
    monkeypatch.setattr(loop, "RECORD_DELAY", 60.0)  # no write on its own within the test
    rig = _rig(tmp_path)
    store = SlowLog(tmp_path / "slow" / "nodevigil.db")
    store.go.set()
    rig.store = store
    rig.controller = rig.new_controller()
    await rig.cycle()
    rig.given(s1_1="down")
    await rig.controller.run_once(full=False, sweep=True, write_behind=True)
    rig.given(s3_2="down")
    await rig.controller.run_once(full=False, sweep=True, write_behind=True)
    assert store.saved_with[-1] == ["s1/s1-1"]  # the first cycle's record, with the book
    assert store.alone == []
    records = await asyncio.wait_for(rig.controller.actions(), timeout=10)  # no 60 s wait
    assert [r.target for r in records] == ["s1/s1-1", "s3/s3-2"]
    assert store.alone == [["s3/s3-2"]]
    await store.close()


async def test_a_save_does_not_rewrite_the_book_when_the_clocks_jitter(tmp_path: Path) -> None:
    """Wall and monotonic time are read microseconds apart: a millisecond of difference must
    not shift (and so rewrite) every saved entry; a real wall-clock step does."""
    rig = _rig(tmp_path)
    writes: list[Any] = []
    store = rig.store
    save = store.save_book

    async def counting(book: Book, records: Sequence[ActionRecord] = ()) -> None:
        writes.append(book)
        await save(book, records)

    store.save_book = counting  # type: ignore[method-assign]
    rig.given(s1_0="down")
    await rig.cycle()
    saved = writes[-1]
    rig.clock.step_wall(0.002)  # jitter
    rig.given(s3_0="down")
    await rig.cycle(1.0)
    again = writes[-1]
    assert again.nodes["s1-0"] is saved.nodes["s1-0"]  # not shifted, not rewritten
    rig.clock.step_wall(5.0)  # a step of the wall clock: the whole book moves with it
    rig.given(s5_0="down")
    await rig.cycle(1.0)
    moved = writes[-1]
    assert moved.nodes["s1-0"].down_since == pytest.approx(again.nodes["s1-0"].down_since + 5.002)
    await store.close()


def test_the_loop_rests_only_off_cpu_it_owes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cycles under their share of the loop (1 / (1 + PACE)) never rest; back-to-back cycles
    rest PACE times the CPU they owe, so over time they keep to the share."""
    rig = _rig(tmp_path)
    now = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    light = []
    for _ in range(50):  # 5 ms of CPU every 100 ms: 5 %
        now[0] += 0.1
        light.append(rig.controller._rest(0.005))
    assert light == [0.0] * 50
    cpu = busy = 0.0
    for _ in range(200):  # 20 ms cycles back to back: all the loop's time but the rests
        now[0] += 0.02
        rest = rig.controller._rest(0.02)
        now[0] += rest
        cpu, busy = cpu + 0.02, busy + 0.02 + rest
    assert cpu / busy <= 1 / (1 + loop.PACE) + 0.02
