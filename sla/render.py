"""The calculator's output: ``table`` for people, ``csv`` for spreadsheets, ``json`` for tools."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from zoneinfo import ZoneInfo

from sla.model import CreditRow, Interval, from_us

CSV_COLUMNS = (
    "customer",
    "service",
    "date",
    "unavailable_minutes",
    "minutes_in_day",
    "charge",
    "credit",
    "currency",
)


def review_dicts(review: Sequence[Interval], zone: ZoneInfo) -> list[dict[str, str]]:
    """Unknown time as JSON-ready dicts with local RFC 3339 times."""
    return [
        {
            "service": iv.service,
            "start": from_us(iv.start_us, zone).isoformat(),
            "end": from_us(iv.end_us, zone).isoformat(),
            "cause": iv.cause.value,
        }
        for iv in review
    ]


def render_json(
    rows: Sequence[CreditRow],
    zone: ZoneInfo,
    rounding: str,
    review: Sequence[Interval] = (),
    explanations: Mapping[int, list[str]] | None = None,
) -> str:
    """The JSON document: timezone, rounding, credits (money as strings) and review."""
    doc: dict[str, object] = {
        "timezone": zone.key,
        "rounding": rounding,
        "credits": [row.as_dict() for row in rows],
        "review": review_dicts(review, zone),
    }
    if explanations is not None:
        doc["explanations"] = [
            {**{k: rows[i].as_dict()[k] for k in ("customer", "service", "date")}, "lines": lines}
            for i, lines in sorted(explanations.items())
        ]
    return json.dumps(doc, indent=2) + "\n"


def render_csv(rows: Sequence[CreditRow]) -> str:
    """A header and one line per credit row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = row.as_dict()
        writer.writerow([values[c] for c in CSV_COLUMNS])
    return out.getvalue()


def render_table(rows: Sequence[CreditRow], zone: ZoneInfo, review: Sequence[Interval] = ()) -> str:
    """Aligned columns with totals per currency, and unknown time awaiting review."""
    cells = [["customer", "service", "date", "minutes", "of day", "charge", "credit", "cur"]]
    totals: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for row in rows:
        cells.append(
            [
                row.customer,
                row.service,
                row.day.isoformat(),
                str(row.unavailable_minutes),
                str(row.minutes_in_day),
                str(row.charge),
                str(row.credit),
                row.currency,
            ]
        )
        totals[row.currency][0] += row.charge
        totals[row.currency][1] += row.credit
    for currency in sorted(totals):
        charge, credit = totals[currency]
        cells.append(["total", "", "", "", "", str(charge), str(credit), currency])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    numeric = {3, 4, 5, 6}
    lines = [
        "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in cells
    ]
    return "\n".join(lines + render_review(review, zone)) + "\n"


def render_review(review: Sequence[Interval], zone: ZoneInfo) -> list[str]:
    """One line per stretch of unknown time awaiting an operator's decision."""
    return [
        f"review: {item['service']} {item['start']} to {item['end']} is unknown time"
        " (nodevigil not running); no credit until an operator sets its cause"
        for item in review_dicts(review, zone)
    ]
