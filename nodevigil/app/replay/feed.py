"""Probe history back into verdicts: the monitor's own judge (``NodeJudge``) fed run by run.

A run of ``count`` equal results is fed result by result only while a result can move the
judge: until the probe's own state agrees with the run (at most ``max(rise, fall)`` results),
and when the node's flap hold may end (``NodeJudge.tick`` fires on the first result at or past
``raw_since + flap.hold``). The results in between change nothing but the probe's consecutive
counter and its last result, which are brought up to date in one step: the judge ends in the
state it would have reached fed every result, at a cost that grows with the changes in the
history, not with its length.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from monitor.history import Outcome, ProbeRun
from monitor.probes.base import ProbeResult
from monitor.verdict import NodeJudge, ProbeTrack, Transition
from monitor.verdicts import Verdict
from nodevigil.core.config.schema import Config


@dataclass(frozen=True, slots=True)
class VerdictChange:
    """A node's verdict moved at ``at`` (wall time) on the evidence of ``runs``."""

    node: str
    at: float
    transition: Transition
    runs: tuple[ProbeRun, ...]  # the run each probe of the node was in at that moment

    def evidence(self) -> dict[str, object]:
        """The JSON-ready facts: the verdict, its reason and the probe results behind it."""
        return {
            "node": self.node,
            "at": self.at,
            "verdict": self.transition.new.value,
            "was": self.transition.old.value,
            "reason": self.transition.reason,
            "probe": self.transition.probe,
            "flapping": self.transition.flapping,
            "results": [run_facts(r) for r in self.runs],
        }


def run_facts(run: ProbeRun) -> dict[str, object]:
    """One run as evidence: which probe said what, how many times, from when to when."""
    return {
        "probe": run.probe,
        "vantage": run.vantage,
        "outcome": run.outcome.value,
        "count": run.count,
        "first": run.first,
        "last": run.last,
        "detail": run.detail,
    }


@dataclass(slots=True)
class _Cursor:
    """Where feeding one run has got to: ``fed`` results done (really or in bulk)."""

    run: ProbeRun
    step: float
    fed: int = 0
    gen: int = 0  # bumped when rescheduled: older heap entries are stale

    def at(self, index: int) -> float:
        return self.run.first + index * self.step

    def result(self, index: int) -> ProbeResult:
        r = self.run
        decisive = r.outcome is Outcome.DECISIVE
        return ProbeResult(r.outcome.ok, r.detail, 0.0, self.at(index), r.vantage, decisive)

    def first_at_or_after(self, moment: float) -> int:
        """The index of the run's first result at or after ``moment`` (count: none)."""
        if moment <= self.run.first:
            return 0
        if self.step <= 0:
            return self.run.count
        index = max(0, math.ceil((moment - self.run.first) / self.step) - 1)
        while index < self.run.count and self.at(index) < moment:
            index += 1
        return index


@dataclass(slots=True)
class _Node:
    judge: NodeJudge
    active: dict[str, _Cursor] = field(default_factory=dict)  # probe -> its run being fed


@dataclass(slots=True)
class FeedStats:
    """How much of the history was fed one by one, how much in bulk, and what was ignored."""

    runs: int = 0
    results: int = 0
    fed: int = 0  # results the judge saw one by one
    ignored_runs: int = 0  # of nodes or probes the configuration does not have, or vantages


def _saturated(track: ProbeTrack, outcome: Outcome) -> bool:
    """Whether another result of ``outcome`` leaves ``track``'s state where it is."""
    if outcome is Outcome.INCONCLUSIVE:
        return True
    if outcome is Outcome.PASS:
        return track.state is Verdict.UP
    return track.state is Verdict.DOWN


def judges_for(config: Config) -> dict[str, NodeJudge]:
    """A fresh judge per configured node, built as the monitor builds them."""
    d = config.defaults
    return {
        node.name: NodeJudge.create(
            [p.label for p in node.probes],
            rise=node.rise or d.rise,
            fall=node.fall or d.fall,
            require=node.require,
            flap=d.flap,
        )
        for node in config.nodes
    }


def verdict_changes(
    config: Config, runs: Iterable[ProbeRun], *, vantage: str | None = None
) -> tuple[list[VerdictChange], FeedStats]:
    """Every verdict change the monitor's judges make over ``runs``, in time order.

    Only runs seen from ``vantage`` (default: the configuration's) of configured nodes and
    probes count. Runs of one probe must not overlap (``RunFolder`` makes them so).
    """
    seen_from = vantage if vantage is not None else config.vantage
    nodes = {name: _Node(judge) for name, judge in judges_for(config).items()}
    stats = FeedStats()
    heap: list[tuple[float, int, int, _Cursor, int]] = []  # (at, order, gen, cursor, index)
    order = 0
    for run in runs:
        stats.runs += 1
        node = nodes.get(run.node)
        if run.vantage != seen_from or node is None or run.probe not in node.judge.probes:
            stats.ignored_runs += 1
            continue
        stats.results += run.count
        step = (run.last - run.first) / (run.count - 1) if run.count > 1 else 0.0
        cursor = _Cursor(run, step)
        heap.append((run.first, order, -1, cursor, 0))  # gen -1: the run's start
        order += 1
    heapq.heapify(heap)
    changes: list[VerdictChange] = []
    while heap:
        at, _, gen, cursor, index = heapq.heappop(heap)
        run = cursor.run
        node = nodes[run.node]
        if gen == -1:  # the run begins: the probe's earlier run is fed to its end first
            previous = node.active.get(run.probe)
            if previous is not None:
                _bulk(node.judge.probes[run.probe], previous, previous.run.count)
            node.active[run.probe] = cursor
        elif gen != cursor.gen:
            continue  # rescheduled since
        if index >= run.count:  # the run's end: its remaining results, in bulk
            if node.active.get(run.probe) is cursor:
                _bulk(node.judge.probes[run.probe], cursor, run.count)
                del node.active[run.probe]
            continue
        judge = node.judge
        track = judge.probes[run.probe]
        _bulk(track, cursor, index)
        before = (judge.flapping, judge.raw, judge.raw_since)
        transition = judge.observe(run.probe, cursor.result(index), at)
        cursor.fed = index + 1
        stats.fed += 1
        if transition is not None:
            evidence = tuple(c.run for c in node.active.values())
            changes.append(VerdictChange(run.node, at, transition, evidence))
        order = _schedule(heap, node, cursor, order, at)
        if (judge.flapping, judge.raw, judge.raw_since) != before:
            # The flap hold's end moved: every other probe's run may hold the result that
            # ends it.
            for other in node.active.values():
                if other is not cursor and other.fed < other.run.count:
                    other.gen += 1
                    order = _schedule(heap, node, other, order, at)
    return changes, stats


def _schedule(
    heap: list[tuple[float, int, int, _Cursor, int]],
    node: _Node,
    cursor: _Cursor,
    order: int,
    now: float,
) -> int:
    """Push the cursor's next result that can move the judge (or its end); return ``order``."""
    run, judge = cursor.run, node.judge
    if cursor.fed >= run.count:
        heapq.heappush(heap, (run.last, order, cursor.gen, cursor, run.count))
        return order + 1
    nxt = cursor.fed
    if _saturated(judge.probes[run.probe], run.outcome):
        if judge.flapping and judge.raw is Verdict.UP:
            deadline = max(judge.raw_since + judge.flap.hold, now)
            nxt = max(nxt, cursor.first_at_or_after(deadline))
        else:
            nxt = run.count  # nothing in this run can move the judge
    at = run.last if nxt >= run.count else cursor.at(nxt)
    heapq.heappush(heap, (at, order, cursor.gen, cursor, nxt))
    return order + 1


def _bulk(track: ProbeTrack, cursor: _Cursor, upto: int) -> None:
    """Count the results from ``cursor.fed`` to ``upto`` (exclusive) as the judge would have:
    each leaves the state as it is, moves the consecutive counter and is the last result."""
    skipped = upto - cursor.fed
    if skipped <= 0:
        return
    outcome = cursor.run.outcome
    if outcome is Outcome.PASS:
        track.successes += skipped
        track.failures = 0
    elif outcome is not Outcome.INCONCLUSIVE:
        track.failures += skipped
        track.successes = 0
    track.last = cursor.result(upto - 1)
    cursor.fed = upto
