"""The daemon: loads the configuration, runs the monitor, the controller, the API and the
background loops, and stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from failover.controller import Controller, VerdictSource
from failover.controller.decide import site_backend
from failover.incidents.manager import IncidentManager
from failover.incidents.model import OutboxRow
from failover.lb import (
    GlobalLoadBalancer,
    LocalLoadBalancer,
    RetryPolicy,
    build_global,
    build_local,
)
from failover.lb.recording import RecordingLocalLoadBalancer
from failover.notify.base import Transport
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import Dispatcher
from failover.notify.transports import build_transport
from monitor.heartbeat import HeartbeatBoard, HeartbeatListener
from monitor.history import RunRecorder
from monitor.history_writer import HistoryWriter
from monitor.metrics import AgentCollector, MonitorMetrics
from monitor.sharded import MonitorView, build_monitor
from nodevigil import __version__
from nodevigil.app import systemd
from nodevigil.app.api import (
    cluster_routes,
    failover_routes,
    incident_routes,
    replay_routes,
    sla_routes,
    status_page,
)
from nodevigil.app.api.app import ApiContext, NodeView, api_runner, build_app
from nodevigil.app.api.auth import TokenBook
from nodevigil.app.api.status_snapshot import StatusSnapshot
from nodevigil.app.gctuning import freeze_after_first_rounds, freeze_long_lived
from nodevigil.app.kinds import EVENT_KINDS
from nodevigil.app.leader_marks import LeaderMarker
from nodevigil.app.leadership import LeaderLease, Leadership, SoleLeadership
from nodevigil.app.metrics import DaemonMetrics
from nodevigil.app.sla_bridge import SlaBridge, utc
from nodevigil.app.startup import startup_line
from nodevigil.app.upkeep import Upkeep
from nodevigil.app.vantages import Vantages, advertise_url, default_canaries
from nodevigil.core.authority import TrafficGate
from nodevigil.core.clock import Clock, SystemClock
from nodevigil.core.config import Config, load_config
from nodevigil.core.config.schema import Api, SecretRef, split_host_port
from nodevigil.core.config.secrets import SecretKind, load_secret
from nodevigil.core.errors import ConfigError, StartError, StateError
from nodevigil.core.events import EventBus
from nodevigil.core.resources import raise_descriptor_limit
from nodevigil.core.signals import EarlySignals
from nodevigil.core.tlsfiles import TlsFileError, server_context
from nodevigil.state.backend import Backend, PostgresBackend, backend_for
from nodevigil.state.lock import StateLock
from nodevigil.state.postgres.watch import DatabaseWatch, database_up_gauge
from nodevigil.state.statedir import StateDirWatch
from sla.ledger import Ledger

if TYPE_CHECKING:
    from nodevigil.state.etcd.client import EtcdClient

log = logging.getLogger(__name__)

# Inside one controller cycle a load balancer gets a short retry; the next cycle retries again.
LB_RETRY = RetryPolicy(attempts=2, total=1.5, initial=0.05, maximum=0.5)


class Daemon:
    """One nodevigil process: ``await Daemon(path).run()`` until ``request_stop()``."""

    def __init__(
        self,
        config_path: Path,
        *,
        clock: Clock | None = None,
        tune_gc: bool = False,
        observe: bool = False,
    ) -> None:
        self.config_path = config_path
        self.base_dir = config_path.resolve().parent
        self.clock = clock or SystemClock()
        # The garbage collector is the process's: tuned by ``serve`` (a process of its own),
        # left alone when a test or a tool runs the daemon inside a bigger process.
        self._tune_gc = tune_gc
        # ``run --observe``: observe mode for the life of the process, whatever the file says.
        self._observe = observe
        # The same validation as check-config, secrets read and checked included.
        self.config = self._load()
        self.registry = CollectorRegistry()
        self.bus = EventBus()
        self.metrics = DaemonMetrics(self.registry)
        self.board = HeartbeatBoard(self.clock)
        self._stop = asyncio.Event()
        self.api_port: int | None = None
        self.api_app: web.Application | None = None  # what the API serves, for tests
        self._background: set[asyncio.Task[None]] = set()
        self._last_cycle_seen: float | None = None
        self._last_progress = self.clock.monotonic()
        self.started = False  # True once the API serves and the background tasks run
        self.on_started: Callable[[], None] | None = None
        self._etcd: EtcdClient | None = None  # in a cluster: one client for lease and votes
        self.vantages: Vantages | None = None  # with cluster.vantages: this host's votes
        self.monitor: MonitorView  # set by run(): in this process or over worker processes

    def request_stop(self) -> None:
        """Ask the daemon to stop cleanly."""
        systemd.stopping()
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the configuration; keep the old one when the new one is invalid."""
        systemd.reloading()
        try:
            return self._reload()
        finally:
            systemd.ready(self._summary())  # READY=1 must follow RELOADING=1, even on refusal

    def _load(self) -> Config:
        """The configuration file, validated; with ``--observe``, in observe mode."""
        config = load_config(self.config_path, event_kinds=EVENT_KINDS, secrets=True)
        if self._observe and config.failover.mode != "observe":
            failover = config.failover.model_copy(update={"mode": "observe"})
            config = config.model_copy(update={"failover": failover})
        return config

    def _summary(self) -> str:
        c = self.config
        text = f"{len(c.nodes)} nodes, {len(c.sites)} sites, {len(c.services)} services"
        if c.failover.mode == "observe":
            text += "; observe mode: nothing is written to the load balancers"
        controller: Controller | None = getattr(self, "controller", None)
        problems = [] if controller is None else controller.not_ready()
        if controller is not None and controller.last_cycle_at is not None and problems:
            text += "; not ready: " + "; ".join(problems)
        return text

    def _reload(self) -> bool:
        try:
            config = self._load()
            transports = (
                self._build_transports(config)
                if config.notifiers != self.config.notifiers or config.mqtt != self.config.mqtt
                else None
            )
            self.controller.update_config(config)  # refuses load balancers it has no adapter for
        except ConfigError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            self.metrics.config_reload_ok.set(0)
            systemd.status(f"reload rejected ({exc}); running configuration kept")
            return False
        self.metrics.config_reload_ok.set(1)
        previous, self.config = self.config, config
        if transports is not None:
            replaced = self.dispatcher.replace_transports(transports)
            self._spawn(self._close_transports(replaced), "close-old-notifiers")
        self._spawn(self.incidents.sync_config_windows(), "sync-maintenance")
        self.monitor.apply_config(config)
        if self.vantages is not None:
            self.vantages.apply_config(config)
        if self._tune_gc:
            freeze_long_lived()
            self._spawn(freeze_after_first_rounds(self.clock.sleep), "gc-freeze")
        self.context.config = config
        self.context.tokens = TokenBook(config.api.tokens)
        self.metrics.config_reloads.set(self.clock.wall())
        log.info("configuration reloaded: %d nodes, %d sites", len(config.nodes), len(config.sites))
        later = restart_only_changes(previous, config)
        if later:
            # Said out loud: a rotated TSIG secret or a moved HAProxy socket silently ignored
            # until some later restart is how failover breaks on the day it is needed.
            log.warning(
                "reload: these changes take effect only at the next restart: %s", ", ".join(later)
            )
            systemd.status("reloaded; restart to apply: " + ", ".join(later))
        return True

    async def run(self) -> None:
        """Run until asked to stop."""
        config = self.config
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state_dir {config.state_dir}: {exc}") from exc
        with StateLock(config.state_dir):
            async with contextlib.AsyncExitStack() as stack:
                await self._run(config, stack)
        log.info("stopped")

    async def _run(self, config: Config, stack: contextlib.AsyncExitStack) -> None:
        # The API's port is taken before anything acts: a port already in use must stop the
        # start with one clear line, not after HAProxy and DNS have been written.
        api_socket = bind_api(config.api.listen)
        stack.callback(api_socket.close)
        # Secrets too: an unreadable one is a ConfigError naming its key, before anything acts.
        listener = self._heartbeat_listener(config)
        transports = self._build_transports(config)
        etcd_password = self._etcd_password(config)
        # SQLite files in state_dir, or PostgreSQL (database:): opened before anything acts.
        state = backend_for(config, self.base_dir)
        await state.open()
        stack.push_async_callback(state.close)
        self.state_backend = state
        events = state.event_log()
        await events.open()
        stack.push_async_callback(events.close)
        self.bus.add_sink(events.append)
        self.registry.register(AgentCollector(self.board))
        self.metrics.config_reloads.set(self.clock.wall())
        # Who may act: the holder of the leader lease in etcd (cluster:), else this process.
        # Campaigning starts before anything that acts, which all ask it before each action.
        self.leadership = await self._leadership(config, etcd_password, stack)
        # Fencing: the stores and the DNS adapters check the lease's epoch (docs/operations.md,
        # "Fencing"); on one host the epoch is None and nothing changes.
        state.fence(self.leadership)
        # Observe mode's one gate: every load-balancer adapter and the controller move traffic
        # only through it, and it stays shut while failover.mode is observe (a reload opens it).
        self.traffic = TrafficGate(self.leadership, lambda: self.config.failover.mode == "observe")
        local_lbs, global_lbs = await stack.enter_async_context(self._adapters(config))
        store = state.controller_store()
        stack.push_async_callback(store.close)
        # With cluster.vantages the probes' verdicts are this host's votes (a private bus), and
        # what the controller and the API read is the quorum's verdict (app/vantages.py).
        voting = config.cluster is not None and bool(config.cluster.vantages)
        local_bus = EventBus() if voting else self.bus
        # The probe history (for replay): every judged result folded into runs, saved every
        # half records.history_save_every; its last save follows the monitor's stop.
        history = state.history_store()
        await history.open()
        stack.push_async_callback(history.close)
        self.history_store = history  # read by replay (nodevigil.app)
        self.history_writer = HistoryWriter(
            RunRecorder(),
            history,
            every=lambda: self.config.records.history_save_every,
            sleep=self.clock.sleep,
        )
        stack.push_async_callback(self.history_writer.close)
        # In this process, or over ``monitor.workers`` processes (monitor/sharded.py).
        self.monitor = await stack.enter_async_context(
            build_monitor(
                config,
                bus=local_bus,
                clock=self.clock,
                metrics=MonitorMetrics(self.registry),
                board=self.board,
                registry=self.registry,
                history=self.history_writer.recorder,
            )
        )
        nodes: NodeView = self.monitor
        verdicts: VerdictSource = self.monitor
        if voting:
            self.vantages = await self._vantages(config, local_bus, stack)
            nodes = verdicts = self.vantages
        self.controller = await stack.enter_async_context(
            Controller(
                config=config,
                verdicts=verdicts,
                bus=self.bus,
                clock=self.clock,
                local_lbs=local_lbs,
                global_lbs=global_lbs,
                store=store,
                registry=self.registry,
                authority=self.leadership,
                traffic=self.traffic,
            )
        )
        if self._tune_gc:
            freeze_long_lived()
        self.context = ApiContext(
            config=config,
            registry=self.registry,
            monitor=nodes,
            events=events,
            tokens=TokenBook(config.api.tokens),
            clock=self.clock,
            # Ready while the controller's last cycle read every load balancer back; until
            # then /readyz says which one it could not read and why.
            readiness=[self.controller.not_ready],
            cluster=self.leadership.view if config.cluster is not None else None,
        )
        incident_store = state.incident_store()
        await incident_store.open()
        stack.push_async_callback(incident_store.close)
        self.incident_store = incident_store
        notify_metrics = NotifyMetrics(self.registry)
        self.dispatcher = Dispatcher(
            incident_store,
            transports,
            settings=lambda: self.config.notifications,
            clock=self.clock,
            metrics=notify_metrics,
            bus=self.bus,
            vantage=lambda: self.config.vantage,
            on_delivered=self._first_notice,
            authority=self.leadership,
            hold_customers=lambda: self.config.failover.mode == "observe",
        )
        stack.push_async_callback(lambda: self._close_transports(self.dispatcher.transports))
        self.notify_metrics = notify_metrics
        self.incidents = IncidentManager(
            incident_store,
            config=lambda: self.config,
            bus=self.bus,
            clock=self.clock,
            unavailable=self._unavailable_services,
            metrics=notify_metrics,
            outbox_changed=self.dispatcher.wake,
            authority=self.leadership,
            installation=await state.installation_id(),
        )
        await self.incidents.start()
        ledger = await Ledger.open(
            state.ledger_store(),
            timezone=config.timezone,
            rounding=config.sla.rounding,
            settlement_delay=config.sla.settlement_delay,
            now=lambda: utc(self.clock.wall()),
        )
        stack.push_async_callback(ledger.close)
        bridge = SlaBridge(
            ledger,
            bus=self.bus,
            clock=self.clock,
            services=lambda: [s.name for s in self.config.services],
            unavailable=self._unavailable_services,
            state_dir=config.state_dir,
            registry=self.registry,
            incidents=self.incidents,
            transient=state.transient_errors,
            authority=self.leadership,
            in_cluster=config.cluster is not None,
        )
        await bridge.record_downtime()  # before the first mark replaces the last one
        await bridge.load_totals()  # the SLA series exist from the first scrape
        leader_marks = self._leader_marks(config, state, bridge)
        state_watch = StateDirWatch(
            config.state_dir,
            bus=self.bus,
            clock=self.clock,
            registry=self.registry,
            vantage=config.vantage,
            stopping=self._stop.is_set,  # only a requested stop leaves a clean mark
        )
        await state_watch.mark()
        # nodevigil_database_up on both backends (one alert rule); only PostgreSQL can be away.
        database_up = database_up_gauge(self.registry, state.name)
        database_watch: DatabaseWatch | None = None
        if isinstance(state, PostgresBackend):
            database_watch = state.database_watch(
                bus=self.bus, clock=self.clock, gauge=database_up, vantage=config.vantage
            )
            watch = database_watch
            self.context.readiness.append(
                lambda: [] if watch.up else ["the database (postgres) cannot be reached"]
            )
        app = build_app(
            self.context,
            [
                *failover_routes.routes(),
                *sla_routes.routes(),
                *incident_routes.routes(),
                *status_page.routes(),
                *cluster_routes.routes(),
                *replay_routes.routes(),
            ],
        )
        app[cluster_routes.LEADERSHIP] = self.leadership
        if self.vantages is not None:
            app[cluster_routes.VANTAGES] = self.vantages.view
        app[failover_routes.CONTROLLER] = self.controller
        app[sla_routes.LEDGER] = ledger
        app[incident_routes.INCIDENTS] = self.incidents
        app[incident_routes.INCIDENT_STORE] = incident_store
        app[incident_routes.DISPATCHER] = self.dispatcher
        app[replay_routes.HISTORY] = self.history_store
        snapshot: status_page.Snapshot = StatusSnapshot(
            controller=self.controller,
            incidents=self.incidents,
            store=incident_store,
            config=lambda: self.config,
            clock=self.clock,
            ledger=ledger,
        )
        app[status_page.SNAPSHOT] = snapshot
        upkeep = Upkeep(
            events=events,
            store=store,
            incidents=incident_store,
            ledger=ledger,
            bus=self.bus,
            metrics=self.metrics,
            clock=self.clock,
            retention=lambda: self.config.records.retention,
            history=history,
        )
        await self._serve(app, config, api_socket, stack)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(events.run(), name="event-log")
                tg.create_task(self.metrics.watch_loop_lag(), name="loop-lag")
                tg.create_task(state_watch.run(), name="state-dir")
                if database_watch is not None:
                    tg.create_task(database_watch.run(), name="database")
                tg.create_task(upkeep.run(), name="upkeep")
                tg.create_task(self.history_writer.run(), name="probe-history")
                tg.create_task(bridge.run(), name="sla-ledger")
                if leader_marks is not None:
                    tg.create_task(leader_marks.run(), name="leader-marks")
                tg.create_task(self.dispatcher.run(), name="outbox")
                tg.create_task(self.incidents.run(), name="incidents")
                if listener is not None:
                    tg.create_task(listener.run(), name="mqtt-heartbeats")
                interval = systemd.watchdog_interval()
                if interval is not None:
                    tg.create_task(
                        systemd.feed_watchdog(self._healthy, interval, sleep=self.clock.sleep),
                        name="watchdog",
                    )
                tg.create_task(self._announce_ready(), name="sd-ready")
                if self._tune_gc:
                    tg.create_task(freeze_after_first_rounds(self.clock.sleep), name="gc-freeze")
                self.context.ready = True
                self.started = True
                if self.on_started is not None:
                    self.on_started()
                await self._stop.wait()
                # A planned stop (SIGTERM) of the leader hands over at once, not after a TTL.
                await self.leadership.step_down()
                raise _Stop
        except* _Stop:
            pass
        finally:
            self.started = False
            self.context.ready = False

    async def _serve(
        self,
        app: web.Application,
        config: Config,
        api_socket: socket.socket,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self.api_app = app
        runner = api_runner(app, config.api)  # with the api section's request limits
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        tls = api_tls(config.api, self.base_dir)
        await web.SockSite(runner, api_socket, ssl_context=tls).start()
        host, self.api_port = api_socket.getsockname()[:2]
        scheme = "http" if config.api.tls is None else "https"
        mutual = config.api.tls is not None and config.api.tls.client_ca_file is not None
        log.info(
            "API listening on %s://%s:%d%s",
            scheme,
            host,
            self.api_port,
            " (mutual TLS)" if mutual else "",
        )

    @contextlib.asynccontextmanager
    async def _adapters(
        self, config: Config
    ) -> AsyncIterator[tuple[dict[str, LocalLoadBalancer], dict[str, GlobalLoadBalancer]]]:
        local_names = {s.local_lb for s in config.sites if s.local_lb}
        global_names = {s.global_lb for s in config.services if s.global_lb}
        local = {
            n: build_local(
                n,
                config.load_balancers[n],
                self.base_dir,
                retry=LB_RETRY,
                authority=self.traffic,
            )
            for n in sorted(local_names)
        }
        global_ = {
            n: build_global(
                n,
                config.load_balancers[n],
                self.base_dir,
                retry=LB_RETRY,
                authority=self.traffic,
            )
            for n in sorted(global_names)
        }
        for site in config.sites:
            recording = local.get(site.local_lb or "")
            if isinstance(recording, RecordingLocalLoadBalancer):
                # The in-process stand-in starts with the configured servers, all in.
                for node in config.nodes:
                    if node.site == site.name:
                        recording.add_server(site_backend(config, site), node.server_name)
        try:
            yield local, global_
        finally:
            adapters: list[LocalLoadBalancer | GlobalLoadBalancer] = [
                *local.values(),
                *global_.values(),
            ]
            for adapter in adapters:
                with contextlib.suppress(Exception):
                    await adapter.close()

    async def _announce_ready(self) -> None:
        """Tell systemd (Type=notify) once the controller has reconciled for the first time;
        log the start-up line: version, configuration, counts, what each LB read back."""
        while self.controller.last_cycle_at is None:
            await self.clock.sleep(0.1)
        status = self.controller.status()
        log.info("%s", startup_line(__version__, self.config_path, self.config, status))
        systemd.ready(self._summary())

    def _healthy(self) -> bool:
        """For the watchdog: the controller keeps completing cycles (judged on the monotonic
        clock, so a wall-clock step never looks like a stall)."""
        cycle = self.controller.last_cycle_at
        now = self.clock.monotonic()
        if cycle != self._last_cycle_seen:
            self._last_cycle_seen, self._last_progress = cycle, now
        if cycle is None:
            return True  # still starting: TimeoutStartSec covers a start that never ends
        return now - self._last_progress < max(5 * self.config.failover.cycle, 10.0)

    def _leader_marks(
        self, config: Config, state: Backend, bridge: SlaBridge
    ) -> LeaderMarker | None:
        """In a cluster, the leader's marks in the shared database: a new leader books the time
        without one as ``unknown`` (docs/sla.md). None on a single host (the alive file)."""
        if config.cluster is None or not isinstance(state, PostgresBackend):
            return None
        from nodevigil.state.postgres.leader_marks import PostgresLeaderMarks

        marker = LeaderMarker(
            PostgresLeaderMarks(state.pool),
            authority=self.leadership,
            me=config.vantage,
            clock=self.clock,
            takeover=bridge.record_takeover,
            bus=self.bus,
            transient=state.transient_errors,
        )
        if isinstance(self.leadership, LeaderLease):
            self.leadership.on_step_down(marker.stepping_down)  # the last mark, a clean one
        return marker

    async def _leadership(
        self, config: Config, password: str | None, stack: contextlib.AsyncExitStack
    ) -> Leadership:
        """``SoleLeadership`` without ``cluster:``; else the leader lease, campaigning."""
        cluster = config.cluster
        if cluster is None:
            return SoleLeadership(config.vantage)
        client = await self._etcd_client(config, password, stack)
        lease = LeaderLease(
            client,
            me=config.vantage,
            ttl=cluster.lease_ttl,
            renew_every=cluster.renew_every or cluster.lease_ttl / 3,
            timeout=cluster.etcd.timeout,
            clock=self.clock,
            bus=self.bus,
            registry=self.registry,
            advertise=advertise_url(config),
        )
        return await stack.enter_async_context(lease)

    async def _etcd_client(
        self, config: Config, password: str | None, stack: contextlib.AsyncExitStack
    ) -> EtcdClient:
        """The one etcd client of this process (the lease and the votes share it)."""
        if self._etcd is not None:
            return self._etcd
        from nodevigil.state.etcd.client import EtcdClient

        assert config.cluster is not None
        etcd = config.cluster.etcd
        tls = None
        if etcd.tls is not None:
            cert, key = (
                None if p is None else str(self.base_dir / p)
                for p in (etcd.tls.cert_file, etcd.tls.key_file)
            )
            assert etcd.tls.ca_file is not None  # required by the schema (EtcdTls)
            tls = (str(self.base_dir / etcd.tls.ca_file), cert, key)
        try:
            client = EtcdClient(
                etcd.endpoints,
                prefix=etcd.prefix,
                timeout=etcd.timeout,
                tls=tls,
                username=etcd.username,
                password=password,
            )
        except ValueError as exc:
            raise ConfigError([f"cluster.etcd: {exc}"]) from None
        self._etcd = await stack.enter_async_context(client)
        return client

    async def _vantages(
        self, config: Config, local_bus: EventBus, stack: contextlib.AsyncExitStack
    ) -> Vantages:
        """This host as one vantage: its votes in etcd, everyone's combined (app/vantages.py)."""
        from nodevigil.state.etcd.votes import VoteStore

        cluster = config.cluster
        assert cluster is not None
        client = await self._etcd_client(config, self._etcd_password(config), stack)
        store = VoteStore(
            client,
            vantage=config.vantage,
            ttl=cluster.lease_ttl,
            renew_every=cluster.renew_every or cluster.lease_ttl / 3,
            clock=self.clock,
            registry=self.registry,
        )
        leadership = self.leadership

        def peers() -> list[str]:
            if not isinstance(leadership, LeaderLease):
                return []
            return [m.api for m in leadership.members() if m.api and m.name != config.vantage]

        vantages = Vantages(
            config=config,
            monitor=self.monitor,
            local_bus=local_bus,
            bus=self.bus,
            store=store,
            canaries=lambda: default_canaries(self.config.cluster or cluster, peers),
            clock=self.clock,
            registry=self.registry,
        )
        await stack.enter_async_context(store)  # after Vantages subscribed: the whole snapshot
        return await stack.enter_async_context(vantages)

    def _etcd_password(self, config: Config) -> str | None:
        """The etcd password (cluster.etcd.password_file), read before anything acts."""
        etcd = None if config.cluster is None else config.cluster.etcd
        if etcd is None or etcd.password_file is None:
            return None
        return self._secret(SecretRef(secret_file=etcd.password_file), "cluster.etcd.password_file")

    def _heartbeat_listener(self, config: Config) -> HeartbeatListener | None:
        """The MQTT listener with its secrets read, or None without an ``mqtt`` section."""
        if config.mqtt is None:
            return None
        mqtt = config.mqtt
        password = self._secret(mqtt.password, "mqtt.password")
        secret = self._secret(mqtt.agent_secret, "mqtt.agent_secret", "agent")
        self.board.trust(secret, max_clock_skew=mqtt.max_clock_skew)
        return HeartbeatListener(mqtt, self.board, password, base_dir=self.base_dir)

    def _secret(self, ref: SecretRef | None, key: str, kind: SecretKind = "text") -> str | None:
        """The secret ``ref`` points at (None when unset), read and checked as check-config
        does; a ConfigError names ``key``."""
        if ref is None:
            return None
        return load_secret(key, ref, self.base_dir, kind)

    def _build_transports(self, config: Config) -> dict[str, Transport]:
        """One transport per notifier; an unreadable or malformed secret is a ConfigError."""
        return {
            name: build_transport(name, notifier, self.base_dir, config.mqtt)
            for name, notifier in config.notifiers.items()
        }

    async def _close_transports(self, transports: dict[str, Transport]) -> None:
        for transport in transports.values():
            try:
                await transport.close()
            except Exception:  # closing must not stop the others from closing
                log.exception("notifier %s did not close cleanly", transport.name)

    def _spawn(self, coro: Any, name: str) -> None:
        """Run a short job beside the main tasks (reload's asynchronous parts)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _first_notice(self, row: OutboxRow, at: float) -> None:
        """Time from an outage's start to the first customer notice (the contract: at once)."""
        if row.incident is None or row.customer is None:
            return
        incident = await self.incident_store.record_first_notice(row.incident, at)
        if incident is not None:
            seconds = max(0.0, at - incident.started_at)
            self.notify_metrics.first_notice.observe(seconds)
            log.info(
                "incident %d: first customer notice %.2fs after the outage began",
                incident.id,
                seconds,
            )

    def _unavailable_services(self) -> dict[str, float] | None:
        # Asked every second (incidents, SLA): services only, never the 10,000-node snapshot.
        last_cycle_at = self.controller.last_cycle_at
        if last_cycle_at is None:
            return None
        return {
            s.name: s.unavailable_since or last_cycle_at
            for s in self.controller.services()
            if not s.available
        }


def api_tls(api: Api, base_dir: Path) -> ssl.SSLContext | None:
    """The API's server TLS context from ``api.tls`` (files relative to ``base_dir``, as
    check-config reads them), or None for plain HTTP; a StartError names the file at fault."""
    if api.tls is None:
        return None
    tls = api.tls
    try:
        return server_context(
            base_dir / tls.cert_file,
            base_dir / tls.key_file,
            None if tls.client_ca_file is None else base_dir / tls.client_ca_file,
        )
    except TlsFileError as exc:
        raise StartError(f"api.tls.{exc.key}: {exc.reason}") from exc


def bind_api(listen: str) -> socket.socket:
    """The API's listening socket, bound now; a clear StartError when the address is taken."""
    host, port = split_host_port(listen)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartError(f"api.listen: cannot listen on {listen}: {reason}") from exc


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The changed settings a reload cannot apply (the process opened or built them at start)."""
    changed = [
        key
        for key in ("state_dir", "timezone", "vantage", "mqtt", "sla", "monitor")
        if getattr(old, key) != getattr(new, key)
    ]
    applied: dict[str, Any] = {"tokens": [], "metrics_token_sha256": None}  # per request
    if old.api.model_copy(update=applied) != new.api.model_copy(update=applied):
        changed.append("api (listen address, limits and tls; tokens were applied)")
    if _cluster_base(old) != _cluster_base(new):
        changed.append("cluster (etcd, lease, advertise, and whether vantages vote)")
    changed += [
        f"load_balancers.{name}"
        for name in sorted(set(old.load_balancers) & set(new.load_balancers))
        if old.load_balancers[name] != new.load_balancers[name]
    ]
    return changed


def _cluster_base(config: Config) -> tuple[Any, bool]:
    """The cluster settings fixed at start; vantages, quorum and isolation follow a reload."""
    cluster = config.cluster
    if cluster is None:
        return None, False
    fixed = cluster.model_copy(update={"vantages": None, "quorum": None, "isolation": None})
    return fixed, bool(cluster.vantages)


class _Stop(Exception):
    """Raised inside the task group to end every background task."""


async def serve(
    config_path: Path, *, early: EarlySignals | None = None, observe: bool = False
) -> int:
    """Run the daemon with signal handling: SIGTERM/SIGINT stop, SIGHUP reloads.

    The handlers are installed before the configuration is read (at 10,000 nodes that takes
    seconds), so a SIGHUP during start-up never kills the daemon: it reloads once the daemon
    has started. ``early`` carries the signals the command line caught before this.
    ``observe`` (``run --observe``) keeps failover in observe mode for the process's life.
    """
    loop = asyncio.get_running_loop()
    daemon: Daemon | None = None
    stop_requested = reload_pending = False

    def on_stop() -> None:
        nonlocal stop_requested
        stop_requested = True
        if daemon is not None:
            daemon.request_stop()

    def on_hup() -> None:
        nonlocal reload_pending
        if daemon is not None and daemon.started:
            daemon.reload()
        else:
            reload_pending = True
            log.info("SIGHUP during start-up: reloading once started")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if early is not None:  # read after the loop's handlers took over: nothing falls between
        stop_requested, reload_pending = early.stop or stop_requested, early.hup or reload_pending
    try:
        raise_descriptor_limit()  # soft up to hard, as LimitNOFILE does (containers: 1,024)
        daemon = Daemon(config_path, tune_gc=True, observe=observe)
        if stop_requested:
            return 0

        def started() -> None:
            nonlocal reload_pending
            if reload_pending:
                reload_pending = False
                assert daemon is not None
                daemon.reload()

        daemon.on_started = started
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0
