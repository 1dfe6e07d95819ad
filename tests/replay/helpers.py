"""History for replay tests: scripted probe results folded into runs, an in-memory store."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from monitor.history import ProbeRun, RunFolder
from monitor.probes.base import ProbeResult

# A script says, for a node and a wall time, whether its probe passes (True) or fails.
Script = Callable[[str, float], bool]


def results(
    nodes: Sequence[str], script: Script, *, start: float, end: float, interval: float, vantage: str
) -> Iterable[tuple[str, ProbeResult]]:
    """Every node's probe results from ``start`` to ``end``, phase-shifted per node."""
    rounds = int((end - start) / interval)
    for k in range(rounds):
        for i, node in enumerate(nodes):
            at = start + k * interval + (i + 1) * interval / (len(nodes) + 1)
            ok = script(node, at)
            yield node, ProbeResult(ok, "ok" if ok else "connection refused", 0.001, at, vantage)


def fold(stream: Iterable[tuple[str, ProbeResult]], probe: str = "tcp") -> list[ProbeRun]:
    """The runs ``RunFolder`` makes of ``stream`` (every run closed at the end)."""
    folder = RunFolder()
    runs = [run for node, r in stream if (run := folder.observe(node, probe, r)) is not None]
    return sorted([*runs, *folder.close_all()], key=lambda r: r.first)


class MemoryHistory:
    """A ``HistoryStore`` in memory, for tests that do not need the SQLite one."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str, str, float], ProbeRun] = {}

    async def save(self, runs: Sequence[ProbeRun]) -> None:
        """Keep runs (the same key replaces)."""
        for run in runs:
            self._runs[(run.node, run.probe, run.vantage, run.first)] = run

    async def runs(
        self, since: float, until: float, nodes: Iterable[str] | None = None
    ) -> list[ProbeRun]:
        """Runs overlapping ``[since, until]``, ordered by ``first``."""
        wanted = None if nodes is None else set(nodes)
        return sorted(
            (
                r
                for r in self._runs.values()
                if r.last >= since and r.first <= until and (wanted is None or r.node in wanted)
            ),
            key=lambda r: r.first,
        )

    async def prune(self, before: float) -> int:
        """Drop runs that ended before ``before``."""
        gone = [k for k, r in self._runs.items() if r.last < before]
        for k in gone:
            del self._runs[k]
        return len(gone)
