"""The credit rule of clauses VIII.7-VIII.9 as pure functions of intervals, charges and a zone.

Everything runs on integer microseconds, so ``ceil(seconds / 60)`` is exact, and on
``Fraction``/``Decimal`` for money. Cost grows with the number of intervals, never with the
length of the period: no loop walks over every minute or every day of a period.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sla.errors import SlaInputError
from sla.model import (
    MINUTE_US,
    Cause,
    Charge,
    CreditRow,
    Exclusion,
    Interval,
    Rounding,
    from_us,
    to_us,
)

Span = tuple[int, int]
CENT = Decimal("0.01")


def load_zone(name: str) -> ZoneInfo:
    """The IANA time zone called ``name``; an unknown one is an input error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SlaInputError(f"unknown time zone {name!r} (use an IANA name)") from None


class BillingCalendar:
    """Local days of the billing time zone: their bounds in microseconds and their length."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._bounds: dict[date, Span] = {}

    def bounds(self, day: date) -> Span:
        """``[local midnight, next local midnight)`` of ``day`` in microseconds."""
        span = self._bounds.get(day)
        if span is None:
            # fold=0 picks the first midnight when it repeats and the transition instant when
            # DST skips it, so consecutive days always tile time without gaps or overlaps.
            start = to_us(datetime.combine(day, time(0), tzinfo=self.zone))
            end = to_us(datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone))
            span = self._bounds[day] = (start, end)
        return span

    def minutes_in_day(self, day: date) -> int:
        """1440, or 1380/1500 on DST change days."""
        start, end = self.bounds(day)
        return -(-(end - start) // MINUTE_US)

    def day_of(self, micros: int) -> date:
        """The local billing day that contains ``micros``."""
        day = from_us(micros, self.zone).date()
        start, end = self.bounds(day)
        if micros >= end:  # inside a repeated hour after a midnight that came twice
            return day + timedelta(days=1)
        if micros < start:
            return day - timedelta(days=1)
        return day

    def split(self, start: int, end: int) -> Iterator[tuple[date, int, int]]:
        """Cut ``[start, end)`` at local midnights: ``(day, piece start, piece end)``."""
        while start < end:
            day = self.day_of(start)
            day_end = self.bounds(day)[1]
            piece_end = min(end, day_end)
            yield day, start, piece_end
            start = piece_end


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sort and merge overlapping or touching spans; empty spans vanish."""
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True, slots=True)
class Holes:
    """Merged excluded time of one service, searchable by bisection."""

    spans: list[Span]
    ends: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, spans: Iterable[Span]) -> Holes:
        """Merge ``spans`` into a searchable set."""
        merged = merge_spans(spans)
        return cls(merged, [e for _, e in merged])

    def overlapping(self, start: int, end: int) -> Iterator[Span]:
        """The merged holes that overlap ``[start, end)``, in order."""
        i = bisect_right(self.ends, start)  # first hole that ends after start
        while i < len(self.spans) and self.spans[i][0] < end:
            yield self.spans[i]
            i += 1

    def subtract(self, start: int, end: int) -> list[Span]:
        """What remains of ``[start, end)`` outside every hole."""
        remaining: list[Span] = []
        cursor = start
        for hole_start, hole_end in self.overlapping(start, end):
            if hole_start > cursor:
                remaining.append((cursor, hole_start))
            cursor = max(cursor, hole_end)
        if cursor < end:
            remaining.append((cursor, end))
        return remaining


@dataclass(slots=True)
class ServiceTime:
    """One service's provider outages (merged) and its excluded time."""

    outages: list[Span]
    holes: Holes


def group_by_service(
    intervals: Iterable[Interval], exclusions: Iterable[Exclusion]
) -> dict[str, ServiceTime]:
    """Steps 1 and 2 prepared: merged provider outages and holes, per service with outages."""
    provider: dict[str, list[Span]] = defaultdict(list)
    excluded: dict[str, list[Span]] = defaultdict(list)
    for iv in intervals:
        if iv.cause is Cause.PROVIDER:
            provider[iv.service].append((iv.start_us, iv.end_us))
        else:  # excluded causes and unknown time both earn no credit
            excluded[iv.service].append((iv.start_us, iv.end_us))
    everywhere: list[Span] = []
    for ex in exclusions:
        if ex.services:
            for service in ex.services:
                excluded[service].append((ex.start_us, ex.end_us))
        else:
            everywhere.append((ex.start_us, ex.end_us))
    return {
        service: ServiceTime(merge_spans(spans), Holes.of([*excluded[service], *everywhere]))
        for service, spans in provider.items()
    }


def outage_parts(
    time_: ServiceTime, calendar: BillingCalendar
) -> Iterator[tuple[Span, date, list[Span]]]:
    """For each merged outage and local day it touches: the parts left after exclusions."""
    for outage in time_.outages:
        per_day: dict[date, list[Span]] = {}
        for part_start, part_end in time_.holes.subtract(*outage):
            for day, start, end in calendar.split(part_start, part_end):
                per_day.setdefault(day, []).append((start, end))
        for day, parts in per_day.items():
            yield outage, day, parts


def bucket_minutes(parts: Iterable[Span], day_start: int) -> list[Span]:
    """The wall-clock minutes (as merged index ranges from local midnight) parts touch."""
    return merge_spans(
        ((s - day_start) // MINUTE_US, -(-(e - day_start) // MINUTE_US)) for s, e in parts
    )


def unavailable_minutes(
    intervals: Iterable[Interval],
    exclusions: Iterable[Exclusion],
    calendar: BillingCalendar,
    rounding: Rounding = "per-outage",
) -> dict[tuple[str, date], int]:
    """Steps 1-4: unavailable minutes per (service, local day), capped at the day's length."""
    minutes: dict[tuple[str, date], int] = defaultdict(int)
    buckets: dict[tuple[str, date], list[Span]] = defaultdict(list)
    for service, time_ in group_by_service(intervals, exclusions).items():
        for _outage, day, parts in outage_parts(time_, calendar):
            if rounding == "per-outage":
                # What is left of one outage on one day is rounded once, after exclusions, so
                # an exclusion that cuts a hole in an outage can never add a minute.
                net = sum(end - start for start, end in parts)
                minutes[service, day] += -(-net // MINUTE_US)
            else:
                buckets[service, day].extend(parts)
    for key, parts in buckets.items():
        ranges = bucket_minutes(parts, calendar.bounds(key[1])[0])
        minutes[key] = sum(end - start for start, end in ranges)
    return {
        key: min(value, calendar.minutes_in_day(key[1]))
        for key, value in minutes.items()
        if value > 0
    }


def credit_for(charge: Decimal, minutes: int, minutes_in_day: int) -> Decimal:
    """Step 5: ``min(charge, round_half_up(charge * minutes / minutes_in_day, 0.01))``."""
    exact = Fraction(charge) * minutes / minutes_in_day
    cents = math.floor(exact * 100 + Fraction(1, 2))  # half up; amounts are never negative
    rounded = Decimal(cents) * CENT
    return rounded if rounded <= charge else charge


def credit_rows(
    charges: Iterable[Charge],
    minutes: dict[tuple[str, date], int],
    calendar: BillingCalendar,
) -> list[CreditRow]:
    """One credit row per charge row, sorted by date, customer, service."""
    rows = []
    for charge in charges:
        lost = minutes.get((charge.service, charge.day), 0)
        length = calendar.minutes_in_day(charge.day)
        rows.append(
            CreditRow(
                customer=charge.customer,
                service=charge.service,
                day=charge.day,
                unavailable_minutes=lost,
                minutes_in_day=length,
                charge=charge.amount,
                credit=credit_for(charge.amount, lost, length),
                currency=charge.currency,
            )
        )
    rows.sort(key=CreditRow.sort_key)
    return rows


def review_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Unknown time (nodevigil not running), merged per service, for an operator to decide."""
    spans: dict[str, list[Span]] = defaultdict(list)
    for iv in intervals:
        if iv.cause is Cause.UNKNOWN:
            spans[iv.service].append((iv.start_us, iv.end_us))
    return [
        Interval(service, start, end, Cause.UNKNOWN)
        for service in sorted(spans)
        for start, end in merge_spans(spans[service])
    ]


@dataclass(frozen=True, slots=True)
class CreditReport:
    """The calculator's answer: credit rows and unknown time awaiting review."""

    credits: list[CreditRow]
    review: list[Interval]


def calculate(
    intervals: Iterable[Interval],
    exclusions: Iterable[Exclusion],
    charges: Iterable[Charge],
    zone: ZoneInfo,
    rounding: Rounding = "per-outage",
) -> CreditReport:
    """The whole rule: intervals, exclusions and charges in; credits and review out."""
    intervals = list(intervals)
    calendar = BillingCalendar(zone)
    minutes = unavailable_minutes(intervals, exclusions, calendar, rounding)
    return CreditReport(credit_rows(charges, minutes, calendar), review_intervals(intervals))
