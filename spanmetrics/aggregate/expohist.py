"""One base-2 exponential histogram, as the OTel data model's "ExponentialHistogram".

Positive buckets and a zero bucket only: durations are never negative (callers clamp), and
the zero threshold is 0. Like lightstep/go-expohisto (used by the Collector), the scale
starts at ``MAX_SCALE`` and goes down only as far as needed for the bucket indexes in use
to fit ``max_size`` buckets.

Key invariant: the scale of a histogram built by :meth:`ExpoHistogram.record` and
:meth:`ExpoHistogram.merged` is the LARGEST scale in [MIN_SCALE, MAX_SCALE] at which the
indexes of all its non-zero values fit in ``max_size`` consecutive buckets. Because
``index(v, s - c) == index(v, s) >> c`` (floor shift) and fitting at a scale implies fitting
at every coarser one, that scale depends only on the multiset of values, not on their order
or batching. So the histogram of a stream is exactly the merge of the histograms of any
split of it (``sum`` aside, whose float rounding depends on addition order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import add

import numpy as np

from spanmetrics.aggregate.expo_mapping import (
    MAX_SCALE,
    MIN_SCALE,
    lower_boundary,
    map_to_index,
    map_to_index_array,
)

#: The Collector's (and go-expohisto's) default maximum number of positive buckets.
DEFAULT_MAX_SIZE = 160


def needed_downscale(lo: int, hi: int, max_size: int) -> int:
    """Smallest ``c >= 0`` with ``(hi >> c) - (lo >> c) + 1 <= max_size``.

    ``lo``/``hi`` are the lowest/highest bucket index in use at the current scale.
    """
    change = 0
    while (hi >> change) - (lo >> change) + 1 > max_size:
        change += 1
    return change


def _check_scale_after(scale: int, change: int) -> None:
    if scale - change < MIN_SCALE:
        # Only reachable with max_size 2 and values spanning subnormals to > 1: at
        # MIN_SCALE the positive doubles need 3 buckets.
        raise ValueError(
            f"values do not fit in max_size buckets even at scale {MIN_SCALE} "
            f"(would need scale {scale - change})"
        )


@dataclass(slots=True, eq=True)
class ExpoHistogram:
    """A base-2 exponential histogram with positive buckets and a zero bucket.

    ``counts[j]`` is the count of bucket index ``offset + j`` at ``scale``; the list is
    trimmed (first and last entries non-zero) or empty. ``min``/``max`` are inf/-inf while
    the histogram is empty.
    """

    max_size: int = DEFAULT_MAX_SIZE
    """Maximum number of positive buckets."""
    scale: int = MAX_SCALE
    """Current scale: base is ``2 ** (2 ** -scale)``."""
    zero_count: int = 0
    """Weight of values equal to 0."""
    count: int = 0
    """Total weight, zero bucket included."""
    sum: float = 0.0
    """Sum of ``value * weight``."""
    min: float = math.inf
    """Smallest value recorded (inf while empty)."""
    max: float = -math.inf
    """Largest value recorded (-inf while empty)."""
    offset: int = 0
    """Bucket index of ``counts[0]``."""
    counts: list[int] = field(default_factory=list)
    """Positive bucket counts, trimmed."""

    def __post_init__(self) -> None:
        if self.max_size < 2:
            raise ValueError(f"max_size must be >= 2, got {self.max_size}")

    @property
    def is_empty(self) -> bool:
        """Whether nothing was recorded."""
        return self.count == 0

    @classmethod
    def from_values(
        cls,
        values: Iterable[float],
        weights: Iterable[int] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> ExpoHistogram:
        """The histogram of ``values`` (with ``weights``, default 1 each), in one pass.

        Equal to recording the values one by one in order, ``sum`` included (it is
        accumulated left to right, as ``record`` does).
        """
        vals = np.asarray(list(values), dtype=np.float64)
        if weights is None:
            wts = np.ones(vals.shape, dtype=np.int64)
        else:
            wts = np.asarray(list(weights), dtype=np.int64)
        if wts.shape != vals.shape:
            raise ValueError("values and weights must have the same length")
        hist = cls(max_size=max_size)
        if vals.size == 0:
            return hist
        if not bool(np.all(vals >= 0.0) & np.all(np.isfinite(vals))):
            raise ValueError("values must be finite and >= 0")
        if not bool(np.all(wts > 0)):
            raise ValueError("weights must be positive")
        vals = vals + 0.0  # -0.0 -> 0.0
        hist.count = int(wts.sum())
        # cumsum accumulates left to right, so the rounding matches repeated ``+=``.
        hist.sum = float(np.cumsum(vals * wts)[-1])
        hist.min = float(vals.min())
        hist.max = float(vals.max())
        positive = vals > 0.0
        hist.zero_count = int(wts[~positive].sum())
        if not bool(positive.any()):
            return hist
        index = map_to_index_array(vals[positive], MAX_SCALE)
        lo, hi = int(index.min()), int(index.max())
        change = needed_downscale(lo, hi, max_size)
        _check_scale_after(MAX_SCALE, change)
        index >>= change
        lo >>= change
        counts = np.zeros((hi >> change) - lo + 1, dtype=np.int64)
        np.add.at(counts, index - lo, wts[positive])
        hist.scale = MAX_SCALE - change
        hist.offset = lo
        hist.counts = counts.tolist()
        return hist

    def copy(self) -> ExpoHistogram:
        """An independent copy."""
        return ExpoHistogram(
            self.max_size,
            self.scale,
            self.zero_count,
            self.count,
            self.sum,
            self.min,
            self.max,
            self.offset,
            list(self.counts),
        )

    def record(self, value: float, weight: int = 1) -> None:
        """Add ``value`` (finite, >= 0) with an integer ``weight`` > 0.

        Downscales by the minimum needed for all bucket indexes to fit ``max_size``.
        """
        if not (value >= 0.0 and math.isfinite(value)):
            raise ValueError(f"value must be finite and >= 0, got {value!r}")
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        value = value + 0.0  # -0.0 -> 0.0, so min/max never show a negative zero
        if value > 0.0:
            index = map_to_index(value, self.scale)
            if self.counts:
                lo = min(self.offset, index)
                hi = max(self.offset + len(self.counts) - 1, index)
                change = needed_downscale(lo, hi, self.max_size)
                if change:
                    _check_scale_after(self.scale, change)
                    self.downscale(change)
                    index >>= change
                if index < self.offset:
                    self.counts[:0] = [0] * (self.offset - index)
                    self.offset = index
                elif index >= self.offset + len(self.counts):
                    self.counts.extend([0] * (index - self.offset - len(self.counts) + 1))
                self.counts[index - self.offset] += weight
            else:
                self.offset = index
                self.counts = [weight]
        else:
            self.zero_count += weight
        self.count += weight
        self.sum += value * weight
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def downscale(self, change: int) -> None:
        """Lower the scale by ``change``: each bucket index ``i`` becomes ``i >> change``.

        Exact: a bucket at the coarser scale is the union of ``2 ** change`` buckets.
        """
        if change < 0:
            raise ValueError(f"change must be >= 0, got {change}")
        if change == 0:
            return
        _check_scale_after(self.scale, change)
        self.scale -= change
        if not self.counts:
            return
        new_offset = self.offset >> change
        new_last = (self.offset + len(self.counts) - 1) >> change
        counts = [0] * (new_last - new_offset + 1)
        for j, c in enumerate(self.counts):
            counts[((self.offset + j) >> change) - new_offset] += c
        self.offset = new_offset
        self.counts = counts

    def merged(self, other: ExpoHistogram) -> ExpoHistogram:
        """A new histogram holding the values of both (``max_size`` is the smaller one)."""
        return merge(self, other, min(self.max_size, other.max_size))

    def bucket_index_for_rank(self, rank: int) -> int | None:
        """Bucket index holding the ``rank``-th smallest value (0-based), None for zero."""
        if not 0 <= rank < self.count:
            raise ValueError(f"rank must be in [0, {self.count}), got {rank}")
        remaining = rank - self.zero_count
        if remaining < 0:
            return None
        for j, c in enumerate(self.counts):
            if remaining < c:
                return self.offset + j
            remaining -= c
        raise AssertionError("bucket counts do not add up to count")  # pragma: no cover

    def bucket_bounds_for_rank(self, rank: int) -> tuple[float, float]:
        """``(lower, upper]`` bounds of the bucket holding the ``rank``-th smallest value.

        ``rank`` is 0-based in ``[0, count)``. The zero bucket gives ``(0.0, 0.0)``. The
        bounds are rounded down to doubles (see ``lower_boundary``), so for the exact
        value ``v`` at that rank ``lower < v <= upper`` holds in double arithmetic.
        """
        index = self.bucket_index_for_rank(rank)
        if index is None:
            return (0.0, 0.0)
        return (lower_boundary(index, self.scale), lower_boundary(index + 1, self.scale))

    def quantile(self, q: float) -> float:
        """Estimate of the ``q``-quantile, ``q`` in [0, 1]; NaN when empty.

        Uses the value of rank ``ceil(q * count) - 1`` (clamped): exact ``min``/``max`` at
        the two ends, 0 in the zero bucket, otherwise the geometric midpoint of its bucket
        (relative error at most ``sqrt(base) - 1``), clamped to ``[min, max]``.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        if self.count == 0:
            return math.nan
        rank = min(max(math.ceil(q * self.count) - 1, 0), self.count - 1)
        # A delta histogram made by subtracting cumulative states has unknown (NaN)
        # min and max; then every rank is read from its bucket.
        known = not (math.isnan(self.min) or math.isnan(self.max))
        if rank == 0 and known:
            return self.min
        if rank == self.count - 1 and known:
            return self.max
        lower, upper = self.bucket_bounds_for_rank(rank)
        if upper == 0.0:
            return 0.0
        # sqrt of each factor avoids overflowing lower * upper.
        mid = math.sqrt(lower) * math.sqrt(upper)
        return min(max(mid, self.min), self.max) if known else mid


def merge(a: ExpoHistogram, b: ExpoHistogram, max_size: int) -> ExpoHistogram:
    """The histogram of the values of ``a`` and ``b``, fitted to ``max_size`` buckets.

    Both go to the smaller scale, then further down as far as needed to fit.
    """
    scale = min(a.scale, b.scale)
    lo: int | None = None
    hi: int | None = None
    for h in (a, b):
        if h.counts:
            shift = h.scale - scale
            h_lo, h_hi = h.offset >> shift, (h.offset + len(h.counts) - 1) >> shift
            lo = h_lo if lo is None else min(lo, h_lo)
            hi = h_hi if hi is None else max(hi, h_hi)
    out = ExpoHistogram(
        max_size=max_size,
        scale=scale,
        zero_count=a.zero_count + b.zero_count,
        count=a.count + b.count,
        sum=a.sum + b.sum,
        min=min(a.min, b.min),
        max=max(a.max, b.max),
    )
    if lo is None or hi is None:
        return out
    change = needed_downscale(lo, hi, max_size)
    _check_scale_after(scale, change)
    out.scale = scale - change
    out.offset = lo >> change
    counts = [0] * ((hi >> change) - out.offset + 1)
    for h in (a, b):
        shift = h.scale - out.scale
        if shift == 0:
            # Same scale (the steady state of a cumulative merge): add the aligned slice
            # in C instead of bucket by bucket.
            start = h.offset - out.offset
            end = start + len(h.counts)
            counts[start:end] = map(add, counts[start:end], h.counts)
            continue
        for j, c in enumerate(h.counts):
            counts[((h.offset + j) >> shift) - out.offset] += c
    out.counts = _trimmed(counts, out)
    return out


def _trimmed(counts: list[int], hist: ExpoHistogram) -> list[int]:
    """Drop zero counts at both ends, moving ``hist.offset`` along."""
    start = 0
    while start < len(counts) and counts[start] == 0:
        start += 1
    end = len(counts)
    while end > start and counts[end - 1] == 0:
        end -= 1
    if start == end:
        hist.offset = 0
        return []
    hist.offset += start
    return counts[start:end]


def merge_all(hists: Sequence[ExpoHistogram], max_size: int = DEFAULT_MAX_SIZE) -> ExpoHistogram:
    """Merge any number of histograms (an empty histogram when there are none)."""
    out = ExpoHistogram(max_size=max_size)
    for h in hists:
        out = merge(out, h, max_size)
    return out
