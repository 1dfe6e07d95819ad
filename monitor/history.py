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
from typing import Protocol

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
    """

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, str], ProbeRun] = {}

    def observe(self, node: str, probe: str, result: ProbeResult) -> ProbeRun | None:
        """Take one result; return the run it ended (a different outcome began), if any."""
        key = (node, probe, result.vantage)
        outcome = Outcome.of(result)
        current = self._open.get(key)
        if current is not None and current.outcome is outcome:
            self._open[key] = current.extended(result.at)
            return None
        self._open[key] = ProbeRun(
            node, probe, result.vantage, outcome, result.at, result.at, 1, result.detail
        )
        return current

    def open_runs(self) -> list[ProbeRun]:
        """The runs still growing, as they stand."""
        return list(self._open.values())

    def forget(self, node: str) -> list[ProbeRun]:
        """Stop following ``node`` (it left the configuration); return its open runs."""
        gone = [key for key in self._open if key[0] == node]
        return [self._open.pop(key) for key in gone]

    def close_all(self) -> list[ProbeRun]:
        """End every open run and return them."""
        runs, self._open = list(self._open.values()), {}
        return runs


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
