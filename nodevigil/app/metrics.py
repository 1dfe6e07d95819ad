"""Process-wide metrics: build info and event-loop lag."""

from __future__ import annotations

import asyncio
import platform
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from nodevigil import __version__
from nodevigil.core.eventlog import EventLog


class DaemonMetrics:
    """What every nodevigil process exposes about itself."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # *_created series double the series count of a 10,000-node fleet for no use.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        Info("nodevigil_build", "Version of nodevigil and Python.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.loop_lag = Gauge(
            "nodevigil_event_loop_lag_seconds",
            "How late the latest event-loop wake-up was.",
            registry=registry,
        )
        self.loop_lag_hist = Histogram(
            "nodevigil_event_loop_lag_distribution_seconds",
            "Event-loop lag of periodic wake-ups.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.event_queue_depth = Gauge(
            "nodevigil_event_queue_depth",
            "Events waiting in the fullest in-process subscription.",
            registry=registry,
        )
        self.config_reloads = Gauge(
            "nodevigil_config_last_reload_success_timestamp_seconds",
            "Wall time of the latest successful configuration load.",
            registry=registry,
        )
        self.config_reload_ok = Gauge(
            "nodevigil_config_last_reload_successful",
            "1 when the latest configuration reload (SIGHUP) succeeded, 0 when it was rejected.",
            registry=registry,
        )
        self.config_reload_ok.set(1)
        # Counters: the event log keeps plain totals, ``show_event_log`` adds what they grew.
        self.event_log_errors = Counter(
            "nodevigil_event_log_write_errors",
            "Failed writes of the durable event log.",
            registry=registry,
        )
        self.event_log_waiting = Gauge(
            "nodevigil_event_log_waiting",
            "Events published but not yet written to the event log (grows while the disk "
            "refuses writes).",
            registry=registry,
        )
        self.event_log_dropped = Counter(
            "nodevigil_event_log_dropped",
            "Events given up because the disk refused them for too long.",
            registry=registry,
        )
        self._event_log_seen = (0, 0)  # the totals last shown: (write errors, dropped)

    def show_event_log(self, events: EventLog) -> None:
        """Bring the event-log series up to the log's own totals."""
        errors, dropped = events.write_errors, events.dropped
        seen_errors, seen_dropped = self._event_log_seen
        # A total below the last one is a new log (a restart of its writer): count it afresh.
        self.event_log_errors.inc(errors - seen_errors if errors >= seen_errors else errors)
        self.event_log_dropped.inc(dropped - seen_dropped if dropped >= seen_dropped else dropped)
        self._event_log_seen = (errors, dropped)
        self.event_log_waiting.set(events.waiting)

    async def watch_loop_lag(self, period: float = 0.25) -> None:
        """Measure how late the loop wakes us up, forever."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(period)
            lag = max(time.monotonic() - started - period, 0.0)
            self.loop_lag.set(lag)
            self.loop_lag_hist.observe(lag)
