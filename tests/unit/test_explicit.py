"""Explicit-bucket histograms: bucket edges, batches, merges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spanmetrics.aggregate.explicit import (
    DEFAULT_EXPLICIT_BOUNDS_MS,
    ExplicitHistogram,
    ExplicitHistogramColumns,
    bucket_of,
)
from spanmetrics.config.defaults import DEFAULT_EXPLICIT_BUCKETS_MS


def test_default_bounds_are_the_connectors() -> None:
    assert DEFAULT_EXPLICIT_BOUNDS_MS == (
        2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000, 15000,
    )  # fmt: skip
    assert DEFAULT_EXPLICIT_BOUNDS_MS == DEFAULT_EXPLICIT_BUCKETS_MS


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        (0.0, 0),
        (2.0, 0),  # a value on a bound goes in the bucket the bound closes
        (math.nextafter(2.0, 3.0), 1),
        (4.0, 1),
        (15000.0, 15),
        (15000.5, 16),
        (1e300, 16),
    ],
)
def test_bucket_edges(value: float, bucket: int) -> None:
    assert bucket_of(value, DEFAULT_EXPLICIT_BOUNDS_MS) == bucket
    h = ExplicitHistogram()
    h.record(value)
    assert h.counts[bucket] == 1
    assert sum(h.counts) == 1 == h.count
    cols = ExplicitHistogramColumns(capacity=1)
    cols.add_rows(1)
    cols.record_batch(np.array([0]), np.array([value]), np.array([1]))
    assert cols.snapshot(0) == h


def test_histogram_fields() -> None:
    h = ExplicitHistogram.from_values([1.0, 3.0, 3.0, 20.0], [1, 2, 1, 4], bounds=(2.0, 10.0))
    assert h.counts == [1, 3, 4]
    assert (h.count, h.sum, h.min, h.max) == (8, 1.0 + 6.0 + 3.0 + 80.0, 1.0, 20.0)
    assert len(ExplicitHistogram().counts) == len(DEFAULT_EXPLICIT_BOUNDS_MS) + 1


def test_merge() -> None:
    a = ExplicitHistogram.from_values([1.0, 5.0], bounds=(2.0, 10.0))
    b = ExplicitHistogram.from_values([12.0], bounds=(2.0, 10.0))
    assert a.merged(b) == ExplicitHistogram.from_values([1.0, 5.0, 12.0], bounds=(2.0, 10.0))
    with pytest.raises(ValueError):
        a.merged(ExplicitHistogram())


def test_bad_bounds_and_values() -> None:
    with pytest.raises(ValueError):
        ExplicitHistogram(bounds=())
    with pytest.raises(ValueError):
        ExplicitHistogram(bounds=(2.0, 2.0))
    with pytest.raises(ValueError):
        ExplicitHistogramColumns(bounds=(3.0, 1.0))
    h = ExplicitHistogram()
    with pytest.raises(ValueError):
        h.record(math.nan)
    with pytest.raises(ValueError):
        h.record(1.0, weight=0)


def test_columns_batches_equal_per_value_records() -> None:
    rng = np.random.default_rng(7)
    cols = ExplicitHistogramColumns(capacity=1)
    assert cols.add_rows(5) == 0
    assert cols.capacity == 8
    rows = rng.integers(0, 5, 1000)
    values = rng.lognormal(4.0, 2.0, 1000)
    weights = rng.integers(1, 10, 1000)
    for part in np.array_split(np.arange(1000), 7):
        cols.record_batch(rows[part], values[part], weights[part])
    for row in range(5):
        mask = rows == row
        expected = ExplicitHistogram.from_values(values[mask].tolist(), weights[mask].tolist())
        assert cols.snapshot(row) == expected  # sum too: same order of additions


def test_columns_reset_merge_and_memory() -> None:
    cols = ExplicitHistogramColumns(bounds=(1.0, 2.0), capacity=4)
    cols.add_rows(2)
    cols.record_batch(np.array([0, 1]), np.array([0.5, 3.0]), np.array([1, 2]))
    cols.reset_rows(np.array([1]))
    assert cols.snapshot(1) == ExplicitHistogram(bounds=(1.0, 2.0))
    cols.merge_into_row(0, ExplicitHistogram.from_values([1.5], bounds=(1.0, 2.0)))
    assert cols.snapshot(0) == ExplicitHistogram.from_values([0.5, 1.5], bounds=(1.0, 2.0))
    with pytest.raises(ValueError):
        cols.merge_into_row(0, ExplicitHistogram())
    with pytest.raises(IndexError):
        cols.record_batch(np.array([2]), np.array([1.0]), np.array([1]))
    # 3 int64 counts + count, sum, min, max
    assert cols.bytes_per_row() == 7 * 8
