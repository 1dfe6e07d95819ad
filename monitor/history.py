"""Probe history, compact: runs of equal results instead of one row per probe.

A run is the results of one probe of one node, seen from one vantage, that came out the same
(passed, failed, inconclusive; decisive or not) one after another, with their count and the
wall-clock span from the first to the last. Storage grows with the changes of a fleet, not
with the fleet times the time: a node that stays up for a day is one run per probe.

Replay turns runs back into results (``expand``): ``count`` results spread evenly over the
run's span, each carrying the detail of the run's first result (the details of the others,
which differ in figures such as a round-trip time, are not kept).

Pure logic: the folder takes results as they come and hands back the runs they close; where
the runs are kept is a state backend's business (``HistoryStore``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from monitor.probes.base import ProbeResult


class Outcome(enum.StrEnum):
    """What a probe said, as history keeps it."""

    PASS = "pass"
    FAIL = "fail"
    DECISIVE = "decisive"  # a failure that takes the probe down at once (an agent's will)
    INCONCLUSIVE = "inconclusive"

    @classmethod
    def of(cls, result: ProbeResult) -> Outcome:
        """The outcome of one result."""
        if result.ok is None:
            return cls.INCONCLUSIVE
        if result.ok:
            return cls.PASS
        return cls.DECISIVE if result.decisive else cls.FAIL

    @property
    def ok(self) -> bool | None:
        """The ``ProbeResult.ok`` this outcome stands for."""
        if self is Outcome.INCONCLUSIVE:
            return None
        return self is Outcome.PASS


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """Equal results of one probe of one node from one vantage, one after another."""

    node: str
    probe: str
    vantage: str
    outcome: Outcome
    first: float  # wall time of the run's first result (a label: Unix seconds)
    last: float  # wall time of its last result
    count: int
    detail: str  # the first result's detail

    def extended(self, at: float) -> ProbeRun:
        """This run with one more result, seen at wall time ``at``."""
        return ProbeRun(
            self.node,
            self.probe,
            self.vantage,
            self.outcome,
            self.first,
            max(self.last, at),
            self.count + 1,
            self.detail,
        )


def expand(run: ProbeRun) -> Iterator[ProbeResult]:
    """The results a run stands for, spread evenly from ``first`` to ``last``."""
    step = (run.last - run.first) / (run.count - 1) if run.count > 1 else 0.0
    ok = run.outcome.ok
    decisive = run.outcome is Outcome.DECISIVE
    for index in range(run.count):
        yield ProbeResult(ok, run.detail, 0.0, run.first + index * step, run.vantage, decisive)


class RunFolder:
    """Folds results into runs: ``observe`` returns the run a result closes, if any.

    The open runs (one per node, probe and vantage) are in ``open_runs``; ``close_all`` ends
    them (at shutdown, or when the store wants everything up to now written).

    ``observe`` runs once per judged result, so an open run is kept as a small mutable list
    (outcome, first, last, count, detail, count when last snapshot) under its node, and a
    ``ProbeRun`` is made only when a run closes or is snapshot: a tenth of the cost.
    """

    __slots__ = ("_open",)

    def __init__(self) -> None:
        # node -> (probe, vantage) -> [outcome, first, last, count, detail, snapshot count]
        self._open: dict[str, dict[tuple[str, str], list[Any]]] = {}

    def observe(self, node: str, probe: str, result: ProbeResult) -> ProbeRun | None:
        """Take one result; return the run it ended (a different outcome began), if any."""
        ok = result.ok
        if ok is None:
            outcome = _INCONCLUSIVE
        elif ok:
            outcome = _PASS
        else:
            outcome = _DECISIVE if result.decisive else _FAIL
        runs = self._open.get(node)
        if runs is None:
            runs = self._open[node] = {}
        key = (probe, result.vantage)
        current = runs.get(key)
        at = result.at
        if current is not None and current[0] is outcome:
            current[3] += 1
            current[2] = max(current[2], at)
            return None
        runs[key] = [outcome, at, at, 1, result.detail, 0]
        return None if current is None else _run(node, key, current)

    def open_runs(self) -> list[ProbeRun]:
        """The runs still growing, as they stand."""
        return [_run(node, key, r) for node, runs in self._open.items() for key, r in runs.items()]

    def changed_runs(self) -> list[ProbeRun]:
        """The open runs that grew since the last call (or began): a snapshot to save."""
        out = []
        for node, runs in self._open.items():
            for key, r in runs.items():
                if r[3] != r[5]:
                    r[5] = r[3]
                    out.append(_run(node, key, r))
        return out

    def forget(self, node: str) -> list[ProbeRun]:
        """Stop following ``node`` (it left the configuration); return its open runs."""
        runs = self._open.pop(node, {})
        return [_run(node, key, r) for key, r in runs.items()]

    def close_all(self) -> list[ProbeRun]:
        """End every open run and return them."""
        runs = self.open_runs()
        self._open = {}
        return runs


_PASS, _FAIL = Outcome.PASS, Outcome.FAIL
_DECISIVE, _INCONCLUSIVE = Outcome.DECISIVE, Outcome.INCONCLUSIVE


def _run(node: str, key: tuple[str, str], r: list[Any]) -> ProbeRun:
    return ProbeRun(node, key[0], key[1], r[0], r[1], r[2], r[3], r[4])


class RunRecorder:
    """Where the monitor puts every result it judges: a folder, and the runs to be saved.

    ``take`` hands the saver the runs closed since the last take and a snapshot of the open
    runs that grew; runs folded elsewhere (a monitor worker process) come in through ``add``.
    """

    __slots__ = ("_waiting", "fold", "folder")

    def __init__(self) -> None:
        self.folder = RunFolder()
        # The monitor calls this per result (one call less than ``observe``), then ``add``s
        # the run it returns, if any: the hot path of every probe.
        self.fold = self.folder.observe
        self._waiting: list[ProbeRun] = []

    def observe(self, node: str, probe: str, result: ProbeResult) -> None:
        """Fold one judged result."""
        closed = self.fold(node, probe, result)
        if closed is not None:
            self._waiting.append(closed)

    def forget(self, node: str) -> None:
        """``node`` left the configuration (or changed): its open runs are closed."""
        self._waiting.extend(self.folder.forget(node))

    def add(self, runs: Iterable[ProbeRun]) -> None:
        """Runs folded elsewhere, closed or snapshot, to be saved with the next take."""
        self._waiting.extend(runs)

    def take(self) -> list[ProbeRun]:
        """The runs closed since the last take, then the open runs that grew since."""
        waiting, self._waiting = self._waiting, []
        waiting.extend(self.folder.changed_runs())
        return waiting

    def close_all(self) -> list[ProbeRun]:
        """Everything not yet taken, the open runs closed (at shutdown)."""
        waiting, self._waiting = self._waiting, []
        waiting.extend(self.folder.close_all())
        return waiting


class HistoryStore(Protocol):
    """Where runs are kept (SQLite in ``state_dir``, or PostgreSQL).

    ``save`` is given closed runs and, from time to time, the open runs as they stand: a run
    saved again with the same (node, probe, vantage, first) replaces the earlier copy, so a
    crash loses at most the results since the last save of the open runs.
    """

    async def save(self, runs: Sequence[ProbeRun]) -> None:
        """Keep ``runs`` (insert, or replace the run with the same key)."""
        ...

    async def runs(
        self, since: float, until: float, nodes: Iterable[str] | None = None
    ) -> list[ProbeRun]:
        """Every run that overlaps ``[since, until]`` (wall time), ordered by ``first``."""
        ...

    async def prune(self, before: float) -> int:
        """Drop runs that ended before ``before``; return how many."""
        ...


class DurableHistoryStore(HistoryStore, Protocol):
    """A ``HistoryStore`` that the daemon opens (schema created or migrated) and closes."""

    async def open(self) -> None:
        """Create or migrate the schema; a StateError when the database cannot be used."""
        ...

    async def close(self) -> None:
        """Release what ``open`` took."""
        ...


RunRow = tuple[str, str, str, str, float, float, int, str]


def run_row(run: ProbeRun) -> RunRow:
    """A run as plain values (what a monitor worker sends the main process)."""
    return (run.node, run.probe, run.vantage, run.outcome.value, run.first, run.last,
            run.count, run.detail)  # fmt: skip


def run_of_row(row: RunRow) -> ProbeRun:
    """``run_row``'s inverse."""
    node, probe, vantage, outcome, first, last, count, detail = row
    return ProbeRun(node, probe, vantage, Outcome(outcome), first, last, count, detail)


def run_key(run: ProbeRun) -> tuple[str, str, str, float]:
    """What identifies a run in a store: a later copy with this key replaces the earlier."""
    return (run.node, run.probe, run.vantage, run.first)
