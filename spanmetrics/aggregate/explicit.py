"""Explicit-bucket histograms, the Collector spanmetrics connector's default kind.

OTel data model, "Histogram": with bounds ``b[0] < ... < b[n-1]``, bucket ``i`` holds
``b[i-1] < v <= b[i]`` (bucket 0 is ``v <= b[0]``, bucket ``n`` is ``v > b[n-1]``), so a
value equal to a bound counts in the bucket that the bound closes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from spanmetrics.aggregate.rows import GrowableRows
from spanmetrics.config.defaults import DEFAULT_EXPLICIT_BUCKETS_MS

#: The connector's default bounds, in milliseconds (2ms ... 15s).
DEFAULT_EXPLICIT_BOUNDS_MS: Final[tuple[float, ...]] = tuple(
    float(b) for b in DEFAULT_EXPLICIT_BUCKETS_MS
)


def _checked_bounds(bounds: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out:
        raise ValueError("at least one bucket bound is needed")
    if not all(math.isfinite(b) for b in out):
        raise ValueError("bounds must be finite")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"bounds must be strictly increasing, got {list(out)}")
    return out


def bucket_of(value: float, bounds: Sequence[float]) -> int:
    """Bucket index of ``value``: the ``i`` with ``bounds[i-1] < value <= bounds[i]``."""
    lo, hi = 0, len(bounds)
    while lo < hi:  # first bound >= value, like np.searchsorted(side="left")
        mid = (lo + hi) // 2
        if bounds[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass(slots=True, eq=True)
class ExplicitHistogram:
    """A histogram with fixed upper-inclusive bounds; ``counts`` has ``len(bounds) + 1``."""

    bounds: tuple[float, ...] = DEFAULT_EXPLICIT_BOUNDS_MS
    """Strictly increasing bucket upper bounds."""
    counts: list[int] = field(default_factory=list)
    """Per-bucket weights; filled with zeros when left empty."""
    count: int = 0
    """Total weight."""
    sum: float = 0.0
    """Sum of ``value * weight``."""
    min: float = math.inf
    """Smallest value recorded (inf while empty)."""
    max: float = -math.inf
    """Largest value recorded (-inf while empty)."""

    def __post_init__(self) -> None:
        self.bounds = _checked_bounds(self.bounds)
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        elif len(self.counts) != len(self.bounds) + 1:
            raise ValueError("counts must have len(bounds) + 1 entries")

    @property
    def is_empty(self) -> bool:
        """Whether nothing was recorded."""
        return self.count == 0

    @classmethod
    def from_values(
        cls,
        values: Iterable[float],
        weights: Iterable[int] | None = None,
        bounds: Sequence[float] = DEFAULT_EXPLICIT_BOUNDS_MS,
    ) -> ExplicitHistogram:
        """The histogram of ``values`` recorded one by one (weights default to 1)."""
        hist = cls(bounds=tuple(bounds))
        vals = list(values)
        wts = [1] * len(vals) if weights is None else list(weights)
        if len(wts) != len(vals):
            raise ValueError("values and weights must have the same length")
        for v, w in zip(vals, wts, strict=True):
            hist.record(v, w)
        return hist

    def record(self, value: float, weight: int = 1) -> None:
        """Add a finite ``value`` with an integer ``weight`` > 0."""
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        value = value + 0.0  # -0.0 -> 0.0
        self.counts[bucket_of(value, self.bounds)] += weight
        self.count += weight
        self.sum += value * weight
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def copy(self) -> ExplicitHistogram:
        """An independent copy."""
        return ExplicitHistogram(
            self.bounds, list(self.counts), self.count, self.sum, self.min, self.max
        )

    def merged(self, other: ExplicitHistogram) -> ExplicitHistogram:
        """A new histogram holding the values of both; the bounds must be equal."""
        if self.bounds != other.bounds:
            raise ValueError("cannot merge explicit histograms with different bounds")
        return ExplicitHistogram(
            self.bounds,
            [a + b for a, b in zip(self.counts, other.counts, strict=True)],
            self.count + other.count,
            self.sum + other.sum,
            min(self.min, other.min),
            max(self.max, other.max),
        )


class ExplicitHistogramColumns(GrowableRows):
    """A growable table of explicit-bucket histograms, one row per series."""

    def __init__(
        self,
        bounds: Sequence[float] = DEFAULT_EXPLICIT_BOUNDS_MS,
        capacity: int = 64,
        growth: float = 2.0,
    ) -> None:
        """Allocate ``capacity`` rows for ``bounds`` (no row in use yet); full arrays grow
        by the factor ``growth`` (> 1)."""
        self._bounds = _checked_bounds(bounds)
        self._bounds_array: NDArray[np.float64] = np.array(self._bounds, dtype=np.float64)
        self._width = len(self._bounds) + 1
        self._counts: NDArray[np.int64] = np.zeros((0, self._width), dtype=np.int64)
        self._count: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._sum: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._min: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._max: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        super().__init__(capacity, growth)

    @property
    def bounds(self) -> tuple[float, ...]:
        """Bucket upper bounds."""
        return self._bounds

    def _grow(self, capacity: int) -> None:
        n = self._rows
        counts = np.zeros((capacity, self._width), dtype=np.int64)
        counts[:n] = self._counts[:n]
        self._counts = counts
        count = np.zeros(capacity, dtype=np.int64)
        count[:n] = self._count[:n]
        self._count = count
        for name, fill in (("_sum", 0.0), ("_min", math.inf), ("_max", -math.inf)):
            grown = np.full(capacity, fill, dtype=np.float64)
            grown[:n] = getattr(self, name)[:n]
            setattr(self, name, grown)
        self._capacity = capacity

    def record_batch(
        self,
        rows: NDArray[np.int64],
        values: NDArray[np.float64],
        weights: NDArray[np.int64],
    ) -> None:
        """Record ``values[k]`` with ``weights[k]`` into row ``rows[k]``, for every ``k``.

        Values must be finite, weights > 0. On error nothing is recorded.
        """
        rows = np.asarray(rows, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.int64)
        if not (rows.ndim == 1 and rows.shape == values.shape == weights.shape):
            raise ValueError("rows, values and weights must be 1-D arrays of the same length")
        if rows.size == 0:
            return
        self._check_rows(rows)
        if not bool(np.all(np.isfinite(values))):
            raise ValueError("values must be finite")
        if not bool(np.all(weights > 0)):
            raise ValueError("weights must be positive")
        values = values + 0.0  # -0.0 -> 0.0
        # side="left": the first bound >= v, so v == bound lands in the bucket it closes.
        bucket = np.searchsorted(self._bounds_array, values, side="left")
        np.add.at(self._counts.reshape(-1), rows * self._width + bucket, weights)
        np.add.at(self._count, rows, weights)
        # In element order, so sums round as repeated ``+=`` would.
        np.add.at(self._sum, rows, values * weights)
        np.minimum.at(self._min, rows, values)
        np.maximum.at(self._max, rows, values)

    def reset_rows(self, rows: NDArray[np.int64]) -> None:
        """Make ``rows`` empty again."""
        rows = np.asarray(rows, dtype=np.int64)
        self._check_rows(rows)
        self._counts[rows] = 0
        self._count[rows] = 0
        self._sum[rows] = 0.0
        self._min[rows] = math.inf
        self._max[rows] = -math.inf

    def snapshot(self, row: int) -> ExplicitHistogram:
        """Row ``row`` as an :class:`ExplicitHistogram`."""
        if not 0 <= row < self._rows:
            raise IndexError(f"row must be in [0, {self._rows}), got {row}")
        return ExplicitHistogram(
            bounds=self._bounds,
            counts=self._counts[row].tolist(),
            count=int(self._count[row]),
            sum=float(self._sum[row]),
            min=float(self._min[row]),
            max=float(self._max[row]),
        )

    def merge_into_row(self, row: int, hist: ExplicitHistogram) -> None:
        """Add the values of ``hist`` (same bounds) to row ``row``."""
        if not 0 <= row < self._rows:
            raise IndexError(f"row must be in [0, {self._rows}), got {row}")
        if tuple(hist.bounds) != self._bounds:
            raise ValueError("cannot merge explicit histograms with different bounds")
        self._counts[row] += np.asarray(hist.counts, dtype=np.int64)
        self._count[row] += hist.count
        self._sum[row] += hist.sum
        self._min[row] = min(float(self._min[row]), hist.min)
        self._max[row] = max(float(self._max[row]), hist.max)

    def bytes_per_row(self) -> float:
        """Bytes of all arrays divided by the allocated rows."""
        arrays = (self._counts, self._count, self._sum, self._min, self._max)
        return sum(a.nbytes for a in arrays) / self._capacity
