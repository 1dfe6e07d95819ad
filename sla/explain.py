"""``--explain``: the intervals, exclusions, pieces and arithmetic behind one credit row."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from sla.model import US, Cause, CreditRow, Exclusion, Interval, Rounding, from_us
from sla.rule import BillingCalendar, bucket_minutes, group_by_service, outage_parts


def _seconds(micros: int) -> str:
    return str((Decimal(micros) / US).normalize()) if micros % US else str(micros // US)


def _labelled_holes(
    service: str, intervals: Sequence[Interval], exclusions: Sequence[Exclusion]
) -> list[tuple[int, int, str]]:
    """Every stretch that earns the service no credit, with the reason shown to a customer."""
    holes = []
    for iv in intervals:
        if iv.service == service and iv.cause is not Cause.PROVIDER:
            why = "unknown (nodevigil not running; for review)" if iv.cause is Cause.UNKNOWN else ""
            holes.append((iv.start_us, iv.end_us, f"{why or iv.cause.value} [{iv.source}]"))
    for ex in exclusions:
        if ex.applies_to(service):
            scope = "all services" if not ex.services else "window for " + ";".join(ex.services)
            note = f' "{ex.note}"' if ex.note else ""
            holes.append((ex.start_us, ex.end_us, f"{ex.cause.value}, {scope}{note} [{ex.source}]"))
    return sorted(holes)


def explain_row(
    row: CreditRow,
    intervals: Sequence[Interval],
    exclusions: Sequence[Exclusion],
    calendar: BillingCalendar,
    rounding: Rounding,
) -> list[str]:
    """Lines that let finance or a customer redo the row's arithmetic by hand."""
    zone = calendar.zone
    day_start, day_end = calendar.bounds(row.day)

    def at(micros: int) -> str:
        return from_us(micros, zone).isoformat()

    lines = [
        f"{row.customer} / {row.service} / {row.day} ({rounding}):",
        f"  billing day {at(day_start)} to {at(day_end)} = {row.minutes_in_day} minutes"
        f" ({zone.key})",
    ]
    own = [iv for iv in intervals if iv.service == row.service]
    time_ = group_by_service(own, exclusions).get(row.service)
    holes = _labelled_holes(row.service, own, exclusions)
    counted: list[int] = []
    touched: list[tuple[int, int]] = []
    for outage, day, parts in outage_parts(time_, calendar) if time_ else ():
        if day != row.day:
            continue
        sources = [
            iv.source
            for iv in own
            if iv.cause is Cause.PROVIDER and iv.start_us <= outage[1] and iv.end_us >= outage[0]
        ]
        lo, hi = max(outage[0], day_start), min(outage[1], day_end)
        lines.append(f"  outage {at(outage[0])} to {at(outage[1])} (from {', '.join(sources)})")
        lines.append(f"    on this day {at(lo)} to {at(hi)} = {_seconds(hi - lo)} s")
        for start, end, why in holes:
            if start < hi and end > lo:
                s, e = max(start, lo), min(end, hi)
                lines.append(f"    excluded {at(s)} to {at(e)} = {_seconds(e - s)} s: {why}")
        net = sum(e - s for s, e in parts)
        if rounding == "per-outage":
            minutes = -(-net // (60 * US))
            counted.append(minutes)
            lines.append(
                f"    left {_seconds(net)} s -> ceil({_seconds(net)} / 60) = {minutes} min"
            )
        else:
            touched.extend(parts)
            lines.append(f"    left {_seconds(net)} s in {len(parts)} piece(s)")
    for start, end, why in holes:
        if why.startswith("unknown") and start < day_end and end > day_start:
            lines.append(f"  for review: {at(start)} to {at(end)} {why}")
    if rounding == "per-outage":
        total = sum(counted)
        summed = " + ".join(str(m) for m in counted) or "0"
    else:
        ranges = bucket_minutes(touched, day_start)
        total = sum(e - s for s, e in ranges)
        summed = (
            " + ".join(
                f"{at(day_start + s * 60 * US)[11:16]}..{at(day_start + e * 60 * US)[11:16]}"
                f" ({e - s})"
                for s, e in ranges
            )
            or "0"
        )
        summed = f"wall-clock minutes touched {summed}"
    lines.append(
        f"  minutes: {summed} = {total}, at most {row.minutes_in_day} -> {row.unavailable_minutes}"
    )
    lines.append(
        f"  credit = min({row.charge}, round_half_up({row.charge} x {row.unavailable_minutes}"
        f" / {row.minutes_in_day}, 0.01)) = {row.credit} {row.currency}"
    )
    return lines
