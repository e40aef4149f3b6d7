"""Snapshots to OTLP ExportMetricsServiceRequest, as the Collector's Kafka receiver reads them."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
)

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.config.load import parse_topology
from spanmetrics.decode import decode_metrics
from spanmetrics.export.otlp import encode_metrics, snapshot_to_request
from tests.builders import ERROR, request, resource, span
from tests.clock import FakeClock

POD = {"service.name": "checkout", "k8s.pod.name": "checkout-1"}


def export(**spanmetrics: Any) -> ExportMetricsServiceRequest:
    engine = SpanMetricsEngine(
        parse_topology({"spanmetrics": spanmetrics}).spanmetrics, FakeClock()
    )
    engine.consume(
        request(
            resource(
                POD,
                span("a", duration_ms=2),
                span("a", duration_ms=8, status=ERROR),
                span("a", duration_ms=0),
            )
        )
    )
    return snapshot_to_request(engine.flush())


def test_cumulative_request_shape() -> None:
    out = export()
    (rm,) = out.resource_metrics
    assert {kv.key: kv.value.string_value for kv in rm.resource.attributes} == POD
    (sm,) = rm.scope_metrics
    assert sm.scope.name == "spanmetrics"
    calls, duration = sm.metrics
    assert calls.name == "traces.span.metrics.calls"
    assert calls.sum.is_monotonic
    assert calls.sum.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    assert sorted(p.as_int for p in calls.sum.data_points) == [1, 2]
    assert duration.name == "traces.span.metrics.duration" and duration.unit == "ms"
    eh = duration.exponential_histogram
    assert eh.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    ok_point = next(p for p in eh.data_points if p.count == 2)
    assert ok_point.zero_count == 1
    assert ok_point.min == 0.0 and ok_point.max == pytest.approx(2.0)
    assert sum(ok_point.positive.bucket_counts) + ok_point.zero_count == ok_point.count
    assert ok_point.scale == 20 and ok_point.start_time_unix_nano < ok_point.time_unix_nano + 1


def test_delta_and_explicit() -> None:
    out = export(
        aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA", histogram={"explicit": {}}
    )
    calls, duration = out.resource_metrics[0].scope_metrics[0].metrics
    assert calls.sum.aggregation_temporality == AGGREGATION_TEMPORALITY_DELTA
    h = duration.histogram
    assert h.aggregation_temporality == AGGREGATION_TEMPORALITY_DELTA
    point = next(p for p in h.data_points if p.count == 2)
    assert list(point.explicit_bounds)[:3] == [2.0, 4.0, 6.0]
    assert list(point.bucket_counts)[:2] == [2, 0] and len(point.bucket_counts) == 17


def test_exemplars_in_output() -> None:
    out = export(exemplars={"enabled": True})
    eh = out.resource_metrics[0].scope_metrics[0].metrics[1].exponential_histogram
    exemplars = [e for p in eh.data_points for e in p.exemplars]
    assert len(exemplars) == 3
    assert all(len(e.trace_id) == 16 and len(e.span_id) == 8 for e in exemplars)


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_encodings_round_trip(encoding: str) -> None:
    out = export(exemplars={"enabled": True})
    assert decode_metrics(encode_metrics(out, encoding), encoding) == out  # type: ignore[arg-type]


def test_json_uses_hex_ids_and_camel_case() -> None:
    text = encode_metrics(export(exemplars={"enabled": True}), "otlp_json").decode()
    assert '"resourceMetrics"' in text and '"exponentialHistogram"' in text
    assert '"traceId":"' + "00" * 8 in text  # hex, not base64


def test_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'xml'"):
        encode_metrics(ExportMetricsServiceRequest(), "xml")
