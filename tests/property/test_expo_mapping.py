"""The exponential bucket mapping against independent exact references."""

from __future__ import annotations

import decimal
import math
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spanmetrics.aggregate.expo_mapping import (
    MAX_SCALE,
    MIN_SCALE,
    lower_boundary,
    map_to_index,
    map_to_index_array,
)

pytestmark = pytest.mark.property

MAX_FLOAT = sys.float_info.max
SMALLEST = 5e-324


# --- references -------------------------------------------------------------------------


def ref_index_integer(value: float, scale: int) -> int:
    """Exact index for scale >= 0 with integers only.

    i is the index iff 2**i < value**(2**scale) <= 2**(i+1). With value = num / 2**d
    (doubles are dyadic), value**(2**scale) = P * 2**t with P = num**(2**scale) and
    t = -d * 2**scale, and P's bit length locates it between powers of two.
    """
    num, den = value.as_integer_ratio()
    d = den.bit_length() - 1
    p: int = num ** (1 << scale)
    t = -d * (1 << scale)
    m = p.bit_length() - 1 + t  # 2**m <= value**(2**scale) < 2**(m+1)
    if p & (p - 1) == 0:  # value**(2**scale) == 2**m exactly: upper boundary of m-1
        return m - 1
    return m


def is_power_of_two(value: float) -> bool:
    num, den = value.as_integer_ratio()
    return (num == 1 and den & (den - 1) == 0) or (den == 1 and num & (num - 1) == 0)


REF_CONTEXT = decimal.Context(prec=100)


def ref_index_decimal(value: float, scale: int) -> int:
    """Index for any scale from 100-digit base-10 logarithms (a different formulation)."""
    if is_power_of_two(value):
        k = Fraction(value).numerator.bit_length() - Fraction(value).denominator.bit_length()
        return (k << scale) - 1 if scale >= 0 else (k - 1) // (1 << -scale)
    ctx = REF_CONTEXT
    x = ctx.divide(ctx.log10(decimal.Decimal(value)), ctx.log10(decimal.Decimal(2)))
    x = ctx.multiply(x, ctx.power(decimal.Decimal(2), scale))
    floor = x.to_integral_value(rounding=decimal.ROUND_FLOOR)
    # The reference is only trusted away from integers; doubles are never that close.
    assert min(x - floor, floor + 1 - x) > decimal.Decimal("1e-60")
    return int(floor)


def ref_check_fraction(value: float, scale: int, index: int) -> bool:
    """Scale <= 0: check the defining inequality with exact rationals."""
    step = 1 << -scale
    v = Fraction(value)
    return Fraction(2) ** (index * step) < v <= Fraction(2) ** ((index + 1) * step)


# --- strategies ------------------------------------------------------------------------

positive_floats = st.floats(
    min_value=SMALLEST, max_value=MAX_FLOAT, allow_nan=False, allow_infinity=False
)


@st.composite
def powers_of_two_and_neighbours(draw: st.DrawFn) -> float:
    k = draw(st.integers(-1074, 1023))
    v = math.ldexp(1.0, k)
    direction = draw(st.sampled_from([0.0, math.inf, None]))
    if direction is None:
        return v
    n = math.nextafter(v, direction)
    return n if 0 < n <= MAX_FLOAT else v


@st.composite
def near_boundary(draw: st.DrawFn, max_scale: int = MAX_SCALE) -> tuple[float, int]:
    """A double within a few ulps of a bucket boundary at a positive scale."""
    scale = draw(st.integers(1, max_scale))
    whole = draw(st.integers(-1070, 1022))
    part = draw(st.integers(1, (1 << scale) - 1))
    v = math.ldexp(math.exp2(part / (1 << scale)), whole)
    for _ in range(draw(st.integers(0, 3))):
        v = math.nextafter(v, draw(st.sampled_from([0.0, math.inf])))
    return v, scale


special_values = st.one_of(
    positive_floats,
    powers_of_two_and_neighbours(),
    st.sampled_from([SMALLEST, 2 * SMALLEST, 3 * SMALLEST, sys.float_info.min, MAX_FLOAT, 1.0]),
)


# --- tests -----------------------------------------------------------------------------

REF_SETTINGS = settings(max_examples=300, deadline=None)


@REF_SETTINGS
@given(value=special_values, scale=st.integers(0, 8))
@example(value=MAX_FLOAT, scale=8)
@example(value=SMALLEST, scale=8)
def test_positive_scales_match_integer_reference(value: float, scale: int) -> None:
    assert map_to_index(value, scale) == ref_index_integer(value, scale)


@REF_SETTINGS
@given(data=near_boundary(max_scale=8))
def test_near_boundaries_match_integer_reference(data: tuple[float, int]) -> None:
    value, scale = data
    assert map_to_index(value, scale) == ref_index_integer(value, scale)


@REF_SETTINGS
@given(value=special_values, scale=st.integers(1, MAX_SCALE))
def test_all_positive_scales_match_decimal_reference(value: float, scale: int) -> None:
    assert map_to_index(value, scale) == ref_index_decimal(value, scale)


@REF_SETTINGS
@given(data=near_boundary())
def test_near_boundaries_match_decimal_reference(data: tuple[float, int]) -> None:
    value, scale = data
    assert map_to_index(value, scale) == ref_index_decimal(value, scale)


@REF_SETTINGS
@given(value=special_values, scale=st.integers(MIN_SCALE, 0))
def test_non_positive_scales_match_exact_inequality(value: float, scale: int) -> None:
    index = map_to_index(value, scale)
    assert ref_check_fraction(value, scale, index)


def test_known_boundaries() -> None:
    # Powers of two close the bucket below them at every scale >= 0.
    for scale in range(MAX_SCALE + 1):
        assert map_to_index(1.0, scale) == -1
        assert map_to_index(2.0, scale) == (1 << scale) - 1
        assert map_to_index(math.nextafter(2.0, 3.0), scale) == 1 << scale
    assert map_to_index(SMALLEST, 0) == -1075
    assert map_to_index(MAX_FLOAT, 0) == 1023
    assert map_to_index(SMALLEST, MIN_SCALE) == -2
    assert map_to_index(MAX_FLOAT, MIN_SCALE) == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, -0.0])
def test_rejects_non_positive_and_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        map_to_index(bad, 0)
    with pytest.raises(ValueError):
        map_to_index_array(np.array([1.0, bad]), 3)


def test_rejects_scale_out_of_range() -> None:
    with pytest.raises(ValueError):
        map_to_index(1.5, MAX_SCALE + 1)
    with pytest.raises(ValueError):
        map_to_index(1.5, MIN_SCALE - 1)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.one_of(special_values, near_boundary().map(lambda d: d[0])), min_size=0, max_size=40
    ),
    scale=st.integers(MIN_SCALE, MAX_SCALE),
)
def test_array_matches_scalar(values: list[float], scale: int) -> None:
    got = map_to_index_array(np.array(values, dtype=np.float64), scale)
    assert got.dtype == np.int64
    assert got.tolist() == [map_to_index(v, scale) for v in values]


@settings(max_examples=100, deadline=None)
@given(data=near_boundary())
def test_array_matches_scalar_at_boundaries(data: tuple[float, int]) -> None:
    value, scale = data
    neighbours = [value]
    for _ in range(3):
        neighbours.append(math.nextafter(neighbours[-1], math.inf))
    got = map_to_index_array(np.array(neighbours), scale)
    assert got.tolist() == [map_to_index(v, scale) for v in neighbours]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=special_values, scale=st.integers(MIN_SCALE, MAX_SCALE))
def test_lower_boundary_is_the_double_floor_of_the_boundary(value: float, scale: int) -> None:
    """Bucket i holds exactly the doubles in (lower_boundary(i), lower_boundary(i + 1)]."""
    index = map_to_index(value, scale)
    lower = lower_boundary(index, scale)
    upper = lower_boundary(index + 1, scale)
    assert lower < value <= upper
    if 0.0 < lower < MAX_FLOAT:
        # lower is base**index rounded down: not above it, and its successor is above it.
        successor = math.nextafter(lower, math.inf)
        if scale <= 0 or index % (1 << scale) == 0:  # an exact power of two
            step = index << -scale if scale <= 0 else index >> scale
            boundary = Fraction(2) ** step
            assert Fraction(lower) <= boundary < Fraction(successor)
        else:  # irrational: 100 digits are plenty to compare with doubles
            ctx = REF_CONTEXT
            exponent = ctx.divide(decimal.Decimal(index), 1 << scale)
            dec_boundary = ctx.power(decimal.Decimal(2), exponent)
            assert decimal.Decimal(lower) < dec_boundary < decimal.Decimal(successor)
        assert map_to_index(lower, scale) < index
        assert map_to_index(math.nextafter(lower, math.inf), scale) >= index
    if upper < math.inf:
        assert map_to_index(upper, scale) == index
        if upper < MAX_FLOAT:
            assert map_to_index(math.nextafter(upper, math.inf), scale) > index


def test_lower_boundary_examples() -> None:
    assert lower_boundary(0, 5) == 1.0
    assert lower_boundary(32, 5) == 2.0
    assert lower_boundary(1, 0) == 2.0
    assert lower_boundary(-1, -1) == 0.25
    assert lower_boundary(1, 1) == math.nextafter(math.sqrt(2.0), 0.0)  # sqrt rounds up
    assert lower_boundary(0, MIN_SCALE) == 1.0
    assert lower_boundary(1, MIN_SCALE) == math.inf
    assert lower_boundary(-2, MIN_SCALE) == 0.0
    assert lower_boundary(1024 << 3, 3) == math.inf
