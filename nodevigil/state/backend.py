"""Where durable state lives, chosen by the configuration: SQLite files in ``state_dir`` (the
embedded default) or PostgreSQL (``database:``, shared by a cluster).

A backend hands out one implementation of every domain port. Optional libraries are imported
only by the backend that needs them, so a single host never loads psycopg.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from failover.controller.store import Store
from failover.incidents.ports import IncidentStore
from monitor.history import DurableHistoryStore
from nodevigil.core.authority import Authority
from nodevigil.core.config.schema import Config, Database
from nodevigil.core.errors import StateError
from nodevigil.core.eventlog import EventLog
from nodevigil.state.schemas import Migrated, SchemaVersion
from sla.store import LedgerStore

if TYPE_CHECKING:
    from prometheus_client import Gauge
    from psycopg_pool import AsyncConnectionPool

    from nodevigil.core.clock import Clock
    from nodevigil.core.events import EventBus
    from nodevigil.state.postgres.epoch import EpochFence
    from nodevigil.state.postgres.watch import DatabaseWatch


class Backend(Protocol):
    """One kind of durable state: every port's implementation, opened and closed together."""

    name: str  # "sqlite" or "postgres": for logs, metrics and the API

    @property
    def transient_errors(self) -> tuple[type[Exception], ...]:
        """What the stores raise while the database refuses or is away: retried later."""
        ...

    async def open(self) -> None:
        """Connect (PostgreSQL: the pool; a StateError when unreachable)."""
        ...

    async def close(self) -> None:
        """Release what ``open`` took."""
        ...

    def event_log(self) -> EventLog:
        """The event log (not yet opened)."""
        ...

    def controller_store(self) -> Store:
        """Overrides, the controller's book and the action log."""
        ...

    def incident_store(self) -> IncidentStore:
        """Incidents, the notification outbox, notifier state and maintenance windows."""
        ...

    def ledger_store(self) -> Callable[[], LedgerStore]:
        """A factory of the ledger's store, called on the ledger's own worker thread."""
        ...

    def history_store(self) -> DurableHistoryStore:
        """The probe history: runs of equal probe results (not yet opened)."""
        ...

    async def installation_id(self) -> str:
        """This installation's id, drawn once and kept in the state (the ledger's settings):
        the same after a restart, a restore or a move, and for every host of a cluster."""
        ...

    async def migrate(self) -> list[Migrated]:
        """Bring every store's schema up to this nodevigil's (``nodevigil db migrate``); a
        StateError, and nothing changed, when one is newer than this nodevigil knows."""
        ...

    def fence(self, authority: Authority) -> None:
        """Fence the leader's writes of every store (made before or after) with the epoch of
        ``authority``; a store that cannot check an epoch ignores it."""
        ...

    async def schema_versions(self) -> list[SchemaVersion]:
        """Each store's schema version as found (``nodevigil db status``); changes nothing."""
        ...


class SqliteBackend:
    """One SQLite file per store under ``state_dir``."""

    name = "sqlite"

    def __init__(self, state_dir: Path, *, owner: str = "local") -> None:
        self.state_dir = state_dir
        self.owner = owner  # who claims outbox rows (one host: always this process)

    @property
    def transient_errors(self) -> tuple[type[Exception], ...]:
        """A full or read-only disk."""
        from nodevigil.state.sqlite.worker import DATABASE_ERRORS

        return DATABASE_ERRORS

    async def open(self) -> None:
        """Nothing to connect: each store opens its own file."""

    async def close(self) -> None:
        """Nothing shared to release."""

    def fence(self, authority: Authority) -> None:
        """Nothing to fence: SQLite files belong to one host, which always may act."""

    def event_log(self) -> EventLog:
        """``events.db``."""
        from nodevigil.state.sqlite.eventlog import SqliteEventLog

        return SqliteEventLog(self.state_dir / "events.db")

    def controller_store(self) -> Store:
        """``failover.db``."""
        from nodevigil.state.sqlite.controller import SqliteControllerStore

        return SqliteControllerStore(self.state_dir / "failover.db")

    def incident_store(self) -> IncidentStore:
        """``incidents.db``."""
        from nodevigil.state.sqlite.incidents import SqliteIncidentStore

        return SqliteIncidentStore(self.state_dir / "incidents.db", owner=self.owner)

    def ledger_store(self) -> Callable[[], LedgerStore]:
        """``ledger.db``."""
        from nodevigil.state.sqlite.ledger import SqliteLedgerStore

        path = self.state_dir / "ledger.db"
        return lambda: SqliteLedgerStore(path)

    def history_store(self) -> DurableHistoryStore:
        """``history.db``."""
        from nodevigil.state.sqlite.history import SqliteHistoryStore

        return SqliteHistoryStore(self.state_dir / "history.db")

    async def installation_id(self) -> str:
        """Kept in the ledger's settings (``nodevigil.state.installation``)."""
        from nodevigil.state.installation import installation_id

        return await asyncio.to_thread(installation_id, self.ledger_store())

    async def migrate(self) -> list[Migrated]:
        """Every file in ``state_dir``, created when missing, under the state lock (a daemon
        running on the directory is refused)."""
        from nodevigil.state.lock import StateLock
        from nodevigil.state.sqlite.components import migrate_all

        def run() -> list[Migrated]:
            with StateLock(self.state_dir):
                return migrate_all(self.state_dir)

        return await asyncio.to_thread(run)

    async def schema_versions(self) -> list[SchemaVersion]:
        """Each file's ``user_version``; a missing file is absent."""
        from nodevigil.state.sqlite.components import versions

        return await asyncio.to_thread(versions, self.state_dir)


class PostgresBackend:
    """Every store in one PostgreSQL database, over one connection pool per process."""

    name = "postgres"

    def __init__(self, database: Database, base_dir: Path | None, *, owner: str) -> None:
        self.database = database
        self.base_dir = base_dir
        self.owner = owner  # this host's name: its outbox claims carry it
        self._pool: AsyncConnectionPool | None = None
        # False while the database watch sees PostgreSQL away: the controller's store then
        # fails at once instead of waiting on the failover path.
        self.answering = True
        from nodevigil.state.postgres import epoch

        # Shared by every store; inert until ``fence()`` hands it the leader lease.
        self.epoch_fence: EpochFence = epoch.EpochFence(holder=owner)

    @property
    def pool(self) -> AsyncConnectionPool:
        """The open pool (``open()`` first)."""
        if self._pool is None:
            raise RuntimeError("PostgresBackend.open() was not called")
        return self._pool

    @property
    def transient_errors(self) -> tuple[type[Exception], ...]:
        """PostgreSQL away, restarting or refusing."""
        from nodevigil.state.postgres.pool import DATABASE_ERRORS

        return DATABASE_ERRORS

    async def open(self) -> None:
        """Open the pool; a StateError when PostgreSQL cannot be reached in time."""
        from nodevigil.state.postgres.pool import open_pool

        self._pool = await open_pool(self.database, self.base_dir)

    async def close(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def fence(self, authority: Authority) -> None:
        """Every leader write of the stores (the controller's book and action log, incidents
        opened and resolved, outbox claims, the ledger's intervals) checks, in its own
        transaction, that ``authority``'s epoch holds the ``nodevigil_epoch`` row, advancing
        it once per new epoch; a newer epoch there refuses it (``EpochFenced``). With a single
        host's authority (no epoch) nothing is checked."""
        self.epoch_fence.authority = authority

    async def advance_epoch(self) -> int | None:
        """Advance the epoch row to this process's epoch now (a new leader, on taking over,
        so a deposed leader is refused even before this one writes); the epoch the database
        holds afterwards, or None when nothing is fenced. EpochFenced when not the leader."""
        epoch = self.epoch_fence.wanted("advance the fencing epoch")
        if epoch is None:
            return None
        try:
            async with self.pool.connection() as conn:
                return await self.epoch_fence.advance(conn, epoch)
        except self.transient_errors as exc:
            if isinstance(exc, StateError):
                raise
            raise StateError(f"cannot advance the fencing epoch to {epoch}: {exc}") from exc

    def event_log(self) -> EventLog:
        """The ``events`` table."""
        from nodevigil.state.postgres.eventlog import PostgresEventLog

        return PostgresEventLog(self.pool)

    def controller_store(self) -> Store:
        """The controller's tables."""
        from nodevigil.state.postgres.controller import PostgresControllerStore

        return PostgresControllerStore(
            self.pool, available=lambda: self.answering, fence=self.epoch_fence
        )

    def database_watch(
        self, *, bus: EventBus, clock: Clock, gauge: Gauge, vantage: str
    ) -> DatabaseWatch:
        """The check of the pool every second (``state.error``/``state.recovered``, the gauge
        ``nodevigil_database_up``, ``/readyz``), wired to this backend's stores."""
        from nodevigil.state.postgres.watch import DatabaseWatch

        def changed(up: bool) -> None:
            self.answering = up

        return DatabaseWatch(
            self.pool,
            url=self.database.url,
            bus=bus,
            clock=clock,
            gauge=gauge,
            vantage=vantage,
            on_change=changed,
        )

    def incident_store(self) -> IncidentStore:
        """Incidents, outbox, notifiers, maintenance windows."""
        from nodevigil.state.postgres.incidents import PostgresIncidentStore

        return PostgresIncidentStore(self.pool, owner=self.owner, fence=self.epoch_fence)

    def ledger_store(self) -> Callable[[], LedgerStore]:
        """The ledger's tables, over a connection of its own on the ledger's thread."""
        from nodevigil.state.postgres.ledger import PostgresLedgerStore
        from nodevigil.state.postgres.pool import connect_kwargs, password

        url = self.database.url
        kwargs = connect_kwargs(self.database, password(self.database, self.base_dir))
        fence = self.epoch_fence
        return lambda: PostgresLedgerStore(url, kwargs, fence=fence)

    def history_store(self) -> DurableHistoryStore:
        """The ``probe_runs`` table (written by every host of a cluster: its own vantage)."""
        from nodevigil.state.postgres.history import PostgresHistoryStore

        return PostgresHistoryStore(self.pool)

    async def installation_id(self) -> str:
        """Kept in the ledger's settings (``nodevigil.state.installation``)."""
        from nodevigil.state.installation import installation_id

        return await asyncio.to_thread(installation_id, self.ledger_store())

    async def migrate(self) -> list[Migrated]:
        """Every component, on a connection of its own (no ``open()`` needed)."""
        from nodevigil.state.postgres import components

        def run() -> list[Migrated]:
            with components.connect(self.database, self.base_dir, purpose="migrate") as conn:
                return components.migrate_all(conn)

        return await asyncio.to_thread(run)

    async def schema_versions(self) -> list[SchemaVersion]:
        """Each component's row in ``nodevigil_schema``."""
        from nodevigil.state.postgres import components

        def run() -> list[SchemaVersion]:
            with components.connect(self.database, self.base_dir, purpose="status") as conn:
                return components.versions(conn)

        return await asyncio.to_thread(run)


def backend_for(config: Config, base_dir: Path | None = None) -> Backend:
    """The backend the configuration asks for: ``database:`` is PostgreSQL, else SQLite."""
    if config.database is not None:
        return PostgresBackend(config.database, base_dir, owner=config.vantage)
    return SqliteBackend(config.state_dir, owner=config.vantage)
