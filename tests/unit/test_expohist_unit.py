"""Concrete examples of ExpoHistogram and ExpoHistogramColumns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spanmetrics.aggregate.expo_mapping import MAX_SCALE, MIN_SCALE, map_to_index
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.expohist_columns import ExpoHistogramColumns


def test_powers_of_two_at_scale_20() -> None:
    # Each power of two closes the bucket below it.
    assert map_to_index(1.0, 20) == -1
    assert map_to_index(2.0, 20) == 2**20 - 1
    assert map_to_index(4.0, 20) == 2**21 - 1


def test_one_two_four_downscale_to_fit_160_buckets() -> None:
    h = ExpoHistogram.from_values([1.0, 2.0, 4.0])
    # At scale 20 the indexes span 2**21 + 1 buckets; scale 6 is the first to fit:
    # 1 -> -1, 2 -> 63, 4 -> 127, i.e. 129 buckets (scale 7 would need 257).
    assert h.scale == 6
    assert h.offset == -1
    assert len(h.counts) == 129
    assert (h.counts[0], h.counts[64], h.counts[128]) == (1, 1, 1)
    assert sum(h.counts) == 3
    assert (h.count, h.sum, h.min, h.max) == (3, 7.0, 1.0, 4.0)


def test_single_value_stays_at_max_scale() -> None:
    h = ExpoHistogram()
    h.record(3.0, weight=5)
    assert h.scale == MAX_SCALE
    assert h.offset == map_to_index(3.0, MAX_SCALE)
    assert h.counts == [5]
    assert (h.count, h.sum) == (5, 15.0)


def test_zero_goes_to_the_zero_bucket() -> None:
    h = ExpoHistogram()
    h.record(0.0, weight=2)
    h.record(-0.0)
    assert (h.zero_count, h.count, h.counts, h.scale) == (3, 3, [], MAX_SCALE)
    assert math.copysign(1.0, h.min) == 1.0  # no negative zero
    assert h.bucket_bounds_for_rank(0) == (0.0, 0.0)
    assert h.quantile(0.5) == 0.0


def test_max_size_4_forces_a_known_downscale() -> None:
    h = ExpoHistogram.from_values([1.0, 2.0, 4.0, 8.0], max_size=4)
    # Scale 0: buckets -1 (1/2, 1], 0 (1, 2], 1 (2, 4], 2 (4, 8]; scale 1 would need 7.
    assert (h.scale, h.offset, h.counts) == (0, -1, [1, 1, 1, 1])
    h.record(16.0)
    # Scale -1 (base 4): (1/4, 1] holds 1; (1, 4] holds 2 and 4; (4, 16] holds 8 and 16.
    assert (h.scale, h.offset, h.counts) == (-1, -1, [1, 2, 2])


def test_downscale_merges_neighbouring_buckets() -> None:
    h = ExpoHistogram(scale=0, offset=-3, counts=[1, 2, 3, 4], count=10)
    h.downscale(1)
    # indexes -3..0 >> 1 = -2, -1, -1, 0
    assert (h.scale, h.offset, h.counts) == (-1, -2, [1, 5, 4])
    with pytest.raises(ValueError):
        h.downscale(-1)
    with pytest.raises(ValueError):
        h.downscale(h.scale - MIN_SCALE + 1)


def test_merge_downscales_to_fit() -> None:
    a = ExpoHistogram.from_values([1.5], max_size=4)
    b = ExpoHistogram.from_values([100.0, 0.0], max_size=4)
    m = a.merged(b)
    assert m == ExpoHistogram.from_values([1.5, 100.0, 0.0], max_size=4)
    assert (m.count, m.zero_count, m.min, m.max) == (3, 1, 0.0, 100.0)


def test_rank_bounds_and_quantiles() -> None:
    h = ExpoHistogram.from_values([0.0, 1.0, 3.0, 3.0, 10.0], max_size=4)
    # 1..10 spans 4 powers of two: (1/2, 1], (1, 2], (2, 4], (8, 16] -> scale -1, base 4:
    # (1/4, 1], (1, 4], (4, 16]
    assert h.scale == -1
    assert h.bucket_bounds_for_rank(0) == (0.0, 0.0)
    assert h.bucket_bounds_for_rank(1) == (0.25, 1.0)
    assert h.bucket_bounds_for_rank(2) == (1.0, 4.0)
    assert h.bucket_bounds_for_rank(3) == (1.0, 4.0)
    assert h.bucket_bounds_for_rank(4) == (4.0, 16.0)
    with pytest.raises(ValueError):
        h.bucket_bounds_for_rank(5)
    assert h.quantile(0.0) == 0.0  # min
    assert h.quantile(1.0) == 10.0  # max
    assert h.quantile(0.6) == 2.0  # rank 2: geometric midpoint of (1, 4]
    assert math.isnan(ExpoHistogram().quantile(0.5))
    with pytest.raises(ValueError):
        h.quantile(1.5)


def test_quantile_relative_error_at_scale_20() -> None:
    h = ExpoHistogram.from_values([50.005] * 10)
    assert h.scale == MAX_SCALE
    assert h.quantile(0.5) == 50.005  # clamped to [min, max]
    h = ExpoHistogram.from_values([float(v) for v in range(1, 101)])
    p95 = h.quantile(0.95)
    assert abs(p95 - 95.0) / 95.0 < 2 ** (2**-h.scale) - 1


def test_record_rejects_bad_input() -> None:
    h = ExpoHistogram()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            h.record(bad)
    with pytest.raises(ValueError):
        h.record(1.0, weight=0)
    assert h == ExpoHistogram()
    with pytest.raises(ValueError):
        ExpoHistogram(max_size=1)


def test_max_size_2_cannot_hold_subnormal_and_large() -> None:
    # At MIN_SCALE the positive doubles need 3 buckets: (0, 2**-2048], (.., 1], (1, ..].
    h = ExpoHistogram.from_values([5e-324], max_size=2)
    h.record(1.0)
    assert h.scale == MIN_SCALE
    with pytest.raises(ValueError):
        h.record(2.0)


def test_copy_is_independent() -> None:
    h = ExpoHistogram.from_values([1.0, 2.0])
    c = h.copy()
    c.record(3.0)
    assert c != h
    assert h == ExpoHistogram.from_values([1.0, 2.0])


# --- columns ---------------------------------------------------------------------------


def test_columns_memory_per_row() -> None:
    cols = ExpoHistogramColumns(max_size=160, capacity=1024)
    assert cols.bytes_per_row() <= 1.4 * 1024


def test_columns_add_rows_grows_by_doubling() -> None:
    cols = ExpoHistogramColumns(capacity=2)
    assert cols.add_rows(3) == 0
    assert (cols.rows, cols.capacity) == (3, 4)
    assert cols.add_rows(2) == 3
    assert (cols.rows, cols.capacity) == (5, 8)
    assert cols.snapshot(4) == ExpoHistogram()


def test_columns_batch_example() -> None:
    cols = ExpoHistogramColumns(max_size=4, capacity=4)
    cols.add_rows(2)
    cols.record_batch(
        np.array([0, 1, 0, 0, 1]),
        np.array([1.0, 0.0, 2.0, 4.0, 7.5]),
        np.array([1, 2, 1, 1, 3]),
    )
    cols.record_batch(np.array([0]), np.array([8.0]), np.array([1]))
    assert cols.snapshot(0) == ExpoHistogram.from_values([1.0, 2.0, 4.0, 8.0], max_size=4)
    assert cols.snapshot(1) == ExpoHistogram.from_values([0.0, 7.5], [2, 3], max_size=4)
    cols.record_batch(np.array([0]), np.array([16.0]), np.array([1]))
    assert (cols.snapshot(0).scale, cols.snapshot(0).counts) == (-1, [1, 2, 2])


def test_columns_window_slides_without_downscale() -> None:
    cols = ExpoHistogramColumns(max_size=8, capacity=1)
    row = cols.add_rows(1)
    base = 1.5
    step = 2 ** (2**-MAX_SCALE)
    # One value per batch; the first is centred in the 8-bucket window, the second is 7
    # buckets up, so the window must slide while the scale stays.
    values = [base * step**k for k in (0, 7, 2, 5)]
    for v in values:
        cols.record_batch(np.array([row]), np.array([v]), np.array([1]))
    snap = cols.snapshot(row)
    assert snap == ExpoHistogram.from_values(values, max_size=8)
    assert (snap.scale, snap.counts) == (MAX_SCALE, [1, 0, 1, 0, 0, 1, 0, 1])


def test_columns_errors_leave_state_unchanged() -> None:
    cols = ExpoHistogramColumns(max_size=2, capacity=2)
    cols.add_rows(1)
    cols.record_batch(np.array([0]), np.array([1.0]), np.array([1]))
    before = cols.snapshot(0)
    with pytest.raises(ValueError):
        cols.record_batch(np.array([0, 0]), np.array([2.0, -1.0]), np.array([1, 1]))
    with pytest.raises(ValueError):
        cols.record_batch(np.array([0]), np.array([math.nan]), np.array([1]))
    with pytest.raises(ValueError):
        cols.record_batch(np.array([0]), np.array([2.0]), np.array([0]))
    with pytest.raises(IndexError):
        cols.record_batch(np.array([1]), np.array([2.0]), np.array([1]))
    with pytest.raises(ValueError):
        cols.record_batch(np.array([0, 0]), np.array([5e-324, 2.0]), np.array([1, 1]))
    with pytest.raises(ValueError):
        cols.record_batch(np.array([0]), np.array([2.0, 3.0]), np.array([1]))
    assert cols.snapshot(0) == before
    with pytest.raises(IndexError):
        cols.snapshot(1)


def test_columns_reset_rows() -> None:
    cols = ExpoHistogramColumns(capacity=4)
    cols.add_rows(3)
    cols.record_batch(np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]))
    cols.reset_rows(np.array([0, 2]))
    assert cols.snapshot(0) == ExpoHistogram()
    assert cols.snapshot(1) == ExpoHistogram.from_values([2.0])
    assert cols.snapshot(2) == ExpoHistogram()
