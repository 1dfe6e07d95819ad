"""Small builders shared by the sla tests."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sla.model import Cause, Charge, Exclusion, Interval, parse_time


def iv(service: str, start: str, end: str, cause: Cause = Cause.PROVIDER) -> Interval:
    """An interval from RFC 3339 strings."""
    return Interval(service, parse_time(start), parse_time(end), cause)


def ex(
    start: str, end: str, services: tuple[str, ...] = (), cause: Cause = Cause.THIRD_PARTY
) -> Exclusion:
    """An exclusion window from RFC 3339 strings."""
    return Exclusion(parse_time(start), parse_time(end), cause, frozenset(services))


def charge(day: str, amount: str = "48.00", service: str = "web", customer: str = "acme") -> Charge:
    """A charge row."""
    return Charge(customer, service, date.fromisoformat(day), Decimal(amount), "EUR")
