"""Notification benchmark: outage to customer notice through the real daemon, and outbox throughput.

Run as ``.venv/bin/python bench/notify_bench.py`` (``--quick`` for fewer rounds and messages).

``--backend sqlite|postgres|both`` (default both): the daemon's state and the outbox on SQLite
files (as shipped, ``synchronous=FULL``) and/or on PostgreSQL 15 (``tests/postgres_server.py``,
loopback TCP with a password, ``fsync=off``), side by side in one run. Latency: A B B A blocks of
half the outages each, a fresh daemon and state per block. Throughput: the outbox on each backend
is one more mode in the interleaved rounds; ``server CPU`` is PostgreSQL's processes.

1. **Outage to customer notice** (contract clause VIII.6: "immediately"). The real daemon runs
   in this process (``nodevigil.app.daemon.Daemon``) with one node, an HTTP target this benchmark
   switches between 200 and 503, one site, one service and one customer whose contingency plan
   sends a signed webhook at once and on resolution. Probes every 200 ms, timeout 100 ms,
   fall 2, rise 1; controller cycle 200 ms; flap damping out of the way; ``reopen_window: 0s``
   so every round opens a new incident (and the daemon's first-notice histogram counts it).
   Each round: a random phase, then T0 = the target starts answering 503, then the customer's
   signed ``incident.opened`` webhook arrives at a receiver in this process that checks the
   Standard Webhooks signature with its own code; then the target recovers and the round ends
   when ``incident.resolved`` arrives. Times come from the daemon's own event bus
   (``service.unavailable`` carries ``started_at``; ``incident.opened`` is published after the
   incident and its outbox rows are committed) and from the receiver's clock (same process).
   Peer: a bare signed POST of the same body from this process (one aiohttp session, no outbox),
   timed from before signing to the receiver's arrival stamp, a few per round.
2. **Outbox throughput**. K notifications enqueued in an ``SqliteIncidentStore`` (temp dir on disk,
   ``synchronous=FULL``) or a ``PostgresIncidentStore`` (a fresh database, a pool as the
   daemon's) and delivered by ``Dispatcher`` through the real ``WebhookTransport``;
   against ``WebhookTransport.send`` called directly and a bare signed aiohttp POST, both with
   the same concurrency (``notifications.concurrency``, 4). The receiver is the light 200-ok
   target of ``bench/common.py`` in its own process, so process CPU (``time.process_time``: every
   thread of this process, the SQLite worker included) is the sender's alone. Rounds interleave
   the three, order rotated each round; medians shown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LOOPBACK, median, postgres_cpu, quantile, start_targets
from failover.events import IncidentOpened, ServiceUnavailable
from failover.incidents.model import OutboxRow, Outgoing
from failover.notify.base import Message
from failover.notify.metrics import NotifyMetrics
from failover.notify.outbox import Dispatcher
from failover.notify.webhook import WebhookTransport
from nodevigil.app.daemon import Daemon
from nodevigil.core.clock import SystemClock
from nodevigil.core.config.schema import Database, Notifications, WebhookNotifier
from nodevigil.core.durations import parse_duration
from nodevigil.core.events import Event, EventBus
from nodevigil.state.postgres.incidents import PostgresIncidentStore
from nodevigil.state.postgres.pool import open_pool
from nodevigil.state.sqlite.incidents import SqliteIncidentStore
from tests.postgres_server import PostgresAddress, postgres_for_session

INTERVAL = "200ms"
TIMEOUT = "100ms"
FALL = 2
RISE = 1
CYCLE = "200ms"
TOLERANCE = 300.0  # seconds a webhook-timestamp may be off (the spec's recommendation)
PEER_PER_ROUND = 3
ROUND_LIMIT = 30.0  # a round that takes longer than this is a failure, not a data point
NOTIFIER = "acme-hook"
# The state backends compared; PostgreSQL is tests/postgres_server.py's (fsync=off: commits are
# not synced there, while SQLite as shipped syncs each one).
BACKENDS = {"sqlite": "SQLite (sync=FULL)", "postgres": "PostgreSQL (fsync=off)"}


# --- Standard Webhooks, written here from the spec (not the product's code) -------------------


def new_secret() -> str:
    """A fresh ``whsec_`` secret with a 32-byte key."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(key: bytes, headers: Any, body: bytes, now: float) -> str | None:
    """None when the delivery is correctly signed and fresh, else why not."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not msg_id or not stamp or not given:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        if abs(now - int(stamp)) > TOLERANCE:
            return f"webhook-timestamp {stamp} is too far from now"
    except ValueError:
        return f"webhook-timestamp {stamp!r} is not an integer"
    expected = signature(key, msg_id, stamp, body).encode()
    for candidate in given.split(" "):
        with contextlib.suppress(binascii.Error, ValueError):
            if hmac.compare_digest(candidate.encode(), expected):
                return None
    return "no v1 signature matches"


def signed_headers(key: bytes, msg_id: str, body: bytes) -> dict[str, str]:
    """What a bare sender puts on a webhook POST."""
    stamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": signature(key, msg_id, stamp, body),
    }


def envelope_body(message: Message) -> bytes:
    """The JSON envelope a webhook carries (compact, sorted keys, as a sender would build it)."""
    return json.dumps(
        message.envelope(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


# --- in-process servers ----------------------------------------------------------------------


@dataclass
class Arrival:
    """One accepted webhook: when it was fully read and verified, and what it said."""

    at: float
    path: str
    webhook_id: str
    body: bytes
    payload: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.payload.get("type", ""))


@dataclass
class Receiver:
    """A webhook receiver that checks every signature; answers 200, or 400 when it is wrong."""

    secret: str
    arrivals: list[Arrival] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        key = secret_key(self.secret)

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            now = time.time()
            problem = verify(key, request.headers, body, now)
            if problem is not None:
                self.rejected.append(problem)
                return web.Response(status=400, text=problem)
            self.arrivals.append(
                Arrival(now, request.path, request.headers["webhook-id"], body, json.loads(body))
            )
            self._changed.set()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, predicate: Callable[[Arrival], bool], within: float) -> Arrival:
        """The first arrival matching ``predicate``, waiting up to ``within`` seconds."""
        async with asyncio.timeout(within):
            while True:
                for arrival in self.arrivals:
                    if predicate(arrival):
                        return arrival
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Target:
    """The one node: answers GET / with 200 while healthy, 503 while not."""

    healthy: bool = True
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.healthy else 503, text="node")

        app = web.Application()
        app.router.add_get("/", handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}/"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class LogTally(logging.Handler):
    """Counts the daemon's log records at WARNING and above by message template."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[(record.levelname, str(record.msg))] += 1


# --- 1. outage to customer notice -------------------------------------------------------------


def write_config(
    folder: Path,
    *,
    target: str,
    hook: str,
    secret: str,
    database: dict[str, str] | None = None,
) -> Path:
    """A complete daemon config: one node, one site, one service, one customer with a plan;
    state in SQLite files under the folder, or in PostgreSQL with ``database``."""
    (folder / "acme.whsec").write_text(secret + "\n")
    data: dict[str, Any] = {
        "timezone": "UTC",
        "state_dir": str(folder / "state"),
        "api": {"listen": f"{LOOPBACK}:0", "tokens": []},
        "defaults": {
            "interval": INTERVAL,
            "timeout": TIMEOUT,
            "rise": RISE,
            "fall": FALL,
            # 2 verdict changes a round: damping would hold the node down after a few rounds.
            "flap": {"window": "1s", "max_changes": 1000, "hold": "1s"},
        },
        "failover": {
            "cycle": CYCLE,
            "hold_down": "200ms",
            "hold_down_max": "1s",
            "site_hold_down": "200ms",
        },
        "load_balancers": {"lb": {"type": "recording"}},
        "sites": [{"name": "s", "address": "192.0.2.1", "local_lb": "lb"}],
        "nodes": [{"name": "a", "site": "s", "probes": [{"type": "http", "url": target}]}],
        "services": [{"name": "web", "sites": ["s"]}],
        "customers": [{"id": "acme", "services": ["web"], "plan": "gold"}],
        "contingency_plans": {
            "gold": {"steps": [{"after": "0s", "notify": [NOTIFIER]}], "on_resolve": [NOTIFIER]}
        },
        "notifiers": {
            NOTIFIER: {"type": "webhook", "url": f"{hook}/customer", "secret_file": "acme.whsec"}
        },
        "incidents": {"reopen_window": "0s"},
    }
    if database is not None:
        data["database"] = database
    path = folder / "nodevigil.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class NoticeRound:
    """One outage: every time is wall seconds."""

    t0: float
    verdict_at: float  # the monitor published node.down
    started_at: float  # the controller decided no site can serve (the incident's started_at)
    published_at: float  # the controller published service.unavailable
    committed_at: float  # incident + outbox committed (incident.opened published on the bus)
    arrival: float  # the signed incident.opened webhook was read and verified
    peer: list[float]  # bare signed POSTs of the same body: send -> arrival

    @property
    def total(self) -> float:
        return self.arrival - self.t0

    @property
    def detection(self) -> float:
        return self.started_at - self.t0

    @property
    def notification(self) -> float:
        return self.arrival - self.started_at


@dataclass
class BusWatch:
    """Every node.*, service.* and incident.* event the daemon publishes."""

    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, daemon: Daemon) -> None:
        sub = daemon.bus.subscribe(["node.", "service.", "incident."])
        try:
            async for event in sub:
                self.events.append(event)
                self.changed.set()
        finally:
            sub.close()

    async def wait_for(self, predicate: Callable[[Event], bool], within: float) -> Event:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self.changed.clear()
                await self.changed.wait()


def progress(text: str) -> None:
    """A progress line on a terminal's stderr (nothing when redirected)."""
    if sys.stderr.isatty():
        print(f"\r  {text:<40}", end="", file=sys.stderr, flush=True)


async def poll(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {within:g}s")
        await asyncio.sleep(0.02)


def service_healthy(daemon: Daemon) -> bool:
    status = daemon.controller.status()
    return (
        status.last_cycle_at is not None
        and all(n.verdict == "up" for n in status.nodes)
        and all(s.available for s in status.services)
    )


async def peer_post(
    session: aiohttp.ClientSession, receiver: Receiver, key: bytes, body: bytes, msg_id: str
) -> float:
    """One bare signed POST of ``body``: seconds from before signing to the receiver's stamp."""
    sent = time.time()
    headers = signed_headers(key, msg_id, body)
    async with session.post(f"{receiver.url}/peer", data=body, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"peer POST answered {response.status}")
    arrival = await receiver.wait_for(lambda a: a.webhook_id == msg_id, 5)
    return arrival.at - sent


async def one_outage(
    n: int,
    *,
    daemon: Daemon,
    target: Target,
    receiver: Receiver,
    bus: BusWatch,
    session: aiohttp.ClientSession,
    key: bytes,
    rng: random.Random,
) -> NoticeRound:
    """Fail the target at T0, wait for the customer's notice, recover, wait for the resolution."""
    await poll(lambda: service_healthy(daemon), ROUND_LIMIT, "service healthy")
    await asyncio.sleep(0.3 + rng.uniform(0, 0.2))  # a random phase against the probe schedule
    t0 = time.time()
    target.healthy = False

    def opened(a: Arrival) -> bool:
        return a.path == "/customer" and a.kind == "incident.opened" and a.at > t0

    notice = await receiver.wait_for(opened, ROUND_LIMIT)
    unavailable = await bus.wait_for(
        lambda e: isinstance(e, ServiceUnavailable) and e.started_at > t0, 5
    )
    assert isinstance(unavailable, ServiceUnavailable)
    verdict = await bus.wait_for(lambda e: e.kind == "node.down" and e.at > t0, 5)
    incident_id = int(notice.payload["data"]["incident"]["id"])
    committed = await bus.wait_for(
        lambda e: isinstance(e, IncidentOpened) and e.incident == incident_id, 5
    )
    peer = [
        await peer_post(session, receiver, key, notice.body, f"peer-{n}-{k}")
        for k in range(PEER_PER_ROUND)
    ]
    target.healthy = True

    def resolved(a: Arrival) -> bool:
        data = a.payload.get("data", {})
        return a.kind == "incident.resolved" and data.get("incident", {}).get("id") == incident_id

    await receiver.wait_for(resolved, ROUND_LIMIT)
    return NoticeRound(
        t0=t0,
        verdict_at=verdict.at,
        started_at=unavailable.started_at,
        published_at=unavailable.at,
        committed_at=committed.at,
        arrival=notice.at,
        peer=peer,
    )


async def scrape_first_notice(port: int, session: aiohttp.ClientSession) -> tuple[float, float]:
    """(count, sum) of the daemon's nodevigil_incident_first_notice_seconds histogram."""
    async with session.get(f"http://{LOOPBACK}:{port}/metrics") as response:
        text = await response.text()
    count = total = float("nan")
    for family in text_string_to_metric_families(text):
        if family.name == "nodevigil_incident_first_notice_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
    return count, total


@dataclass
class NoticeResult:
    rounds: list[NoticeRound]
    warmups: list[NoticeRound]  # one per daemon run (block)
    histogram: tuple[float, float]
    rejected: list[str]
    retries: float

    def merge(self, other: NoticeResult) -> NoticeResult:
        """Both blocks of one backend as one result."""
        return NoticeResult(
            self.rounds + other.rounds,
            self.warmups + other.warmups,
            (self.histogram[0] + other.histogram[0], self.histogram[1] + other.histogram[1]),
            self.rejected + other.rejected,
            self.retries + other.retries,
        )


async def measure_notice(
    rounds: int, seed: int, address: PostgresAddress | None = None
) -> NoticeResult:
    """Run the daemon, one warm-up outage and ``rounds`` measured ones; stop everything.
    State in SQLite files, or in a fresh database on ``address`` (PostgreSQL)."""
    rng = random.Random(seed)
    secret = new_secret()
    key = secret_key(secret)
    receiver = Receiver(secret)
    target = Target()
    bus = BusWatch()
    await receiver.start()
    await target.start()
    dbname = None
    try:
        with tempfile.TemporaryDirectory(prefix="notify-bench-") as folder:
            database = None
            if address is not None:
                dbname = await asyncio.to_thread(address.create_database)
                database = {
                    "url": address.url(dbname),
                    "password_file": str(address.password_file),
                }
            path = write_config(
                Path(folder), target=target.url, hook=receiver.url, secret=secret, database=database
            )
            daemon = Daemon(path)
            follower = asyncio.create_task(bus.follow(daemon), name="bus-watch")
            running = asyncio.create_task(daemon.run(), name="daemon")
            try:
                await poll(
                    lambda: (
                        running.done() or (daemon.api_port is not None and daemon.context.ready)
                    ),
                    30,
                    "daemon ready",
                )
                if running.done():
                    running.result()  # it failed to start: say why
                async with aiohttp.ClientSession() as session:
                    args: dict[str, Any] = {
                        "daemon": daemon,
                        "target": target,
                        "receiver": receiver,
                        "bus": bus,
                        "session": session,
                        "key": key,
                        "rng": rng,
                    }
                    warmup = await one_outage(0, **args)
                    done = []
                    for n in range(1, rounds + 1):
                        done.append(await one_outage(n, **args))
                        progress(f"outage {n}/{rounds}: {done[-1].total * 1000:.0f} ms")
                    progress("")
                    assert daemon.api_port is not None
                    histogram = await scrape_first_notice(daemon.api_port, session)
                    retries = daemon.registry.get_sample_value(
                        "nodevigil_notifications_failed_total", {"notifier": NOTIFIER}
                    )
            finally:
                daemon.request_stop()
                await asyncio.wait_for(running, 30)
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
    finally:
        await target.close()
        await receiver.close()
        if address is not None and dbname is not None:
            await asyncio.to_thread(address.drop_database, dbname)
    return NoticeResult(done, [warmup], histogram, receiver.rejected, retries or 0.0)


async def measure_notice_backends(
    backends: list[str], rounds: int, seed: int, address: PostgresAddress | None
) -> dict[str, NoticeResult]:
    """Each backend's daemon in turn. With two, in A B B A blocks of half the rounds each (a
    fresh daemon and database per block), so drift in the machine's load hits both alike."""
    if len(backends) == 1:
        blocks = [(backends[0], rounds)]
    else:
        first, second = (rounds + 1) // 2, rounds // 2
        a, b = backends
        blocks = [(a, first), (b, first), (b, second), (a, second)]
    out: dict[str, NoticeResult] = {}
    for n, (backend, count) in enumerate(blocks):
        if count == 0:
            continue
        progress(f"{backend} block {n + 1}/{len(blocks)}")
        got = await measure_notice(count, seed + n, address if backend == "postgres" else None)
        out[backend] = out[backend].merge(got) if backend in out else got
    progress("")
    return out


# --- 2. outbox throughput ---------------------------------------------------------------------


class Counting:
    """Mixed into the real store: counts the dispatcher's reads of the outbox."""

    reads = 0

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        self.reads += 1
        return await super().due(now, limit)  # type: ignore[misc, no-any-return]

    async def next_due_at(self) -> float | None:
        self.reads += 1
        return await super().next_due_at()  # type: ignore[misc, no-any-return]

    async def outbox_stats(self, now: float) -> tuple[int, int, float | None]:
        self.reads += 1
        return await super().outbox_stats(now)  # type: ignore[misc, no-any-return]


class CountingSqliteStore(Counting, SqliteIncidentStore):
    """The SQLite store as the daemon opens it (its own file, synchronous=FULL)."""


class CountingPostgresStore(Counting, PostgresIncidentStore):
    """The PostgreSQL store over a pool as the daemon's (``database.pool_size``, 4)."""


@contextlib.asynccontextmanager
async def outbox_store(
    backend: str, folder: Path, tag: str, address: PostgresAddress | None
) -> AsyncIterator[CountingSqliteStore | CountingPostgresStore]:
    """A fresh, open incident store: a new SQLite file, or a new PostgreSQL database."""
    if backend == "sqlite":
        sqlite = CountingSqliteStore(folder / f"{tag}.db")
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    assert address is not None
    name = await asyncio.to_thread(address.create_database)
    try:
        settings = Database(url=address.url(name), password_file=address.password_file)
        pool = await open_pool(settings, None)
        try:
            postgres = CountingPostgresStore(pool, owner="bench")
            await postgres.open()
            yield postgres
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(address.drop_database, name)


def make_messages(k: int, tag: str) -> list[Message]:
    """``k`` customer notices shaped like an incident's (a realistic body size)."""
    now = time.time()
    out = []
    for i in range(k):
        incident = {
            "id": i,
            "service": "web",
            "state": "investigating",
            "cause": "provider",
            "cause_note": "",
            "maintenance": False,
            "started_at": "2026-05-01T10:00:00Z",
            "resolved_at": None,
            "openings": 1,
            "first_notice_at": None,
        }
        out.append(
            Message(
                id=f"{tag}.{i}",
                notifier=NOTIFIER,
                kind="incident.opened",
                subject="web",
                created_at=now,
                data={
                    "incident": incident,
                    "customer": f"customer-{i % 50}",
                    "service": "web",
                    "message": "web is wholly unavailable: no site can serve it",
                },
                summary="web: incident opened",
                text="web is wholly unavailable: no site can serve it\n",
            )
        )
    return out


def webhook_config(url: str) -> WebhookNotifier:
    return WebhookNotifier.model_validate(
        {"type": "webhook", "url": url, "secret_env": "NOTIFY_BENCH_UNUSED"}
    )


@dataclass
class Throughput:
    seconds: float
    cpu: float
    delivered: int
    reads: int = 0
    enqueue_seconds: float = 0.0
    server_cpu: float = 0.0  # PostgreSQL's processes, over the same window

    @property
    def server_per_1000(self) -> float:
        return self.server_cpu / self.delivered * 1000

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.delivered * 1000


async def run_outbox(
    url: str,
    secret: str,
    k: int,
    folder: Path,
    tag: str,
    *,
    backend: str = "sqlite",
    address: PostgresAddress | None = None,
) -> Throughput:
    """Enqueue ``k`` in one commit, then time the dispatcher delivering all of them."""
    async with outbox_store(backend, folder, tag, address) as store:
        return await _deliver_all(store, url, secret, k, tag)


async def _deliver_all(
    store: CountingSqliteStore | CountingPostgresStore, url: str, secret: str, k: int, tag: str
) -> Throughput:
    transport = WebhookTransport(NOTIFIER, webhook_config(url), secret)
    registry = CollectorRegistry()
    try:
        now = time.time()
        items = [Outgoing(m, now, customer="acme", step="s0") for m in make_messages(k, tag)]
        started = time.perf_counter()
        await store.enqueue(items)
        enqueue_seconds = time.perf_counter() - started
        delivered = 0
        finished = asyncio.Event()

        async def on_delivered(_: OutboxRow, __: float) -> None:
            nonlocal delivered
            delivered += 1
            if delivered == k:
                finished.set()

        dispatcher = Dispatcher(
            store,
            {NOTIFIER: transport},
            settings=Notifications,
            clock=SystemClock(),
            metrics=NotifyMetrics(registry),
            bus=EventBus(),
            vantage=lambda: "bench",
            on_delivered=on_delivered,
        )
        store.reads = 0
        server = postgres_cpu() if isinstance(store, PostgresIncidentStore) else 0.0
        cpu, started = time.process_time(), time.perf_counter()
        task = asyncio.create_task(dispatcher.run(), name="dispatcher")
        try:
            await asyncio.wait_for(finished.wait(), 600)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            if isinstance(store, PostgresIncidentStore):
                server = postgres_cpu() - server
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        failed = registry.get_sample_value(
            "nodevigil_notifications_failed_total", {"notifier": NOTIFIER}
        )
        if failed:
            raise RuntimeError(f"{failed:g} deliveries failed in an outbox round")
        return Throughput(seconds, cpu, delivered, store.reads, enqueue_seconds, server)
    finally:
        await transport.close()


async def run_direct(
    k: int, concurrency: int, tag: str, send: Callable[[Message], Awaitable[bool]]
) -> Throughput:
    """``k`` sends through ``send`` with ``concurrency`` in flight, no outbox."""
    messages = iter(make_messages(k, tag))
    delivered = 0

    async def worker() -> None:
        nonlocal delivered
        for message in messages:
            if not await send(message):
                raise RuntimeError(f"{message.id} was not delivered")
            delivered += 1

    cpu, started = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return Throughput(time.perf_counter() - started, time.process_time() - cpu, delivered)


async def measure_throughput(
    k: int, reps: int, backends: list[str], address: PostgresAddress | None
) -> dict[str, list[Throughput]]:
    """Interleaved rounds of the outbox on each backend / transport / bare POST; the receiver
    in its own process."""
    secret = new_secret()
    key = secret_key(secret)
    concurrency = Notifications().concurrency
    child = start_targets(1)
    url = f"http://{LOOPBACK}:{child.hello['ports'][0]}/hook"
    results: dict[str, list[Throughput]] = {f"outbox-{b}": [] for b in backends}
    results.update({"transport": [], "bare": []})
    try:
        with tempfile.TemporaryDirectory(prefix="notify-bench-") as folder:
            async with aiohttp.ClientSession() as session:
                transport = WebhookTransport(NOTIFIER, webhook_config(url), secret, session)

                async def via_transport(message: Message) -> bool:
                    return (await transport.send(message)).outcome == "delivered"

                async def bare(message: Message) -> bool:
                    body = envelope_body(message)
                    headers = signed_headers(key, message.id, body)
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        return 200 <= response.status < 300

                counter = itertools.count()

                async def one(mode: str, size: int) -> Throughput:
                    tag = f"{mode}{next(counter)}"
                    if mode.startswith("outbox-"):
                        backend = mode.removeprefix("outbox-")
                        return await run_outbox(
                            url, secret, size, Path(folder), tag, backend=backend, address=address
                        )
                    send = via_transport if mode == "transport" else bare
                    return await run_direct(size, concurrency, tag, send)

                modes = list(results)
                for mode in modes:  # warm-up: connections, imports, the page cache
                    await one(mode, min(k, 200))
                for rep in range(reps):
                    order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
                    for mode in order:
                        results[mode].append(await one(mode, k))
                    progress(f"throughput round {rep + 1}/{reps}")
                progress("")
    finally:
        child.stop()
        if child.process.stdout is not None:
            child.process.stdout.close()
    return results


# --- report -----------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value * 1000:8.1f}"


def notice_rows(rounds: list[NoticeRound]) -> list[tuple[str, list[float]]]:
    """The latency table's rows (seconds) for one backend's outages."""
    # Like for like: the daemon's notice goes out on a keep-alive connection idle since the
    # previous round, and so does each round's first bare POST; the others follow at once.
    return [
        ("T0 -> customer webhook arrival", [r.total for r in rounds]),
        ("  detection: T0 -> incident started_at", [r.detection for r in rounds]),
        ("    probes: T0 -> node.down verdict", [r.verdict_at - r.t0 for r in rounds]),
        ("    controller: verdict -> decision", [r.started_at - r.verdict_at for r in rounds]),
        ("  notification: started_at -> arrival", [r.notification for r in rounds]),
        ("    controller: decision -> event", [r.published_at - r.started_at for r in rounds]),
        ("    incident + outbox commit", [r.committed_at - r.published_at for r in rounds]),
        ("    dispatcher wake + signed POST", [r.arrival - r.committed_at for r in rounds]),
        ("peer: bare signed POST, 1st of round", [r.peer[0] for r in rounds]),
        (
            f"peer: bare signed POST, next {PEER_PER_ROUND - 1} (warm)",
            [p for r in rounds for p in r.peer[1:]],
        ),
    ]


def report_notice(results: dict[str, NoticeResult]) -> None:
    backends = list(results)
    both = len(backends) == 2
    counts = {b: len(results[b].rounds) for b in backends}
    warmups = {b: len(results[b].warmups) for b in backends}
    bound = parse_duration(INTERVAL) * FALL
    print(
        "\n1. outage -> customer notice: real daemon in-process, "
        + ", ".join(f"{BACKENDS[b]} {counts[b]} outages (+{warmups[b]} warm-up)" for b in backends)
        + (" in A B B A blocks" if both else "")
        + f"; probe interval {INTERVAL} timeout {TIMEOUT} fall {FALL} rise {RISE} "
        f"(detection bound interval x fall = {bound * 1000:.0f} ms + a cycle), controller "
        f"cycle {CYCLE}, reopen_window 0s (every outage a new incident)"
    )
    head = f"{'':42}" + "".join(f"{BACKENDS[b]:>27}" for b in backends)
    print(head + (f"{'PG/SQLite':>11}" if both else ""))
    print(f"{'ms':42}" + f"{'median':>11}{'p90':>8}{'max':>8}" * len(backends))
    tables = {b: notice_rows(results[b].rounds) for b in backends}
    for i, (label, _) in enumerate(tables[backends[0]]):
        line = f"{label:42}"
        for b in backends:
            values = tables[b][i][1]
            line += f"{ms(median(values)):>11}{ms(quantile(values, 0.9)):>8}{ms(max(values)):>8}"
        if both:
            a, p = (median(tables[b][i][1]) for b in backends)
            line += f"{p / a:>10.2f}x" if a > 0 else f"{'-':>11}"
        print(line)
    for b in backends:
        rounds = results[b].rounds
        idle = median([r.peer[0] for r in rounds])
        notification = median([r.notification for r in rounds])
        dispatch = median([r.arrival - r.committed_at for r in rounds])
        print(
            f"{BACKENDS[b]}: ratio notification / bare POST 1st (medians) "
            f"{notification / idle:.1f}x, dispatch+POST / bare POST 1st {dispatch / idle:.1f}x"
        )
    for b in backends:
        result = results[b]
        count, total = result.histogram
        everything = [*result.warmups, *result.rounds]
        ours = sum(r.notification for r in everything) / len(everything)
        print(
            f"{BACKENDS[b]}: daemon histogram nodevigil_incident_first_notice_seconds: count "
            f"{count:g}, sum {total:.3f}s, mean {total / count * 1000:.1f} ms (bench, same "
            f"{len(everything)} outages: mean started_at -> arrival {ours * 1000:.1f} ms)"
        )
        if result.rejected or result.retries:
            print(f"  receiver rejected {len(result.rejected)}, daemon retried {result.retries:g}")


def report_throughput(results: dict[str, list[Throughput]], k: int) -> None:
    reps = len(results["bare"])
    concurrency = Notifications().concurrency
    print(
        f"\n2. outbox throughput: K={k} signed webhooks, concurrency {concurrency}, "
        f"{reps} interleaved rounds; receiver: bench/common.py target (own process)"
    )
    print(f"{'':44} {'deliv/s':>9} {'CPU-s/1000':>10} {'server CPU-s/1000':>18} {'wall s':>7}")
    labels = {f"outbox-{b}": f"outbox {BACKENDS[b]}" for b in BACKENDS if f"outbox-{b}" in results}
    labels.update(
        {"transport": "WebhookTransport.send, no outbox", "bare": "peer: bare signed aiohttp POST"}
    )
    med: dict[str, tuple[float, float]] = {}
    for mode, label in labels.items():
        rate = median([r.rate for r in results[mode]])
        cpu = median([r.cpu_per_1000 for r in results[mode]])
        server = median([r.server_per_1000 for r in results[mode]])
        wall = median([r.seconds for r in results[mode]])
        med[mode] = (rate, cpu)
        print(f"{label:44} {rate:9.0f} {cpu:10.3f} {server:18.3f} {wall:7.2f}")
    b_rate, b_cpu = med["bare"]
    for b, name in BACKENDS.items():
        mode = f"outbox-{b}"
        if mode not in results:
            continue
        o_rate, o_cpu = med[mode]
        outbox = results[mode]
        reads = median([r.reads / r.delivered for r in outbox])
        enqueue = median([r.enqueue_seconds for r in outbox])
        print(
            f"{name}: ratio outbox / bare POST: throughput {o_rate / b_rate:.2f}x, "
            f"CPU per notice {o_cpu / b_cpu:.2f}x; dispatcher reads (due/next_due_at/stats) "
            f"per delivery {reads:.2f}; enqueue of K in one commit {enqueue * 1000:.0f} ms"
        )
    if "outbox-sqlite" in results and "outbox-postgres" in results:
        s_rate, s_cpu = med["outbox-sqlite"]
        p_rate, p_cpu = med["outbox-postgres"]
        p_server = median([r.server_per_1000 for r in results["outbox-postgres"]])
        print(
            f"ratio outbox PostgreSQL / SQLite (medians): throughput {p_rate / s_rate:.2f}x, "
            f"client CPU per notice {p_cpu / s_cpu:.2f}x, client+server CPU per notice "
            f"{(p_cpu + p_server) / s_cpu:.2f}x"
        )


async def main_async(args: argparse.Namespace, address: PostgresAddress | None) -> None:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if args.part in ("all", "latency"):
        report_notice(await measure_notice_backends(backends, args.rounds, args.seed, address))
    if args.part in ("all", "throughput"):
        results = await measure_throughput(args.messages, args.reps, backends, address)
        report_throughput(results, args.messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and messages")
    parser.add_argument("--rounds", type=int, help="outages measured (default 15, quick 5)")
    parser.add_argument("--messages", type=int, help="K per throughput round (2000, quick 500)")
    parser.add_argument("--reps", type=int, help="throughput rounds per mode (5, quick 3)")
    parser.add_argument("--part", choices=("all", "latency", "throughput"), default="all")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="state backend(s) of the daemon and the outbox (default both, side by side)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.messages = args.messages or (500 if args.quick else 2000)
    args.reps = args.reps or (3 if args.quick else 5)
    tally = LogTally()
    logging.basicConfig(level=logging.WARNING, handlers=[tally])
    if not sys.warnoptions:  # a leaked session or socket says so on stderr (-W error: fails)
        warnings.simplefilter("default")
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        address = None
        if args.backend != "sqlite":
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notify-pg-")))
            address = stack.enter_context(postgres_for_session(work))
        asyncio.run(main_async(args, address))
    if tally.counts:
        print("\nlog records at WARNING+ (expected: one per incident opened):")
        for (level, msg), n in tally.counts.most_common(6):
            print(f"  {n:4d} x {level} {msg}")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
