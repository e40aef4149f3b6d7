"""The classic bounds make Prometheus' histogram_quantile true to within 10% (the README
says 6%) on realistic latency spreads, as Jaeger's latency panel computes it from
``_bucket`` series; power-of-two bounds do not."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from spanmetrics.export.prometheus.native import classic_bounds


def bucket_quantile(q: float, bounds: list[float], cumulative: list[int]) -> float:
    """Prometheus' ``histogram_quantile`` on classic buckets (promql/quantile.go): find the
    bucket holding rank ``q * count`` and interpolate linearly inside it (from 0 for the
    first bucket)."""
    total = cumulative[-1]
    rank = q * total
    for i, c in enumerate(cumulative):
        if c >= rank:
            if i == len(bounds):  # +Inf
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            below = cumulative[i - 1] if i else 0
            return lower + (bounds[i] - lower) * (rank - below) / (c - below)
    raise AssertionError("unreachable")


def worst_error(bounds: list[float], seed: int = 5, trials: int = 120) -> float:
    rng = random.Random(seed)
    worst = 0.0
    for _ in range(trials):
        median = math.exp(rng.uniform(math.log(0.5), math.log(3000)))  # ms
        sigma = rng.uniform(0.1, 1.5)
        values = sorted(rng.lognormvariate(math.log(median), sigma) for _ in range(5000))
        exact = values[math.ceil(0.95 * len(values)) - 1]
        cumulative, j = [], 0
        for bound in bounds:
            while j < len(values) and values[j] <= bound:
                j += 1
            cumulative.append(j)
        cumulative.append(len(values))
        estimate = bucket_quantile(0.95, bounds, cumulative)
        worst = max(worst, abs(estimate / exact - 1))
    return worst


@pytest.mark.parametrize("unit", ["ms", "s"])
def test_classic_p95_is_within_6_percent_on_log_normal_latencies(unit: str) -> None:
    bounds = list(classic_bounds(unit))
    if unit == "s":
        bounds = [b * 1000 for b in bounds]  # the same latencies, in ms
    assert worst_error(bounds) < 0.06


def test_power_of_two_bounds_are_off_by_more_than_10_percent() -> None:
    """What the bounds replaced: a factor 2 apart, Jaeger's p95 is off by far more."""
    assert worst_error([2.0**k for k in range(-4, 21)]) > 0.15


def test_the_classic_bounds_the_readme_describes() -> None:
    """73 bounds four per doubling, 0.25 ms to 65.536 s (2^-12 s to 2^6 s): with +Inf,
    _sum and _count, 76 series per classic histogram."""
    for unit, low, high in (("ms", 0.25, 65536.0), ("s", 2.0**-12, 64.0)):
        bounds = classic_bounds(unit)
        assert len(bounds) + 3 == 76
        assert (bounds[0], bounds[-1]) == (low, high)
        assert all(b / a == pytest.approx(2**0.25) for a, b in itertools.pairwise(bounds))
