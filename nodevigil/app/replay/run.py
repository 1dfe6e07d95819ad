"""A replay request, end to end: read the history, replay both configurations, compare.

Shared by ``nodevigil replay`` and ``POST /api/v1/replay``; pure of any daemon: the history
store is given, nothing is written anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.history import HistoryStore, ProbeRun
from nodevigil.app.replay.compare import report
from nodevigil.app.replay.engine import replay
from nodevigil.core.config.schema import Config
from sla.model import Charge

DEFAULT_WARMUP = 600.0  # judges and hold-downs settle before the window opens


@dataclass(frozen=True, slots=True)
class Request:
    """What to replay: the candidate against the running configuration, over a window."""

    candidate: Config
    running: Config
    since: float
    until: float
    warmup: float = DEFAULT_WARMUP
    tolerance: float = 1.0  # seconds within which the same action counts as the same
    charges: Sequence[Charge] = ()


def clip(run: ProbeRun, start: float) -> ProbeRun | None:
    """The part of ``run`` from ``start`` on (its results evenly spread), or None."""
    if run.first >= start:
        return run
    if run.last < start:
        return None
    step = (run.last - run.first) / (run.count - 1) if run.count > 1 else 0.0
    skip = math.ceil((start - run.first) / step) if step > 0 else 0
    skip = min(skip, run.count - 1)
    return dataclasses.replace(run, first=run.first + skip * step, count=run.count - skip)


async def history(store: HistoryStore, start: float, until: float) -> list[ProbeRun]:
    """The runs from ``start`` to ``until``, clipped to ``start``, ordered by first."""
    runs = await store.runs(start, until)
    return [c for r in runs if (c := clip(r, start)) is not None]


async def compare(store: HistoryStore, request: Request) -> dict[str, Any]:
    """Replay the candidate and the running configuration; the comparison as JSON data."""
    start = request.since - request.warmup
    runs = await history(store, start, request.until)
    seen_from = request.running.vantage  # the history is this host's: its vantage's runs
    candidate, running = [
        await replay(
            config, runs, request.since, request.until, charges=request.charges, vantage=seen_from
        )
        for config in (request.candidate, request.running)
    ]
    return report(candidate, running, request.tolerance)
