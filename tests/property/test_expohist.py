"""Properties of ExpoHistogram and ExpoHistogramColumns: exact, order-free, mergeable."""

from __future__ import annotations

import dataclasses
import decimal
import itertools
import math
from collections import Counter

import numpy as np
import pytest
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore
from hypothesis import given, settings
from hypothesis import strategies as st

from spanmetrics.aggregate.expo_mapping import MAX_SCALE, MIN_SCALE, map_to_index
from spanmetrics.aggregate.expohist import ExpoHistogram, merge_all
from spanmetrics.aggregate.expohist_columns import ExpoHistogramColumns

pytestmark = pytest.mark.property

SETTINGS = settings(max_examples=120, deadline=None)

# Values as durations look (wide and narrow ranges, zeros), plus awkward doubles. Capped at
# 1e300 so that sums of up to ~100 weighted values stay finite.
wide = st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False)
durations = st.floats(min_value=1e-3, max_value=1e7)
narrow = st.floats(min_value=1.0, max_value=1.0001)  # straddles the boundary 1.0
narrow_inside = st.floats(min_value=1.3, max_value=1.3001)  # away from low-scale boundaries
values_st = st.one_of(
    wide, durations, narrow, narrow_inside, st.just(0.0), st.sampled_from([1.0, 2.0, 1024.0])
)
max_sizes = st.sampled_from([3, 4, 8, 20, 160])
Item = tuple[float, int]
items_st = st.lists(st.tuples(values_st, st.integers(1, 1000)), max_size=40)


def build(items: list[Item], max_size: int) -> ExpoHistogram:
    h = ExpoHistogram(max_size=max_size)
    for v, w in items:
        h.record(v, w)
    return h


def assert_same(a: ExpoHistogram, b: ExpoHistogram) -> None:
    """Equal in every field; ``sum`` only up to rounding (addition order differs)."""
    assert dataclasses.replace(a, sum=0.0) == dataclasses.replace(b, sum=0.0)
    assert math.isclose(a.sum, b.sum, rel_tol=1e-12, abs_tol=0.0)


def split(items: list[Item], cuts: list[int]) -> list[list[Item]]:
    bounds = sorted({min(c, len(items)) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


@SETTINGS
@given(items=items_st, max_size=max_sizes)
def test_count_and_zero_count(items: list[Item], max_size: int) -> None:
    h = build(items, max_size)
    assert h.count == sum(w for _, w in items)
    assert h.zero_count == sum(w for v, w in items if v == 0.0)
    assert h.zero_count + sum(h.counts) == h.count
    assert not h.counts or (h.counts[0] != 0 and h.counts[-1] != 0)


@SETTINGS
@given(items=items_st, max_size=max_sizes)
def test_scale_is_largest_that_fits(items: list[Item], max_size: int) -> None:
    h = build(items, max_size)
    positive = [v for v, _ in items if v > 0.0]
    if not positive:
        assert h.scale == MAX_SCALE and h.counts == []
        return
    at = [map_to_index(v, h.scale) for v in positive]
    assert max(at) - min(at) + 1 <= max_size
    if h.scale < MAX_SCALE:
        finer = [map_to_index(v, h.scale + 1) for v in positive]
        assert max(finer) - min(finer) + 1 > max_size
    expected = Counter[int]()
    for v, w in items:
        if v > 0.0:
            expected[map_to_index(v, h.scale)] += w
    got = {h.offset + j: c for j, c in enumerate(h.counts) if c}
    assert got == dict(expected)


@SETTINGS
@given(items=items_st, max_size=max_sizes)
def test_from_values_equals_recording_one_by_one(items: list[Item], max_size: int) -> None:
    h = ExpoHistogram.from_values([v for v, _ in items], [w for _, w in items], max_size)
    assert h == build(items, max_size)  # sum too: both add left to right


@SETTINGS
@given(items=items_st, max_size=max_sizes, cuts=st.lists(st.integers(0, 40), max_size=5))
def test_merge_of_any_split_equals_whole(items: list[Item], max_size: int, cuts: list[int]) -> None:
    whole = build(items, max_size)
    parts = [build(p, max_size) for p in split(items, cuts)]
    assert_same(merge_all(parts, max_size), whole)
    # Pairwise from the right as well: another merge tree, same result.
    acc = ExpoHistogram(max_size=max_size)
    for p in reversed(parts):
        acc = p.merged(acc)
    assert_same(acc, whole)


@SETTINGS
@given(a=items_st, b=items_st, c=items_st, max_size=max_sizes)
def test_merge_commutative_and_associative(
    a: list[Item], b: list[Item], c: list[Item], max_size: int
) -> None:
    ha, hb, hc = (build(x, max_size) for x in (a, b, c))
    assert ha.merged(hb) == hb.merged(ha)
    assert_same(ha.merged(hb).merged(hc), ha.merged(hb.merged(hc)))
    # Merging leaves its inputs alone.
    assert ha == build(a, max_size)


@SETTINGS
@given(items=items_st, max_size=max_sizes, data=st.data())
def test_downscale_moves_each_value_to_its_coarser_bucket(
    items: list[Item], max_size: int, data: st.DataObject
) -> None:
    h = build(items, max_size)
    change = data.draw(st.integers(0, h.scale - MIN_SCALE))
    before = h.count
    h.downscale(change)
    assert h.count == before
    expected = Counter[int]()
    for v, w in items:
        if v > 0.0:
            expected[map_to_index(v, h.scale)] += w
    assert {h.offset + j: c for j, c in enumerate(h.counts) if c} == dict(expected)
    assert sum(h.counts) + h.zero_count == h.count


@SETTINGS
@given(
    items=st.lists(st.tuples(values_st, st.integers(1, 4)), min_size=1, max_size=30),
    max_size=max_sizes,
)
def test_rank_bounds_contain_the_exact_ranked_value(items: list[Item], max_size: int) -> None:
    h = build(items, max_size)
    ordered = sorted(v for v, w in items for _ in range(w))
    assert len(ordered) == h.count
    for rank, v in enumerate(ordered):
        lower, upper = h.bucket_bounds_for_rank(rank)
        if v == 0.0:
            assert (lower, upper) == (0.0, 0.0)
        else:
            assert lower < v <= upper
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
        est = h.quantile(q)
        rank = min(max(math.ceil(q * h.count) - 1, 0), h.count - 1)
        lower, upper = h.bucket_bounds_for_rank(rank)
        assert h.min <= est <= h.max
        assert est == ordered[rank] if ordered[rank] == 0.0 else lower <= est <= upper


# --- cross-check against DDSketch ------------------------------------------------------


def _distance_to_boundary(value: float, scale: int) -> decimal.Decimal:
    """|log2(value) * 2**scale - nearest integer|, to 50 digits."""
    ctx = decimal.Context(prec=50)
    x = ctx.multiply(
        ctx.divide(ctx.ln(decimal.Decimal(value)), ctx.ln(decimal.Decimal(2))), 2**scale
    )
    return abs(x - x.to_integral_value())


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.one_of(durations, narrow_inside, st.just(0.0)), st.integers(1, 5)),
        min_size=2,
        max_size=40,
    ),
    q=st.floats(0.0, 1.0),
)
def test_quantile_bucket_agrees_with_ddsketch(items: list[Item], q: float) -> None:
    """DDSketch's LogarithmicMapping with gamma = base has key = OTel index + 1.

    Its quantile value therefore lies in the same bucket as ours, unless the ranked value
    is so close to a boundary that DDSketch's float logarithm (its gamma is only
    round-tripped through a relative accuracy) cannot tell; those cases are skipped.
    """
    h = build(items, 160)
    count = h.count
    rank = min(max(math.ceil(q * count) - 1, 0), count - 1)
    ordered = sorted(v for v, w in items for _ in range(w))
    value = ordered[rank]
    if value > 0.0 and _distance_to_boundary(value, h.scale) < decimal.Decimal("0.02"):
        return
    gamma = 2.0 ** (2.0**-h.scale)
    mapping = LogarithmicMapping.from_gamma_offset(gamma, 0.0)
    sketch = BaseDDSketch(mapping, DenseStore(), DenseStore(), 0.0)
    for v, w in items:
        sketch.add(v, float(w))
    # DDSketch ranks q * (count - 1) and takes the first key whose cumulated count exceeds
    # it; asking for rank + 0.5 selects exactly our 0-based rank.
    dd_q = 1.0 if rank == count - 1 else (rank + 0.5) / (count - 1)
    dd_value = sketch.get_quantile_value(dd_q)
    assert dd_value is not None
    lower, upper = h.bucket_bounds_for_rank(rank)
    if value == 0.0:
        assert dd_value == 0
    else:
        assert mapping.key(value) == map_to_index(value, h.scale) + 1
        assert lower * (1 - 1e-9) <= dd_value <= upper * (1 + 1e-9)


# --- columns ---------------------------------------------------------------------------

RowItem = tuple[int, float, int]


@settings(max_examples=120, deadline=None)
@given(
    n_rows=st.integers(1, 4),
    max_size=max_sizes,
    data=st.data(),
)
def test_columns_record_batch_equals_per_value_record(
    n_rows: int, max_size: int, data: st.DataObject
) -> None:
    stream: list[RowItem] = data.draw(
        st.lists(
            st.tuples(st.integers(0, n_rows - 1), values_st, st.integers(1, 1000)), max_size=60
        )
    )
    cuts = data.draw(st.lists(st.integers(0, 60), max_size=6))
    cols = ExpoHistogramColumns(max_size=max_size, capacity=1)  # forces growth
    assert cols.add_rows(n_rows) == 0
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(bounds):
        batch = stream[a:b]
        cols.record_batch(
            np.array([r for r, _, _ in batch], dtype=np.int64),
            np.array([v for _, v, _ in batch], dtype=np.float64),
            np.array([w for _, _, w in batch], dtype=np.int64),
        )
    for row in range(n_rows):
        expected = build([(v, w) for r, v, w in stream if r == row], max_size)
        assert cols.snapshot(row) == expected  # sum too: same order of additions


@settings(max_examples=80, deadline=None)
@given(before=items_st, after=items_st, restored=items_st, max_size=max_sizes)
def test_columns_reset_and_merge_into_row(
    before: list[Item], after: list[Item], restored: list[Item], max_size: int
) -> None:
    cols = ExpoHistogramColumns(max_size=max_size, capacity=2)
    row = cols.add_rows(2) + 1

    def record(items: list[Item]) -> None:
        cols.record_batch(
            np.full(len(items), row, dtype=np.int64),
            np.array([v for v, _ in items], dtype=np.float64),
            np.array([w for _, w in items], dtype=np.int64),
        )

    record(before)
    cols.reset_rows(np.array([row]))
    assert cols.snapshot(row) == ExpoHistogram(max_size=max_size)
    record(after)
    cols.merge_into_row(row, build(restored, max_size))
    assert_same(cols.snapshot(row), build(after + restored, max_size))
    record(before)  # the row keeps working after a merge
    assert_same(cols.snapshot(row), build(after + restored + before, max_size))
    assert cols.snapshot(0) == ExpoHistogram(max_size=max_size)
