"""The ledger's decisions, synchronous, run on the ledger's worker thread inside transactions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sla.errors import SlaInputError
from sla.model import (
    EXCLUDED_CAUSES,
    Cause,
    Charge,
    CreditRow,
    Exclusion,
    Interval,
    Rounding,
    from_us,
    to_us,
)
from sla.rule import BillingCalendar, credit_rows, unavailable_minutes
from sla.store import Adjustment, LedgerStore, StoredInterval

SYSTEM = "nodevigil"  # the "who" of changes nodevigil makes by itself
SETTLED_THROUGH = "settled_through"  # meta key: every charge up to this day is frozen
RECORDING_SINCE = "recording_since"  # meta key: the local day the ledger was first opened
# Meta key prefix: a change asked for under a stable key (an incident's cause, a maintenance
# window) was applied, in the same transaction as the change itself: asking again is a no-op.
APPLIED = "applied:"


@dataclass(frozen=True, slots=True)
class DailyHistory:
    """Unavailable minutes per service and local day, as the credits count them.

    ``minutes`` holds only days with minutes; ``since`` is the first day the ledger knows
    anything about (days before it have no data, not full availability).
    """

    first: date
    last: date
    since: date
    minutes: dict[tuple[str, date], int]
    calendar: BillingCalendar

    def minutes_in_day(self, day: date) -> int:
        """The local day's length in minutes (1380 or 1500 on a daylight-saving change)."""
        return self.calendar.minutes_in_day(day)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One recorded interval of whole-service unavailability, as the API lists it."""

    id: int
    service: str
    start: datetime
    end: datetime | None
    cause: Cause
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form with RFC 3339 times (``end`` is null while open)."""
        return {
            "id": self.id,
            "service": self.service,
            "start": self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
            "cause": self.cause.value,
            "evidence": self.evidence,
        }


class LedgerCore:
    """Records intervals and keeps final days' credits frozen unless an adjustment says why."""

    def __init__(
        self,
        store: LedgerStore,
        zone: ZoneInfo,
        rounding: Rounding,
        settlement_delay: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.calendar = BillingCalendar(zone)
        self.rounding: Rounding = rounding
        self._delay_us = settlement_delay // timedelta(microseconds=1)
        self._now = now
        self._fresh: list[CreditRow] = []  # settled since the daemon last asked, for metrics

    def now_us(self) -> int:
        """The injected clock, in microseconds."""
        return to_us(self._now())

    def last_final_day(self, at: int) -> date:
        """The latest day whose local midnight + settlement delay has passed at ``at``."""
        return self.calendar.day_of(at - self._delay_us) - timedelta(days=1)

    def _compute(self, charges: Sequence[Charge], at: int) -> list[CreditRow]:
        """Credit rows for ``charges``, recomputed from the stored intervals and exclusions."""
        if not charges:
            return []
        start = self.calendar.bounds(min(c.day for c in charges))[0]
        end = self.calendar.bounds(max(c.day for c in charges))[1]
        services = {c.service for c in charges}
        intervals = [
            # an open interval counts up to now: the service is still unavailable
            Interval(iv.service, iv.start_us, max(at, iv.start_us) if iv.end_us is None
                     else iv.end_us, iv.cause, f"interval {iv.id}")
            for iv in self.store.intervals(None, start, end)
            if iv.service in services
        ]  # fmt: skip
        exclusions = [
            Exclusion(ex.start_us, ex.end_us, ex.cause, ex.services, ex.note, f"exclusion {ex.id}")
            for ex in self.store.exclusions(start, end)
        ]
        minutes = unavailable_minutes(intervals, exclusions, self.calendar, self.rounding)
        return credit_rows(charges, minutes, self.calendar)

    def _settle(self, at: int) -> None:
        """Freeze days that became final since the last time (a watermark keeps this cheap)."""
        last = self.last_final_day(at)
        mark = self.store.meta(SETTLED_THROUGH)
        first = date.min if mark is None else date.fromisoformat(mark) + timedelta(days=1)
        if first <= last:
            self._settle_range(first, last, at)
            self.store.set_meta(SETTLED_THROUGH, last.isoformat())

    def _settle_range(self, first: date, last: date, at: int) -> None:
        rows = self._compute(self.store.charges(first, last, None, True), at)
        self.store.put_settled(rows, at)
        self._fresh.extend(rows)

    def settle_now(self) -> list[CreditRow]:
        """Freeze days that became final; return every row frozen since the last call."""
        with self.store.transaction():
            self._settle(self.now_us())
        fresh, self._fresh = self._fresh, []
        return fresh

    def _readjust_keys(
        self, keys: Iterable[tuple[str, str, date]], who: str, why: str, at: int
    ) -> None:
        """Recompute frozen rows; each one whose figures moved gets an adjustment."""
        wanted = set(keys)
        if not wanted:
            return
        lo, hi = min(k[2] for k in wanted), max(k[2] for k in wanted)
        frozen = self.store.settled(lo, hi)
        charges = [
            c
            for c in self.store.charges(lo, hi)
            if (c.customer, c.service, c.day) in wanted and (c.customer, c.service, c.day) in frozen
        ]
        changed = []
        for new in self._compute(charges, at):
            old = frozen[new.customer, new.service, new.day]
            if (old.credit, old.unavailable_minutes, old.charge) == (
                new.credit,
                new.unavailable_minutes,
                new.charge,
            ):
                continue
            changed.append(new)
            self.store.insert_adjustment(
                Adjustment(new.customer, new.service, new.day, old.unavailable_minutes,
                           new.unavailable_minutes, old.credit, new.credit, new.currency,
                           who, at, why)
            )  # fmt: skip
        self.store.put_settled(changed, at)

    def _readjust(
        self,
        services: set[str] | None,
        start: int,
        end: int,
        *,
        who: str,
        why: str,
        at: int,
    ) -> None:
        """Readjust frozen rows of ``services`` (None = all) on days ``[start, end)`` touches."""
        first = self.calendar.day_of(start)
        last = min(self.calendar.day_of(max(end - 1, start)), self.last_final_day(at))
        if first > last:
            return
        keys = [k for k in self.store.settled(first, last) if services is None or k[1] in services]
        self._readjust_keys(keys, who, why, at)

    def open_interval(self, service: str, start: datetime, cause: Cause, evidence: str) -> int:
        """Open an interval for ``service`` unless one is open already; return its id."""
        start_us, at = to_us(start), self.now_us()
        with self.store.transaction():
            existing = self.store.open_interval_of(service)
            if existing is not None:
                return existing.id
            self._settle(at)
            new_id = self.store.insert_interval(
                service, start_us, end_us=None, cause=cause, evidence=evidence, at=at
            )
            self._readjust(
                {service}, start_us, max(at, start_us), who=SYSTEM, why=f"interval {new_id}", at=at
            )
            return new_id

    def close_interval(self, service: str, end: datetime) -> int | None:
        """Close the service's open interval at ``end``; None when none was open."""
        end_us, at = to_us(end), self.now_us()
        with self.store.transaction():
            interval = self.store.open_interval_of(service)
            if interval is None:
                return None
            self._settle(at)
            end_us = max(end_us, interval.start_us)
            self.store.update_interval(interval.id, end_us=end_us, at=at)
            why = f"interval {interval.id} closed"
            self._readjust({service}, min(end_us, at), max(end_us, at), who=SYSTEM, why=why, at=at)
            return interval.id

    def record_unknown(self, start: datetime, end: datetime, services: list[str]) -> list[int]:
        """Record unknown time (nodevigil not running) for each service."""
        start_us, end_us, at = to_us(start), to_us(end), self.now_us()
        if end_us < start_us:
            raise SlaInputError("unknown time ends before it starts")
        with self.store.transaction():
            self._settle(at)
            ids = [
                self.store.insert_interval(
                    s, start_us, end_us=end_us, cause=Cause.UNKNOWN, evidence="{}", at=at
                )
                for s in services
            ]
            why = "unknown time recorded (nodevigil was not running)"
            self._readjust(set(services), start_us, end_us, who=SYSTEM, why=why, at=at)
            return ids

    def set_cause(self, interval_id: int, cause: Cause, who: str, note: str) -> None:
        """Change an interval's cause and readjust final days it touches."""
        at = self.now_us()
        with self.store.transaction():
            interval = self.store.get_interval(interval_id)
            if interval is None:
                raise SlaInputError(f"no interval {interval_id}")
            self._settle(at)
            self._set_cause(interval, cause, who, note, at)

    def _set_cause(
        self, interval: StoredInterval, cause: Cause, who: str, note: str, at: int
    ) -> None:
        """Change one interval's cause, record the change, readjust (inside a transaction)."""
        self.store.update_interval(interval.id, cause=cause, at=at)
        what = f"interval {interval.id} cause {interval.cause.value} -> {cause.value}"
        self.store.insert_change(at, who, what, note)
        end = interval.end_us if interval.end_us is not None else at
        why = f"{what}: {note}" if note else what
        self._readjust({interval.service}, interval.start_us, end, who=who, why=why, at=at)

    def set_cause_within(
        self,
        service: str,
        start: datetime,
        end: datetime,
        *,
        cause: Cause,
        who: str,
        note: str,
        key: str,
    ) -> list[int] | None:
        """Tag ``service``'s intervals overlapping ``[start, end)`` with ``cause``, once per
        ``key``: the intervals changed, or None when ``key`` was applied before."""
        at = self.now_us()
        with self.store.transaction():
            if self.store.meta(APPLIED + key) is not None:
                return None
            self._settle(at)
            changed = []
            for interval in self.store.intervals(service, to_us(start), to_us(end)):
                if interval.cause is not cause:
                    self._set_cause(interval, cause, who, note, at)
                    changed.append(interval.id)
            self.store.set_meta(APPLIED + key, ",".join(map(str, changed)))
            return changed

    def add_exclusion(
        self,
        start: datetime,
        end: datetime,
        cause: Cause,
        *,
        services: list[str],
        note: str,
        who: str,
        key: str | None = None,
    ) -> int:
        """Declare an exclusion window and readjust final days it touches.

        With ``key``, once: asking again returns the exclusion the first call made.
        """
        start_us, end_us, at = to_us(start), to_us(end), self.now_us()
        if end_us < start_us:
            raise SlaInputError("exclusion ends before it starts")
        if cause not in EXCLUDED_CAUSES:
            raise SlaInputError(f"cause {cause.value!r} is not an excluded cause")
        with self.store.transaction():
            if key is not None and (done := self.store.meta(APPLIED + key)) is not None:
                return int(done)
            self._settle(at)
            new_id = self.store.insert_exclusion(
                start_us, end_us, cause=cause, services=services, note=note, who=who, at=at
            )
            what = f"exclusion {new_id} {cause.value} for {';'.join(services) or 'all services'}"
            self.store.insert_change(at, who, what, note)
            why = f"{what}: {note}" if note else what
            self._readjust(set(services) or None, start_us, end_us, who=who, why=why, at=at)
            if key is not None:
                self.store.set_meta(APPLIED + key, str(new_id))
            return new_id

    def import_charges(self, charges: list[Charge], who: str) -> int:
        """Insert or replace charges; a changed charge of a final day gets an adjustment."""
        at = self.now_us()
        with self.store.transaction():
            self._settle(at)
            self.store.upsert_charges(charges)
            keys = [(c.customer, c.service, c.day) for c in charges]
            self._readjust_keys(keys, who, "charges imported", at)
            self.store.insert_change(at, who, f"{len(charges)} charges imported", "")
            if charges:  # new charges for days already final are frozen at once
                last = min(max(c.day for c in charges), self.last_final_day(at))
                self._settle_range(min(c.day for c in charges), last, at)
        return len(charges)

    def credits(self, from_date: date, to_date: date, customer: str | None) -> list[CreditRow]:
        """Credit rows in the range; final days come from their frozen figures."""
        at = self.now_us()
        with self.store.transaction():
            self._settle(at)
            rows = self._compute(self.store.charges(from_date, to_date, customer), at)
            frozen = self.store.settled(from_date, to_date)
        return [frozen.get((r.customer, r.service, r.day), r) for r in rows]

    def entries(
        self,
        service: str | None,
        from_: datetime | None,
        to: datetime | None,
        open_only: bool,
        customer: str | None = None,
    ) -> list[LedgerEntry]:
        """Intervals overlapping ``[from_, to)``; a customer sees only the services it pays for."""
        zone = self.calendar.zone
        lo = None if from_ is None else to_us(from_)
        hi = None if to is None else to_us(to)
        with self.store.transaction():
            stored = self.store.intervals(service, lo, hi, open_only)
            if customer is not None:
                allowed = self.store.services_of(customer)
                stored = [iv for iv in stored if iv.service in allowed]
        return [
            LedgerEntry(iv.id, iv.service, from_us(iv.start_us, zone),
                        None if iv.end_us is None else from_us(iv.end_us, zone), iv.cause,
                        iv.evidence)
            for iv in stored
        ]  # fmt: skip

    def mark_recording(self) -> None:
        """Note the day the ledger first recorded (kept: a later open changes nothing)."""
        today = self.calendar.day_of(self.now_us()).isoformat()
        with self.store.transaction():
            self.store.meta_setdefault(RECORDING_SINCE, today)

    def daily_history(self, first: date, last: date) -> DailyHistory:
        """Unavailable minutes per service and local day from ``first`` to ``last``: the same
        rule, intervals and exclusions the credits use (an open interval counts up to now)."""
        at = self.now_us()
        start, end = self.calendar.bounds(first)[0], self.calendar.bounds(last)[1]
        with self.store.transaction():
            stored = self.store.intervals(None, start, end)
            windows = self.store.exclusions(start, end)
            mark = self.store.meta(RECORDING_SINCE)
        since = date.fromisoformat(mark) if mark is not None else self.calendar.day_of(at)
        if stored:
            since = min(since, self.calendar.day_of(min(iv.start_us for iv in stored)))
        intervals = [
            Interval(iv.service, iv.start_us, max(at, iv.start_us) if iv.end_us is None
                     else iv.end_us, iv.cause)
            for iv in stored
        ]  # fmt: skip
        exclusions = [Exclusion(e.start_us, e.end_us, e.cause, e.services) for e in windows]
        minutes = unavailable_minutes(intervals, exclusions, self.calendar, self.rounding)
        kept = {key: n for key, n in minutes.items() if first <= key[1] <= last}
        return DailyHistory(first, last, since, kept, self.calendar)

    def minutes_total(self, service: str | None) -> dict[str, int]:
        """Unavailable minutes per service over every retained interval."""
        at = self.now_us()
        with self.store.transaction():
            stored = self.store.intervals(service, None, None)
            windows = self.store.exclusions(None, None)
        intervals = [
            Interval(iv.service, iv.start_us, max(at, iv.start_us) if iv.end_us is None
                     else iv.end_us, iv.cause)
            for iv in stored
        ]  # fmt: skip
        exclusions = [Exclusion(e.start_us, e.end_us, e.cause, e.services) for e in windows]
        totals: dict[str, int] = defaultdict(int)
        for (svc, _day), minutes in unavailable_minutes(
            intervals, exclusions, self.calendar, self.rounding
        ).items():
            totals[svc] += minutes
        return dict(totals)

    def prune(self, cutoff: datetime) -> dict[str, int]:
        """Delete records that ended before ``cutoff``."""
        cutoff_us = to_us(cutoff)
        with self.store.transaction():
            return self.store.prune(cutoff_us, self.calendar.day_of(cutoff_us))
