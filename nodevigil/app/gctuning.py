"""The garbage collector tuned for a long-lived fleet (only ``nodevigil run`` tunes it).

A fleet of 10,000 nodes is ~700,000 long-lived objects and every probe round allocates a few
short-lived ones. With Python's default thresholds the collector walked the whole fleet about
once a second: half the CPU at 10,000 nodes and pauses of half a second, which the monitor
rightly takes for an overloaded loop (bench/load_bench.py).
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable

GC_THRESHOLDS = (20_000, 20, 20)  # Python's are (700, 10, 10); see freeze_long_lived
FREEZE_AGAIN_AFTER = 30.0  # seconds after start or reload (see freeze_after_first_rounds)


def freeze_long_lived() -> None:
    """Move what exists now (configuration, judges, probers, metric series) out of the garbage
    collector's sight, and collect less often.

    Frozen objects are still freed by reference counting; only cycles among them would wait
    for a restart.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def freeze_after_first_rounds(sleep: Callable[[float], Awaitable[None]]) -> None:
    """Freeze again once the first probe rounds opened the fleet's connections and metric
    series (~300,000 more objects at 10,000 nodes, a full collection of ~0.3 s otherwise).
    No collection first: that would be the very pause this avoids."""
    await sleep(FREEZE_AGAIN_AFTER)
    gc.freeze()
