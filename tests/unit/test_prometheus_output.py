"""Prometheus conversion and exposition: names, labels, merging, formats, negotiation."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.export.prometheus import (
    PrometheusConverter,
    negotiate,
    render_protobuf,
    render_text,
)
from spanmetrics.export.prometheus.native import bucket_counts
from spanmetrics.export.prometheus.proto import metrics_pb2
from tests.builders import ERROR, SERVER, request, resource, span
from tests.clock import FakeClock

PODS = [{"service.name": "cart", "k8s.pod.name": f"cart-{i}"} for i in range(2)]


def otlp(temporality: str = "AGGREGATION_TEMPORALITY_CUMULATIVE", unit: str = "ms"):  # type: ignore[no-untyped-def]
    config = parse_topology(
        {"spanmetrics": {"aggregation_temporality": temporality, "histogram": {"unit": unit}}}
    ).spanmetrics
    engine = SpanMetricsEngine(config, FakeClock())
    for i, pod in enumerate(PODS):
        engine.consume(
            request(resource(pod, span("GET /", SERVER, duration_ms=3.0 + i),
                             span("GET /", SERVER, ERROR, duration_ms=700.0)))
        )  # fmt: skip
    return snapshot_to_request(engine.flush())


def by_name(series):  # type: ignore[no-untyped-def]
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for s in series:
        out.setdefault(s.name, []).append(s)
    return out


def test_otel_names_labels_and_merge_of_pods_without_instance_id() -> None:
    series = PrometheusConverter("traces.span.metrics", "ms", "otel", "native").convert(otlp(), 5)
    names = by_name(series)
    assert set(names) == {
        "target_info", "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_milliseconds",
    }  # fmt: skip
    calls = {
        dict(s.labels)["status_code"]: s.value for s in names["traces_span_metrics_calls_total"]
    }
    # The two pods have no service.instance.id: one series each, summed over both pods.
    assert calls == {"STATUS_CODE_UNSET": 2.0, "STATUS_CODE_ERROR": 2.0}
    labels = dict(names["traces_span_metrics_calls_total"][0].labels)
    assert {"job": "cart", "instance": "", "service_name": "cart", "span_name": "GET /",
            "span_kind": "SPAN_KIND_SERVER"}.items() <= labels.items()  # fmt: skip
    assert not any("worker" in k or "host" in k for k in labels)
    info = names["target_info"]
    assert {dict(s.labels)["k8s_pod_name"] for s in info} == {"cart-0", "cart-1"}
    (ok,) = [
        s for s in names["traces_span_metrics_duration_milliseconds"]
        if dict(s.labels)["status_code"] == "STATUS_CODE_UNSET"
    ]  # fmt: skip
    assert ok.native is not None and ok.native.count == 2 and ok.timestamp_ms == 5


def test_tempo_names_and_seconds() -> None:
    series = PrometheusConverter("traces.span.metrics", "s", "tempo", "native").convert(
        otlp(unit="s"), 0
    )
    names = by_name(series)
    assert "traces_spanmetrics_latency" in names and "traces_spanmetrics_calls_total" in names
    assert "service" in dict(names["traces_spanmetrics_calls_total"][0].labels)


def test_delta_is_refused_with_the_metric_name() -> None:
    converter = PrometheusConverter("traces.span.metrics", "ms", "otel", "native")
    with pytest.raises(ValueError, match=r"traces\.span\.metrics\.calls"):
        converter.convert(otlp("AGGREGATION_TEMPORALITY_DELTA"), 0)


def test_text_format_reads_back_with_classic_buckets() -> None:
    series = PrometheusConverter("traces.span.metrics", "ms", "otel", "native").convert(otlp(), 0)
    families = {f.name: f for f in text_string_to_metric_families(render_text(series).decode())}
    hist = families["traces_span_metrics_duration_milliseconds"]
    assert hist.type == "histogram"
    buckets = {
        (s.labels["status_code"], float(s.labels["le"])): s.value
        for s in hist.samples if s.name.endswith("_bucket")
    }  # fmt: skip
    assert buckets[("STATUS_CODE_UNSET", 4.0)] == 2  # 3 ms and 4 ms are <= 4
    assert buckets[("STATUS_CODE_UNSET", 2.0)] == 0
    assert buckets[("STATUS_CODE_ERROR", 512.0)] == 0
    assert buckets[("STATUS_CODE_ERROR", 1024.0)] == 2
    assert buckets[("STATUS_CODE_ERROR", float("inf"))] == 2
    calls = families["traces_span_metrics_calls"]
    assert {s.labels["instance"] for s in calls.samples} == {""}


def test_protobuf_exposition_carries_native_histograms() -> None:
    series = PrometheusConverter("traces.span.metrics", "ms", "otel", "native").convert(otlp(), 0)
    data = render_protobuf(series)
    families = []
    pos = 0
    while pos < len(data):
        length, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        families.append(metrics_pb2.MetricFamily.FromString(data[pos : pos + length]))
        pos += length
    (hist,) = [f for f in families if f.name == "traces_span_metrics_duration_milliseconds"]
    assert hist.type == metrics_pb2.HISTOGRAM
    for metric in hist.metric:
        h = metric.histogram
        spans = [(s.offset, s.length) for s in h.positive_span]
        assert sum(bucket_counts(spans, list(h.positive_delta)).values()) == h.sample_count == 2
        assert h.bucket  # classic buckets too


@pytest.mark.parametrize(
    ("accept", "protobuf"),
    [
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
         "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2", True),
        ("text/plain;version=0.0.4;q=1,*/*;q=0.1", False),
        (None, False),
        ("application/vnd.google.protobuf;proto=other.Message;encoding=delimited", False),
    ],
)  # fmt: skip
def test_negotiation(accept: str | None, protobuf: bool) -> None:
    content_type, render = negotiate(accept)
    assert (render is render_protobuf) == protobuf
    assert ("protobuf" in content_type) == protobuf


def test_tempo_profile_requires_seconds() -> None:
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.prometheus_remote_write\.naming"):
        parse_topology(
            {"sinks": [{"prometheus_remote_write": {"endpoint": "http://p/api/v1/write",
                                                    "naming": "tempo"}}]}
        )  # fmt: skip
