"""Merge and difference semantics of cumulative state: pure functions on histograms and
exemplars, with no I/O format.

Merging is exact: counts add, exponential histograms downscale to a common scale and add
(see :mod:`spanmetrics.aggregate.expohist`), explicit histograms with the same bounds add
bucket by bucket. The difference of two cumulative states of one series (``before`` a
prefix of ``now``) is exact the same way; its min and max are unknown (NaN).
"""

from __future__ import annotations

import math

from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import Exemplar

Histogram = ExpoHistogram | ExplicitHistogram


def merge_histograms(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    """A new histogram holding the values of both (None when both are None).

    Raises:
        ValueError: one is exponential and the other explicit.
    """
    if a is None:
        return None if b is None else b.copy()
    if b is None:
        return a.copy()
    if isinstance(a, ExpoHistogram) and isinstance(b, ExpoHistogram):
        return a.merged(b)
    if isinstance(a, ExplicitHistogram) and isinstance(b, ExplicitHistogram):
        return a.merged(b)
    raise ValueError("cannot merge an exponential with an explicit histogram")


def latest_exemplars(
    kept: tuple[Exemplar, ...], new: tuple[Exemplar, ...], limit: int
) -> tuple[Exemplar, ...]:
    """The ``limit`` most recent exemplars of both, oldest first."""
    if not new:
        return kept[-limit:] if limit else ()
    merged = sorted(set(kept) | set(new), key=lambda e: (e.time_unix_nano, e.span_id))
    return tuple(merged[-limit:]) if limit else ()


def subtract_histograms(now: Histogram, before: Histogram) -> Histogram:
    """``now - before`` for two cumulative states of one series (``before`` ⊆ ``now``)."""
    if isinstance(now, ExpoHistogram) and isinstance(before, ExpoHistogram):
        return _subtract_expo(now, before)
    if isinstance(now, ExplicitHistogram) and isinstance(before, ExplicitHistogram):
        return ExplicitHistogram(
            bounds=now.bounds,
            counts=[a - b for a, b in zip(now.counts, before.counts, strict=True)],
            count=now.count - before.count,
            sum=now.sum - before.sum,
            min=math.nan,
            max=math.nan,
        )
    raise ValueError("cannot subtract histograms of different kinds")


def _subtract_expo(now: ExpoHistogram, before: ExpoHistogram) -> ExpoHistogram:
    # The values of `before` are a subset of those of `now`, so `now` is at the same or a
    # coarser scale; bring `before` to it and subtract bucket by bucket.
    earlier = before.copy()
    if earlier.scale > now.scale:
        earlier.downscale(earlier.scale - now.scale)
    counts = list(now.counts)
    for i, c in enumerate(earlier.counts):
        counts[earlier.offset + i - now.offset] -= c
    first = next((i for i, c in enumerate(counts) if c), len(counts))
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    return ExpoHistogram(
        max_size=now.max_size,
        scale=now.scale,
        zero_count=now.zero_count - earlier.zero_count,
        count=now.count - earlier.count,
        sum=now.sum - earlier.sum,
        min=math.nan,
        max=math.nan,
        offset=now.offset + first if first <= last else 0,
        counts=counts[first : last + 1] if first <= last else [],
    )
