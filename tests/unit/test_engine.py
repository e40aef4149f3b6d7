"""The engine, one feature per test: dimensions, drops, temporality, limits, sampling."""

from __future__ import annotations

from typing import Any

import pytest

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import MetricsSnapshot, SeriesPoint
from spanmetrics.config.load import parse_topology
from tests.builders import CLIENT, ERROR, OK, SERVER, request, resource, scope, span
from tests.clock import FakeClock

CHECKOUT = {"service.name": "checkout", "k8s.pod.name": "checkout-1"}


def make_engine(**spanmetrics: Any) -> tuple[SpanMetricsEngine, FakeClock]:
    clock = FakeClock()
    config = parse_topology({"spanmetrics": spanmetrics}).spanmetrics
    return SpanMetricsEngine(config, clock), clock


def series_by_labels(snapshot: MetricsSnapshot) -> dict[tuple[tuple[str, str], ...], SeriesPoint]:
    out = {}
    for r in snapshot.resources:
        for s in r.series:
            assert s.attributes not in out, "duplicate series in one flush"
            out[s.attributes] = s
    return out


def only(snapshot: MetricsSnapshot) -> SeriesPoint:
    (point,) = series_by_labels(snapshot).values()
    return point


def test_intrinsic_dimensions_with_connector_spellings() -> None:
    engine, _ = make_engine()
    engine.consume(request(resource(CHECKOUT, span("GET /cart", kind=SERVER, status=ERROR))))
    point = only(engine.flush())
    assert point.attributes == (
        ("service.name", "checkout"),
        ("span.name", "GET /cart"),
        ("span.kind", "SPAN_KIND_SERVER"),
        ("status.code", "STATUS_CODE_ERROR"),
    )
    assert point.calls == 1


def test_series_split_by_name_kind_status() -> None:
    engine, _ = make_engine()
    engine.consume(
        request(
            resource(
                CHECKOUT,
                span("a", kind=SERVER),
                span("a", kind=SERVER),
                span("a", kind=CLIENT),
                span("a", kind=SERVER, status=OK),
                span("b", kind=SERVER),
            )
        )
    )
    calls = {
        (dict(k)["span.name"], dict(k)["span.kind"], dict(k)["status.code"]): p.calls
        for k, p in series_by_labels(engine.flush()).items()
    }
    assert calls == {
        ("a", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 2,
        ("a", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET"): 1,
        ("a", "SPAN_KIND_SERVER", "STATUS_CODE_OK"): 1,
        ("b", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 1,
    }


def test_spans_without_service_name_are_dropped_and_counted() -> None:
    engine, _ = make_engine()
    engine.consume(
        request(
            resource({"k8s.pod.name": "x"}, span(), span()),
            resource({"service.name": ""}, span()),
            resource(CHECKOUT, span()),
        )
    )
    assert engine.counters["spans_dropped.missing_service_name"] == 3
    assert engine.counters["spans_received"] == 4
    assert only(engine.flush()).calls == 1


def test_configured_dimensions_span_then_resource_then_default() -> None:
    engine, _ = make_engine(
        dimensions=[{"name": "http.method", "default": "GET"}, {"name": "region"}, {"name": "code"}]
    )
    engine.consume(
        request(
            resource(
                {**CHECKOUT, "region": "eu", "http.method": "PATCH"},
                span("s", attributes={"http.method": "POST", "code": 200}),
                span("s", attributes={"region": "us"}),
            ),
            resource({"service.name": "cart"}, span("s")),
        )
    )
    labels = {tuple((k, v) for k, v in key[4:]) for key in series_by_labels(engine.flush())}
    assert labels == {
        (("http.method", "POST"), ("region", "eu"), ("code", "200")),
        (("http.method", "PATCH"), ("region", "us")),  # resource value beats the default
        (("http.method", "GET"),),  # default; region and code absent: labels omitted
    }


def test_exclude_dimensions_merges_series() -> None:
    engine, _ = make_engine(exclude_dimensions=["status.code", "span.kind"])
    engine.consume(request(resource(CHECKOUT, span("a", status=ERROR), span("a", kind=CLIENT))))
    point = only(engine.flush())
    assert point.attributes == (("service.name", "checkout"), ("span.name", "a"))
    assert point.calls == 2


def test_resource_metrics_key_attributes_keep_series_together() -> None:
    engine, _ = make_engine(resource_metrics_key_attributes=["service.name"])
    engine.consume(request(resource({**CHECKOUT, "process.pid": 1}, span("a"))))
    engine.consume(request(resource({**CHECKOUT, "process.pid": 2}, span("a"))))
    snapshot = engine.flush()
    assert len(snapshot.resources) == 1
    assert only(snapshot).calls == 2

    engine, _ = make_engine()
    engine.consume(request(resource({**CHECKOUT, "process.pid": 1}, span("a"))))
    engine.consume(request(resource({**CHECKOUT, "process.pid": 2}, span("a"))))
    assert len(engine.flush().resources) == 2


def test_include_instrumentation_scope() -> None:
    engine, _ = make_engine(include_instrumentation_scope=["io.grpc"])
    engine.consume(
        request(
            resource(
                CHECKOUT,
                scope("io.grpc", span("a"), version="1.2"),
                scope("other", span("a")),
            )
        )
    )
    labels = sorted(series_by_labels(engine.flush()))
    assert [k[4:] for k in labels] == [
        (),
        (
            ("span.instrumentation.scope.name", "io.grpc"),
            ("span.instrumentation.scope.version", "1.2"),
        ),
    ]


def test_negative_duration_clamped_to_zero_and_counted() -> None:
    engine, _ = make_engine()
    engine.consume(
        request(resource(CHECKOUT, span(start_ns=2000, end_ns=1000), span(duration_ms=3)))
    )
    hist = only(engine.flush()).duration
    assert isinstance(hist, ExpoHistogram)
    assert engine.counters["spans_negative_duration"] == 1
    assert hist.zero_count == 1 and hist.count == 2
    assert hist.min == 0.0 and hist.max == pytest.approx(3.0)


def test_a_span_of_584_years_is_clamped_and_counted() -> None:
    """A broken clock (start 0, end at the top of uint64) must not stretch the series'
    histogram over decades: it counts as ``max_span_duration``, and is counted."""
    engine, _ = make_engine(
        exemplars={"enabled": True}, histogram={"exponential": {"max_size": 32}}
    )
    engine.consume(
        request(resource(CHECKOUT, span(start_ns=0, end_ns=2**64 - 1), span(duration_ms=3)))
    )
    point = only(engine.flush())
    hist = point.duration
    assert isinstance(hist, ExpoHistogram)
    assert engine.counters["spans_duration_clamped"] == 1
    assert hist.count == 2 and hist.max == pytest.approx(86_400_000.0)
    # 32 buckets span 3 ms to a day at scale 0 (25 of them); 584 years needs scale -1.
    assert hist.scale == 0
    assert max(e.value for e in point.exemplars) == pytest.approx(86_400_000.0)


def test_max_span_duration_zero_keeps_every_duration() -> None:
    engine, _ = make_engine(max_span_duration=0)
    engine.consume(request(resource(CHECKOUT, span(start_ns=0, end_ns=2**64 - 1))))
    hist = only(engine.flush()).duration
    assert isinstance(hist, ExpoHistogram)
    assert "spans_duration_clamped" not in engine.counters
    assert hist.max == pytest.approx((2**64 - 1) / 1e6)


def test_duration_unit_and_namespace() -> None:
    engine, _ = make_engine(histogram={"unit": "s"}, namespace="")
    engine.consume(request(resource(CHECKOUT, span(duration_ms=1500))))
    snapshot = engine.flush()
    assert (snapshot.names.calls, snapshot.names.duration, snapshot.names.unit) == (
        "calls",
        "duration",
        "s",
    )
    hist = only(snapshot).duration
    assert hist is not None and hist.sum == pytest.approx(1.5)


def test_explicit_histogram_option() -> None:
    engine, _ = make_engine(histogram={"explicit": {}})
    engine.consume(request(resource(CHECKOUT, *(span(duration_ms=d) for d in (1, 2, 3, 20000)))))
    hist = only(engine.flush()).duration
    assert isinstance(hist, ExplicitHistogram)
    assert hist.bounds[:2] == (2.0, 4.0)
    assert hist.counts[:2] == [2, 1] and hist.counts[-1] == 1


def test_histogram_disable() -> None:
    engine, _ = make_engine(histogram={"disable": True})
    engine.consume(request(resource(CHECKOUT, span())))
    point = only(engine.flush())
    assert point.duration is None and point.calls == 1


def test_cumulative_start_fixed_at_creation_time_at_flush() -> None:
    engine, clock = make_engine()
    created = clock.now_ns()
    engine.consume(request(resource(CHECKOUT, span())))
    clock.advance(60)
    first = only(engine.flush())
    clock.advance(60)
    engine.consume(request(resource(CHECKOUT, span())))
    clock.advance(60)
    second = only(engine.flush())
    assert (first.start_time_unix_nano, first.time_unix_nano) == (created, created + 60 * 10**9)
    assert (second.start_time_unix_nano, second.time_unix_nano) == (created, created + 180 * 10**9)
    assert (first.calls, second.calls) == (1, 2)


def test_cumulative_keeps_emitting_idle_series() -> None:
    engine, clock = make_engine()
    engine.consume(request(resource(CHECKOUT, span())))
    engine.flush()
    clock.advance(60)
    assert only(engine.flush()).calls == 1


def test_delta_start_is_previous_flush_and_only_touched_series() -> None:
    engine, clock = make_engine(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA")
    created = clock.now_ns()
    engine.consume(request(resource(CHECKOUT, span("a"), span("b"))))
    clock.advance(60)
    t1 = clock.now_ns()
    first = series_by_labels(engine.flush())
    assert {p.start_time_unix_nano for p in first.values()} == {created}
    clock.advance(30)
    engine.consume(request(resource(CHECKOUT, span("a"), span("a"))))
    clock.advance(30)
    second = series_by_labels(engine.flush())
    (point,) = second.values()
    assert dict(point.attributes)["span.name"] == "a"
    assert (point.start_time_unix_nano, point.time_unix_nano, point.calls) == (
        t1,
        t1 + 60 * 10**9,
        2,
    )
    assert point.duration is not None and point.duration.count == 2
    clock.advance(60)
    assert engine.flush().resources == []


def test_delta_start_after_idle_intervals_is_last_emitting_flush() -> None:
    engine, clock = make_engine(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA")
    engine.consume(request(resource(CHECKOUT, span())))
    clock.advance(60)
    t1 = clock.now_ns()
    engine.flush()
    clock.advance(60)
    engine.flush()  # idle interval: nothing emitted
    engine.consume(request(resource(CHECKOUT, span())))
    clock.advance(60)
    assert only(engine.flush()).start_time_unix_nano == t1


def test_series_expiration() -> None:
    engine, clock = make_engine(series_expiration="90s")
    engine.consume(request(resource(CHECKOUT, span("old"))))
    clock.advance(60)
    engine.consume(request(resource(CHECKOUT, span("new"))))
    clock.advance(60)  # "old" idle 120 s, "new" 60 s
    names = {dict(k)["span.name"] for k in series_by_labels(engine.flush())}
    assert names == {"new"}
    assert engine.active_series == 1
    # An expired series comes back as new, with a new start time.
    engine.consume(request(resource(CHECKOUT, span("old"))))
    old = [p for k, p in series_by_labels(engine.flush()).items() if dict(k)["span.name"] == "old"]
    assert old[0].calls == 1 and old[0].start_time_unix_nano == clock.now_ns()


def test_metrics_expiration_drops_whole_resource() -> None:
    engine, clock = make_engine(metrics_expiration="90s")
    engine.consume(request(resource(CHECKOUT, span("a"), span("b"))))
    clock.advance(60)
    engine.consume(request(resource({"service.name": "cart"}, span("c"))))
    clock.advance(60)
    snapshot = engine.flush()
    assert {dict(k)["service.name"] for k in series_by_labels(snapshot)} == {"cart"}
    assert engine.active_series == 1


def test_cardinality_limit_overflow_series() -> None:
    engine, _ = make_engine(aggregation_cardinality_limit=2)
    engine.consume(request(resource(CHECKOUT, *(span(f"op{i}") for i in range(5)), span("op0"))))
    engine.consume(request(resource(CHECKOUT, span("op4"), span("op1"))))
    series = series_by_labels(engine.flush())
    overflow = series.pop((("otel.metric.overflow", "true"),))
    assert overflow.calls == 4  # op2, op3, op4, op4
    assert sorted(dict(k)["span.name"] for k in series) == ["op0", "op1"]
    assert sum(p.calls for p in series.values()) == 4  # op0 x2, op1 x2
    assert engine.counters["spans_cardinality_overflow"] == 4


def test_sampling_threshold_weights_calls_and_histogram() -> None:
    engine, _ = make_engine()
    engine.consume(
        request(
            resource(CHECKOUT, span(trace_state="ot=th:8"), span(trace_state="ot=th:c"), span())
        )
    )
    point = only(engine.flush())
    assert point.calls == 2 + 4 + 1
    assert point.duration is not None and point.duration.count == 7


def test_span_multiplier_key_from_span_or_resource() -> None:
    engine, _ = make_engine(span_multiplier_key="sampler.multiplier")
    engine.consume(
        request(
            resource(
                {**CHECKOUT, "sampler.multiplier": 10},
                span(),
                span(attributes={"sampler.multiplier": 3.0}),
            ),
            resource(
                {"service.name": "cart"},
                span(trace_state="ot=th:8", attributes={"sampler.multiplier": "x"}),
            ),
        )
    )
    calls = {dict(k)["service.name"]: p.calls for k, p in series_by_labels(engine.flush()).items()}
    assert calls == {"checkout": 13, "cart": 2}
    assert engine.counters["spans_invalid_multiplier"] == 1


def test_exemplars_bounded_per_point_and_cleared_after_flush() -> None:
    engine, _ = make_engine(exemplars={"enabled": True, "max_per_data_point": 2})
    spans = [span(duration_ms=i + 1) for i in range(5)]
    engine.consume(request(resource(CHECKOUT, *spans)))
    point = only(engine.flush())
    assert [e.span_id for e in point.exemplars] == [s.span_id for s in spans[:2]]
    assert [e.value for e in point.exemplars] == pytest.approx([1.0, 2.0])
    assert point.exemplars[0].trace_id == spans[0].trace_id
    assert only(engine.flush()).exemplars == ()


def test_events_metric() -> None:
    engine, _ = make_engine(events={"enabled": True, "dimensions": [{"name": "exception.type"}]})
    engine.consume(
        request(
            resource(
                CHECKOUT,
                span(
                    "a",
                    events=[
                        {"name": "exception", "exception.type": "IOError"},
                        {"name": "exception", "exception.type": "IOError"},
                    ],
                ),
                span("a", events=[{"name": "log"}]),
            )
        )
    )
    (resource_points,) = engine.flush().resources
    counts = {e.attributes[-1]: e.count for e in resource_points.events}
    assert counts == {("exception.type", "IOError"): 2, ("status.code", "STATUS_CODE_UNSET"): 1}


def test_many_series_and_rows_reused_after_expiry() -> None:
    engine, clock = make_engine(series_expiration="1s")
    engine.consume(request(resource(CHECKOUT, *(span(f"op{i}") for i in range(300)))))
    assert engine.active_series == 300
    clock.advance(2)
    engine.flush()
    assert engine.active_series == 0
    engine.consume(request(resource(CHECKOUT, *(span(f"x{i}") for i in range(100)))))
    snapshot = engine.flush()
    assert snapshot.series_count == 100
    assert all(
        p.calls == 1 and p.duration is not None and p.duration.count == 1
        for p in series_by_labels(snapshot).values()
    )


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_consume_record_equals_consume_with_and_without_sampling(encoding: str) -> None:
    from spanmetrics.dev.synth import encode_request

    req = request(
        resource(CHECKOUT, span("a", trace_state="ot=th:c"), span("a"), span("b", duration_ms=7)),
        resource({"service.name": "cart"}, span("c", trace_state="vendor=1")),
    )
    direct, _ = make_engine()
    direct.consume(req)
    from_bytes, _ = make_engine()
    from_bytes.consume_record(encode_request(req, encoding), encoding)  # type: ignore[arg-type]
    expected = {k: (p.calls, p.duration) for k, p in series_by_labels(direct.flush()).items()}
    got = {k: (p.calls, p.duration) for k, p in series_by_labels(from_bytes.flush()).items()}
    assert got == expected
    assert sum(calls for calls, _ in got.values()) == 4 + 1 + 1 + 1


def test_consume_record_raises_decode_error_and_aggregates_nothing() -> None:
    from spanmetrics.decode import DecodeError

    engine, _ = make_engine()
    with pytest.raises(DecodeError):
        engine.consume_record(b"\xff\xff\xff\xff", "otlp_proto")
    assert engine.counters["spans_received"] == 0
    assert engine.flush().resources == []
