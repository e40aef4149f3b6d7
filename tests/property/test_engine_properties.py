"""Engine-level properties: batching does not matter, and deltas add up to cumulative."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import MetricsSnapshot
from spanmetrics.config.load import parse_topology
from tests.builders import request, resource, span
from tests.clock import FakeClock

pytestmark = pytest.mark.property

SpanSpec = tuple[str, str, int, float]  # service, name, status, duration_ms

span_specs = st.lists(
    st.tuples(
        st.sampled_from(["checkout", "cart", "frontend"]),
        st.sampled_from(["GET /", "POST /pay", "SELECT"]),
        st.integers(0, 2),
        st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e7)),
    ),
    max_size=60,
)


def build(specs: list[SpanSpec]) -> Any:
    return request(
        *(
            resource({"service.name": svc}, span(name, status=status, duration_ms=d))
            for svc, name, status, d in specs
        )
    )


def engine(**spanmetrics: Any) -> tuple[SpanMetricsEngine, FakeClock]:
    clock = FakeClock()
    return SpanMetricsEngine(parse_topology({"spanmetrics": spanmetrics}).spanmetrics, clock), clock


def state(snapshot: MetricsSnapshot) -> dict[Any, tuple[int, ExpoHistogram]]:
    out = {}
    for r in snapshot.resources:
        for s in r.series:
            assert isinstance(s.duration, ExpoHistogram)
            out[s.attributes] = (s.calls, s.duration)
    return out


def assert_same(
    a: dict[Any, tuple[int, ExpoHistogram]], b: dict[Any, tuple[int, ExpoHistogram]]
) -> None:
    assert a.keys() == b.keys()
    for key, (calls_a, ha) in a.items():
        calls_b, hb = b[key]
        assert calls_a == calls_b
        # Float sums differ by rounding order only; everything else is exact.
        assert math.isclose(ha.sum, hb.sum, rel_tol=1e-9, abs_tol=1e-12)
        hb.sum = ha.sum
        assert ha == hb


@given(span_specs, st.lists(st.integers(0, 60), max_size=5))
def test_any_batching_gives_the_same_cumulative_result(
    specs: list[SpanSpec], cuts: list[int]
) -> None:
    whole, _ = engine()
    whole.consume(build(specs))
    split, _ = engine()
    bounds = sorted({0, len(specs), *(min(c, len(specs)) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        split.consume(build(specs[lo:hi]))
    assert_same(state(whole.flush()), state(split.flush()))


@given(span_specs, st.lists(st.integers(0, 60), max_size=5))
def test_deltas_sum_to_cumulative(specs: list[SpanSpec], flushes: list[int]) -> None:
    cumulative, _ = engine()
    delta, clock = engine(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA")
    cumulative.consume(build(specs))
    bounds = sorted({0, len(specs), *(min(c, len(specs)) for c in flushes)})
    summed: dict[Any, tuple[int, ExpoHistogram]] = {}
    last_time: dict[Any, int] = {}
    for lo, hi in itertools.pairwise(bounds):
        delta.consume(build(specs[lo:hi]))
        clock.advance(10)
        snapshot = delta.flush()
        for r in snapshot.resources:
            for s in r.series:
                # A series' delta intervals are contiguous: each starts where its last ended.
                if s.attributes in last_time:
                    assert s.start_time_unix_nano == last_time[s.attributes]
                assert s.start_time_unix_nano < s.time_unix_nano
                last_time[s.attributes] = s.time_unix_nano
        for key, (calls, hist) in state(snapshot).items():
            if key in summed:
                old_calls, old_hist = summed[key]
                summed[key] = (old_calls + calls, old_hist.merged(hist))
            else:
                summed[key] = (calls, hist)
    assert_same(state(cumulative.flush()), summed)
