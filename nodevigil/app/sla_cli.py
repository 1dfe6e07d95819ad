"""``nodevigil sla ...``: the offline credit calculator and commands on the ledger database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TextIO

from nodevigil.core.durations import parse_duration
from nodevigil.state.sqlite.ledger import open_sqlite_ledger
from sla.errors import SlaError, SlaInputError
from sla.explain import explain_row
from sla.inputs import read_charges, read_exclusions, read_outages
from sla.ledger import Ledger
from sla.model import ROUNDINGS, Cause, CreditRow, Interval, Rounding, to_us
from sla.render import render_csv, render_json, render_review, render_table
from sla.rule import BillingCalendar, calculate, load_zone

FORMATS = ("table", "csv", "json")
_EXPLAIN_KEYS = ("customer", "service", "date")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sla`` subcommands to ``parser`` (a parent CLI may embed them)."""
    sub = parser.add_subparsers(dest="sla_command", required=True, metavar="COMMAND")

    credits = sub.add_parser("credits", help="compute credits offline from CSV files")
    credits.add_argument("--outages", dest="sla_outages", required=True, metavar="FILE")
    credits.add_argument("--charges", dest="sla_charges", required=True, metavar="FILE")
    credits.add_argument("--exclusions", dest="sla_exclusions", metavar="FILE")
    credits.add_argument("--timezone", dest="sla_timezone", required=True, metavar="ZONE")
    credits.add_argument("--rounding", dest="sla_rounding", choices=ROUNDINGS, default=ROUNDINGS[0])
    credits.add_argument("--format", dest="sla_format", choices=FORMATS, default="table")
    credits.add_argument(
        "--explain",
        dest="sla_explain",
        nargs="?",
        const="",
        default=None,
        metavar="FILTER",
        help="explain rows: all with lost minutes, or those matching e.g. "
        "customer=acme,service=web,date=2026-03-01",
    )
    credits.set_defaults(sla_handler=_credits)

    charges = sub.add_parser("charges", help="charges in the ledger")
    charges_sub = charges.add_subparsers(dest="sla_charges_command", required=True)
    imp = charges_sub.add_parser("import", help="import a charges CSV into the ledger")
    imp.add_argument("sla_file", metavar="FILE")
    imp.add_argument("--who", dest="sla_who", default="cli", help="recorded with any adjustment")
    _ledger_arguments(imp)
    imp.set_defaults(sla_handler=_import)

    report = sub.add_parser("report", help="export a month of credits from the ledger")
    report.add_argument("--month", dest="sla_month", required=True, metavar="YYYY-MM")
    report.add_argument("--customer", dest="sla_customer", metavar="ID")
    report.add_argument("--format", dest="sla_format", choices=FORMATS, default="csv")
    _ledger_arguments(report)
    report.set_defaults(sla_handler=_report)


def _ledger_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", dest="sla_db", required=True, metavar="PATH")
    parser.add_argument("--timezone", dest="sla_timezone", required=True, metavar="ZONE")
    parser.add_argument("--rounding", dest="sla_rounding", choices=ROUNDINGS, default=ROUNDINGS[0])
    parser.add_argument(
        "--settlement-delay", dest="sla_settlement_delay", default="24h", metavar="DURATION"
    )


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the parsed subcommand; bad input exits 2 and a refused operation 1, no traceback."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        code: int = args.sla_handler(args, out, err)
    except SlaInputError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except SlaError as exc:
        print(f"error: {exc}", file=err)
        return 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``main(["credits", "--outages", ...])``."""
    parser = argparse.ArgumentParser(prog="nodevigil sla", description=__doc__)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage problem already
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


def _zone_arg(name: str) -> BillingCalendar:
    try:
        return BillingCalendar(load_zone(name))
    except SlaInputError as exc:
        raise SlaInputError(exc.problem, "--timezone") from None


def _explain_filter(text: str) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in _EXPLAIN_KEYS:
            raise SlaInputError(f"{part!r}: use customer=ID, service=NAME or date=YYYY-MM-DD")
        wanted[key] = value
    return wanted


def _matches(row: CreditRow, wanted: dict[str, str]) -> bool:
    if not wanted:
        return row.unavailable_minutes > 0
    values = row.as_dict()
    return all(values[key] == value for key, value in wanted.items())


def _credits(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    calendar = _zone_arg(args.sla_timezone)
    wanted = None
    if args.sla_explain is not None:
        try:
            wanted = _explain_filter(args.sla_explain)
        except SlaInputError as exc:
            raise SlaInputError(exc.problem, "--explain") from None
    rounding: Rounding = args.sla_rounding
    intervals = read_outages(args.sla_outages)
    charges = read_charges(args.sla_charges)
    exclusions = read_exclusions(args.sla_exclusions) if args.sla_exclusions else []
    report = calculate(intervals, exclusions, charges, calendar.zone, rounding)
    explanations = None
    if wanted is not None:
        explanations = {
            i: explain_row(row, intervals, exclusions, calendar, rounding)
            for i, row in enumerate(report.credits)
            if _matches(row, wanted)
        }
    fmt = args.sla_format
    _write(
        out,
        err,
        fmt,
        report.credits,
        calendar=calendar,
        rounding=rounding,
        review=report.review,
        explanations=explanations,
    )
    if explanations is not None and fmt != "json":  # JSON carries them inside the document
        target = err if fmt == "csv" else out  # keep the CSV clean for spreadsheets
        for lines in explanations.values():
            print("\n" + "\n".join(lines), file=target)
    return 0


def _write(
    out: TextIO,
    err: TextIO,
    fmt: str,
    rows: list[CreditRow],
    *,
    calendar: BillingCalendar,
    rounding: str,
    review: list[Interval],
    explanations: dict[int, list[str]] | None = None,
) -> None:
    if fmt == "json":
        out.write(render_json(rows, calendar.zone, rounding, review, explanations))
    elif fmt == "csv":
        out.write(render_csv(rows))
        if review:
            print("\n".join(render_review(review, calendar.zone)), file=err)
    else:
        out.write(render_table(rows, calendar.zone, review))


async def _open(args: argparse.Namespace) -> Ledger:
    try:
        delay = parse_duration(args.sla_settlement_delay)
    except ValueError as exc:
        raise SlaInputError(str(exc), "--settlement-delay") from None
    return await open_sqlite_ledger(
        args.sla_db,
        timezone=args.sla_timezone,
        rounding=args.sla_rounding,
        settlement_delay=delay,
    )


def _import(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _zone_arg(args.sla_timezone)
    charges = read_charges(args.sla_file)

    async def go() -> int:
        async with await _open(args) as ledger:
            return await ledger.import_charges(charges, who=args.sla_who)

    count = asyncio.run(go())
    print(f"imported {count} charges into {args.sla_db}", file=out)
    return 0


def _month(text: str) -> tuple[date, date]:
    try:
        first = date.fromisoformat(f"{text}-01")
    except ValueError:
        raise SlaInputError(f"{text!r} is not a month (YYYY-MM)", "--month") from None
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def _report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    first, last = _month(args.sla_month)
    calendar = _zone_arg(args.sla_timezone)
    if not Path(args.sla_db).exists():  # opening would create an empty ledger silently
        raise SlaInputError("no ledger database here", args.sla_db)
    start = datetime.combine(first, time(0), tzinfo=calendar.zone)
    end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=calendar.zone)

    async def go() -> tuple[list[CreditRow], list[Interval]]:
        async with await _open(args) as ledger:
            rows = await ledger.credits(first, last, args.sla_customer)
            entries = await ledger.ledger(None, start, end)
        review = [
            Interval(e.service, to_us(e.start), to_us(e.end), e.cause)
            for e in entries
            if e.cause is Cause.UNKNOWN and e.end is not None
        ]
        return rows, review

    rows, review = asyncio.run(go())
    _write(
        out,
        err,
        args.sla_format,
        rows,
        calendar=calendar,
        rounding=args.sla_rounding,
        review=review,
    )
    return 0
