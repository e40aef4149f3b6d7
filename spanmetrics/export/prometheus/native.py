"""Exponential histograms as Prometheus native and classic histograms.

OpenTelemetry's bucket ``i`` at scale ``s`` holds ``(base**i, base**(i+1)]`` and
Prometheus's bucket ``i`` at schema ``s`` holds ``(base**(i-1), base**i]``, with the same
``base = 2**(2**-s)``: so schema = scale and Prometheus index = OpenTelemetry index + 1.
Prometheus accepts schemas -4..8; finer scales are downscaled exactly (``index >> k``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from spanmetrics.export.prometheus.series import NativeHistogram

#: Schemas Prometheus accepts.
MIN_SCHEMA, MAX_SCHEMA = -4, 8


def native_from_otel(
    scale: int,
    offset: int,
    counts: Sequence[int],
    zero_count: int,
    zero_threshold: float,
    count: int,
    total: float,
) -> NativeHistogram:
    """The native histogram of an OpenTelemetry exponential histogram's positive buckets."""
    buckets: dict[int, int] = {}
    approximate = False
    if scale > MAX_SCHEMA:
        shift = scale - MAX_SCHEMA
        schema = MAX_SCHEMA
        for i, c in enumerate(counts):
            if c:
                key = ((offset + i) >> shift) + 1
                buckets[key] = buckets.get(key, 0) + c
    elif scale >= MIN_SCHEMA:
        schema = scale
        for i, c in enumerate(counts):
            if c:
                buckets[offset + i + 1] = c
    else:
        # Coarser than any schema: a bucket's values can't be split, so its count goes to
        # the schema -4 bucket holding its upper bound 2**(2**-scale * (index + 1)).
        schema = MIN_SCHEMA
        per = 2 ** (-scale)  # exponent width of an OpenTelemetry bucket
        width = 2 ** (-MIN_SCHEMA)
        for i, c in enumerate(counts):
            if c:
                upper_exponent = per * (offset + i + 1)
                key = -(-upper_exponent // width)  # ceil
                buckets[key] = buckets.get(key, 0) + c
                approximate = True
    return NativeHistogram(
        schema, count, total, zero_count, zero_threshold, dict(sorted(buckets.items())),
        approximate,
    )  # fmt: skip


def downscaled(h: NativeHistogram, schema: int) -> NativeHistogram:
    """``h`` at a coarser (or equal) schema; exact."""
    if schema > h.schema:
        raise ValueError(f"cannot upscale a native histogram from {h.schema} to {schema}")
    shift = h.schema - schema
    buckets: dict[int, int] = {}
    for key, c in h.buckets.items():
        new = ((key - 1) >> shift) + 1
        buckets[new] = buckets.get(new, 0) + c
    return NativeHistogram(
        schema, h.count, h.sum, h.zero_count, h.zero_threshold, dict(sorted(buckets.items())),
        h.approximate,
    )  # fmt: skip


def merged(a: NativeHistogram, b: NativeHistogram) -> NativeHistogram:
    """The sum of two native histograms, at the coarser schema."""
    schema = min(a.schema, b.schema)
    a, b = downscaled(a, schema), downscaled(b, schema)
    buckets = dict(a.buckets)
    for key, c in b.buckets.items():
        buckets[key] = buckets.get(key, 0) + c
    return NativeHistogram(
        schema,
        a.count + b.count,
        a.sum + b.sum,
        a.zero_count + b.zero_count,
        max(a.zero_threshold, b.zero_threshold),
        dict(sorted(buckets.items())),
        a.approximate or b.approximate,
    )


def spans_and_deltas(buckets: dict[int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Prometheus's sparse encoding: spans of consecutive buckets ``(offset, length)``,
    each offset relative to the end of the previous span, and counts as deltas."""
    spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    previous_key: int | None = None
    previous_count = 0
    for key in sorted(buckets):
        if previous_key is not None and key == previous_key + 1:
            offset, length = spans[-1]
            spans[-1] = (offset, length + 1)
        else:
            gap = key if previous_key is None else key - previous_key - 1
            spans.append((gap, 1))
        deltas.append(buckets[key] - previous_count)
        previous_count = buckets[key]
        previous_key = key
    return spans, deltas


def bucket_counts(spans: Sequence[tuple[int, int]], deltas: Sequence[int]) -> dict[int, int]:
    """Inverse of :func:`spans_and_deltas`."""
    out: dict[int, int] = {}
    key = 0
    count = 0
    it = iter(deltas)
    first = True
    for offset, length in spans:
        key = offset if first else key + 1 + offset
        first = False
        for j in range(length):
            if j:
                key += 1
            count += next(it)
            out[key] = count
    return out


#: Classic bounds are powers of ``2**(1/2**CLASSIC_SCHEMA)``: four per doubling, about 19%
#: apart. Prometheus interpolates linearly inside a bucket, so the bounds decide how true
#: ``histogram_quantile`` over ``_bucket`` is (Jaeger's latency panel reads nothing else):
#: on log-normal latencies with sigma 0.1 to 1.5 the p95 lands within 6% of the exact value,
#: where power-of-two bounds (schema 0) are off by up to 50% and schema 1 by up to 17%
#: (tests/property/test_classic_quantiles.py).
#: They are the bounds of native schema 2, so counts from any exponential histogram of
#: scale >= 2 fall into them exactly.
CLASSIC_SCHEMA = 2
#: Range of the classic bounds, as exponents of two in the metric's unit: 0.25 ms to about
#: 65 s in ms (2^-12 s to 2^6 s in s). 73 bounds, 76 series per histogram with ``+Inf``,
#: ``_sum`` and ``_count``; slower spans are in ``+Inf`` only.
CLASSIC_RANGE = {"ms": (-2, 16), "s": (-12, 6)}


def classic_bounds(unit: str) -> tuple[float, ...]:
    """The fixed ``le`` bounds of classic buckets made from exponential histograms: the
    same for every series and pod, so that ``sum by (le)`` works (see ``CLASSIC_SCHEMA``)."""
    low, high = CLASSIC_RANGE[unit]
    per = 1 << CLASSIC_SCHEMA
    return tuple(2.0 ** (k / per) for k in range(low * per, high * per + 1))


def classic_from_otel(
    scale: int,
    offset: int,
    counts: Sequence[int],
    zero_count: int,
    count: int,
    bounds: Sequence[float],
) -> tuple[list[tuple[float, int]], bool]:
    """Cumulative ``(le, count)`` pairs (``+Inf`` last) at ``bounds``, powers of
    ``2**(1/2**CLASSIC_SCHEMA)``.

    Exact when ``scale >= CLASSIC_SCHEMA``: each bucket then lies between two consecutive
    bounds. Below it a bucket spans several; its count is placed at its upper bound, and
    the second value returned is True.
    """
    per = 1 << CLASSIC_SCHEMA
    exponents = [round(math.log2(b) * per) for b in bounds]
    at_upper: dict[int, int] = {}  # exponent (in 1/per) of a bucket's upper bound -> count
    approximate = scale < CLASSIC_SCHEMA
    shift = scale - CLASSIC_SCHEMA
    for i, c in enumerate(counts):
        if not c:
            continue
        index = offset + i
        upper = (index >> shift) + 1 if shift >= 0 else (index + 1) << -shift
        at_upper[upper] = at_upper.get(upper, 0) + c
    out: list[tuple[float, int]] = []
    cumulative = zero_count
    pending = sorted(at_upper.items())
    j = 0
    for bound, exponent in zip(bounds, exponents, strict=True):
        while j < len(pending) and pending[j][0] <= exponent:
            cumulative += pending[j][1]
            j += 1
        out.append((bound, cumulative))
    out.append((math.inf, count))
    return out, approximate


def classic_from_explicit(
    bounds: Sequence[float], counts: Sequence[int], count: int
) -> list[tuple[float, int]]:
    """Cumulative ``(le, count)`` pairs of an explicit-bucket histogram (exact)."""
    out: list[tuple[float, int]] = []
    cumulative = 0
    for bound, c in zip(bounds, counts, strict=False):
        cumulative += c
        out.append((bound, cumulative))
    out.append((math.inf, count))
    return out
