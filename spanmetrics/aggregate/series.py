"""The series table: one row per live series, its counters and histograms held in columns.

Columns (numpy arrays indexed by row) let a whole batch update calls, histograms and
timestamps with a few vectorised operations instead of one Python call per span.
Rows freed by expiry are reused.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram

RowIds = NDArray[np.int64]


class HistogramColumns(Protocol):
    """What the table needs from a columnar histogram store (exponential or explicit)."""

    def add_rows(self, n: int) -> int:
        """Append ``n`` empty rows; return the first new row id."""
        ...

    def record_batch(
        self, rows: RowIds, values: NDArray[np.float64], weights: NDArray[np.int64]
    ) -> None:
        """Record ``values[i]`` with ``weights[i]`` into row ``rows[i]``, for all i."""
        ...

    def reset_rows(self, rows: RowIds) -> None:
        """Make rows empty again."""
        ...

    def snapshot(self, row: int) -> ExpoHistogram | ExplicitHistogram:
        """The histogram held in ``row``."""
        ...

    def bytes_per_row(self) -> float:
        """Memory of the store divided by its capacity in rows."""
        ...


class SeriesTable:
    """Counters, timestamps and histograms of every live series, one row each."""

    def __init__(
        self, histograms: HistogramColumns | None, capacity: int = 64, growth: float = 2.0
    ) -> None:
        """An empty table of ``capacity`` rows; full columns grow by the factor ``growth``
        (> 1). ``histograms`` grows on its own, one row at a time (see :meth:`allocate`)."""
        if not growth > 1.0:
            raise ValueError(f"growth must be > 1, got {growth}")
        self.histograms = histograms
        self._capacity = capacity
        self._growth = growth
        self._rows = 0
        self.calls: NDArray[np.int64] = np.zeros(capacity, np.int64)
        self.created_ns: NDArray[np.int64] = np.zeros(capacity, np.int64)
        #: Start of the current delta interval: the previous flush that emitted the row.
        self.start_ns: NDArray[np.int64] = np.zeros(capacity, np.int64)
        self.last_seen_ns: NDArray[np.int64] = np.zeros(capacity, np.int64)
        #: Whether the row received spans since the last flush.
        self.touched: NDArray[np.bool_] = np.zeros(capacity, np.bool_)
        self.live: NDArray[np.bool_] = np.zeros(capacity, np.bool_)
        self._free: list[int] = []

    @property
    def live_count(self) -> int:
        """Number of rows in use."""
        return self._rows - len(self._free)

    def allocate(self, now_ns: int) -> int:
        """A fresh, empty row created at ``now_ns``."""
        if self._free:
            row = self._free.pop()
        else:
            row = self._rows
            if row == self._capacity:
                self._grow()
            self._rows += 1
            if self.histograms is not None:
                self.histograms.add_rows(1)
        self.created_ns[row] = now_ns
        self.start_ns[row] = now_ns
        self.last_seen_ns[row] = now_ns
        self.live[row] = True
        return row

    def _grow(self) -> None:
        self._capacity = max(self._capacity + 1, int(self._capacity * self._growth))
        for name in ("calls", "created_ns", "start_ns", "last_seen_ns", "touched", "live"):
            old = getattr(self, name)
            new = np.zeros(self._capacity, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def record(
        self,
        rows: RowIds,
        values: NDArray[np.float64],
        weights: NDArray[np.int64],
        seen_ns: NDArray[np.int64],
    ) -> None:
        """Apply one batch: span ``i`` of duration ``values[i]``, standing for ``weights[i]``
        spans, arrived at ``seen_ns[i]``."""
        np.add.at(self.calls, rows, weights)
        self.touched[rows] = True
        np.maximum.at(self.last_seen_ns, rows, seen_ns)
        if self.histograms is not None:
            self.histograms.record_batch(rows, values, weights)

    def reset(self, rows: RowIds, now_ns: int) -> None:
        """Zero the rows after a delta flush; their next interval starts at ``now_ns``."""
        self.calls[rows] = 0
        self.touched[rows] = False
        self.start_ns[rows] = now_ns
        if self.histograms is not None and len(rows):
            self.histograms.reset_rows(rows)

    def release(self, rows: list[int]) -> None:
        """Free expired rows for reuse."""
        if not rows:
            return
        ids = np.asarray(rows, np.int64)
        self.reset(ids, 0)
        self.live[ids] = False
        self._free.extend(rows)

    def histogram(self, row: int) -> ExpoHistogram | ExplicitHistogram | None:
        """The duration histogram of ``row``, or None when durations are disabled."""
        return None if self.histograms is None else self.histograms.snapshot(row)

    def bytes_per_row(self) -> float:
        """Memory of all columns divided by capacity."""
        own: int = sum(
            getattr(self, n).nbytes
            for n in ("calls", "created_ns", "start_ns", "last_seen_ns", "touched", "live")
        )
        hist = self.histograms.bytes_per_row() if self.histograms is not None else 0.0
        return float(own / self._capacity + hist)
