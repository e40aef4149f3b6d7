"""Exponential histograms as Prometheus native and classic histograms: exact bucket
mapping, preserved count and sum, the sparse encoding, and fixed classic bounds."""

from __future__ import annotations

import decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.export.prometheus.native import (
    bucket_counts,
    classic_bounds,
    classic_from_otel,
    merged,
    native_from_otel,
    spans_and_deltas,
)

pytestmark = pytest.mark.property

SETTINGS = settings(max_examples=150, deadline=None)
values_st = st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=1, max_size=60)
max_sizes = st.sampled_from([2, 4, 20, 160])


def recorded(values: list[float], max_size: int) -> ExpoHistogram:
    h = ExpoHistogram(max_size=max_size)
    for v in values:
        h.record(v)
    return h


def native_of(h: ExpoHistogram):  # type: ignore[no-untyped-def]
    return native_from_otel(h.scale, h.offset, h.counts, h.zero_count, 0.0, h.count, h.sum)


def in_bucket(value: float, schema: int, index: int) -> bool:
    """Exactly: base**(index-1) < value <= base**index, base = 2**(2**-schema)."""
    # value**(2**schema) compared to 2**index (and 2**(index-1)), in exact arithmetic.
    decimal.getcontext().prec = 200
    v = decimal.Decimal(value)
    if schema >= 0:
        powered = v ** (2**schema)
        return decimal.Decimal(2) ** (index - 1) < powered <= decimal.Decimal(2) ** index
    width = 2 ** (-schema)
    return Fraction(2) ** ((index - 1) * width) < Fraction(value) <= Fraction(2) ** (index * width)


@SETTINGS
@given(values_st, max_sizes)
def test_native_buckets_hold_every_value(values: list[float], max_size: int) -> None:
    h = recorded(values, max_size)
    n = native_of(h)
    assert -4 <= n.schema <= 8
    assert n.count == len(values) and n.sum == h.sum
    assert sum(n.buckets.values()) + n.zero_count == n.count
    spans, deltas = spans_and_deltas(n.buckets)
    assert bucket_counts(spans, deltas) == n.buckets
    assert n.approximate == (h.scale < -4)
    if n.approximate:
        return  # coarser than any schema: covered by the upper-bound test below
    remaining = dict(n.buckets)
    for v in values:
        # Every value has a bucket that contains it and still holds a count for it.
        (index,) = [i for i in remaining if remaining[i] and in_bucket(v, n.schema, i)]
        remaining[index] -= 1
    assert not any(remaining.values())


@SETTINGS
@given(values_st, values_st)
def test_merge_at_the_coarser_schema_equals_recording_both(a: list[float], b: list[float]) -> None:
    na, nb = native_of(recorded(a, 20)), native_of(recorded(b, 160))
    m = merged(na, nb)
    assert m.schema == min(na.schema, nb.schema)
    assert m.count == len(a) + len(b)
    for v in a + b:
        assert any(in_bucket(v, m.schema, i) for i, c in m.buckets.items() if c)


@SETTINGS
@given(values_st)
def test_classic_counts_at_the_fixed_bounds_are_exact(values: list[float]) -> None:
    h = recorded(values, 160)  # scale stays >= 2 (the bounds' schema) for these ranges
    bounds = classic_bounds("ms")
    classic, approximate = classic_from_otel(
        h.scale, h.offset, h.counts, h.zero_count, h.count, bounds
    )
    assert not approximate
    assert [b for b, _ in classic[:-1]] == list(bounds)
    for bound, count in classic[:-1]:
        assert count == sum(1 for v in values if v <= bound)
    assert classic[-1][1] == len(values)


def test_scales_below_minus_4_are_placed_by_upper_bound() -> None:
    # Scale -5: bucket 0 holds (1, 2**32]; in schema -4 it goes to the bucket holding 2**32.
    n = native_from_otel(-5, 0, [3], 0, 0.0, 3, 10.0)
    assert n.schema == -4 and n.approximate
    assert n.buckets == {2: 3} and in_bucket(2.0**32, -4, 2)


@SETTINGS
@given(st.integers(min_value=-10, max_value=1), st.lists(st.floats(1e-3, 1e6), min_size=1))
def test_classic_counts_below_the_bounds_schema_are_placed_at_upper_bounds(
    scale: int, values: list[float]
) -> None:
    """A scale coarser than the bounds: counts never fall below a bound they may exceed."""
    h = recorded(values, 160)
    if h.scale > scale:
        h.downscale(h.scale - scale)
    classic, approximate = classic_from_otel(
        h.scale, h.offset, h.counts, h.zero_count, h.count, classic_bounds("ms")
    )
    assert approximate == (h.scale < 2)
    for bound, count in classic[:-1]:
        assert count <= sum(1 for v in values if v <= bound)
    assert classic[-1][1] == len(values)
