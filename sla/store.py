"""Durable storage of the ledger behind one small Protocol, with two implementations in
``nodevigil.state``: SQLite (one file) and PostgreSQL (one connection of its own).

Store methods are synchronous and run on the ledger's single worker thread, never on the
event loop. Times are integer microseconds since the epoch; money is exact (never a float).
A store raises ``nodevigil.core.errors.StateError`` when its database cannot do the work now
(busy, full, unreachable, restarting: the caller may retry the same call later, and a lost
connection is re-opened by the next call) and ``SlaError`` when it refuses (a schema newer than
this nodevigil knows, a constraint). An error inside ``transaction()`` rolls all of it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from sla.model import Cause, Charge, CreditRow, from_us


@dataclass(frozen=True, slots=True)
class StoredInterval:
    """An interval as stored; ``end_us`` is None while the service is still unavailable."""

    id: int
    service: str
    start_us: int
    end_us: int | None
    cause: Cause
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredExclusion:
    """An exclusion window as stored."""

    id: int
    start_us: int
    end_us: int
    cause: Cause
    services: frozenset[str]
    note: str
    who: str


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A change to a final day's credit: who, when, why, old and new."""

    customer: str
    service: str
    day: date
    old_minutes: int
    new_minutes: int
    old_credit: Decimal
    new_credit: Decimal
    currency: str
    who: str
    at_us: int
    why: str

    def as_dict(self) -> dict[str, str | int]:
        """The JSON form: money as strings, ``at`` as RFC 3339 UTC."""
        return {
            "customer": self.customer,
            "service": self.service,
            "date": self.day.isoformat(),
            "old_minutes": self.old_minutes,
            "new_minutes": self.new_minutes,
            "old_credit": str(self.old_credit),
            "new_credit": str(self.new_credit),
            "currency": self.currency,
            "who": self.who,
            "at": from_us(self.at_us).isoformat(),
            "why": self.why,
        }


class LedgerStore(Protocol):
    """What the ledger needs from a database; every method runs inside ``transaction()``."""

    def transaction(self) -> AbstractContextManager[None]:
        """All-or-nothing scope for a group of calls."""
        ...

    def close(self) -> None:
        """Release the database."""
        ...

    def meta(self, key: str) -> str | None:
        """A stored setting."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        ...

    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored setting; ``value`` stored first when there is none (the first writer
        wins, also between hosts sharing one database)."""
        ...

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
        ...

    def open_interval_of(self, service: str) -> StoredInterval | None:
        """The service's open interval, if any."""
        ...

    def get_interval(self, interval_id: int) -> StoredInterval | None:
        """One interval by id."""
        ...

    def update_interval(
        self, interval_id: int, *, end_us: int | None = None, cause: Cause | None = None, at: int
    ) -> None:
        """Close an interval or change its cause."""
        ...

    def intervals(
        self, service: str | None, start_us: int | None, end_us: int | None, open_only: bool = False
    ) -> list[StoredInterval]:
        """Intervals overlapping ``[start_us, end_us)`` (None = unbounded), oldest first."""
        ...

    def insert_exclusion(
        self, start_us: int, end_us: int, *, cause: Cause, services: Sequence[str], note: str,
        who: str, at: int,
    ) -> int:  # fmt: skip
        """Add an exclusion window and return its id."""
        ...

    def exclusions(self, start_us: int | None, end_us: int | None) -> list[StoredExclusion]:
        """Exclusion windows overlapping ``[start_us, end_us)``."""
        ...

    def upsert_charges(self, charges: Iterable[Charge]) -> None:
        """Insert charges, replacing those with the same customer, service and day."""
        ...

    def charges(
        self, from_day: date, to_day: date, customer: str | None = None, unsettled: bool = False
    ) -> list[Charge]:
        """Charges with ``from_day <= day <= to_day``."""
        ...

    def services_of(self, customer: str) -> set[str]:
        """Services the customer has ever been charged for."""
        ...

    def settled(self, from_day: date, to_day: date) -> dict[tuple[str, str, date], CreditRow]:
        """The frozen credit rows of final days in the range, by (customer, service, day)."""
        ...

    def put_settled(self, rows: Iterable[CreditRow], at: int) -> None:
        """Freeze credit rows of final days (insert or replace)."""
        ...

    def insert_adjustment(self, adjustment: Adjustment) -> None:
        """Record a change to a final day's credit."""
        ...

    def adjustments(self, customer: str | None = None) -> list[Adjustment]:
        """All recorded adjustments, oldest first."""
        ...

    def insert_change(self, at: int, who: str, what: str, note: str) -> None:
        """Record an operator's change (cause, exclusion, charges) in the audit trail."""
        ...

    def prune(self, before_us: int, before_day: date) -> dict[str, int]:
        """Delete records that ended before the cutoff; return counts per table."""
        ...
