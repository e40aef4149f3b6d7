"""Many exponential histograms in columns, updated per batch with numpy.

One row per series. A row holds the same state as an :class:`ExpoHistogram`, with the
positive buckets in a fixed window of ``max_size`` columns: column ``j`` of row ``r`` is
bucket index ``base[r] + j`` at scale ``scale[r]``. Recording a batch costs a handful of
numpy calls whatever its size; only rows whose scale drops or whose window must slide are
touched one by one, which is rare once a series has seen its range of durations.

Every row follows the invariant of ``expohist``: its scale is the largest at which its
non-zero values fit ``max_size`` buckets, so :meth:`ExpoHistogramColumns.snapshot` equals
the histogram obtained by recording the same values one at a time.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from spanmetrics.aggregate.expo_mapping import MAX_SCALE, MIN_SCALE, map_to_index_array
from spanmetrics.aggregate.expohist import DEFAULT_MAX_SIZE, ExpoHistogram, merge
from spanmetrics.aggregate.rows import GrowableRows

# Sentinels of an empty row: they make np.minimum / np.maximum with real indexes a no-op.
_EMPTY_LO = np.iinfo(np.int64).max
_EMPTY_HI = np.iinfo(np.int64).min


def _needed_downscale_array(
    lo: NDArray[np.int64], hi: NDArray[np.int64], max_size: int
) -> NDArray[np.int64]:
    """Per element, the smallest ``c >= 0`` with ``(hi >> c) - (lo >> c) + 1 <= max_size``.

    Fitting at ``c`` implies fitting at ``c + 1`` (for max_size >= 2), so the search
    counts up from a lower bound: ``(hi >> c) - (lo >> c) >= (hi - lo) >> c``, so no ``c``
    below the bit length of ``(hi - lo) // max_size`` fits. That bound is at most one or
    two short, where counting up from 0 would take up to 30 rounds on new rows.
    """
    width = np.maximum(hi - lo, 0)
    # Bit length via frexp: exact, as widths of scale-20 indexes stay far below 2**53.
    change: NDArray[np.int64] = np.frexp((width // max_size).astype(np.float64))[1].astype(np.int64)
    while True:
        too_wide = (np.right_shift(hi, change) - np.right_shift(lo, change) + 1) > max_size
        if not bool(too_wide.any()):
            return change
        change += too_wide


def _group_rows(rows: NDArray[np.int64], n_rows: int) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """``np.unique(rows, return_inverse=True)`` for row ids in ``[0, n_rows)``.

    np.unique sorts the batch (about 30 ns an element at 16k elements); while the table is
    not much larger than the batch, marking rows in a table-sized array is several times
    cheaper and gives the same ascending distinct rows and positions.
    """
    if n_rows > 8 * rows.size:
        return np.unique(rows, return_inverse=True)
    present = np.zeros(n_rows, dtype=np.bool_)
    present[rows] = True
    touched = np.flatnonzero(present)
    position = np.empty(n_rows, dtype=np.intp)
    position[touched] = np.arange(touched.size)
    return touched, position[rows]


class ExpoHistogramColumns(GrowableRows):
    """A growable table of exponential histograms, one row per series."""

    def __init__(
        self, max_size: int = DEFAULT_MAX_SIZE, capacity: int = 64, growth: float = 2.0
    ) -> None:
        """Allocate ``capacity`` rows of ``max_size`` buckets (no row in use yet); full
        arrays grow by the factor ``growth`` (> 1)."""
        if max_size < 2:
            raise ValueError(f"max_size must be >= 2, got {max_size}")
        self._max_size = max_size
        self._buckets: NDArray[np.int64] = np.zeros((0, max_size), dtype=np.int64)
        # int8 holds [-10, 20]; 1 byte a row.
        self._scale: NDArray[np.int8] = np.zeros(0, dtype=np.int8)
        self._lo: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._hi: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._base: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._zero_count: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._count: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._sum: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._min: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._max: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        super().__init__(capacity, growth)

    @property
    def max_size(self) -> int:
        """Maximum number of positive buckets of each row."""
        return self._max_size

    def _grow(self, capacity: int) -> None:
        """Reallocate to ``capacity`` rows, keeping the rows in use, new rows empty."""
        n = self._rows

        def grown_int(a: NDArray[np.int64], fill: int) -> NDArray[np.int64]:
            out = np.full(capacity, fill, dtype=np.int64)
            out[:n] = a[:n]
            return out

        def grown_float(a: NDArray[np.float64], fill: float) -> NDArray[np.float64]:
            out = np.full(capacity, fill, dtype=np.float64)
            out[:n] = a[:n]
            return out

        buckets = np.zeros((capacity, self._max_size), dtype=np.int64)
        buckets[:n] = self._buckets[:n]
        self._buckets = buckets
        scale = np.full(capacity, MAX_SCALE, dtype=np.int8)
        scale[:n] = self._scale[:n]
        self._scale = scale
        self._lo = grown_int(self._lo, _EMPTY_LO)
        self._hi = grown_int(self._hi, _EMPTY_HI)
        self._base = grown_int(self._base, 0)
        self._zero_count = grown_int(self._zero_count, 0)
        self._count = grown_int(self._count, 0)
        self._sum = grown_float(self._sum, 0.0)
        self._min = grown_float(self._min, math.inf)
        self._max = grown_float(self._max, -math.inf)
        self._capacity = capacity

    def record_batch(
        self,
        rows: NDArray[np.int64],
        values: NDArray[np.float64],
        weights: NDArray[np.int64],
    ) -> None:
        """Record ``values[k]`` with ``weights[k]`` into row ``rows[k]``, for every ``k``.

        Values must be finite and >= 0, weights > 0. Within a row the values count in array
        order (which only matters for the float rounding of ``sum``). On error nothing is
        recorded.
        """
        rows = np.asarray(rows, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.int64)
        if not (rows.ndim == 1 and rows.shape == values.shape == weights.shape):
            raise ValueError("rows, values and weights must be 1-D arrays of the same length")
        if rows.size == 0:
            return
        self._check_rows(rows)
        if not bool(np.all((values >= 0.0) & np.isfinite(values))):
            raise ValueError("values must be finite and >= 0")
        if not bool(np.all(weights > 0)):
            raise ValueError("weights must be positive")
        values = values + 0.0  # -0.0 -> 0.0
        positive = values > 0.0
        if bool(positive.all()):
            # The common batch: no zero durations, so no masked copies.
            self._record_positive(rows, values, weights)
        elif bool(positive.any()):
            self._record_positive(rows[positive], values[positive], weights[positive])
        zero = ~positive
        if bool(zero.any()):
            np.add.at(self._zero_count, rows[zero], weights[zero])
        # Unbuffered ufunc.at applies the elements in order, so each row's sum is rounded
        # exactly as repeated ``+=`` in ExpoHistogram.record would.
        np.add.at(self._count, rows, weights)
        np.add.at(self._sum, rows, values * weights)
        np.minimum.at(self._min, rows, values)
        np.maximum.at(self._max, rows, values)

    def _record_positive(
        self, rows: NDArray[np.int64], values: NDArray[np.float64], weights: NDArray[np.int64]
    ) -> None:
        # index(v, s) == index(v, MAX_SCALE) >> (MAX_SCALE - s) exactly (a floor shift), so
        # one exact mapping at the finest scale serves every row whatever its scale.
        index20 = map_to_index_array(values, MAX_SCALE)
        touched, inverse = _group_rows(rows, self._rows)
        batch_lo = np.full(touched.size, _EMPTY_LO, dtype=np.int64)
        batch_hi = np.full(touched.size, _EMPTY_HI, dtype=np.int64)
        np.minimum.at(batch_lo, inverse, index20)
        np.maximum.at(batch_hi, inverse, index20)

        old_scale = self._scale[touched].astype(np.int64)
        shift = MAX_SCALE - old_scale
        # Empty rows carry sentinels, so min/max give the batch's own range for them.
        lo = np.minimum(self._lo[touched], np.right_shift(batch_lo, shift))
        hi = np.maximum(self._hi[touched], np.right_shift(batch_hi, shift))
        change = _needed_downscale_array(lo, hi, self._max_size)
        new_scale = old_scale - change
        if bool((new_scale < MIN_SCALE).any()):
            raise ValueError(f"values do not fit in max_size buckets at scale {MIN_SCALE}")
        lo = np.right_shift(lo, change)
        hi = np.right_shift(hi, change)

        base = self._base[touched]
        moved = (change > 0) | (lo < base) | (hi >= base + self._max_size)
        # Rebucketing is per row but only for rows whose scale drops or window slides.
        for k in np.flatnonzero(moved).tolist():
            self._rebucket(int(touched[k]), int(change[k]), int(lo[k]), int(hi[k]))
        self._lo[touched] = lo
        self._hi[touched] = hi

        element_shift = (MAX_SCALE - new_scale)[inverse]
        column = np.right_shift(index20, element_shift) - self._base[rows]
        np.add.at(self._buckets.reshape(-1), rows * self._max_size + column, weights)

    def _rebucket(self, row: int, change: int, new_lo: int, new_hi: int) -> None:
        """Downscale ``row`` by ``change`` and re-centre its window on ``[new_lo, new_hi]``.

        ``new_lo``/``new_hi`` are at the new scale and include the incoming batch.
        """
        size = self._max_size
        old_lo, old_hi = int(self._lo[row]), int(self._hi[row])
        old_base = int(self._base[row])
        # Centre the occupied range in the window: room to grow either way before the
        # next slide.
        new_base = new_lo - (size - (new_hi - new_lo + 1)) // 2
        line = self._buckets[row]
        if old_lo <= old_hi:
            segment = line[old_lo - old_base : old_hi - old_base + 1].copy()
            line[:] = 0
            if change:
                new_index = np.right_shift(np.arange(old_lo, old_hi + 1, dtype=np.int64), change)
                np.add.at(line, new_index - new_base, segment)
            else:
                # A slide keeps every bucket's index: one slice copy.
                line[old_lo - new_base : old_hi - new_base + 1] = segment
        self._base[row] = new_base
        self._scale[row] -= change

    def reset_rows(self, rows: NDArray[np.int64]) -> None:
        """Make ``rows`` empty again, back at ``MAX_SCALE``."""
        rows = np.asarray(rows, dtype=np.int64)
        self._check_rows(rows)
        self._buckets[rows] = 0
        self._scale[rows] = MAX_SCALE
        self._lo[rows] = _EMPTY_LO
        self._hi[rows] = _EMPTY_HI
        self._base[rows] = 0
        self._zero_count[rows] = 0
        self._count[rows] = 0
        self._sum[rows] = 0.0
        self._min[rows] = math.inf
        self._max[rows] = -math.inf

    def snapshot(self, row: int) -> ExpoHistogram:
        """Row ``row`` as a trimmed :class:`ExpoHistogram`."""
        if not 0 <= row < self._rows:
            raise IndexError(f"row must be in [0, {self._rows}), got {row}")
        lo, hi = int(self._lo[row]), int(self._hi[row])
        offset, counts = 0, []
        if lo <= hi:
            base = int(self._base[row])
            offset = lo
            counts = self._buckets[row, lo - base : hi - base + 1].tolist()
        return ExpoHistogram(
            max_size=self._max_size,
            scale=int(self._scale[row]),
            zero_count=int(self._zero_count[row]),
            count=int(self._count[row]),
            sum=float(self._sum[row]),
            min=float(self._min[row]),
            max=float(self._max[row]),
            offset=offset,
            counts=counts,
        )

    def merge_into_row(self, row: int, hist: ExpoHistogram) -> None:
        """Add the values of ``hist`` to row ``row`` (e.g. to restore a checkpoint).

        The result is fitted to this table's ``max_size``.
        """
        merged = merge(self.snapshot(row), hist, self._max_size)
        rows = np.array([row], dtype=np.int64)
        self.reset_rows(rows)
        self._scale[row] = merged.scale
        self._zero_count[row] = merged.zero_count
        self._count[row] = merged.count
        self._sum[row] = merged.sum
        self._min[row] = merged.min
        self._max[row] = merged.max
        if merged.counts:
            lo = merged.offset
            hi = lo + len(merged.counts) - 1
            base = lo - (self._max_size - len(merged.counts)) // 2
            self._lo[row], self._hi[row], self._base[row] = lo, hi, base
            self._buckets[row, lo - base : hi - base + 1] = merged.counts

    def bytes_per_row(self) -> float:
        """Bytes of all arrays divided by the allocated rows."""
        arrays = (
            self._buckets,
            self._scale,
            self._lo,
            self._hi,
            self._base,
            self._zero_count,
            self._count,
            self._sum,
            self._min,
            self._max,
        )
        return sum(a.nbytes for a in arrays) / self._capacity
