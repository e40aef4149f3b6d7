"""Row bookkeeping shared by the columnar histogram stores: rows in use, capacity, growth."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


class GrowableRows:
    """Rows handed out in order from arrays that grow by a factor when full.

    A subclass allocates its arrays in :meth:`_grow` (new rows empty, rows in use kept)
    and calls ``super().__init__`` last, once its empty arrays exist.
    """

    def __init__(self, capacity: int, growth: float) -> None:
        """Allocate ``capacity`` rows; full arrays grow by the factor ``growth`` (> 1)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not growth > 1.0:
            raise ValueError(f"growth must be > 1, got {growth}")
        self._growth = growth
        self._rows = 0
        self._capacity = 0
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        """Reallocate to ``capacity`` rows and set ``self._capacity``."""
        raise NotImplementedError

    @property
    def rows(self) -> int:
        """Number of rows in use."""
        return self._rows

    @property
    def capacity(self) -> int:
        """Number of rows allocated."""
        return self._capacity

    def add_rows(self, n: int) -> int:
        """Append ``n`` empty rows and return the id of the first one.

        The arrays grow by the growth factor as needed, so appending is amortised O(1) a
        row.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        first = self._rows
        needed = first + n
        if needed > self._capacity:
            capacity = self._capacity
            while capacity < needed:
                capacity = max(capacity + 1, int(capacity * self._growth))
            self._grow(capacity)
        self._rows = needed
        return first

    def _check_rows(self, rows: NDArray[np.int64]) -> None:
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= self._rows):
            raise IndexError(f"row ids must be in [0, {self._rows})")
