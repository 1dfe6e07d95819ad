"""Reading the calculator's CSV files; every problem names the file, the line and the cause."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

from sla.errors import SlaInputError
from sla.model import EXCLUDED_CAUSES, Charge, Exclusion, Interval, parse_cause, parse_time

T = TypeVar("T")

OUTAGE_COLUMNS = ("service", "start", "end", "cause")
CHARGE_COLUMNS = ("customer", "service", "date", "amount", "currency")
EXCLUSION_COLUMNS = ("start", "end", "cause", "services", "note")


def _rows(
    lines: Iterable[str], source: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` after checking the header names every needed column."""
    reader = csv.DictReader(lines)
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        raise SlaInputError("empty file; expected a header: " + ",".join(columns), source, 1)
    missing = [c for c in columns if c not in header and c not in optional]
    if missing:
        raise SlaInputError(
            f"missing column(s) {', '.join(missing)}; header must name " + ",".join(columns),
            source,
            1,
        )
    reader.fieldnames = header
    for raw in reader:
        row = {k: (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
        if not any(row.values()):
            continue
        yield reader.line_num, row


def _parse_each(
    lines: Iterable[str],
    source: str,
    columns: tuple[str, ...],
    parse: Callable[[dict[str, str], str], T],
    optional: tuple[str, ...] = (),
) -> list[tuple[int, T]]:
    """Parse each row into ``(line, item)``, turning a problem into ``FILE:LINE: problem``."""
    out = []
    for line, row in _rows(lines, source, columns, optional):
        try:
            out.append((line, parse(row, f"{source}:{line}")))
        except SlaInputError as exc:
            raise SlaInputError(exc.problem, source, line) from None
    return out


def _span(row: dict[str, str]) -> tuple[int, int]:
    for name in ("start", "end"):
        if not row.get(name):
            raise SlaInputError(f"{name} is empty")
    try:
        start = parse_time(row["start"])
    except SlaInputError as exc:
        raise SlaInputError(f"start: {exc.problem}") from None
    try:
        end = parse_time(row["end"])
    except SlaInputError as exc:
        raise SlaInputError(f"end: {exc.problem}") from None
    if end < start:
        raise SlaInputError(f"end {row['end']} is before start {row['start']}")
    return start, end


def _outage(row: dict[str, str], where: str) -> Interval:
    if not row["service"]:
        raise SlaInputError("service is empty")
    start, end = _span(row)
    return Interval(row["service"], start, end, parse_cause(row.get("cause", "")), where)


def _charge(row: dict[str, str], where: str) -> Charge:
    for name in CHARGE_COLUMNS:
        if not row[name]:
            raise SlaInputError(f"{name} is empty")
    try:
        day = date.fromisoformat(row["date"])
    except ValueError:
        raise SlaInputError(f"date {row['date']!r} is not YYYY-MM-DD") from None
    try:
        amount = Decimal(row["amount"])
    except InvalidOperation:
        raise SlaInputError(f"amount {row['amount']!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise SlaInputError(f"amount {row['amount']!r} must be a non-negative number")
    return Charge(row["customer"], row["service"], day, amount, row["currency"])


def _exclusion(row: dict[str, str], where: str) -> Exclusion:
    start, end = _span(row)
    if not row["cause"]:
        raise SlaInputError("cause is empty; an exclusion needs an excluded cause")
    cause = parse_cause(row["cause"], allow=EXCLUDED_CAUSES)
    services = frozenset(s.strip() for s in row.get("services", "").split(";") if s.strip())
    return Exclusion(start, end, cause, services, row.get("note", ""), where)


def parse_outages(lines: Iterable[str], source: str = "<outages>") -> list[Interval]:
    """Outage rows ``service,start,end,cause`` (empty cause = provider)."""
    return [iv for _, iv in _parse_each(lines, source, OUTAGE_COLUMNS, _outage, ("cause",))]


def parse_charges(lines: Iterable[str], source: str = "<charges>") -> list[Charge]:
    """Charge rows ``customer,service,date,amount,currency``; one per customer, service, day."""
    charges = _parse_each(lines, source, CHARGE_COLUMNS, _charge)
    seen: dict[tuple[str, str, date], int] = {}
    for line, charge in charges:
        key = (charge.customer, charge.service, charge.day)
        if key in seen:
            raise SlaInputError(
                f"second charge for {key[0]} {key[1]} {key[2]} (first on line {seen[key]})",
                source,
                line,
            )
        seen[key] = line
    return [charge for _, charge in charges]


def parse_exclusions(lines: Iterable[str], source: str = "<exclusions>") -> list[Exclusion]:
    """Exclusion rows ``start,end,cause,services,note`` (services split by ``;``, empty = all)."""
    parsed = _parse_each(lines, source, EXCLUSION_COLUMNS, _exclusion, ("services", "note"))
    return [ex for _, ex in parsed]


def read_file(path: Path | str) -> list[str]:
    """The lines of a CSV file (a spreadsheet BOM is dropped); unreadable is an input error."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlaInputError(
            f"cannot read: {getattr(exc, 'strerror', None) or exc}", str(path)
        ) from None
    return io.StringIO(text, newline="").readlines()


def read_outages(path: Path | str) -> list[Interval]:
    """Read an outages CSV file."""
    return parse_outages(read_file(path), str(path))


def read_charges(path: Path | str) -> list[Charge]:
    """Read a charges CSV file."""
    return parse_charges(read_file(path), str(path))


def read_exclusions(path: Path | str) -> list[Exclusion]:
    """Read an exclusions CSV file."""
    return parse_exclusions(read_file(path), str(path))
