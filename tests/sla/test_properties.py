"""Properties of the rule that must hold for every input (hypothesis)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sla.model import US, Cause, Charge, Exclusion, Interval, Rounding
from sla.rule import calculate, load_zone

ZONE = load_zone("Europe/Berlin")
BASE = int(datetime(2026, 3, 28, tzinfo=ZONE).timestamp()) * US  # spans the spring DST change
SPAN = 3 * 86400 * US
DAYS = [date(2026, 3, 27) + timedelta(days=i) for i in range(5)]
SERVICES = ("web", "mail")
ROUNDINGS: tuple[Rounding, ...] = ("per-outage", "minute-buckets")

# short stretches clustered in one place make overlaps, holes and sub-minute rests common
starts = st.one_of(st.integers(0, SPAN), st.integers(0, 10 * 60 * US))
lengths = st.one_of(st.integers(0, 3 * 60 * US), st.integers(0, 6 * 3600 * US))
causes = st.sampled_from([Cause.PROVIDER, Cause.PROVIDER, Cause.UNKNOWN, Cause.THIRD_PARTY])


@st.composite
def intervals(draw: st.DrawFn) -> Interval:
    start = BASE + draw(starts)
    return Interval(draw(st.sampled_from(SERVICES)), start, start + draw(lengths), draw(causes))


@st.composite
def exclusions(draw: st.DrawFn) -> Exclusion:
    start = BASE + draw(starts)
    scope = draw(st.sampled_from([(), ("web",), ("mail",), ("web", "mail")]))
    return Exclusion(start, start + draw(lengths), Cause.CYBER_ATTACK, frozenset(scope))


amounts = st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False)
# a charge for every service and day, so every minute the rule counts reaches a credit row
charges = st.lists(
    amounts, min_size=len(SERVICES) * len(DAYS), max_size=len(SERVICES) * len(DAYS)
).map(
    lambda money: [
        Charge("acme", service, day, amount, "EUR")
        for (service, day), amount in zip(
            [(s, d) for s in SERVICES for d in DAYS], money, strict=True
        )
    ]
)
common = settings(max_examples=150, deadline=None)


def credits(ivs: list[Interval], exs: list[Exclusion], chs: list[Charge], r: Rounding) -> list[
    tuple[str, date, int, Decimal]
]:  # fmt: skip
    report = calculate(ivs, exs, chs, ZONE, r)
    return [(c.service, c.day, c.unavailable_minutes, c.credit) for c in report.credits]


@common
@given(st.lists(intervals(), max_size=8), st.lists(exclusions(), max_size=3), charges,
       st.sampled_from(ROUNDINGS))  # fmt: skip
def test_credit_never_exceeds_the_charge(
    ivs: list[Interval], exs: list[Exclusion], chs: list[Charge], rounding: Rounding
) -> None:
    for row in calculate(ivs, exs, chs, ZONE, rounding).credits:
        assert Decimal(0) <= row.credit <= row.charge
        assert 0 <= row.unavailable_minutes <= row.minutes_in_day


@common
@given(st.lists(intervals(), max_size=8), st.lists(exclusions(), max_size=3), charges,
       st.sampled_from(ROUNDINGS), st.randoms(use_true_random=False))  # fmt: skip
def test_order_of_input_rows_never_matters(
    ivs: list[Interval], exs: list[Exclusion], chs: list[Charge], rounding: Rounding, rnd: object
) -> None:
    expected = credits(ivs, exs, chs, rounding)
    shuffled = [list(ivs), list(exs), list(chs)]
    for items in shuffled:
        rnd.shuffle(items)  # type: ignore[attr-defined]
    assert credits(*shuffled, rounding) == expected  # type: ignore[arg-type]


@common
@given(st.lists(intervals(), min_size=1, max_size=6), st.lists(exclusions(), max_size=3), charges,
       st.sampled_from(ROUNDINGS), st.data())  # fmt: skip
def test_splitting_an_interval_into_two_touching_pieces_changes_nothing(
    ivs: list[Interval], exs: list[Exclusion], chs: list[Charge], rounding: Rounding,
    data: st.DataObject,
) -> None:  # fmt: skip
    whole = data.draw(st.sampled_from(ivs))
    cut = data.draw(st.integers(whole.start_us, whole.end_us))
    pieces = [
        Interval(whole.service, whole.start_us, cut, whole.cause),
        Interval(whole.service, cut, whole.end_us, whole.cause),
    ]
    split = [i for i in ivs if i is not whole] + pieces
    assert credits(split, exs, chs, rounding) == credits(ivs, exs, chs, rounding)


@common
@given(st.lists(intervals(), max_size=8), st.lists(exclusions(), max_size=3), exclusions(),
       charges, st.sampled_from(ROUNDINGS))  # fmt: skip
@example(  # a one-second hole inside a one-minute outage must not make two minutes of it
    [Interval("web", BASE, BASE + 60 * US)],
    [],
    Exclusion(BASE + 30 * US, BASE + 31 * US, Cause.CYBER_ATTACK),
    [Charge("acme", "web", DAYS[1], Decimal("100"), "EUR")],
    "per-outage",
)
def test_adding_an_exclusion_never_raises_a_credit(
    ivs: list[Interval], exs: list[Exclusion], extra: Exclusion, chs: list[Charge],
    rounding: Rounding,
) -> None:  # fmt: skip
    before = credits(ivs, exs, chs, rounding)
    after = credits(ivs, [*exs, extra], chs, rounding)
    for old, new in zip(before, after, strict=True):
        assert new[2] <= old[2]
        assert new[3] <= old[3]
