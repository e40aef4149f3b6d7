"""Metric snapshots to OTLP ``ExportMetricsServiceRequest``, as the Collector's Kafka
receiver reads them from ``otlp_metrics``."""

from __future__ import annotations

import math
from collections.abc import Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
)

from spanmetrics import __version__
from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import Attributes, Exemplar, MetricsSnapshot, SeriesPoint
from spanmetrics.model.enums import Temporality
from spanmetrics.otlpjson import message_to_otlp_json

#: Instrumentation scope of everything we emit.
SCOPE_NAME = "spanmetrics"

_TEMPORALITY = {
    Temporality.CUMULATIVE: AGGREGATION_TEMPORALITY_CUMULATIVE,
    Temporality.DELTA: AGGREGATION_TEMPORALITY_DELTA,
}


def _set_attributes(target: Iterable[KeyValue], attributes: Attributes) -> None:
    add = target.add  # type: ignore[attr-defined]
    for key, value in attributes:
        kv = add()
        kv.key = key
        kv.value.string_value = value


def _set_exemplars(
    point: ExponentialHistogramDataPoint | HistogramDataPoint, exemplars: tuple[Exemplar, ...]
) -> None:
    for exemplar in exemplars:
        out = point.exemplars.add()
        out.trace_id = exemplar.trace_id
        out.span_id = exemplar.span_id
        out.as_double = exemplar.value
        out.time_unix_nano = exemplar.time_unix_nano


def _set_min_max(
    point: ExponentialHistogramDataPoint | HistogramDataPoint,
    hist: ExpoHistogram | ExplicitHistogram,
) -> None:
    # min and max are optional in OTLP: left out when empty, and when unknown (NaN), as in
    # a delta made by subtracting two cumulative states.
    if hist.count and not (math.isnan(hist.min) or math.isnan(hist.max)):
        point.min = hist.min
        point.max = hist.max


def _fill_exponential(point: ExponentialHistogramDataPoint, hist: ExpoHistogram) -> None:
    point.count = hist.count
    point.sum = hist.sum
    point.scale = hist.scale
    point.zero_count = hist.zero_count
    _set_min_max(point, hist)
    if hist.counts:
        point.positive.offset = hist.offset
        point.positive.bucket_counts.extend(hist.counts)


def _fill_explicit(point: HistogramDataPoint, hist: ExplicitHistogram) -> None:
    point.count = hist.count
    point.sum = hist.sum
    _set_min_max(point, hist)
    point.explicit_bounds.extend(hist.bounds)
    point.bucket_counts.extend(hist.counts)


def snapshot_to_request(snapshot: MetricsSnapshot) -> ExportMetricsServiceRequest:
    """One ResourceMetrics per resource, one scope, and the calls, duration and events
    metrics of that resource's series."""
    request = ExportMetricsServiceRequest()
    temporality = _TEMPORALITY[snapshot.temporality]
    names = snapshot.names
    for resource_points in snapshot.resources:
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.CopyFrom(resource_points.resource)
        scope_metrics = resource_metrics.scope_metrics.add()
        scope_metrics.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=__version__))
        if resource_points.series:
            _add_sum(
                scope_metrics.metrics.add(name=names.calls),
                temporality,
                (
                    (p.attributes, p.start_time_unix_nano, p.time_unix_nano, p.calls)
                    for p in resource_points.series
                ),
            )
            if any(series.duration is not None for series in resource_points.series):
                duration = scope_metrics.metrics.add(name=names.duration, unit=names.unit)
                _add_durations(duration, resource_points.series, temporality)
        if resource_points.events:
            _add_sum(
                scope_metrics.metrics.add(name=names.events),
                temporality,
                (
                    (e.attributes, e.start_time_unix_nano, e.time_unix_nano, e.count)
                    for e in resource_points.events
                ),
            )
    return request


def _add_sum(
    metric: Metric, temporality: int, points: Iterable[tuple[Attributes, int, int, int]]
) -> None:
    """A monotonic int sum (calls, events) with one point per series."""
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.sum.is_monotonic = True
    for attributes, start, end, value in points:
        point = metric.sum.data_points.add()
        _set_attributes(point.attributes, attributes)
        point.start_time_unix_nano = start
        point.time_unix_nano = end
        point.as_int = value


def _add_durations(metric: Metric, series_points: Iterable[SeriesPoint], temporality: int) -> None:
    for series in series_points:
        hist = series.duration
        point: ExponentialHistogramDataPoint | HistogramDataPoint
        if isinstance(hist, ExpoHistogram):
            metric.exponential_histogram.aggregation_temporality = temporality  # type: ignore[assignment]
            point = metric.exponential_histogram.data_points.add()
            _fill_exponential(point, hist)
        elif isinstance(hist, ExplicitHistogram):
            metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
            point = metric.histogram.data_points.add()
            _fill_explicit(point, hist)
        else:
            continue
        _set_attributes(point.attributes, series.attributes)
        point.start_time_unix_nano = series.start_time_unix_nano
        point.time_unix_nano = series.time_unix_nano
        _set_exemplars(point, series.exemplars)


def encode_metrics(request: ExportMetricsServiceRequest, encoding: str) -> bytes:
    """A Kafka record value in ``otlp_proto`` or ``otlp_json``."""
    if encoding == "otlp_proto":
        return request.SerializeToString()
    if encoding == "otlp_json":
        return message_to_otlp_json(request)
    raise ValueError(f"unknown encoding {encoding!r}, expected 'otlp_proto' or 'otlp_json'")
