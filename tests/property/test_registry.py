"""The series registry and the fleet's codec, property-tested: any split of a stream over
partitions (through the internal records) gives the stream's state; published deltas add
up to the cumulative state; the stored form round-trips; a cut's records depend on its
content only; the cardinality limit and expiry hold."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import MetricNames, MetricsSnapshot
from spanmetrics.aggregate.registry import SeriesRegistry
from spanmetrics.aggregate.resources import resource_identity, shard_of
from spanmetrics.config.load import parse_topology
from spanmetrics.state.codec import (
    CutHeader,
    HistogramSpec,
    decode_delta,
    decode_series_state,
    encode_delta_parts,
    encode_series_state,
)
from tests.builders import request, resource, span
from tests.clock import FakeClock

pytestmark = pytest.mark.property

NAMES = MetricNames.for_namespace("traces.span.metrics", "ms")
SPEC = HistogramSpec(160)

span_specs = st.lists(
    st.tuples(
        st.sampled_from(["checkout", "cart", "frontend", "ads"]),
        st.sampled_from(["GET /", "POST /pay"]),
        st.integers(0, 2),
        st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e6)),
        st.integers(0, 3),  # partition
        st.integers(0, 30),  # user
    ),
    max_size=60,
)


def build(specs: list[Any]) -> Any:
    return request(
        *(
            resource(
                {"service.name": svc},
                span(name, status=status, duration_ms=d, attributes={"user": f"u{user}"}),
            )
            for svc, name, status, d, _, user in specs
        )
    )


def engine(dimensions: bool = False) -> SpanMetricsEngine:
    config = parse_topology(
        {
            "spanmetrics": {
                "aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA",
                "dimensions": [{"name": "user"}] if dimensions else [],
            }
        }
    ).spanmetrics
    return SpanMetricsEngine(config, FakeClock())


def through_records(snapshot: MetricsSnapshot, max_bytes: int = 1 << 20) -> MetricsSnapshot:
    """A stage-1 snapshot as the shard owner reads it: encoded into records, decoded."""
    resources = [
        (rp.resource.SerializeToString(), rp.series, rp.events, ()) for rp in snapshot.resources
    ]
    header = CutHeader(0, 1, 0, 1, 0, 1, 0, 0)
    out = MetricsSnapshot(NAMES, snapshot.temporality, 0, [])
    from spanmetrics.aggregate.points import ResourcePoints

    for record in encode_delta_parts(header, resources, max_bytes).records:
        decoded = decode_delta(record, SPEC)
        per = [ResourcePoints(Resource.FromString(raw)) for raw in decoded.resources]
        for index, point in decoded.series:
            per[index].series.append(point)
        for index, event in decoded.events:
            per[index].events.append(event)
        out.resources += per
    return out


def apply(registry: SeriesRegistry, snapshot: MetricsSnapshot, now: int) -> None:
    for rp in snapshot.resources:
        identity = resource_identity(rp.resource)
        assert identity is not None
        registry.apply(identity, rp.resource, rp.series, rp.events, now, now)


def state(registry: SeriesRegistry) -> dict[Any, tuple[int, ExpoHistogram]]:
    out = {}
    for identity, res in registry.resources.items():
        for labels, s in res.series.items():
            assert isinstance(s.duration, ExpoHistogram)
            out[(identity, labels)] = (s.calls, s.duration)
    return out


def assert_same(a: dict[Any, Any], b: dict[Any, Any]) -> None:
    assert a.keys() == b.keys()
    for key, (calls, hist) in a.items():
        calls_b, hist_b = b[key]
        assert calls == calls_b
        assert math.isclose(hist.sum, hist_b.sum, rel_tol=1e-9, abs_tol=1e-9)
        for name in ("scale", "zero_count", "count", "offset", "counts"):
            assert getattr(hist, name) == getattr(hist_b, name), name


@given(span_specs, st.sampled_from([1 << 20, 2048]))
def test_partitions_merge_to_the_whole_stream(specs: list[Any], max_bytes: int) -> None:
    whole_engine = engine()
    whole_engine.consume(build(specs))
    whole = SeriesRegistry(NAMES)
    apply(whole, whole_engine.flush(), 1)
    merged = SeriesRegistry(NAMES)
    for partition in range(4):
        e = engine()
        e.consume(build([s for s in specs if s[4] == partition]))
        apply(merged, through_records(e.flush(), max_bytes), 1)
    assert_same(state(whole), state(merged))


@given(span_specs, st.lists(st.integers(0, 60), max_size=4), st.booleans())
def test_published_deltas_sum_to_the_cumulative(
    specs: list[Any], cuts: list[int], fail_some: bool
) -> None:
    registry = SeriesRegistry(NAMES, delta_output=True)
    summed: dict[Any, tuple[int, ExpoHistogram]] = {}
    ends: dict[Any, int] = {}
    now = 1_000
    bounds = sorted({0, len(specs), *(min(c, len(specs)) for c in cuts)})
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        e = engine()
        e.consume(build(specs[lo:hi]))
        apply(registry, e.flush(), now)
        now += 10
        snapshot, taken = registry.take_delta(registry.stamp(now))
        if fail_some and i % 2 == 0:
            registry.restore_delta(taken)  # the checkpoint failed: published later
            continue
        for rp in snapshot.resources:
            identity = resource_identity(rp.resource)
            for p in rp.series:
                key = (identity, p.attributes)
                assert p.start_time_unix_nano < p.time_unix_nano
                assert ends.get(key, p.start_time_unix_nano) == p.start_time_unix_nano
                ends[key] = p.time_unix_nano
                assert isinstance(p.duration, ExpoHistogram)
                if key in summed:
                    calls, hist = summed[key]
                    summed[key] = (calls + p.calls, hist.merged(p.duration))
                else:
                    summed[key] = (p.calls, p.duration)
    last, _ = registry.take_delta(registry.stamp(now + 10))
    for rp in last.resources:
        identity = resource_identity(rp.resource)
        for p in rp.series:
            key = (identity, p.attributes)
            assert isinstance(p.duration, ExpoHistogram)
            calls, hist = summed.get(key, (0, ExpoHistogram()))
            summed[key] = (calls + p.calls, hist.merged(p.duration))
    assert_same(state(registry), summed)


@given(span_specs)
def test_the_stored_form_round_trips(specs: list[Any]) -> None:
    e = engine(dimensions=True)
    e.consume(build(specs))
    registry = SeriesRegistry(NAMES)
    apply(registry, e.flush(), 5)
    restored = SeriesRegistry(NAMES)
    for identity, res in registry.resources.items():
        into = restored.restore_resource(identity, res.resource, res.last_seen_ns)
        for kind in ("series", "events"):
            for labels, s in res.table(kind).items():  # type: ignore[arg-type]
                rid, kind_back, labels_back, state_back = decode_series_state(
                    encode_series_state(res.rid, kind, labels, s),
                    SPEC,  # type: ignore[arg-type]
                )
                assert (rid, kind_back, labels_back) == (res.rid, kind, labels)
                assert state_back == s
                restored.restore_series(into, kind_back, labels_back, state_back)
    assert restored.cumulative(10) == registry.cumulative(10)


@given(span_specs, st.integers(min_value=1024, max_value=1 << 16), st.integers(0, 10**6))
def test_a_cut_is_split_by_its_content_only(specs: list[Any], max_bytes: int, epoch: int) -> None:
    e = engine(dimensions=True)
    e.consume(build(specs))
    snapshot = e.flush()
    resources = [
        (rp.resource.SerializeToString(), rp.series, rp.events, ()) for rp in snapshot.resources
    ]
    first = encode_delta_parts(CutHeader(3, 1, 10, 20, 0, 1, 5, 6), resources, max_bytes).records
    again = encode_delta_parts(
        CutHeader(3, epoch, 10, 20, 0, 1, 7**9, 8**9), resources, max_bytes
    ).records
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        assert len(a) <= max_bytes and len(b) <= max_bytes
        da, db = decode_delta(a, SPEC), decode_delta(b, SPEC)
        assert (da.resources, da.series, da.events) == (db.resources, db.series, db.events)
        assert da.header.parts == len(first)
    assert sum(len(decode_delta(r, SPEC).series) for r in first) == snapshot.series_count


@given(span_specs, st.integers(1, 5), st.lists(st.integers(0, 60), max_size=4))
def test_the_limit_holds_and_the_calls_add_up(
    specs: list[Any], limit: int, cuts: list[int]
) -> None:
    registry = SeriesRegistry(NAMES, cardinality_limit=limit)
    bounds = sorted({0, len(specs), *(min(c, len(specs)) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        e = engine(dimensions=True)
        e.consume(build(specs[lo:hi]))
        apply(registry, e.flush(), 1)
    per_resource: dict[Any, int] = {}
    for identity, res in registry.resources.items():
        assert len(res.series) <= limit + 1
        per_resource[identity[0]] = sum(s.calls for s in res.series.values())
    sent: dict[Any, int] = {}
    for svc, *_ in specs:
        sent[svc] = sent.get(svc, 0) + 1
    assert per_resource == sent


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40)), max_size=40))
def test_expiry_removes_exactly_the_idle_series(events: list[tuple[int, int]]) -> None:
    """Series ``op<k>`` get spans at the given seconds; with a 10 s expiration, after an
    expiry check a series is held if and only if it got spans in the last 10 s."""
    ttl = 10 * 10**9
    registry = SeriesRegistry(NAMES, series_ttl_ns=ttl)
    last_seen: dict[str, int] = {}
    for k, second in sorted(events, key=lambda e: e[1]):
        now = second * 10**9
        removed = registry.expire(now)
        held = {
            dict(labels)["span.name"]
            for res in registry.resources.values()
            for labels in res.series
        }
        assert held == {name for name, t in last_seen.items() if now - t <= ttl}
        assert all(now - state.last_seen_ns > ttl for *_, state in removed)
        one = engine()
        one.consume(build([("checkout", f"op{k}", 0, 1.0, 0, 0)]))
        apply(registry, one.flush(), now)
        last_seen[f"op{k}"] = now
    registry.expire(60 * 10**9)
    assert len(registry) == 0 and not registry.resources


def test_shard_is_stable_and_in_range() -> None:
    identity = ("checkout", ("k8s.pod.name", "checkout-1"), ("service.name", "checkout"))
    assert shard_of(identity, 8) == shard_of(tuple(identity), 8)
    assert {shard_of(("svc", ("service.name", f"s{i}")), 4) for i in range(100)} == {0, 1, 2, 3}
