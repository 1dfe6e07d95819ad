"""A monitor worker: one shard of the fleet probed and judged in a process of its own.

Started by ``monitor.sharded`` as ``python -m monitor.worker --fd N --index I`` with one end of
a socketpair. It runs an ordinary ``Monitor`` (its own event loop, its own overload guard:
a stall of this process judges none of its nodes) over the nodes it is sent, and tells the
main process only what the main process needs: verdict changes at once, each node's probe
counters and last result every few seconds, totals every second. It exits when the main
process closes the socket, or dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.heartbeat import HeartbeatBoard
from monitor.history import ProbeRun, RunRecorder, run_row
from monitor.metrics import MonitorMetrics
from monitor.monitor import Monitor, _Watched
from monitor.shards import (
    ChangeRow,
    StatusRow,
    change_row,
    frame,
    last_row,
    metric_totals,
    read_frame,
)
from monitor.verdict import Transition
from nodevigil.core.clock import SystemClock
from nodevigil.core.config import Config, Node
from nodevigil.core.eventloop import loop_factory
from nodevigil.core.events import EventBus

log = logging.getLogger(__name__)

STATUS_EVERY = 2.0  # seconds between two pushes of every node's probe counters
STATUS_CHUNK = 500  # nodes per status message: the main loop decodes one chunk at a time
RUNS_CHUNK = 5000  # probe-history runs per message, for the same reason
STATS_EVERY = 1.0
GC_THRESHOLDS = (20_000, 20, 20)  # as nodevigil.app.gctuning: a shard is a long-lived fleet
FREEZE_AGAIN_AFTER = 30.0


class ShardMonitor(Monitor):
    """A Monitor whose verdict changes go to the main process instead of a bus.

    The main process logs the changes and keeps the verdict metrics: logging here too would
    say everything twice.
    """

    def __init__(self, config: Config, link: Link) -> None:
        clock = SystemClock()
        super().__init__(
            config,
            bus=EventBus(),
            clock=clock,
            metrics=MonitorMetrics(CollectorRegistry()),
            board=HeartbeatBoard(clock),  # a shard has no mqtt probe: they stay in the main
            history=RunRecorder(),
        )
        self._link = link

    def _publish(self, node: Node, t: Transition) -> None:
        self._link.change(change_row(self._change(node, t)))

    def watched(self) -> list[_Watched]:
        """Every watched node, in configuration order."""
        return list(self._watched.values())

    @property
    def history(self) -> RunRecorder:
        """The worker's probe history: its runs go to the main process, which saves them."""
        assert self._history is not None
        return self._history

    def history_period(self) -> float:
        """Seconds between two sends of the runs: half ``records.history_save_every``."""
        return self._config.records.history_save_every / 2

    @property
    def metrics(self) -> MonitorMetrics:
        """The worker's private metrics (their totals go to the main process)."""
        return self._metrics


class Link:
    """The worker's end of the socket: batches verdict changes within one loop turn."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._changes: list[ChangeRow] = []

    def change(self, row: ChangeRow) -> None:
        """Send a verdict change (with the others of this loop turn)."""
        if not self._changes:
            asyncio.get_running_loop().call_soon(self._flush)
        self._changes.append(row)

    def _flush(self) -> None:
        changes, self._changes = self._changes, []
        if changes:
            self.send(("changes", changes))

    def send(self, message: tuple[Any, ...]) -> None:
        """Write one message (buffered by the transport; the main process reads steadily)."""
        if not self._writer.is_closing():
            self._writer.write(frame(message))


def status_rows(watched: list[_Watched]) -> list[StatusRow]:
    """Every node's probe counters and last result."""
    rows: list[StatusRow] = []
    for w in watched:
        probes = []
        for spec in w.node.probes:
            track = w.judge.probes[spec.label]
            probes.append(
                (track.state.value, track.successes, track.failures, last_row(track.last))
            )
        rows.append((w.node.name, tuple(probes)))
    return rows


def stats_message(monitor: ShardMonitor, lags: list[float]) -> dict[str, Any]:
    """The worker's totals and backlogs for the main process's stats() and metrics."""
    results, durations = metric_totals(monitor.metrics)
    return {
        **monitor.stats(),
        "results": results,
        "durations": durations,
        "lags": lags,
        "pid": os.getpid(),
    }


async def serve(sock: socket.socket, index: int) -> None:
    """Run the shard until the main process goes away."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    link = Link(writer)
    link.send(("hello", os.getpid()))
    first = await read_frame(reader)
    if first is None:
        return
    if first[0] != "config":
        raise ValueError(f"expected the configuration first, got {first[0]!r}")
    async with ShardMonitor(first[1], link) as monitor, asyncio.TaskGroup() as tasks:
        log.info("monitor worker %d: %d nodes", index, len(monitor.node_names()))
        _tune_gc()
        main = tasks.create_task(_listen(reader, monitor), name="listen")
        helpers = [
            tasks.create_task(_push_status(monitor, link), name="status"),
            tasks.create_task(_push_stats(monitor, link), name="stats"),
            tasks.create_task(_push_runs(monitor, link), name="history"),
            tasks.create_task(_freeze_later(), name="gc-freeze"),
        ]
        await main
        for helper in helpers:
            helper.cancel()
    # The main process half-closed the socket to stop us: its read side waits for the runs
    # still open, closed now that no probe runs, so that a clean stop loses no history.
    send_runs(link, monitor.history.close_all())
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _listen(reader: asyncio.StreamReader, monitor: ShardMonitor) -> None:
    while (message := await read_frame(reader)) is not None:
        if message[0] == "config":
            monitor.apply_config(message[1])
            _tune_gc()


async def _push_status(monitor: ShardMonitor, link: Link) -> None:
    while True:
        await asyncio.sleep(STATUS_EVERY)
        watched = monitor.watched()
        for start in range(0, len(watched), STATUS_CHUNK):
            link.send(("status", status_rows(watched[start : start + STATUS_CHUNK])))
            await asyncio.sleep(0)  # let probes run between chunks


async def _push_stats(monitor: ShardMonitor, link: Link) -> None:
    while True:
        await asyncio.sleep(STATS_EVERY)
        # The overload guard's own ticker (monitor.looplag): its lags are what benchmarks read.
        taken = monitor.lag_watch.take()
        link.send(("stats", stats_message(monitor, taken)))


def send_runs(link: Link, runs: list[ProbeRun]) -> None:
    """Send probe-history runs (closed, or open ones as they stand) in chunks."""
    for start in range(0, len(runs), RUNS_CHUNK):
        link.send(("runs", [run_row(r) for r in runs[start : start + RUNS_CHUNK]]))


async def _push_runs(monitor: ShardMonitor, link: Link) -> None:
    while True:
        await asyncio.sleep(monitor.history_period())
        send_runs(link, monitor.history.take())


def _tune_gc() -> None:
    """As ``nodevigil run`` does for the main process (nodevigil.app.gctuning)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _freeze_later() -> None:
    await asyncio.sleep(FREEZE_AGAIN_AFTER)
    gc.freeze()


def main(argv: list[str] | None = None) -> None:
    """``python -m monitor.worker --fd N --index I [--log-level L]``."""
    parser = argparse.ArgumentParser(description="one shard of nodevigil's monitor")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--loop", default="asyncio", help="asyncio or uvloop, as the main process")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format=f"%(levelname)s monitor-worker-{args.index}: %(name)s: %(message)s",
    )
    # Ctrl-C reaches the whole process group: the main process stops us (EOF) when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner,
    ):
        runner.run(serve(sock, args.index))


if __name__ == "__main__":
    main()
