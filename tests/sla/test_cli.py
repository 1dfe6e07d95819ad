"""The offline calculator: CSV errors naming file and line, outputs, --explain, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodevigil.app.sla_cli import main

OUTAGES = """service,start,end,cause
web,2026-03-01T23:58:30+01:00,2026-03-02T00:01:10+01:00,
web,2026-03-01T23:59:00+01:00,2026-03-02T00:00:30+01:00,provider
mail,2026-03-01T10:00:00Z,2026-03-01T10:00:30Z,
mail,2026-03-01T12:00:00Z,2026-03-01T13:00:00Z,telecom_failure
db,2026-03-01T08:00:00Z,2026-03-01T09:00:00Z,unknown
"""
CHARGES = """customer,service,date,amount,currency
acme,web,2026-03-02,48.00,EUR
acme,web,2026-03-01,48.00,EUR
beta,mail,2026-03-01,10.00,EUR
beta,db,2026-03-01,10.00,EUR
"""
EXCLUSIONS = """start,end,cause,services,note
2026-03-01T23:59:00+01:00,2026-03-01T23:59:10+01:00,scheduled_maintenance,web,announced upgrade
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in (("outages", OUTAGES), ("charges", CHARGES), ("exclusions", EXCLUSIONS)):
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def credits_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "credits",
        "--outages", str(files["outages"]),
        "--charges", str(files["charges"]),
        "--exclusions", str(files["exclusions"]),
        "--timezone", "Europe/Berlin",
        *extra,
    ]  # fmt: skip


def test_json_output_has_the_documented_shape(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(credits_args(files, "--format", "json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["timezone"] == "Europe/Berlin"
    assert doc["rounding"] == "per-outage"
    assert doc["credits"][0] == {
        "customer": "acme",
        "service": "web",
        "date": "2026-03-01",
        "unavailable_minutes": 2,  # 90 s minus 10 s excluded = 80 s -> 2 minutes
        "minutes_in_day": 1440,
        "charge": "48.00",
        "credit": "0.07",
        "currency": "EUR",
    }
    keys = [(r["date"], r["customer"], r["service"]) for r in doc["credits"]]
    assert keys == sorted(keys) and len(keys) == 4
    assert [r["credit"] for r in doc["credits"]] == ["0.07", "0.00", "0.01", "0.07"]
    assert doc["review"] == [
        {
            "service": "db",
            "start": "2026-03-01T09:00:00+01:00",
            "end": "2026-03-01T10:00:00+01:00",
            "cause": "unknown",
        }
    ]


def test_csv_output_is_one_line_per_charge(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(credits_args(files, "--format", "csv")) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert (
        lines[0]
        == "customer,service,date,unavailable_minutes,minutes_in_day,charge,credit,currency"
    )
    assert lines[1] == "acme,web,2026-03-01,2,1440,48.00,0.07,EUR"
    assert len(lines) == 5
    assert "db" in captured.err and "unknown" in captured.err  # review goes beside, not inside


def test_table_output_has_totals_and_review(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(credits_args(files)) == 0
    out = capsys.readouterr().out
    assert "total" in out and "116.00" in out and "0.15" in out
    assert "review: db" in out


def test_minute_buckets_option(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(credits_args(files, "--format", "json", "--rounding", "minute-buckets")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rounding"] == "minute-buckets"
    # 23:58:30-24:00 touches the wall-clock minutes 23:58 and 23:59
    assert doc["credits"][0]["unavailable_minutes"] == 2


def test_explain_shows_intervals_exclusions_pieces_and_arithmetic(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = credits_args(files, "--explain", "customer=acme,date=2026-03-01")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "acme / web / 2026-03-01" in out
    assert "outages.csv:2" in out and "outages.csv:3" in out
    assert "excluded 2026-03-01T23:59:00+01:00 to 2026-03-01T23:59:10+01:00 = 10 s" in out
    assert "scheduled_maintenance" in out and "announced upgrade" in out
    assert "left 80 s -> ceil(80 / 60) = 2 min" in out
    assert "round_half_up(48.00 x 2 / 1440, 0.01)) = 0.07 EUR" in out
    assert "2026-03-02 (per-outage)" not in out  # the filter picked one row


def test_explain_in_json(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(credits_args(files, "--format", "json", "--explain")) == 0
    doc = json.loads(capsys.readouterr().out)
    explained = [(e["customer"], e["service"], e["date"]) for e in doc["explanations"]]
    assert explained == [
        ("acme", "web", "2026-03-01"),
        ("beta", "mail", "2026-03-01"),
        ("acme", "web", "2026-03-02"),
    ]


@pytest.mark.parametrize(
    ("which", "text", "problem"),
    [
        ("outages", "service,start,end,cause\nweb,2026-03-01T10:00:00,2026-03-01T11:00:00Z,\n",
         "outages.csv:2: start: time '2026-03-01T10:00:00' has no offset"),
        ("outages", "service,start,end,cause\n\nweb,2026-03-01T11:00:00Z,2026-03-01T10:00:00Z,\n",
         "outages.csv:3: end 2026-03-01T10:00:00Z is before start"),
        ("outages", "service,start,end,cause\nweb,2026-03-01T10:00:00Z,2026-03-01T11:00:00Z,oops\n",
         "outages.csv:2: unknown cause 'oops'"),
        ("outages", "service,start,cause\n", "outages.csv:1: missing column(s) end"),
        ("outages", "service,start,end,cause\nweb,yesterday,2026-03-01T11:00:00Z,\n",
         "outages.csv:2: start: 'yesterday' is not an RFC 3339 time"),
        ("charges", CHARGES + "acme,web,2026-03-03,-1.00,EUR\n",
         "charges.csv:6: amount '-1.00' must be a non-negative number"),
        ("charges", CHARGES + "acme,web,2026-03-03,ten,EUR\n",
         "charges.csv:6: amount 'ten' is not a number"),
        ("charges", CHARGES + "acme,web,2026-03-01,1.00,EUR\n",
         "charges.csv:6: second charge for acme web 2026-03-01 (first on line 3)"),
        ("charges", "customer,service,date,amount\n", "charges.csv:1: missing column(s) currency"),
        ("charges", CHARGES + "acme,web,03/01/2026,1.00,EUR\n",
         "charges.csv:6: date '03/01/2026' is not YYYY-MM-DD"),
        ("exclusions", EXCLUSIONS + "2026-03-01T10:00:00Z,2026-03-01T11:00:00Z,provider,,\n",
         "exclusions.csv:3: cause 'provider' not allowed here"),
    ],
)  # fmt: skip
def test_bad_input_names_file_line_and_problem(
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    which: str,
    text: str,
    problem: str,
) -> None:
    files[which].write_text(text)
    assert main(credits_args(files)) == 2
    captured = capsys.readouterr()
    assert problem in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_unknown_time_zone_and_missing_file(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = credits_args(files)
    args[args.index("Europe/Berlin")] = "Europe/Atlantis"
    assert main(args) == 2
    assert "--timezone: unknown time zone 'Europe/Atlantis'" in capsys.readouterr().err
    files["outages"] = tmp_path / "nope.csv"
    assert main(credits_args(files)) == 2
    assert "nope.csv: cannot read" in capsys.readouterr().err


def test_bad_explain_filter_and_missing_argument(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(credits_args(files, "--explain", "colour=red")) == 2
    assert "--explain: 'colour=red'" in capsys.readouterr().err
    assert main(["credits", "--timezone", "UTC"]) == 2
    assert "required" in capsys.readouterr().err


def test_charges_import_then_report_a_month(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "ledger.db")
    ledger_args = ["--db", db, "--timezone", "Europe/Berlin"]
    assert main(["charges", "import", str(files["charges"]), *ledger_args]) == 0
    assert "imported 4 charges" in capsys.readouterr().out
    assert main(["report", "--month", "2026-03", "--customer", "beta", *ledger_args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["beta,db,2026-03-01,0,1440,10.00,0.00,EUR",
                         "beta,mail,2026-03-01,0,1440,10.00,0.00,EUR"]  # fmt: skip
    assert main(["report", "--month", "2026-04", "--format", "json", *ledger_args]) == 0
    assert '"credits": []' in capsys.readouterr().out


def test_report_problems_exit_two(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = ["--db", str(tmp_path / "none.db"), "--timezone", "UTC"]
    assert main(["report", "--month", "2026-03", *missing]) == 2
    assert "none.db: no ledger database here" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    assert main(["report", "--month", "March", *missing]) == 2
    assert "--month: 'March' is not a month" in capsys.readouterr().err
