"""The vocabulary of the ledger: causes, intervals, exclusions, charges and credit rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from sla.errors import SlaInputError

US = 1_000_000  # times are integer microseconds since the epoch: exact, no float drift
MINUTE_US = 60 * US
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Rounding = Literal["per-outage", "minute-buckets"]
ROUNDINGS: tuple[Rounding, ...] = ("per-outage", "minute-buckets")


class Cause(StrEnum):
    """Why a service was unavailable; only ``provider`` earns credit."""

    PROVIDER = "provider"
    UNKNOWN = "unknown"  # nodevigil itself was not running: no credit until an operator decides
    FORCE_MAJEURE = "force_majeure"
    TELECOM_FAILURE = "telecom_failure"
    THIRD_PARTY = "third_party"
    CYBER_ATTACK = "cyber_attack"
    CUSTOMER_ACTION = "customer_action"
    SCHEDULED_MAINTENANCE = "scheduled_maintenance"
    PAYMENT_ISSUE = "payment_issue"


# Clauses VII, VIII.3 and VIII.5: these causes earn no credit.
EXCLUDED_CAUSES = frozenset(c for c in Cause if c not in (Cause.PROVIDER, Cause.UNKNOWN))


def parse_cause(text: str, *, allow: frozenset[Cause] | None = None) -> Cause:
    """Read a cause name; an empty one means ``provider``."""
    name = text.strip() or Cause.PROVIDER.value
    try:
        cause = Cause(name)
    except ValueError:
        known = ", ".join(c.value for c in (allow or frozenset(Cause)))
        raise SlaInputError(f"unknown cause {name!r} (known: {known})") from None
    if allow is not None and cause not in allow:
        known = ", ".join(sorted(c.value for c in allow))
        raise SlaInputError(f"cause {name!r} not allowed here (use one of: {known})")
    return cause


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime; naive ones are refused."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise SlaInputError(f"time {moment.isoformat()} has no UTC offset")
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(micros: int, tz: tzinfo = UTC) -> datetime:
    """The aware datetime for microseconds since the epoch, shown in ``tz``."""
    return (EPOCH + timedelta(microseconds=micros)).astimezone(tz)


def parse_time(text: str) -> int:
    """Read an RFC 3339 time with an offset (``...+08:00`` or ``...Z``) into microseconds."""
    raw = text.strip()
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise SlaInputError(f"{raw!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise SlaInputError(f"time {raw!r} has no offset (write e.g. {raw}Z or {raw}+01:00)")
    return to_us(moment)


@dataclass(frozen=True, slots=True)
class Interval:
    """One stretch ``[start, end)`` in which a service was unavailable, with its cause."""

    service: str
    start_us: int
    end_us: int
    cause: Cause = Cause.PROVIDER
    source: str = ""  # where it came from (``outages.csv:4``, ``interval 17``) for --explain


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A window that earns no credit, for some services or (when empty) for all."""

    start_us: int
    end_us: int
    cause: Cause
    services: frozenset[str] = frozenset()
    note: str = ""
    source: str = ""

    def applies_to(self, service: str) -> bool:
        """Whether this window covers ``service``."""
        return not self.services or service in self.services


@dataclass(frozen=True, slots=True)
class Charge:
    """What a customer pays for one service on one billing day."""

    customer: str
    service: str
    day: date
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class CreditRow:
    """One credit: a charge row with the minutes it lost and the money it earns back."""

    customer: str
    service: str
    day: date
    unavailable_minutes: int
    minutes_in_day: int
    charge: Decimal
    credit: Decimal
    currency: str

    def as_dict(self) -> dict[str, str | int]:
        """The JSON form: money as strings, the day as ``YYYY-MM-DD``."""
        return {
            "customer": self.customer,
            "service": self.service,
            "date": self.day.isoformat(),
            "unavailable_minutes": self.unavailable_minutes,
            "minutes_in_day": self.minutes_in_day,
            "charge": str(self.charge),
            "credit": str(self.credit),
            "currency": self.currency,
        }

    def sort_key(self) -> tuple[date, str, str]:
        """Rows sort by date, customer, service."""
        return (self.day, self.customer, self.service)
