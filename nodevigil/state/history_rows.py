"""The probe history's rows, as both stores (SQLite and PostgreSQL) write and read them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from monitor.history import Outcome, ProbeRun, run_key

Row = tuple[str, str, str, float, float, str, int, str]
# The columns, in Row's order (``first``/``last`` are keywords to some SQL: ``*_at``).
COLUMNS = ("node", "probe", "vantage", "first_at", "last_at", "outcome", "count", "detail")


def rows(runs: Sequence[ProbeRun]) -> list[Row]:
    """One row per run key, the last copy of each winning (a batch may hold a run twice: a
    snapshot of it open, then closed), in the order the runs came."""
    latest: dict[tuple[str, str, str, float], ProbeRun] = {}
    for run in runs:
        latest[run_key(run)] = run
    return [
        # float()/int(): a PostgreSQL array is of one type (a time given as an int is a float)
        (
            r.node,
            r.probe,
            r.vantage,
            float(r.first),
            float(r.last),
            r.outcome.value,
            int(r.count),
            _text(r.detail),
        )
        for r in latest.values()
    ]


def runs_of(found: Iterable[tuple[Any, ...]]) -> list[ProbeRun]:
    """Rows read back (``COLUMNS`` order) as runs."""
    return [
        ProbeRun(
            str(node),
            str(probe),
            str(vantage),
            Outcome(outcome),
            float(first),
            float(last),
            int(count),
            str(detail),
        )
        for node, probe, vantage, first, last, outcome, count, detail in found
    ]


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL (a probe's detail quotes what a node answered)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value
