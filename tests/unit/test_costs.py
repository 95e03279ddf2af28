from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.core.costs import estimated_cost, money, prorated_seat_cost
from meterwatch.core.periods import CALENDAR_MONTH_UTC

D = Decimal


@pytest.mark.parametrize(
    ("quantity", "unit_price", "included", "others_usage", "expected"),
    [
        # pay-as-you-go
        (100, D("0.99"), None, 0, D("99.00")),
        (0, D("0.99"), None, 0, D("0")),
        (-5, D("0.99"), None, 0, D("0")),
        (3, D("0.0125"), None, 0, D("0.0375")),
        (1, D("0"), None, 0, D("0")),
        # others' usage plays no part without a contract
        (10, D("2"), None, 500, D("20")),
        # contracted: below, at and above the included quantity
        (400, D("0.5"), 1000, 0, D("0")),
        (1000, D("0.5"), 1000, 0, D("0")),
        (1001, D("0.5"), 1000, 0, D("0.5")),
        (1200, D("0.5"), 1000, 0, D("100")),
        (5, D("1.10"), 0, 0, D("5.50")),
        # the other workspaces' usage shares the included quantity
        (300, D("0.5"), 1000, 700, D("0")),
        (300, D("0.5"), 1000, 800, D("50")),
        (10, D("2"), 1000, 1500, D("1020")),
        # a negative quantity counts as none, leaving only the others' overage
        (-5, D("0.99"), 10, 20, D("9.90")),
        (-5, D("0.99"), 100, 20, D("0")),
    ],
)
def test_estimated_cost_examples(quantity, unit_price, included, others_usage, expected):
    cost = estimated_cost(quantity, unit_price, included, others_usage)
    assert isinstance(cost, Decimal)
    assert cost == expected


def test_estimated_cost_is_exact_beyond_the_default_decimal_precision():
    quantity = 12345678901234567890123
    price = D("0.12345678901234567890")
    with localcontext() as context:
        context.prec = 6  # a caller's narrow context must not leak into the result
        cost = estimated_cost(quantity, price)
    assert Fraction(cost) == quantity * Fraction(price)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"quantity": 1, "unit_price": 0.99}, TypeError),
        ({"quantity": 1, "unit_price": "0.99"}, TypeError),
        ({"quantity": 1.0, "unit_price": D("1")}, TypeError),
        ({"quantity": True, "unit_price": D("1")}, TypeError),
        ({"quantity": 1, "unit_price": D("-0.01")}, ValueError),
        ({"quantity": 1, "unit_price": D("NaN")}, ValueError),
        ({"quantity": 1, "unit_price": D("Infinity")}, ValueError),
        ({"quantity": 1, "unit_price": D("1"), "included": -1}, ValueError),
        ({"quantity": 1, "unit_price": D("1"), "included": 10, "others_usage": -1}, ValueError),
    ],
)
def test_estimated_cost_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        estimated_cost(**kwargs)


prices = st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)
quantities = st.integers(-(10**9), 10**9)
includeds = st.none() | st.integers(0, 10**9)
others = st.integers(0, 10**9)


@given(quantities, quantities, prices, includeds, others)
def test_estimated_cost_is_monotonic_and_never_negative(q1, q2, price, included, others_usage):
    low, high = sorted((q1, q2))
    low_cost = estimated_cost(low, price, included, others_usage)
    high_cost = estimated_cost(high, price, included, others_usage)
    assert D(0) <= low_cost <= high_cost


@given(st.integers(0, 10**9), prices, st.integers(0, 10**9))
def test_a_contract_never_costs_more_than_pay_as_you_go(quantity, price, included):
    assert estimated_cost(quantity, price, included) <= estimated_cost(quantity, price)
    assert estimated_cost(quantity, price) == quantity * price


NOVEMBER = [date(2024, 11, 1) + timedelta(days=n) for n in range(30)]


def nov(day: int) -> date:
    return date(2024, 11, day)


@pytest.mark.parametrize(
    ("seats_by_day", "unit_price", "carried_in", "included", "others_seats", "expected"),
    [
        # 10 seats all month at 30/seat-month
        ({nov(1): 10}, D("30"), 0, None, 0, D("300")),
        # 10 seats for 15 days, then 20: 150 + 300 = 450 seat-days
        ({nov(1): 10, nov(16): 20}, D("30"), 0, None, 0, D("450")),
        # gaps carry the last count forward: 9x5 + 10x8 + 11x3 = 158 seat-days
        ({nov(1): 5, nov(10): 8, nov(20): 3}, D("3"), 0, None, 0, D("15.8")),
        # carried_in covers the days before the first report: 10x2 + 20x4 = 100 seat-days
        ({nov(11): 4}, D("0.3"), 2, None, 0, D("1")),
        ({}, D("12.50"), 7, None, 0, D("87.50")),
        ({}, D("12.50"), 0, None, 0, D("0")),
        # a report of 0 seats stops the count
        ({nov(1): 6, nov(16): 0}, D("30"), 0, None, 0, D("90")),
        # reports outside the period's days are ignored
        ({date(2024, 10, 31): 99, nov(1): 1, date(2024, 12, 1): 99}, D("30"), 0, None, 0, D("30")),
        # contracted: 10 seats + 5 elsewhere against 12 included bills 3 a day
        ({nov(1): 10}, D("30"), 0, 12, 5, D("90")),
        # 5 seats then 10 against 8 included: 0x15 + 2x15 = 30 seat-days
        ({nov(1): 5, nov(16): 10}, D("30"), 0, 8, 0, D("30")),
        ({nov(1): 10}, D("30"), 0, 10, 0, D("0")),
        ({nov(1): 10}, D("30"), 0, 100, 0, D("0")),
    ],
)
def test_prorated_seat_cost_examples(seats_by_day, unit_price, carried_in, included, others_seats, expected):
    cost = prorated_seat_cost(seats_by_day, NOVEMBER, unit_price, carried_in, included, others_seats)
    assert isinstance(cost, Decimal)
    assert cost == expected


def test_proration_divides_once_so_whole_periods_are_exact():
    january = [date(2024, 1, 1) + timedelta(days=n) for n in range(31)]
    assert prorated_seat_cost({january[0]: 1}, january, D("1")) == D("1")
    assert prorated_seat_cost({january[0]: 7}, january, D("19.99")) == D("139.93")


def test_proration_that_does_not_terminate_keeps_ample_precision():
    days = [date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)]
    cost = prorated_seat_cost({days[2]: 1}, days, D("1"))
    assert abs(Fraction(cost) - Fraction(1, 3)) < Fraction(1, 10**25)
    assert money(cost) == "0.33"


def test_proration_over_a_billing_cycles_days():
    february = CALENDAR_MONTH_UTC.period_containing(datetime(2024, 2, 15, tzinfo=UTC))
    days = CALENDAR_MONTH_UTC.days_in(february)
    assert len(days) == 29
    # one seat for the last 10 days of a 29-day February at 29/seat-month
    assert prorated_seat_cost({date(2024, 2, 20): 1}, days, D("29")) == D("10")


@given(st.integers(0, 10**6), st.sampled_from([28, 29, 30, 31]), prices)
def test_constant_seats_cost_seats_times_price(seats, length, price):
    days = [date(2023, 1, 1) + timedelta(days=n) for n in range(length)]
    assert prorated_seat_cost({days[0]: seats}, days, price) == seats * price
    assert prorated_seat_cost({}, days, price, carried_in=seats) == seats * price


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (({}, [], D("1")), {}, ValueError),
        (({}, [nov(2), nov(1)], D("1")), {}, ValueError),
        (({}, [nov(1), nov(1)], D("1")), {}, ValueError),
        (({nov(1): -1}, NOVEMBER, D("1")), {}, ValueError),
        (({nov(1): 1.5}, NOVEMBER, D("1")), {}, TypeError),
        (({}, NOVEMBER, D("1")), {"carried_in": -1}, ValueError),
        (({}, NOVEMBER, D("1")), {"included": -1}, ValueError),
        (({}, NOVEMBER, D("1")), {"others_seats": -1}, ValueError),
        (({}, NOVEMBER, 1.0), {}, TypeError),
    ],
)
def test_prorated_seat_cost_rejects_bad_arguments(args, kwargs, error):
    with pytest.raises(error):
        prorated_seat_cost(*args, **kwargs)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (D("0.005"), "0.01"),
        (D("0.004999"), "0.00"),
        (D("12.4"), "12.40"),
        (D("12.405"), "12.41"),
        (D("2.675"), "2.68"),
        (D("0"), "0.00"),
        (D("7"), "7.00"),
        (D("1E+3"), "1000.00"),
        (D("-0.005"), "-0.01"),
        (D("-0.001"), "0.00"),
        (D("12345678901234567890123456789.995"), "12345678901234567890123456790.00"),
        (D(1) / D(3), "0.33"),
    ],
)
def test_money_rounds_half_up_to_cents(amount, shown):
    assert money(amount) == shown


@pytest.mark.parametrize(("amount", "error"), [(12.4, TypeError), ("12.40", TypeError), (D("NaN"), ValueError)])
def test_money_rejects_non_decimal_amounts(amount, error):
    with pytest.raises(error):
        money(amount)
