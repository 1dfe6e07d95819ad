"""The ledger's store (``sla.store.LedgerStore``) in PostgreSQL, on one synchronous connection.

The ledger runs its store on one worker thread of its own, so this store holds one psycopg
connection (not the async pool) and uses it from that thread only. Semantics are those of
``nodevigil.state.sqlite.ledger``: a transaction takes the ledger's advisory lock, as SQLite's
``BEGIN IMMEDIATE`` takes the write lock, so ledgers on several hosts never interleave; times
are integer microseconds (BIGINT); money is NUMERIC, exact as the Decimal it came from.

Errors are converted here: the database away, restarting or read-only (after a failover) is a
``StateError`` (the daemon retries it later); anything else it refuses is an ``SlaError``. A lost
connection is dropped and the next call opens a new one.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import TupleRow

from nodevigil.core.errors import StateError
from nodevigil.state.postgres import epoch
from nodevigil.state.postgres.epoch import EpochFence
from nodevigil.state.postgres.schema import migrate_sync
from sla.errors import SlaError
from sla.model import Cause, Charge, CreditRow
from sla.store import Adjustment, StoredExclusion, StoredInterval

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

COMPONENT = "ledger"
LOCK = 0x6C656467  # pg_advisory_xact_lock key of the ledger: "ledg"

# The database cannot do the work now; the same call may succeed later (on a new connection).
TRANSIENT: tuple[type[psycopg.Error], ...] = (
    psycopg.OperationalError,  # connection lost, server shutting down, disk full, timeouts
    psycopg.InterfaceError,  # the connection is closed
    pgerrors.TransactionRollback,  # serialization failure, deadlock
    pgerrors.ReadOnlySqlTransaction,  # a standby after a failover: reconnect to the primary
)

_SCHEMA_V1 = """
CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE ledger_intervals (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, service TEXT NOT NULL,
    start_us BIGINT NOT NULL, end_us BIGINT, cause TEXT NOT NULL,
    evidence TEXT NOT NULL, -- JSON text as written: key order kept, as SQLite keeps it
    created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL);
CREATE INDEX ledger_intervals_start ON ledger_intervals (start_us);
CREATE INDEX ledger_intervals_end ON ledger_intervals (end_us);
-- one open interval per service at most: open_interval() is idempotent by construction
CREATE UNIQUE INDEX ledger_intervals_open ON ledger_intervals (service) WHERE end_us IS NULL;
CREATE TABLE ledger_exclusions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, start_us BIGINT NOT NULL,
    end_us BIGINT NOT NULL, cause TEXT NOT NULL, services TEXT[] NOT NULL, note TEXT NOT NULL,
    who TEXT NOT NULL, created_us BIGINT NOT NULL);
CREATE TABLE ledger_charges (
    customer TEXT NOT NULL, service TEXT NOT NULL, day DATE NOT NULL, amount NUMERIC NOT NULL,
    currency TEXT NOT NULL, PRIMARY KEY (customer, service, day));
CREATE INDEX ledger_charges_day ON ledger_charges (day);
CREATE TABLE ledger_settled (
    customer TEXT NOT NULL, service TEXT NOT NULL, day DATE NOT NULL, minutes INTEGER NOT NULL,
    minutes_in_day INTEGER NOT NULL, charge NUMERIC NOT NULL, credit NUMERIC NOT NULL,
    currency TEXT NOT NULL, settled_us BIGINT NOT NULL, PRIMARY KEY (customer, service, day));
CREATE TABLE ledger_adjustments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer TEXT NOT NULL,
    service TEXT NOT NULL, day DATE NOT NULL, old_minutes INTEGER NOT NULL,
    new_minutes INTEGER NOT NULL, old_credit NUMERIC NOT NULL, new_credit NUMERIC NOT NULL,
    currency TEXT NOT NULL, who TEXT NOT NULL, at_us BIGINT NOT NULL, why TEXT NOT NULL);
CREATE INDEX ledger_adjustments_at ON ledger_adjustments (at_us);
CREATE TABLE ledger_changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at_us BIGINT NOT NULL,
    who TEXT NOT NULL, what TEXT NOT NULL, note TEXT NOT NULL);
CREATE INDEX ledger_changes_at ON ledger_changes (at_us);
"""
MIGRATIONS = (_SCHEMA_V1,)

# Multi-statement text, sent by the simple protocol in one round trip.
_BEGIN = f"BEGIN; SELECT pg_advisory_xact_lock({LOCK})".encode()


def _edge(
    method: Callable[Concatenate[PostgresLedgerStore, P], T],
) -> Callable[Concatenate[PostgresLedgerStore, P], T]:
    """Convert psycopg's errors to the ledger's at the edge of each store method; a call
    outside ``transaction()`` gets one of its own (and so a reconnect after a restart)."""

    @functools.wraps(method)
    def wrapper(self: PostgresLedgerStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if not self._in_transaction:
            with self.transaction():
                return wrapper(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    return wrapper


class PostgresLedgerStore:
    """The ledger's tables in PostgreSQL over one connection, re-opened when it is lost."""

    def __init__(
        self, url: str, connect_kwargs: Mapping[str, object], *, fence: EpochFence | None = None
    ) -> None:
        self._url = url
        # Recording availability (intervals opened and closed) is the leader's write, refused
        # once a newer epoch holds the database; causes, charges and settlement are not fenced.
        self._fence = fence
        # Keepalives and timeouts come with connect_kwargs (nodevigil.state.postgres.pool).
        self._kwargs: dict[str, Any] = dict(connect_kwargs)
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._in_transaction = False
        conn = self._connection()  # a StateError when the server cannot be reached
        try:
            migrate_sync(conn, COMPONENT, MIGRATIONS)
            if fence is not None:
                migrate_sync(conn, epoch.COMPONENT, epoch.STEPS)
        except StateError as exc:  # a newer schema: refused, as the SQLite ledger refuses it
            self.close()
            raise SlaError(f"ledger: {exc}") from exc
        except psycopg.Error as exc:
            error = self._failed(exc)
            self.close()
            raise error from exc

    def _connection(self) -> psycopg.Connection[TupleRow]:
        """The open connection, or a new one when there is none (first use, or lost)."""
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._url, autocommit=True, **self._kwargs)
            except psycopg.Error as exc:
                self._conn = None
                raise StateError(f"ledger: cannot connect to PostgreSQL: {exc}") from exc
        return self._conn

    def _drop(self) -> None:
        """Forget the connection; the next call opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _failed(self, exc: psycopg.Error) -> StateError | SlaError:
        """The ledger's error for ``exc``; a connection that is no use any more is dropped."""
        conn = self._conn
        lost = conn is None or conn.closed or conn.broken
        if isinstance(exc, TRANSIENT) or lost:
            if lost or isinstance(exc, pgerrors.ReadOnlySqlTransaction):
                self._drop()
            return StateError(f"ledger: PostgreSQL unavailable: {exc}".rstrip())
        return SlaError(f"ledger: PostgreSQL refused: {exc}".rstrip())

    def _begin(self) -> psycopg.Connection[TupleRow]:
        """BEGIN and take the ledger's lock; a connection lost while idle is replaced once."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.execute(_BEGIN)
                return conn
            except psycopg.Error as exc:
                error = self._failed(exc)
                if self._conn is not None:
                    self._rollback(conn)
                # Only a connection that died while idle (a server restart) is retried at once.
                if attempt == 2 or self._conn is not None or not isinstance(error, StateError):
                    raise error from exc
                log.info("ledger: PostgreSQL connection was lost; reconnecting: %s", exc)
        raise AssertionError("unreachable")

    def _rollback(self, conn: psycopg.Connection[TupleRow]) -> None:
        if self._conn is not conn or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT under the ledger's lock, rolled back on any error."""
        conn = self._begin()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            self._in_transaction = False
        if self._conn is not conn:
            raise StateError("ledger: the PostgreSQL connection was lost in the transaction")
        try:
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        """Close the connection."""
        self._drop()

    def _hold_epoch(self, what: str) -> None:
        """A leader write: refused (EpochFenced) unless this process's epoch holds the database,
        checked in the caller's transaction (``nodevigil.state.postgres.epoch``)."""
        if self._fence is not None:
            self._fence.hold_sync(self._connection(), what)

    @_edge
    def meta(self, key: str) -> str | None:
        """A stored setting."""
        sql = "SELECT value FROM ledger_meta WHERE key = %s"
        row = self._connection().execute(sql, (key,)).fetchone()
        return None if row is None else str(row[0])

    @_edge
    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        self._connection().execute(
            "INSERT INTO ledger_meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @_edge
    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored setting; ``value`` stored first when there is none (one host wins)."""
        conn = self._connection()
        conn.execute(
            "INSERT INTO ledger_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (key, value),
        )
        row = conn.execute("SELECT value FROM ledger_meta WHERE key = %s", (key,)).fetchone()
        assert row is not None  # inserted above, or there already
        return str(row[0])

    @_edge
    def insert_interval(
        self,
        service: str,
        start_us: int,
        *,
        end_us: int | None,
        cause: Cause,
        evidence: str,
        at: int,
    ) -> int:
        """Add an interval and return its id."""
        self._hold_epoch(f"open an SLA interval of {service}")
        row = (
            self._connection()
            .execute(
                "INSERT INTO ledger_intervals (service, start_us, end_us, cause, evidence,"
                " created_us, updated_us) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (service, start_us, end_us, cause.value, evidence, at, at),
            )
            .fetchone()
        )
        assert row is not None
        return int(row[0])

    _INTERVAL = "SELECT id, service, start_us, end_us, cause, evidence FROM ledger_intervals"

    @staticmethod
    def _interval(row: TupleRow) -> StoredInterval:
        return StoredInterval(row[0], row[1], row[2], row[3], Cause(row[4]), json.loads(row[5]))

    @_edge
    def open_interval_of(self, service: str) -> StoredInterval | None:
        """The service's open interval, if any."""
        sql = self._INTERVAL + " WHERE service = %s AND end_us IS NULL"
        row = self._connection().execute(sql, (service,)).fetchone()
        return None if row is None else self._interval(row)

    @_edge
    def get_interval(self, interval_id: int) -> StoredInterval | None:
        """One interval by id."""
        sql = self._INTERVAL + " WHERE id = %s"
        row = self._connection().execute(sql, (interval_id,)).fetchone()
        return None if row is None else self._interval(row)

    @_edge
    def update_interval(
        self, interval_id: int, *, end_us: int | None = None, cause: Cause | None = None, at: int
    ) -> None:
        """Close an interval or change its cause."""
        conn = self._connection()
        if end_us is not None:
            self._hold_epoch(f"close SLA interval {interval_id}")
            conn.execute(
                "UPDATE ledger_intervals SET end_us = %s, updated_us = %s WHERE id = %s",
                (end_us, at, interval_id),
            )
        if cause is not None:
            conn.execute(
                "UPDATE ledger_intervals SET cause = %s, updated_us = %s WHERE id = %s",
                (cause.value, at, interval_id),
            )

    @_edge
    def intervals(
        self, service: str | None, start_us: int | None, end_us: int | None, open_only: bool = False
    ) -> list[StoredInterval]:
        """Intervals overlapping ``[start_us, end_us)`` (None = unbounded), oldest first."""
        where, args = ["TRUE"], list[object]()
        if service is not None:
            where.append("service = %s")
            args.append(service)
        if end_us is not None:
            where.append("start_us < %s")
            args.append(end_us)
        if start_us is not None:
            where.append("(end_us IS NULL OR end_us > %s)")
            args.append(start_us)
        if open_only:
            where.append("end_us IS NULL")
        sql = f"{self._INTERVAL} WHERE {' AND '.join(where)} ORDER BY start_us, id"
        return [self._interval(r) for r in self._connection().execute(sql, args)]

    @_edge
    def insert_exclusion(
        self, start_us: int, end_us: int, *, cause: Cause, services: Sequence[str], note: str,
        who: str, at: int,
    ) -> int:  # fmt: skip
        """Add an exclusion window and return its id."""
        row = (
            self._connection()
            .execute(
                "INSERT INTO ledger_exclusions (start_us, end_us, cause, services, note, who,"
                " created_us) VALUES (%s, %s, %s, %s::text[], %s, %s, %s) RETURNING id",
                (start_us, end_us, cause.value, sorted(services), note, who, at),
            )
            .fetchone()
        )
        assert row is not None
        return int(row[0])

    @_edge
    def exclusions(self, start_us: int | None, end_us: int | None) -> list[StoredExclusion]:
        """Exclusion windows overlapping ``[start_us, end_us)``."""
        sql = "SELECT id, start_us, end_us, cause, services, note, who FROM ledger_exclusions"
        sql += " WHERE start_us < %s AND end_us > %s ORDER BY start_us, id"
        hi = end_us if end_us is not None else 2**62
        lo = start_us if start_us is not None else -(2**62)
        return [
            StoredExclusion(r[0], r[1], r[2], Cause(r[3]), frozenset(r[4]), r[5], r[6])
            for r in self._connection().execute(sql, (hi, lo))
        ]

    @_edge
    def upsert_charges(self, charges: Iterable[Charge]) -> None:
        """Insert charges, replacing those with the same customer, service and day."""
        with self._connection().cursor() as cur:
            cur.executemany(
                "INSERT INTO ledger_charges (customer, service, day, amount, currency)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (customer, service, day)"
                " DO UPDATE SET amount = excluded.amount, currency = excluded.currency",
                [(c.customer, c.service, c.day, c.amount, c.currency) for c in charges],
            )

    @_edge
    def charges(
        self, from_day: date, to_day: date, customer: str | None = None, unsettled: bool = False
    ) -> list[Charge]:
        """Charges with ``from_day <= day <= to_day``."""
        sql = "SELECT c.customer, c.service, c.day, c.amount, c.currency FROM ledger_charges c"
        if unsettled:
            sql += " LEFT JOIN ledger_settled s USING (customer, service, day)"
        sql += " WHERE c.day >= %s AND c.day <= %s"
        args: list[object] = [from_day, to_day]
        if customer is not None:
            sql += " AND c.customer = %s"
            args.append(customer)
        if unsettled:
            sql += " AND s.day IS NULL"
        sql += " ORDER BY c.day, c.customer, c.service"
        return [Charge(r[0], r[1], r[2], r[3], r[4]) for r in self._connection().execute(sql, args)]

    @_edge
    def services_of(self, customer: str) -> set[str]:
        """Services the customer has ever been charged for."""
        sql = "SELECT DISTINCT service FROM ledger_charges WHERE customer = %s"
        return {str(r[0]) for r in self._connection().execute(sql, (customer,))}

    @_edge
    def settled(self, from_day: date, to_day: date) -> dict[tuple[str, str, date], CreditRow]:
        """The frozen credit rows of final days in the range, by (customer, service, day)."""
        sql = (
            "SELECT customer, service, day, minutes, minutes_in_day, charge, credit, currency"
            " FROM ledger_settled WHERE day >= %s AND day <= %s"
        )
        return {
            (r[0], r[1], r[2]): CreditRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
            for r in self._connection().execute(sql, (from_day, to_day))
        }

    @_edge
    def put_settled(self, rows: Iterable[CreditRow], at: int) -> None:
        """Freeze credit rows of final days (insert or replace)."""
        with self._connection().cursor() as cur:
            cur.executemany(
                "INSERT INTO ledger_settled (customer, service, day, minutes, minutes_in_day,"
                " charge, credit, currency, settled_us) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (customer, service, day) DO UPDATE SET minutes = excluded.minutes,"
                " minutes_in_day = excluded.minutes_in_day, charge = excluded.charge,"
                " credit = excluded.credit, currency = excluded.currency,"
                " settled_us = excluded.settled_us",
                [
                    (r.customer, r.service, r.day, r.unavailable_minutes, r.minutes_in_day,
                     r.charge, r.credit, r.currency, at)
                    for r in rows
                ],
            )  # fmt: skip

    @_edge
    def insert_adjustment(self, adjustment: Adjustment) -> None:
        """Record a change to a final day's credit."""
        a = adjustment
        self._connection().execute(
            "INSERT INTO ledger_adjustments (customer, service, day, old_minutes, new_minutes,"
            " old_credit, new_credit, currency, who, at_us, why)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (a.customer, a.service, a.day, a.old_minutes, a.new_minutes, a.old_credit,
             a.new_credit, a.currency, a.who, a.at_us, a.why),
        )  # fmt: skip

    @_edge
    def adjustments(self, customer: str | None = None) -> list[Adjustment]:
        """All recorded adjustments, oldest first."""
        sql = (
            "SELECT customer, service, day, old_minutes, new_minutes, old_credit, new_credit,"
            " currency, who, at_us, why FROM ledger_adjustments"
        )
        args: tuple[str, ...] = ()
        if customer is not None:
            sql += " WHERE customer = %s"
            args = (customer,)
        return [
            Adjustment(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
            for r in self._connection().execute(sql + " ORDER BY id", args)
        ]

    @_edge
    def insert_change(self, at: int, who: str, what: str, note: str) -> None:
        """Record an operator's change in the audit trail."""
        self._connection().execute(
            "INSERT INTO ledger_changes (at_us, who, what, note) VALUES (%s, %s, %s, %s)",
            (at, who, what, note),
        )

    @_edge
    def prune(self, before_us: int, before_day: date) -> dict[str, int]:
        """Delete records that ended before the cutoff; return counts per table."""
        statements: dict[str, tuple[str, object]] = {
            "intervals": (
                "DELETE FROM ledger_intervals WHERE end_us IS NOT NULL AND end_us < %s",
                before_us,
            ),
            "exclusions": ("DELETE FROM ledger_exclusions WHERE end_us < %s", before_us),
            "charges": ("DELETE FROM ledger_charges WHERE day < %s", before_day),
            "settled": ("DELETE FROM ledger_settled WHERE day < %s", before_day),
            "adjustments": ("DELETE FROM ledger_adjustments WHERE at_us < %s", before_us),
            "changes": ("DELETE FROM ledger_changes WHERE at_us < %s", before_us),
        }
        conn = self._connection()
        return {name: conn.execute(sql, (arg,)).rowcount for name, (sql, arg) in statements.items()}
