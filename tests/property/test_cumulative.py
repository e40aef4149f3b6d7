"""Cumulative shards: partitions merge to the whole stream; deltas sum to the cumulative;
the stored form round-trips."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spanmetrics.aggregate.cumulative import CumulativeShard, shard_of
from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import MetricNames, MetricsSnapshot
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.config.load import parse_topology
from spanmetrics.model.clock import FakeClock
from tests.builders import request, resource, span

pytestmark = pytest.mark.property

NAMES = MetricNames.for_namespace("traces.span.metrics", "ms")

span_specs = st.lists(
    st.tuples(
        st.sampled_from(["checkout", "cart", "frontend", "ads"]),
        st.sampled_from(["GET /", "POST /pay"]),
        st.integers(0, 2),
        st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e6)),
        st.integers(0, 3),  # partition
    ),
    max_size=50,
)


def build(specs: list[Any]) -> Any:
    return request(
        *(
            resource({"service.name": svc}, span(name, status=status, duration_ms=d))
            for svc, name, status, d, _ in specs
        )
    )


def delta_engine() -> tuple[SpanMetricsEngine, FakeClock]:
    clock = FakeClock()
    config = parse_topology(
        {"spanmetrics": {"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"}}
    ).spanmetrics
    return SpanMetricsEngine(config, clock), clock


def add_snapshot(shard: CumulativeShard, snapshot: MetricsSnapshot) -> None:
    for rp in snapshot.resources:
        identity = resource_identity(rp.resource)
        assert identity is not None
        shard.add_points(identity, rp.resource, rp.series, rp.events)


def as_dict(shard: CumulativeShard) -> dict[Any, tuple[int, ExpoHistogram]]:
    out = {}
    for key, s in shard.series.items():
        assert isinstance(s.duration, ExpoHistogram)
        out[key] = (s.calls, s.duration)
    return out


def assert_same(a: dict[Any, Any], b: dict[Any, Any]) -> None:
    assert a.keys() == b.keys()
    for key, (calls, hist) in a.items():
        calls_b, hist_b = b[key]
        assert calls == calls_b
        assert math.isclose(hist.sum, hist_b.sum, rel_tol=1e-9, abs_tol=1e-9)
        for field in ("scale", "zero_count", "count", "offset", "counts"):
            assert getattr(hist, field) == getattr(hist_b, field), field


@given(span_specs)
def test_partitions_merge_to_the_whole_stream(specs: list[Any]) -> None:
    whole_engine, _ = delta_engine()
    whole_engine.consume(build(specs))
    whole = CumulativeShard()
    add_snapshot(whole, whole_engine.flush())

    merged = CumulativeShard()
    for partition in range(4):
        engine, _ = delta_engine()
        engine.consume(build([s for s in specs if s[4] == partition]))
        part = CumulativeShard()
        add_snapshot(part, engine.flush())
        # Through the stored form, as a checkpoint would go.
        merged.merge(CumulativeShard.decode(part.encode(NAMES), NAMES, max_size=160))
    assert_same(as_dict(whole), as_dict(merged))


@given(span_specs, st.lists(st.integers(0, 50), max_size=4))
def test_published_deltas_sum_to_cumulative(specs: list[Any], cuts: list[int]) -> None:
    engine, clock = delta_engine()
    state = CumulativeShard()
    published = CumulativeShard()
    last_sent: dict[Any, int] = {}
    summed: dict[Any, tuple[int, ExpoHistogram]] = {}
    bounds = sorted({0, len(specs), *(min(c, len(specs)) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        engine.consume(build(specs[lo:hi]))
        clock.advance(10)
        add_snapshot(state, engine.flush())
        delta = state.delta_since(published, last_sent, NAMES, clock.now_ns())
        for rp in delta.resources:
            identity = resource_identity(rp.resource)
            for p in rp.series:
                assert p.start_time_unix_nano < p.time_unix_nano
                assert isinstance(p.duration, ExpoHistogram)
                key = (identity, p.attributes)
                if key in summed:
                    calls, hist = summed[key]
                    summed[key] = (calls + p.calls, hist.merged(p.duration))
                else:
                    summed[key] = (p.calls, p.duration)
        published = CumulativeShard()
        published.merge(state)
    assert_same(as_dict(state), summed)


def test_shard_is_stable_and_in_range() -> None:
    identity = ("checkout", ("k8s.pod.name", "checkout-1"), ("service.name", "checkout"))
    assert shard_of(identity, 8) == shard_of(tuple(identity), 8)
    assert {shard_of(("svc", ("service.name", f"s{i}")), 4) for i in range(100)} == {0, 1, 2, 3}
