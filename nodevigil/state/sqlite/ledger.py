"""The ledger's store (``sla.store.LedgerStore``) in one SQLite file: WAL mode, schema
versioned by ``user_version`` (``nodevigil.state.sqlite.schema``).

Days are ISO text and money Decimal text, so nothing is ever rounded through a float. Errors
are converted here, as the PostgreSQL ledger converts its own: the file busy, full, read-only
or unreadable is a ``StateError`` (the daemon retries it later); anything else SQLite refuses
is an ``SlaError``.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from nodevigil.core.errors import StateError
from nodevigil.state.sqlite.schema import migrate
from sla.errors import SlaError
from sla.ledger import Ledger
from sla.model import Cause, Charge, CreditRow, Rounding
from sla.store import Adjustment, LedgerStore, StoredExclusion, StoredInterval

P = ParamSpec("P")
T = TypeVar("T")


_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE intervals (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER,
    cause TEXT NOT NULL, evidence TEXT NOT NULL, created_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL);
CREATE INDEX intervals_start ON intervals (start_us);
CREATE INDEX intervals_end ON intervals (end_us);
-- one open interval per service at most: open_interval() is idempotent by construction
CREATE UNIQUE INDEX intervals_open ON intervals (service) WHERE end_us IS NULL;
CREATE TABLE exclusions (
    id INTEGER PRIMARY KEY, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL,
    cause TEXT NOT NULL, services TEXT NOT NULL, note TEXT NOT NULL, who TEXT NOT NULL,
    created_us INTEGER NOT NULL);
CREATE TABLE charges (
    customer TEXT NOT NULL, service TEXT NOT NULL, day TEXT NOT NULL, amount TEXT NOT NULL,
    currency TEXT NOT NULL, PRIMARY KEY (customer, service, day));
CREATE INDEX charges_day ON charges (day);
CREATE TABLE settled (
    customer TEXT NOT NULL, service TEXT NOT NULL, day TEXT NOT NULL, minutes INTEGER NOT NULL,
    minutes_in_day INTEGER NOT NULL, charge TEXT NOT NULL, credit TEXT NOT NULL,
    currency TEXT NOT NULL, settled_us INTEGER NOT NULL, PRIMARY KEY (customer, service, day));
CREATE TABLE adjustments (
    id INTEGER PRIMARY KEY, customer TEXT NOT NULL, service TEXT NOT NULL, day TEXT NOT NULL,
    old_minutes INTEGER NOT NULL, new_minutes INTEGER NOT NULL, old_credit TEXT NOT NULL,
    new_credit TEXT NOT NULL, currency TEXT NOT NULL, who TEXT NOT NULL, at_us INTEGER NOT NULL,
    why TEXT NOT NULL);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY, at_us INTEGER NOT NULL, who TEXT NOT NULL, what TEXT NOT NULL,
    note TEXT NOT NULL);
"""
# user_version n means the first n steps are applied; the first ledger's files are at 1.
MIGRATIONS = (_SCHEMA_V1,)
SCHEMA_VERSION = len(MIGRATIONS)

# What SQLite refuses for good; any other sqlite3.Error is the file busy, full or unreadable.
_REFUSED = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.NotSupportedError,
)


def _converted(exc: sqlite3.Error) -> StateError | SlaError:
    """The ledger's error for a sqlite3 error."""
    if isinstance(exc, _REFUSED):
        return SlaError(f"ledger: SQLite refused: {exc}")
    return StateError(f"ledger: SQLite unavailable: {exc}")


def _edge(
    method: Callable[Concatenate[SqliteLedgerStore, P], T],
) -> Callable[Concatenate[SqliteLedgerStore, P], T]:
    """Convert sqlite3's errors to the ledger's at the edge of each store method."""

    @functools.wraps(method)
    def wrapper(self: SqliteLedgerStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _converted(exc) from exc

    return wrapper


class SqliteLedgerStore:
    """The ledger in one SQLite file, WAL mode, schema versioned."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise SlaError(f"ledger {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            migrate(self._db, MIGRATIONS, path=path)
        except StateError as exc:  # a newer schema than this nodevigil knows: refused
            self._db.close()
            raise SlaError(f"ledger {exc}") from exc
        except sqlite3.Error as exc:  # not a database, unreadable
            self._db.close()
            raise SlaError(f"ledger {path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _converted(exc) from exc
        try:
            yield
        except BaseException:
            # SQLite may have rolled back already (a full disk): then there is nothing to undo.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise _converted(exc) from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @_edge
    def meta(self, key: str) -> str | None:
        """A stored setting."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_edge
    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @_edge
    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored setting; ``value`` stored first when there is none."""
        self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
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
        cur = self._db.execute(
            "INSERT INTO intervals (service, start_us, end_us, cause, evidence, created_us,"
            " updated_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (service, start_us, end_us, cause.value, evidence, at, at),
        )
        return int(cur.lastrowid or 0)

    _INTERVAL = "SELECT id, service, start_us, end_us, cause, evidence FROM intervals"

    @staticmethod
    def _interval(row: tuple[Any, ...]) -> StoredInterval:
        return StoredInterval(row[0], row[1], row[2], row[3], Cause(row[4]), json.loads(row[5]))

    @_edge
    def open_interval_of(self, service: str) -> StoredInterval | None:
        """The service's open interval, if any."""
        sql = self._INTERVAL + " WHERE service = ? AND end_us IS NULL"
        row = self._db.execute(sql, (service,)).fetchone()
        return None if row is None else self._interval(row)

    @_edge
    def get_interval(self, interval_id: int) -> StoredInterval | None:
        """One interval by id."""
        row = self._db.execute(self._INTERVAL + " WHERE id = ?", (interval_id,)).fetchone()
        return None if row is None else self._interval(row)

    @_edge
    def update_interval(
        self, interval_id: int, *, end_us: int | None = None, cause: Cause | None = None, at: int
    ) -> None:
        """Close an interval or change its cause."""
        if end_us is not None:
            self._db.execute(
                "UPDATE intervals SET end_us = ?, updated_us = ? WHERE id = ?",
                (end_us, at, interval_id),
            )
        if cause is not None:
            self._db.execute(
                "UPDATE intervals SET cause = ?, updated_us = ? WHERE id = ?",
                (cause.value, at, interval_id),
            )

    @_edge
    def intervals(
        self, service: str | None, start_us: int | None, end_us: int | None, open_only: bool = False
    ) -> list[StoredInterval]:
        """Intervals overlapping ``[start_us, end_us)`` (None = unbounded), oldest first."""
        where, args = ["1"], list[object]()
        if service is not None:
            where.append("service = ?")
            args.append(service)
        if end_us is not None:
            where.append("start_us < ?")
            args.append(end_us)
        if start_us is not None:
            where.append("(end_us IS NULL OR end_us > ?)")
            args.append(start_us)
        if open_only:
            where.append("end_us IS NULL")
        sql = f"{self._INTERVAL} WHERE {' AND '.join(where)} ORDER BY start_us, id"
        return [self._interval(r) for r in self._db.execute(sql, args)]

    @_edge
    def insert_exclusion(
        self, start_us: int, end_us: int, *, cause: Cause, services: Sequence[str], note: str,
        who: str, at: int,
    ) -> int:  # fmt: skip
        """Add an exclusion window and return its id."""
        cur = self._db.execute(
            "INSERT INTO exclusions (start_us, end_us, cause, services, note, who, created_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (start_us, end_us, cause.value, json.dumps(sorted(services)), note, who, at),
        )
        return int(cur.lastrowid or 0)

    @_edge
    def exclusions(self, start_us: int | None, end_us: int | None) -> list[StoredExclusion]:
        """Exclusion windows overlapping ``[start_us, end_us)``."""
        sql = "SELECT id, start_us, end_us, cause, services, note, who FROM exclusions WHERE "
        sql += "start_us < ? AND end_us > ? ORDER BY start_us, id"
        hi = end_us if end_us is not None else 2**62
        lo = start_us if start_us is not None else -(2**62)
        return [
            StoredExclusion(r[0], r[1], r[2], Cause(r[3]), frozenset(json.loads(r[4])), r[5], r[6])
            for r in self._db.execute(sql, (hi, lo))
        ]

    @_edge
    def upsert_charges(self, charges: Iterable[Charge]) -> None:
        """Insert charges, replacing those with the same customer, service and day."""
        self._db.executemany(
            "INSERT OR REPLACE INTO charges VALUES (?, ?, ?, ?, ?)",
            (
                (c.customer, c.service, c.day.isoformat(), str(c.amount), c.currency)
                for c in charges
            ),
        )

    @_edge
    def charges(
        self, from_day: date, to_day: date, customer: str | None = None, unsettled: bool = False
    ) -> list[Charge]:
        """Charges with ``from_day <= day <= to_day``."""
        sql = "SELECT c.customer, c.service, c.day, c.amount, c.currency FROM charges c"
        if unsettled:
            sql += " LEFT JOIN settled s USING (customer, service, day)"
        sql += " WHERE c.day >= ? AND c.day <= ?"
        args: list[object] = [from_day.isoformat(), to_day.isoformat()]
        if customer is not None:
            sql += " AND c.customer = ?"
            args.append(customer)
        if unsettled:
            sql += " AND s.day IS NULL"
        return [
            Charge(r[0], r[1], date.fromisoformat(r[2]), Decimal(r[3]), r[4])
            for r in self._db.execute(sql, args)
        ]

    @_edge
    def services_of(self, customer: str) -> set[str]:
        """Services the customer has ever been charged for."""
        sql = "SELECT DISTINCT service FROM charges WHERE customer = ?"
        return {str(r[0]) for r in self._db.execute(sql, (customer,))}

    @_edge
    def settled(self, from_day: date, to_day: date) -> dict[tuple[str, str, date], CreditRow]:
        """The frozen credit rows of final days in the range, by (customer, service, day)."""
        sql = (
            "SELECT customer, service, day, minutes, minutes_in_day, charge, credit, currency"
            " FROM settled WHERE day >= ? AND day <= ?"
        )
        out = {}
        for r in self._db.execute(sql, (from_day.isoformat(), to_day.isoformat())):
            day = date.fromisoformat(r[2])
            out[r[0], r[1], day] = CreditRow(
                r[0], r[1], day, r[3], r[4], Decimal(r[5]), Decimal(r[6]), r[7]
            )
        return out

    @_edge
    def put_settled(self, rows: Iterable[CreditRow], at: int) -> None:
        """Freeze credit rows of final days (insert or replace)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO settled VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (r.customer, r.service, r.day.isoformat(), r.unavailable_minutes,
                 r.minutes_in_day, str(r.charge), str(r.credit), r.currency, at)
                for r in rows
            ),
        )  # fmt: skip

    @_edge
    def insert_adjustment(self, adjustment: Adjustment) -> None:
        """Record a change to a final day's credit."""
        a = adjustment
        self._db.execute(
            "INSERT INTO adjustments (customer, service, day, old_minutes, new_minutes,"
            " old_credit, new_credit, currency, who, at_us, why)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.customer, a.service, a.day.isoformat(), a.old_minutes, a.new_minutes,
             str(a.old_credit), str(a.new_credit), a.currency, a.who, a.at_us, a.why),
        )  # fmt: skip

    @_edge
    def adjustments(self, customer: str | None = None) -> list[Adjustment]:
        """All recorded adjustments, oldest first."""
        sql = (
            "SELECT customer, service, day, old_minutes, new_minutes, old_credit, new_credit,"
            " currency, who, at_us, why FROM adjustments"
        )
        args: tuple[str, ...] = ()
        if customer is not None:
            sql += " WHERE customer = ?"
            args = (customer,)
        return [
            Adjustment(r[0], r[1], date.fromisoformat(r[2]), r[3], r[4], Decimal(r[5]),
                       Decimal(r[6]), r[7], r[8], r[9], r[10])
            for r in self._db.execute(sql + " ORDER BY id", args)
        ]  # fmt: skip

    @_edge
    def insert_change(self, at: int, who: str, what: str, note: str) -> None:
        """Record an operator's change in the audit trail."""
        self._db.execute(
            "INSERT INTO changes (at_us, who, what, note) VALUES (?, ?, ?, ?)",
            (at, who, what, note),
        )

    @_edge
    def prune(self, before_us: int, before_day: date) -> dict[str, int]:
        """Delete records that ended before the cutoff; return counts per table."""
        day = before_day.isoformat()
        statements = {
            "intervals": (
                "DELETE FROM intervals WHERE end_us IS NOT NULL AND end_us < ?",
                before_us,
            ),
            "exclusions": ("DELETE FROM exclusions WHERE end_us < ?", before_us),
            "charges": ("DELETE FROM charges WHERE day < ?", day),
            "settled": ("DELETE FROM settled WHERE day < ?", day),
            "adjustments": ("DELETE FROM adjustments WHERE at_us < ?", before_us),
            "changes": ("DELETE FROM changes WHERE at_us < ?", before_us),
        }
        return {
            name: self._db.execute(sql, (arg,)).rowcount for name, (sql, arg) in statements.items()
        }


async def open_sqlite_ledger(
    path: Path | str,
    *,
    timezone: str = "UTC",
    rounding: Rounding = "per-outage",
    settlement_delay: timedelta | float = timedelta(hours=24),
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    store: Callable[[Path | str], LedgerStore] = SqliteLedgerStore,
) -> Ledger:
    """The ledger kept in the SQLite file ``path`` (created if needed)."""
    return await Ledger.open(
        lambda: store(path),
        timezone=timezone,
        rounding=rounding,
        settlement_delay=settlement_delay,
        now=now,
    )
