"""Worked examples of clauses VIII.7-VIII.9 against the pure rule."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from sla.errors import SlaInputError
from sla.model import Cause
from sla.rule import BillingCalendar, calculate, credit_for, load_zone, unavailable_minutes
from tests.sla.helpers import charge, ex, iv

BERLIN = load_zone("Europe/Berlin")
UTC_ZONE = load_zone("UTC")


def minutes(intervals, exclusions=(), zone=UTC_ZONE, rounding="per-outage"):  # type: ignore[no-untyped-def]
    return unavailable_minutes(intervals, exclusions, BillingCalendar(zone), rounding)


def test_thirty_seconds_count_as_one_minute() -> None:
    got = minutes([iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:00:30Z")])
    assert got == {("web", date(2026, 3, 1)): 1}


def test_exactly_one_minute_is_one_minute_and_a_microsecond_more_is_two() -> None:
    assert (
        minutes([iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:01:00Z")])[
            "web", date(2026, 3, 1)
        ]
        == 1
    )
    assert (
        minutes([iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:01:00.000001Z")])[
            "web", date(2026, 3, 1)
        ]
        == 2
    )


def test_overlapping_and_touching_reports_count_once() -> None:
    got = minutes(
        [
            iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:00:40Z"),
            iv("web", "2026-03-01T10:00:20Z", "2026-03-01T10:01:00Z"),
            iv("web", "2026-03-01T10:01:00Z", "2026-03-01T10:01:30Z"),
        ]
    )
    assert got == {("web", date(2026, 3, 1)): 2}  # one outage of 90 s


def test_outage_across_local_midnight_splits_into_two_days() -> None:
    got = minutes(
        [iv("web", "2026-03-01T23:58:30+08:00", "2026-03-02T00:00:30+08:00")],
        zone=load_zone("Asia/Shanghai"),
    )
    assert got == {("web", date(2026, 3, 1)): 2, ("web", date(2026, 3, 2)): 1}


def test_midnight_is_local_not_utc() -> None:
    # 23:30Z-00:30Z is 00:30-01:30 in Berlin: all on one local day
    got = minutes([iv("web", "2026-03-01T23:30:00Z", "2026-03-02T00:30:00Z")], zone=BERLIN)
    assert got == {("web", date(2026, 3, 2)): 60}


@pytest.mark.parametrize(
    ("day", "length"),
    [(date(2026, 3, 29), 1380), (date(2026, 10, 25), 1500), (date(2026, 3, 1), 1440)],
)
def test_minutes_in_day_follow_dst(day: date, length: int) -> None:
    assert BillingCalendar(BERLIN).minutes_in_day(day) == length


def test_whole_dst_days_are_capped_at_their_own_length() -> None:
    spring = iv("web", "2026-03-28T12:00:00+01:00", "2026-03-30T12:00:00+02:00")
    autumn = iv("web", "2026-10-24T12:00:00+02:00", "2026-10-26T12:00:00+01:00")
    got = minutes([spring, autumn], zone=BERLIN)
    assert got["web", date(2026, 3, 29)] == 1380
    assert got["web", date(2026, 10, 25)] == 1500
    report = calculate([spring], [], [charge("2026-03-29")], BERLIN)
    assert report.credits[0].credit == Decimal("48.00")


def test_rounded_outages_are_capped_at_the_minutes_in_the_day() -> None:
    # 719.5 min and 720.33 min round to 720 + 721 = 1441 minutes: the day only has 1440
    got = minutes(
        [
            iv("web", "2026-03-01T00:00:00Z", "2026-03-01T11:59:30Z"),
            iv("web", "2026-03-01T11:59:40Z", "2026-03-02T00:00:00Z"),
        ]
    )
    assert got == {("web", date(2026, 3, 1)): 1440}


def test_dst_hour_counts_real_elapsed_minutes() -> None:
    # 01:30+01:00 to 03:30+02:00 is one real hour on the spring-forward day
    got = minutes(
        [iv("web", "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00")], zone=BERLIN
    )
    assert got == {("web", date(2026, 3, 29)): 60}


def test_excluded_cause_earns_no_credit() -> None:
    intervals = [
        iv("web", "2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z"),
        iv("web", "2026-03-01T09:00:00Z", "2026-03-01T12:00:00Z", Cause.FORCE_MAJEURE),
    ]
    report = calculate(intervals, [], [charge("2026-03-01")], UTC_ZONE)
    assert report.credits[0].unavailable_minutes == 0
    assert report.credits[0].credit == Decimal("0.00")


def test_exclusion_window_overlapping_partly_is_subtracted_before_rounding() -> None:
    # 10:00:00-10:02:00 minus 10:00:00-10:00:50 leaves 70 s -> 2 minutes (not 2 - 1 = 1)
    got = minutes(
        [iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:02:00Z")],
        [ex("2026-03-01T09:00:00Z", "2026-03-01T10:00:50Z")],
    )
    assert got == {("web", date(2026, 3, 1)): 2}


def test_exclusion_window_only_for_listed_services() -> None:
    intervals = [
        iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:10:00Z"),
        iv("mail", "2026-03-01T10:00:00Z", "2026-03-01T10:10:00Z"),
    ]
    got = minutes(intervals, [ex("2026-03-01T10:00:00Z", "2026-03-01T10:05:00Z", ("mail",))])
    assert got == {("web", date(2026, 3, 1)): 10, ("mail", date(2026, 3, 1)): 5}


def test_hole_inside_an_outage_never_adds_a_minute() -> None:
    # 60 s outage with 1 s excluded in the middle: 59 s left of one outage -> 1 minute
    got = minutes(
        [iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:01:00Z")],
        [ex("2026-03-01T10:00:30Z", "2026-03-01T10:00:31Z")],
    )
    assert got == {("web", date(2026, 3, 1)): 1}


def test_unknown_time_counts_no_credit_and_is_reported_for_review() -> None:
    intervals = [
        iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:30:00Z"),
        iv("web", "2026-03-01T10:10:00Z", "2026-03-01T10:40:00Z", Cause.UNKNOWN),
    ]
    report = calculate(intervals, [], [charge("2026-03-01")], UTC_ZONE)
    assert report.credits[0].unavailable_minutes == 10
    assert [(r.service, r.cause) for r in report.review] == [("web", Cause.UNKNOWN)]


def test_separate_outages_on_one_day_are_each_rounded_up() -> None:
    got = minutes(
        [
            iv("web", "2026-03-01T10:00:00Z", "2026-03-01T10:00:10Z"),
            iv("web", "2026-03-01T11:00:00Z", "2026-03-01T11:00:10Z"),
        ]
    )
    assert got == {("web", date(2026, 3, 1)): 2}


def test_minute_buckets_count_wall_clock_minutes_touched() -> None:
    intervals = [
        iv("web", "2026-03-01T10:00:50Z", "2026-03-01T10:01:10Z"),  # touches 10:00 and 10:01
        iv("web", "2026-03-01T10:01:20Z", "2026-03-01T10:01:30Z"),  # 10:01 again
    ]
    assert minutes(intervals) == {("web", date(2026, 3, 1)): 2}
    assert minutes(intervals, rounding="minute-buckets") == {("web", date(2026, 3, 1)): 2}
    single = [iv("web", "2026-03-01T10:00:50Z", "2026-03-01T10:01:10Z")]
    assert minutes(single) == {("web", date(2026, 3, 1)): 1}
    assert minutes(single, rounding="minute-buckets") == {("web", date(2026, 3, 1)): 2}


def test_minute_buckets_use_local_minutes_in_a_zone_with_a_half_hour_offset() -> None:
    got = minutes(
        [iv("web", "2026-03-01T10:00:10+05:30", "2026-03-01T10:00:20+05:30")],
        zone=load_zone("Asia/Kolkata"),
        rounding="minute-buckets",
    )
    assert got == {("web", date(2026, 3, 1)): 1}


@pytest.mark.parametrize(
    ("amount", "lost", "length", "expected"),
    [
        ("48.00", 2, 1440, "0.07"),  # 0.0666.. rounds up
        ("0.36", 50, 1440, "0.01"),  # exactly 0.0125 -> 0.01
        ("14.40", 5, 1440, "0.05"),  # exactly 0.05
        ("1.44", 5, 1440, "0.01"),  # exactly 0.005 -> half up to 0.01
        ("2.88", 1, 1440, "0.00"),  # exactly 0.002 -> 0.00
        ("10", 1440, 1440, "10.00"),
        ("10.005", 1440, 1440, "10.005"),  # 10.01 would exceed the charge: capped
        ("0", 600, 1440, "0.00"),
    ],
)
def test_credit_rounds_half_up_at_the_cent_and_never_exceeds_the_charge(
    amount: str, lost: int, length: int, expected: str
) -> None:
    got = credit_for(Decimal(amount), lost, length)
    assert got == Decimal(expected)
    assert str(got) == expected


def test_one_row_per_charge_sorted_by_date_customer_service() -> None:
    charges = [
        charge("2026-03-02", customer="b"),
        charge("2026-03-01", customer="b", service="mail"),
        charge("2026-03-01", customer="a"),
        charge("2026-03-01", customer="b"),
    ]
    rows = calculate([], [], charges, UTC_ZONE).credits
    assert [(r.day.day, r.customer, r.service) for r in rows] == [
        (1, "a", "web"),
        (1, "b", "mail"),
        (1, "b", "web"),
        (2, "b", "web"),
    ]


def test_unknown_zone_is_an_input_error() -> None:
    with pytest.raises(SlaInputError, match="unknown time zone"):
        load_zone("Mars/Olympus")
