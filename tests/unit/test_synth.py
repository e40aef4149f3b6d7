"""The synthetic span generator: deterministic, exact counts, realistic structure."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from spanmetrics.aggregate.sampling import adjusted_count
from spanmetrics.dev.synth import (
    DEFAULT_SERVICES,
    Call,
    Operation,
    Scope,
    ServiceProfile,
    SpanGenerator,
    encode_request,
)

RESOURCE_KEYS = {
    "service.name",
    "service.namespace",
    "service.version",
    "service.instance.id",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.deployment.name",
    "k8s.node.name",
    "host.name",
    "telemetry.sdk.language",
}


def spans_of(req: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attrs(kvs: Iterable[KeyValue]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@pytest.fixture(scope="module")
def batch() -> ExportTraceServiceRequest:
    return SpanGenerator(seed=11).batch_request(20_000)


def test_same_seed_same_bytes() -> None:
    for encoding in ("otlp_proto", "otlp_json"):
        a = SpanGenerator(seed=5, sampled_fraction=0.3).batch_request(2_000)
        b = SpanGenerator(seed=5, sampled_fraction=0.3).batch_request(2_000)
        assert encode_request(a, encoding) == encode_request(b, encoding)
    ta = SpanGenerator(seed=5).trace_requests(20)
    tb = SpanGenerator(seed=5).trace_requests(20)
    assert [(k, r.SerializeToString()) for k, r in ta] == [
        (k, r.SerializeToString()) for k, r in tb
    ]


def test_different_seeds_differ() -> None:
    a = SpanGenerator(seed=1).batch_request(100).SerializeToString()
    b = SpanGenerator(seed=2).batch_request(100).SerializeToString()
    assert a != b


def test_stream_continues_across_calls() -> None:
    gen = SpanGenerator(seed=3)
    first, second = gen.batch_request(100), gen.batch_request(100)
    assert first != second
    assert min(s.start_time_unix_nano for s in spans_of(second)) > min(
        s.start_time_unix_nano for s in spans_of(first)
    )


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1_000, 4_321])
def test_exact_span_count(n: int) -> None:
    assert len(spans_of(SpanGenerator(seed=n).batch_request(n))) == n


def test_resources_and_scopes_are_grouped(batch: ExportTraceServiceRequest) -> None:
    names = {s.name for s in DEFAULT_SERVICES}
    pods = set()
    for rs in batch.resource_spans:
        resource = attrs(rs.resource.attributes)
        assert resource.keys() >= RESOURCE_KEYS
        assert resource["service.name"] in names
        assert resource["host.name"] == resource["k8s.pod.name"]
        assert str(resource["k8s.pod.name"]).startswith(f"{resource['service.name']}-")
        pods.add(resource["k8s.pod.name"])
        scopes = [ss.scope.name for ss in rs.scope_spans]
        assert len(scopes) == len(set(scopes)), "one ScopeSpans per scope"
    assert len(pods) == len(batch.resource_spans), "one ResourceSpans per pod"
    assert len(pods) == 3 * len(DEFAULT_SERVICES)


def test_kinds_statuses_and_events_vary(batch: ExportTraceServiceRequest) -> None:
    spans = spans_of(batch)
    kinds = Counter(s.kind for s in spans)
    assert set(kinds) == {
        Span.SPAN_KIND_SERVER,
        Span.SPAN_KIND_CLIENT,
        Span.SPAN_KIND_INTERNAL,
        Span.SPAN_KIND_PRODUCER,
        Span.SPAN_KIND_CONSUMER,
    }
    statuses = Counter(s.status.code for s in spans)
    assert set(statuses) == {
        Status.STATUS_CODE_UNSET,
        Status.STATUS_CODE_OK,
        Status.STATUS_CODE_ERROR,
    }
    errors = [s for s in spans if s.status.code == Status.STATUS_CODE_ERROR]
    assert 0.001 < len(errors) / len(spans) < 0.05
    assert all(s.status.message for s in errors)
    with_events = [s for s in errors if s.events]
    assert with_events
    for span in with_events:
        (event,) = span.events
        assert event.name == "exception"
        assert {"exception.type", "exception.message"} <= attrs(event.attributes).keys()
        assert span.start_time_unix_nano <= event.time_unix_nano <= span.end_time_unix_nano
    assert not any(s.events for s in spans if s.status.code != Status.STATUS_CODE_ERROR)


def test_durations_are_positive_and_spread(batch: ExportTraceServiceRequest) -> None:
    durations = sorted(s.end_time_unix_nano - s.start_time_unix_nano for s in spans_of(batch))
    assert durations[0] > 0
    # Lognormal: a long tail, p99 well above the median.
    assert durations[len(durations) * 99 // 100] > 5 * durations[len(durations) // 2]


def test_semconv_attributes(batch: ExportTraceServiceRequest) -> None:
    spans = spans_of(batch)
    assert all(len(s.attributes) == 10 for s in spans)
    http_server = [
        attrs(s.attributes)
        for s in spans
        if s.kind == Span.SPAN_KIND_SERVER and s.name.startswith("GET /api/products/")
    ]
    assert http_server
    for a in http_server:
        assert a["http.request.method"] == "GET"
        assert a["http.route"] == "/api/products/{productId}"
        assert isinstance(a["http.response.status_code"], int)
        assert re.fullmatch(r"/api/products/[0-9A-Z]{10}", str(a["url.path"]))
    db = [attrs(s.attributes) for s in spans if s.name == "HGET"]
    assert db and all(a["db.system"] == "redis" for a in db)
    grpc = [attrs(s.attributes) for s in spans if s.name.startswith("oteldemo.")]
    assert all(a["rpc.system"] == "grpc" for a in grpc)
    consumers = [s for s in spans if s.kind == Span.SPAN_KIND_CONSUMER]
    assert all(attrs(s.attributes)["messaging.system"] == "kafka" for s in consumers)


@pytest.mark.parametrize("k", [0, 3, 10, 25])
def test_attributes_per_span(k: int) -> None:
    req = SpanGenerator(seed=1, attributes_per_span=k).batch_request(500)
    for span in spans_of(req):
        keys = [kv.key for kv in span.attributes]
        assert len(keys) == k
        assert len(set(keys)) == k


def test_error_codes_match_between_client_and_server(batch: ExportTraceServiceRequest) -> None:
    by_id = {s.span_id: s for s in spans_of(batch)}
    checked = 0
    for span in by_id.values():
        parent = by_id.get(span.parent_span_id)
        if span.kind != Span.SPAN_KIND_SERVER or parent is None:
            continue
        assert parent.kind == Span.SPAN_KIND_CLIENT
        assert parent.start_time_unix_nano < span.start_time_unix_nano
        assert span.end_time_unix_nano < parent.end_time_unix_nano
        assert parent.status.code == span.status.code
        key = "rpc.grpc.status_code" if span.name.startswith("oteldemo.") else None
        key = key or "http.response.status_code"
        assert attrs(parent.attributes)[key] == attrs(span.attributes)[key]
        assert span.flags & 0x200, "server span of a remote parent"
        checked += 1
    assert checked > 1000


def test_trace_requests() -> None:
    traces = SpanGenerator(seed=9).trace_requests(300)
    assert len(traces) == 300
    assert len({k for k, _ in traces}) == 300
    for key, req in traces:
        assert re.fullmatch(r"[0-9a-f]{32}", key)
        spans = spans_of(req)
        assert {s.trace_id.hex() for s in spans} == {key}
        ids = {s.span_id for s in spans}
        assert len(ids) == len(spans)
        roots = [s for s in spans if not s.parent_span_id]
        assert len(roots) == 1
        assert roots[0].kind == Span.SPAN_KIND_SERVER
        assert all(s.parent_span_id in ids for s in spans if s.parent_span_id)
        for span in spans:
            for link in span.links:
                assert link.trace_id == span.trace_id
                assert link.span_id == span.parent_span_id
                assert span.kind == Span.SPAN_KIND_CONSUMER


def test_checkout_trace_crosses_every_kind() -> None:
    traces = SpanGenerator(seed=2).trace_requests(400)
    checkout = [r for _, r in traces if any(s.name == "POST /api/checkout" for s in spans_of(r))]
    assert checkout
    kinds = {s.kind for s in spans_of(checkout[0])}
    assert len(kinds) == 5
    services = {attrs(rs.resource.attributes)["service.name"] for rs in checkout[0].resource_spans}
    assert {"frontend", "checkout", "payment", "shipping", "accounting"} <= services


def test_sampling_tracestate() -> None:
    assert not any(s.trace_state for s in spans_of(SpanGenerator(seed=1).batch_request(500)))
    all_sampled = spans_of(SpanGenerator(seed=1, sampled_fraction=1.0).batch_request(500))
    assert {s.trace_state for s in all_sampled} <= {"ot=th:8", "ot=th:c"}
    assert {adjusted_count(s.trace_state) for s in all_sampled} == {2.0, 4.0}
    traces = SpanGenerator(seed=1, sampled_fraction=0.5).trace_requests(400)
    sampled = 0
    for _, req in traces:
        states = {s.trace_state for s in spans_of(req)}
        assert len(states) == 1, "the whole trace shares one tracestate"
        sampled += states != {""}
    assert 150 < sampled < 250


def test_custom_catalogue() -> None:
    api = ServiceProfile(
        name="api",
        version="1",
        language="python",
        scope=Scope("opentelemetry.instrumentation.flask", "0.48b0"),
        operations=(Operation("GET /ping", Span.SPAN_KIND_SERVER, "http", 1.0, root_weight=1.0),),
    )
    req = SpanGenerator(seed=0, services=(api,), pods_per_service=1).batch_request(10)
    assert {s.name for s in spans_of(req)} == {"GET /ping"}
    assert len(req.resource_spans) == 1


@pytest.mark.parametrize(
    ("services", "message"),
    [
        (
            (
                ServiceProfile(
                    "a",
                    "1",
                    "go",
                    (
                        Operation(
                            "x",
                            Span.SPAN_KIND_SERVER,
                            "http",
                            1.0,
                            root_weight=1,
                            calls=(Call("b", "nope"),),
                        ),
                    ),
                    Scope("s", "1"),
                ),
            ),
            "no such operation",
        ),
        (
            (
                ServiceProfile(
                    "a",
                    "1",
                    "go",
                    (
                        Operation(
                            "x",
                            Span.SPAN_KIND_INTERNAL,
                            "internal",
                            1.0,
                            root_weight=1,
                            calls=(Call("a", "y"),),
                        ),
                        Operation(
                            "y",
                            Span.SPAN_KIND_INTERNAL,
                            "internal",
                            1.0,
                            calls=(Call("a", "x"),),
                        ),
                    ),
                    Scope("s", "1"),
                ),
            ),
            "call cycle",
        ),
        (
            (
                ServiceProfile(
                    "a",
                    "1",
                    "go",
                    (Operation("x", Span.SPAN_KIND_SERVER, "http", 1.0),),
                    Scope("s", "1"),
                ),
            ),
            "root_weight",
        ),
    ],
)
def test_bad_catalogue(services: tuple[ServiceProfile, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpanGenerator(services=services)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SpanGenerator(pods_per_service=0)
    with pytest.raises(ValueError):
        SpanGenerator(sampled_fraction=1.5)
    with pytest.raises(ValueError):
        SpanGenerator().batch_request(-1)
    with pytest.raises(ValueError):
        encode_request(ExportTraceServiceRequest(), "avro")
