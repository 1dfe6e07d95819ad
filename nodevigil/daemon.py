"""The daemon: loads the configuration, runs the monitor, the API and the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.heartbeat import HeartbeatBoard, HeartbeatListener
from monitor.metrics import AgentCollector, MonitorMetrics
from monitor.monitor import Monitor
from nodevigil.api.app import ApiContext, build_app
from nodevigil.api.auth import TokenBook
from nodevigil.clock import Clock, SystemClock
from nodevigil.config import load_config, read_secret
from nodevigil.config.schema import split_host_port
from nodevigil.errors import ConfigError, StateError
from nodevigil.eventlog import EventLog
from nodevigil.events import EventBus
from nodevigil.metrics import DaemonMetrics

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0


class Daemon:
    """One nodevigil process: ``await Daemon(path).run()`` until SIGTERM."""

    def __init__(self, config_path: Path, *, clock: Clock | None = None) -> None:
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.config = load_config(config_path)  # the same validation as check-config
        self.registry = CollectorRegistry()
        self.bus = EventBus()
        self.metrics = DaemonMetrics(self.registry)
        self.board = HeartbeatBoard(self.clock)
        self._stop = asyncio.Event()
        self.api_port: int | None = None

    def request_stop(self) -> None:
        """Ask the daemon to stop cleanly."""
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the configuration; keep the old one when the new one is invalid."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return False
        self.config = config
        self.monitor.apply_config(config)
        self.context.config = config
        self.context.tokens = TokenBook(config.api.tokens)
        self.metrics.config_reloads.set(self.clock.wall())
        log.info("configuration reloaded: %d nodes, %d sites", len(config.nodes), len(config.sites))
        return True

    async def run(self) -> None:
        """Run until asked to stop."""
        config = self.config
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state_dir {config.state_dir}: {exc}") from exc
        events = EventLog(config.state_dir / "events.db")
        await events.open()
        self.bus.add_sink(events.append)
        monitor_metrics = MonitorMetrics(self.registry)
        self.registry.register(AgentCollector(self.board))
        self.metrics.config_reloads.set(self.clock.wall())
        async with Monitor(
            config, bus=self.bus, clock=self.clock, metrics=monitor_metrics, board=self.board
        ) as monitor:
            self.monitor = monitor
            self.context = ApiContext(
                config=config,
                registry=self.registry,
                monitor=monitor,
                events=events,
                tokens=TokenBook(config.api.tokens),
            )
            runner = web.AppRunner(build_app(self.context), access_log=None)
            await runner.setup()
            host, port = split_host_port(config.api.listen)
            site = web.TCPSite(runner, host, port)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.api_port = sockets[0].getsockname()[1] if sockets else port
            log.info("API listening on http://%s:%d", host, self.api_port)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(events.run(), name="event-log")
                    tg.create_task(self.metrics.watch_loop_lag(), name="loop-lag")
                    tg.create_task(self._prune(events), name="prune")
                    if config.mqtt is not None:
                        password = (
                            read_secret(config.mqtt.password) if config.mqtt.password else None
                        )
                        listener = HeartbeatListener(config.mqtt, self.board, password)
                        tg.create_task(listener.run(), name="mqtt-heartbeats")
                    self.context.ready = True
                    await self._stop.wait()
                    raise _Stop
            except* _Stop:
                pass
            finally:
                self.context.ready = False
                await runner.cleanup()
                await events.close()
        log.info("stopped")

    async def _prune(self, events: EventLog) -> None:
        while True:
            cutoff = self.clock.wall() - self.config.records.retention
            removed = await events.prune(cutoff)
            if removed:
                log.info("pruned %d events older than the retention period", removed)
            self.metrics.event_log_errors.set(events.write_errors)
            self.metrics.event_queue_depth.set(self.bus.depth())
            await asyncio.sleep(PRUNE_EVERY)


class _Stop(Exception):
    """Raised inside the task group to end every background task."""


async def serve(config_path: Path) -> int:
    """Run the daemon with signal handling: SIGTERM/SIGINT stop, SIGHUP reloads."""
    daemon = Daemon(config_path)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0
