"""Estimated costs of usage, in exact decimal money.

Amounts are never rounded here except where a division cannot be exact (seat proration);
rounding to cents happens only in `money`, at the edge where amounts are displayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from itertools import pairwise

__all__ = ["estimated_cost", "prorated_seat_cost", "money"]

# The caller's decimal context (default: 28 digits) could silently round a large product,
# so multiplication and addition run in a context wide enough to always be exact.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)

# Dividing by the number of days in a period rarely terminates (1/30), so the quotient keeps
# this many significant digits beyond those of the dividend: far below a cent for any bill.
_QUOTIENT_EXTRA_DIGITS = 28

_CENT = Decimal("0.01")


def _validated_price(unit_price: object) -> Decimal:
    if not isinstance(unit_price, Decimal):
        raise TypeError(f"unit_price must be a decimal.Decimal (never float), got {type(unit_price).__name__}")
    if not unit_price.is_finite():
        raise ValueError(f"unit_price must be finite, got {unit_price}")
    if unit_price < 0:
        raise ValueError(f"unit_price must not be negative, got {unit_price}")
    return unit_price


def _validated_count(value: object, name: str, *, allow_negative: bool = False) -> int:
    # bool is an int subclass; a True quantity is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0 and not allow_negative:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _validated_included(included: object) -> int | None:
    if included is None:
        return None
    return _validated_count(included, "included")


def _billable(quantity: int, included: int | None, others: int) -> int:
    """The quantity charged: all of it pay-as-you-go, else the contract's part above included."""
    if included is None:
        return quantity
    return max(0, others + quantity - included)


def estimated_cost(
    quantity: int,
    unit_price: Decimal,
    included: int | None = None,
    others_usage: int = 0,
) -> Decimal:
    """What `quantity` of a metric costs this workspace.

    Pay-as-you-go (`included` is None): quantity x unit_price. Contracted: the cost above the
    included quantity that the whole contract would reach if this workspace's usage were
    `quantity` while the other workspaces' usage stayed at `others_usage`, because the
    included quantity is shared and counted once for the contract.
    """
    quantity = max(0, _validated_count(quantity, "quantity", allow_negative=True))
    price = _validated_price(unit_price)
    limit = _validated_included(included)
    others = _validated_count(others_usage, "others_usage")
    return _EXACT.multiply(Decimal(_billable(quantity, limit, others)), price)


def prorated_seat_cost(
    seats_by_day: Mapping[date, int],
    days: Sequence[date],
    unit_price: Decimal,
    carried_in: int = 0,
    included: int | None = None,
    others_seats: int = 0,
) -> Decimal:
    """Σ over `days` of (billable seats that day x unit_price / len(days)).

    A day without an entry in `seats_by_day` keeps the previous day's count (`carried_in`
    before the first entry); entries for dates outside `days` are ignored. With `included`,
    a day's billable seats are max(0, seats + others_seats - included).
    """
    price = _validated_price(unit_price)
    limit = _validated_included(included)
    others = _validated_count(others_seats, "others_seats")
    seats = _validated_count(carried_in, "carried_in")
    _check_days(days)

    billable_seat_days = 0
    for day in days:
        if day in seats_by_day:
            seats = _validated_count(seats_by_day[day], f"seats on {day.isoformat()}")
        billable_seat_days += _billable(seats, limit, others)

    # Summing seat-days first and dividing once gives the exact result whenever it is
    # representable (31 days of one seat cost exactly one unit_price, not 0.999...).
    dividend = _EXACT.multiply(Decimal(billable_seat_days), price)
    quotient_context = Context(
        prec=len(dividend.as_tuple().digits) + _QUOTIENT_EXTRA_DIGITS,
        Emax=MAX_EMAX,
        Emin=MIN_EMIN,
    )
    return quotient_context.divide(dividend, Decimal(len(days)))


def _check_days(days: Sequence[date]) -> None:
    if len(days) == 0:
        raise ValueError("days must not be empty: it is the proration denominator")
    for earlier, later in pairwise(days):
        if not earlier < later:
            raise ValueError(f"days must be in strictly increasing order, got {earlier} before {later}")


def money(amount: Decimal) -> str:
    """The display form used on the wire: two decimal places, halves rounded away from zero."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"amount must be a decimal.Decimal (never float), got {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"amount must be finite, got {amount}")
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_UP, context=_EXACT)
    # A tiny negative amount rounds to -0.00, which reads like a refund; show it as 0.00.
    if cents.is_zero():
        cents = abs(cents)
    return f"{cents:f}"
