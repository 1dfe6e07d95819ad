"""What the main process and its monitor workers say to each other (``monitor.sharded``).

One stream socket per worker carries frames: a 4-byte length, then a pickled tuple whose
first item names the message. Pickle is safe here: both ends are nodevigil, the socket is a
``socketpair`` inherited by the worker, never a listening address.

main -> worker: ``("config", Config)`` (the worker's shard: only its nodes); EOF stops it.
worker -> main: ``("hello", pid)``; ``("changes", [ChangeRow])`` as soon as verdicts move;
``("status", [StatusRow])`` in chunks, every few seconds; ``("stats", dict)`` every second;
``("runs", [RunRow])`` (``monitor.history``) every half ``records.history_save_every`` and
once more at the end.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from prometheus_client import Histogram

from monitor.metrics import MonitorMetrics
from monitor.probes.base import ProbeResult
from monitor.verdicts import Verdict, VerdictChange

_LENGTH = struct.Struct(">I")
MAX_FRAME = 256 << 20  # a frame bigger than this is a bug, not a message

# (node, site, old, new, reason, probe, at, vantage, flapping): a VerdictChange, flat.
ChangeRow = tuple[str, str, str, str, str, str | None, float, str, bool]
# (ok, detail, duration, at, vantage): a ProbeResult, flat.
LastRow = tuple[bool | None, str, float, float, str]
# (state, consecutive successes, consecutive failures, last result) for one probe.
ProbeRow = tuple[str, int, int, LastRow | None]
# (node, probes in configuration order)
StatusRow = tuple[str, tuple[ProbeRow, ...]]


def shard_of(node: str, shards: int) -> int:
    """The worker that probes ``node``: a stable hash of its name (Python's ``hash`` is salted
    per process), so a node stays on its worker across reloads and restarts."""
    return zlib.crc32(node.encode()) % shards


def frame(message: tuple[Any, ...]) -> bytes:
    """One message, ready to write."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream (the other side went away)."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes")
        message = pickle.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if not isinstance(message, tuple) or not message:
        raise ValueError("not a message")
    return message


def change_row(change: VerdictChange) -> ChangeRow:
    """A verdict change in its wire form."""
    c = change
    return (
        c.node,
        c.site,
        c.old.value,
        c.new.value,
        c.reason,
        c.probe,
        c.at,
        c.vantage,
        c.flapping,
    )


def change_of(row: ChangeRow, old: Verdict) -> VerdictChange:
    """A verdict change from its wire form, moving from ``old`` (what the main process knew)."""
    node, site, _, new, reason, probe, at, vantage, flapping = row
    return VerdictChange(node, site, old, Verdict(new), reason, probe, at, vantage, flapping)


def last_row(result: ProbeResult | None) -> LastRow | None:
    """A probe's last result in its wire form."""
    if result is None:
        return None
    return (result.ok, result.detail, result.duration, result.at, result.vantage)


def metric_totals(
    metrics: MonitorMetrics,
) -> tuple[dict[tuple[str, str], float], dict[str, tuple[list[float], float]]]:
    """A worker's running totals: results by (type, outcome), and per probe type the
    duration histogram's per-bucket counts (not cumulative) and sum."""
    results: dict[tuple[str, str], float] = {}
    for family in metrics.probe_results.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                results[(sample.labels["type"], sample.labels["result"])] = sample.value
    durations: dict[str, tuple[list[float], float]] = {}
    for family in metrics.probe_type_duration.collect():
        for sample in family.samples:
            kind = sample.labels["type"]
            counts, total = durations.get(kind, ([], 0.0))
            if sample.name.endswith("_bucket"):
                counts.append(sample.value)  # cumulative here, undone below
            elif sample.name.endswith("_sum"):
                total = sample.value
            durations[kind] = (counts, total)
    return results, {
        kind: ([c - p for c, p in zip(cum, [0.0, *cum[:-1]], strict=True)], total)
        for kind, (cum, total) in durations.items()
    }


def add_to_histogram(child: Histogram, buckets: Sequence[float], total: float) -> None:
    """Add a worker's observations, already counted per bucket, to the main process's child.

    prometheus_client has no public call for this; ``_buckets`` and ``_sum`` are what
    ``observe`` itself updates (checked by tests/monitor/test_sharded.py on every version).
    """
    own = child._buckets  # see the docstring
    if len(own) != len(buckets):
        raise ValueError("the worker's histogram has other buckets")
    for value, count in zip(own, buckets, strict=True):
        if count:
            value.inc(count)
    if total:
        child._sum.inc(total)
