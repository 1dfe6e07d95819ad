"""The probe history's folder, recorder and writer: runs of equal results, saved in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import pytest

from monitor.history import (
    Outcome,
    ProbeRun,
    RunFolder,
    RunRecorder,
    expand,
    run_key,
    run_of_row,
    run_row,
)
from monitor.history_writer import HistoryWriter
from monitor.probes.base import ProbeResult


def result(ok: bool | None, at: float, *, detail: str = "", vantage: str = "v1",
           decisive: bool = False) -> ProbeResult:  # fmt: skip
    return ProbeResult(ok, detail or f"r@{at}", 0.01, at, vantage, decisive)


def test_equal_results_make_one_run_and_a_change_closes_it() -> None:
    folder = RunFolder()
    assert folder.observe("n1", "http", result(True, 10.0, detail="HTTP 200")) is None
    for at in (12.0, 14.0, 16.0):
        assert folder.observe("n1", "http", result(True, at)) is None
    closed = folder.observe("n1", "http", result(False, 18.0, detail="timeout"))
    assert closed == ProbeRun("n1", "http", "v1", Outcome.PASS, 10.0, 16.0, 4, "HTTP 200")
    assert folder.open_runs() == [
        ProbeRun("n1", "http", "v1", Outcome.FAIL, 18.0, 18.0, 1, "timeout")
    ]


def test_outcomes_are_told_apart() -> None:
    folder = RunFolder()
    seen = [
        folder.observe("n", "p", result(None, 1.0)),
        folder.observe("n", "p", result(False, 2.0)),
        folder.observe("n", "p", result(False, 3.0, decisive=True)),
        folder.observe("n", "p", result(True, 4.0)),
    ]
    assert [r.outcome if r else None for r in seen] == [
        None,
        Outcome.INCONCLUSIVE,
        Outcome.FAIL,
        Outcome.DECISIVE,
    ]


def test_probes_vantages_and_nodes_fold_apart() -> None:
    folder = RunFolder()
    folder.observe("n1", "http", result(True, 1.0))
    folder.observe("n1", "tcp", result(True, 1.0))
    folder.observe("n1", "http", result(True, 1.5, vantage="v2"))
    folder.observe("n2", "http", result(False, 1.0))
    folder.observe("n1", "http", result(True, 2.0))
    keys = sorted((r.node, r.probe, r.vantage, r.count) for r in folder.open_runs())
    assert keys == [("n1", "http", "v1", 2), ("n1", "http", "v2", 1), ("n1", "tcp", "v1", 1),
                    ("n2", "http", "v1", 1)]  # fmt: skip


def test_a_late_result_does_not_move_the_end_back() -> None:
    folder = RunFolder()
    folder.observe("n", "p", result(True, 10.0))
    folder.observe("n", "p", result(True, 20.0))
    folder.observe("n", "p", result(True, 15.0))  # a round that took long, reported late
    (run,) = folder.open_runs()
    assert (run.first, run.last, run.count) == (10.0, 20.0, 3)


def test_changed_runs_are_only_those_that_grew() -> None:
    folder = RunFolder()
    folder.observe("a", "p", result(True, 1.0))
    folder.observe("b", "p", result(True, 1.0))
    assert {r.node for r in folder.changed_runs()} == {"a", "b"}
    assert folder.changed_runs() == []
    folder.observe("a", "p", result(True, 2.0))
    assert [(r.node, r.count) for r in folder.changed_runs()] == [("a", 2)]


def test_forget_and_close_all_end_the_open_runs() -> None:
    folder = RunFolder()
    folder.observe("a", "p", result(True, 1.0))
    folder.observe("a", "q", result(False, 1.0))
    folder.observe("b", "p", result(True, 1.0))
    assert {(r.node, r.probe) for r in folder.forget("a")} == {("a", "p"), ("a", "q")}
    assert folder.forget("a") == []
    assert [r.node for r in folder.close_all()] == ["b"]
    assert folder.open_runs() == []


def test_expand_gives_back_the_results_a_run_stands_for() -> None:
    run = ProbeRun("n", "p", "v1", Outcome.DECISIVE, 100.0, 110.0, 6, "will")
    results = list(expand(run))
    assert [r.at for r in results] == [100.0, 102.0, 104.0, 106.0, 108.0, 110.0]
    assert all(r.ok is False and r.decisive and r.vantage == "v1" for r in results)
    (single,) = expand(ProbeRun("n", "p", "v1", Outcome.INCONCLUSIVE, 5.0, 5.0, 1, "x"))
    assert single.ok is None and single.at == 5.0


def test_a_folded_stream_expands_back_to_its_outcomes() -> None:
    """Fold then expand: the same outcomes in the same order, at the same first/last times."""
    pattern = [True] * 5 + [False] * 2 + [None] + [True] * 3 + [False]
    folder = RunFolder()
    runs = [r for i, ok in enumerate(pattern) if (r := folder.observe("n", "p", result(ok, i)))]
    runs += folder.close_all()
    back = [r for run in runs for r in expand(run)]
    assert [r.ok for r in back] == pattern
    assert [r.at for r in back] == [float(i) for i in range(len(pattern))]


def test_rows_round_trip() -> None:
    run = ProbeRun("n", "p", "v", Outcome.FAIL, 1.5, 2.5, 3, "refused")
    assert run_of_row(run_row(run)) == run
    assert run_key(run) == ("n", "p", "v", 1.5)


def test_the_recorder_hands_out_closed_runs_then_grown_snapshots() -> None:
    recorder = RunRecorder()
    recorder.observe("n", "p", result(True, 1.0))
    recorder.observe("n", "p", result(False, 2.0))
    taken = recorder.take()
    assert [(r.outcome, r.count) for r in taken] == [(Outcome.PASS, 1), (Outcome.FAIL, 1)]
    assert recorder.take() == []  # nothing grew
    recorder.observe("n", "p", result(False, 3.0))
    recorder.add([ProbeRun("w", "p", "v1", Outcome.PASS, 1.0, 2.0, 2, "from a worker")])
    assert [(r.node, r.count) for r in recorder.take()] == [("w", 2), ("n", 2)]
    recorder.observe("m", "p", result(True, 4.0))
    recorder.forget("n")
    assert sorted(r.node for r in recorder.close_all()) == ["m", "n"]


class MemoryStore:
    """A HistoryStore in a dict, that can be told to refuse."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, float], ProbeRun] = {}
        self.batches: list[int] = []
        self.refuse = False

    async def save(self, runs: Sequence[ProbeRun]) -> None:
        if self.refuse:
            raise OSError("disk full")
        self.batches.append(len(runs))
        for run in runs:
            self.rows[run_key(run)] = run

    async def runs(
        self, since: float, until: float, nodes: Iterable[str] | None = None
    ) -> list[ProbeRun]:
        return sorted(self.rows.values(), key=lambda r: r.first)

    async def prune(self, before: float) -> int:
        return 0


async def test_the_writer_saves_in_batches_and_keeps_runs_while_the_store_refuses() -> None:
    recorder, store = RunRecorder(), MemoryStore()
    writer = HistoryWriter(recorder, store, every=lambda: 10.0)
    for at in range(5):
        recorder.observe("n", "p", result(True, at))
    assert await writer.save() == 1
    assert store.rows[("n", "p", "v1", 0.0)].count == 5
    store.refuse = True
    recorder.observe("n", "p", result(True, 5.0))
    recorder.observe("n", "p", result(False, 6.0))  # closes the pass run
    assert await writer.save() == 0
    recorder.observe("n", "p", result(False, 7.0))
    assert await writer.save() == 0
    store.refuse = False
    assert await writer.save() == 2  # the pass run closed at 6 copies, the fail run at 2
    assert store.rows[("n", "p", "v1", 0.0)].count == 6
    assert store.rows[("n", "p", "v1", 6.0)].count == 2
    await writer.close()
    assert writer.saved == 4


async def test_the_writer_gives_up_the_oldest_runs_beyond_its_bound() -> None:
    recorder, store = RunRecorder(), MemoryStore()
    writer = HistoryWriter(recorder, store, every=lambda: 10.0, max_waiting=3)
    store.refuse = True
    for at in range(6):  # six runs of one result each
        recorder.observe("n", "p", result(at % 2 == 0, float(at)))
    await writer.save()
    store.refuse = False
    await writer.close()
    assert writer.given_up == 3
    assert sorted(k[3] for k in store.rows) == [3.0, 4.0, 5.0]


async def test_the_writer_runs_every_half_period() -> None:
    recorder, store = RunRecorder(), MemoryStore()
    slept: list[float] = []
    saved = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) > 2:
            saved.set()
            await asyncio.Event().wait()  # park: the test ends here

    writer = HistoryWriter(recorder, store, every=lambda: 30.0, sleep=sleep)
    recorder.observe("n", "p", result(True, 1.0))
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(saved.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slept == [15.0, 15.0, 15.0]
    assert store.batches == [1]  # the second pass had nothing new
