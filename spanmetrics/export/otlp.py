"""Metric snapshots to OTLP ``ExportMetricsServiceRequest``, as the Collector's Kafka
receiver reads them from ``otlp_metrics``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

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
from spanmetrics.aggregate.points import (
    Attributes,
    EventsPoint,
    Exemplar,
    MetricNames,
    MetricsSnapshot,
    ResourcePoints,
    SeriesPoint,
    metric_of,
)
from spanmetrics.aggregate.projection import project
from spanmetrics.model.attributes import any_value_to_str
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
        rp = project(resource_points, names.split)
        _fill_resource(request.resource_metrics.add(), rp, names, temporality)
    return request


def snapshot_to_requests(
    snapshot: MetricsSnapshot, max_bytes: int
) -> list[ExportMetricsServiceRequest]:
    """:func:`snapshot_to_request` as requests of at most ``max_bytes`` serialized bytes.

    Built straight from the snapshot, with no copy: resources whole where they fit, and a
    resource too large for one request split by series, each part repeating the resource.

    Raises:
        ValueError: a single series (with its resource) exceeds ``max_bytes``.
    """
    temporality = _TEMPORALITY[snapshot.temporality]
    names = snapshot.names
    out: list[ExportMetricsServiceRequest] = []
    request = ExportMetricsServiceRequest()
    size = 0
    for resource_points in snapshot.resources:
        # Summed to each metric's labels before splitting: a summed point is in one part.
        rp = project(resource_points, names.split)
        rm = request.resource_metrics.add()
        _fill_resource(rm, rp, names, temporality)
        rm_size = _field_size(rm.ByteSize())
        if size + rm_size <= max_bytes:
            size += rm_size
            continue
        del request.resource_metrics[-1]
        if size:
            out.append(request)
            request, size = ExportMetricsServiceRequest(), 0
        if rm_size <= max_bytes:
            _fill_resource(request.resource_metrics.add(), rp, names, temporality)
            size = rm_size
            continue
        out += _resource_in_parts(rp, names, temporality, max_bytes, rm_size)
    if size:
        out.append(request)
    return out


def _resource_in_parts(
    rp: ResourcePoints, names: MetricNames, temporality: int, max_bytes: int, size: int
) -> list[ExportMetricsServiceRequest]:
    """One resource's series over as many requests as needed (``size``: all of it)."""
    items = len(rp.series) + len(rp.events)
    per_request = max(1, int(items * max_bytes * 0.9 / size))
    out: list[ExportMetricsServiceRequest] = []
    series, events = list(rp.series), list(rp.events)
    while series or events:
        n = per_request
        while True:
            part = ResourcePoints(rp.resource, series[:n], events[: max(0, n - len(series))])
            request = ExportMetricsServiceRequest()
            _fill_resource(request.resource_metrics.add(), part, names, temporality)
            if request.ByteSize() <= max_bytes:
                break
            if n == 1:
                raise ValueError(f"one series needs more than {max_bytes} bytes")
            n = max(1, n // 2)
        out.append(request)
        taken_events = len(part.events)
        series, events = series[len(part.series) :], events[taken_events:]
    return out


def _fill_resource(rm: Any, rp: ResourcePoints, names: MetricNames, temporality: int) -> None:
    if names.copy_resource:
        rm.resource.CopyFrom(rp.resource)
    scope_metrics = rm.scope_metrics.add()
    scope_metrics.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=__version__))
    derived: dict[str, list[SeriesPoint]] = {}
    span_series: list[SeriesPoint] = []
    for p in rp.series:
        metric = metric_of(p.attributes)
        if metric is None:
            span_series.append(p)
        else:
            derived.setdefault(metric, []).append(replace(p, attributes=p.attributes[1:]))
    summaries = dict(names.summaries)
    chosen = {
        k: _TEMPORALITY[Temporality.DELTA if v == "delta" else Temporality.CUMULATIVE]
        for k, v in names.temporalities
    }
    for metric, points in derived.items():
        out = scope_metrics.metrics.add(name=metric)
        if metric in summaries:
            _add_summary(out, points, names.unit, summaries[metric])
        else:
            _add_derived(out, points, names.unit, chosen.get(metric, temporality))
    calls = [p for p in span_series if p.role != "duration"]
    if calls:
        _add_sum(
            scope_metrics.metrics.add(name=names.calls),
            temporality,
            ((p.attributes, p.start_time_unix_nano, p.time_unix_nano, p.calls) for p in calls),
        )
    durations = [p for p in span_series if p.role != "calls" and p.duration is not None]
    if durations:
        duration = scope_metrics.metrics.add(name=names.duration, unit=names.unit)
        _add_durations(duration, durations, temporality)
    if rp.events:
        _add_sum(
            scope_metrics.metrics.add(name=names.events),
            temporality,
            ((e.attributes, e.start_time_unix_nano, e.time_unix_nano, e.count) for e in rp.events),
        )


def _add_derived(metric: Metric, points: list[SeriesPoint], unit: str, temporality: int) -> None:
    """A derived metric (``derive``): a histogram when its points carry one, else a sum of
    their counts."""
    if points[0].duration is None:
        _add_sum(metric, temporality,
                 ((p.attributes, p.start_time_unix_nano, p.time_unix_nano, p.calls)
                  for p in points))  # fmt: skip
    else:
        metric.unit = unit
        _add_durations(metric, points, temporality)


def _add_summary(
    metric: Metric, points: list[SeriesPoint], unit: str, quantiles: tuple[float, ...]
) -> None:
    """A view's legacy summary: count, sum, and quantiles from the exponential histogram,
    with min and max as the quantiles 0 and 1 (as the OTLP summary spells them)."""
    metric.unit = unit
    for series in points:
        hist = series.duration
        point = metric.summary.data_points.add()
        _set_attributes(point.attributes, series.attributes)
        point.start_time_unix_nano = series.start_time_unix_nano
        point.time_unix_nano = series.time_unix_nano
        if not isinstance(hist, ExpoHistogram):
            continue
        point.count = hist.count
        point.sum = hist.sum
        if not hist.count:
            continue
        for q in sorted({0.0, *quantiles, 1.0}):
            point.quantile_values.add(quantile=q, value=hist.quantile(q))


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


def split_request(
    request: ExportMetricsServiceRequest, max_bytes: int
) -> list[ExportMetricsServiceRequest]:
    """``request`` as requests of at most ``max_bytes`` serialized bytes each.

    Resources are kept whole where they fit; a resource too large for one request is
    split by data points, each part repeating the resource and scope. Every data point
    goes to exactly one request.

    Raises:
        ValueError: a single data point (with its resource) exceeds ``max_bytes``.
    """
    if request.ByteSize() <= max_bytes:
        return [request]
    out: list[ExportMetricsServiceRequest] = []
    current = ExportMetricsServiceRequest()
    size = 0
    for rm in request.resource_metrics:
        rm_size = _field_size(rm.ByteSize())
        if rm_size > max_bytes:
            if size:
                out.append(current)
                current, size = ExportMetricsServiceRequest(), 0
            out.extend(_split_resource(rm, max_bytes))
            continue
        if size + rm_size > max_bytes:
            out.append(current)
            current, size = ExportMetricsServiceRequest(), 0
        current.resource_metrics.add().CopyFrom(rm)
        size += rm_size
    if size:
        out.append(current)
    return out


def _field_size(n: int) -> int:
    """Bytes of a length-delimited field of ``n`` bytes: tag, length varint, payload."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


_DATA_KINDS = ("sum", "gauge", "histogram", "exponential_histogram")


def _split_resource(rm: Any, max_bytes: int) -> list[ExportMetricsServiceRequest]:
    """One resource's data points over as many requests as needed."""
    out: list[ExportMetricsServiceRequest] = []
    resource_size = _field_size(rm.resource.ByteSize()) + 16  # + framing of the wrappers
    part: Any = None  # the ResourceMetrics being filled
    size = 0
    for sm in rm.scope_metrics:
        scope_size = _field_size(sm.scope.ByteSize())
        target: Any = None  # its ScopeMetrics for ``sm``
        for metric in sm.metrics:
            kind = metric.WhichOneof("data")
            if kind not in _DATA_KINDS:
                continue
            source = getattr(metric, kind)
            metric_size = _field_size(len(metric.name) + len(metric.unit) + 16)
            copy: Any = None  # its Metric for ``metric``
            for point in source.data_points:
                point_size = _field_size(point.ByteSize())
                if part is not None and size + point_size > max_bytes:
                    part = None
                if part is None:
                    request = ExportMetricsServiceRequest()
                    out.append(request)
                    part = request.resource_metrics.add()
                    part.resource.CopyFrom(rm.resource)
                    size, target, copy = resource_size, None, None
                if target is None:
                    target = part.scope_metrics.add()
                    target.scope.CopyFrom(sm.scope)
                    size += scope_size
                if copy is None:
                    copy = target.metrics.add(
                        name=metric.name, description=metric.description, unit=metric.unit
                    )
                    data = getattr(copy, kind)
                    if kind != "gauge":
                        data.aggregation_temporality = source.aggregation_temporality
                    if kind == "sum":
                        data.is_monotonic = source.is_monotonic
                    size += metric_size
                if size + point_size > max_bytes:
                    raise ValueError(f"one data point needs {size + point_size} bytes")
                getattr(copy, kind).data_points.add().CopyFrom(point)
                size += point_size
    return out


def encode_records(
    request: ExportMetricsServiceRequest, encoding: str, max_bytes: int
) -> list[bytes]:
    """``request`` as Kafka record values of at most ``max_bytes`` each, in ``encoding``.

    Raises:
        ValueError: unknown encoding, or a single data point too large for ``max_bytes``.
    """
    if encoding == "otlp_proto":
        return [r.SerializeToString() for r in split_request(request, max_bytes)]
    payload = encode_metrics(request, encoding)
    if len(payload) <= max_bytes:
        return [payload]
    # JSON is larger than protobuf by a ratio that depends on the content: split by the
    # protobuf size scaled by the ratio seen, and again where a part still does not fit.
    proto_size = request.ByteSize()
    budget = max(1, int(max_bytes * proto_size / len(payload) * 0.9))
    parts = split_request(request, budget)
    if len(parts) == 1:
        raise ValueError(f"one data point needs more than {max_bytes} bytes in {encoding}")
    return [record for part in parts for record in encode_records(part, encoding, max_bytes)]


def request_to_snapshot(
    request: ExportMetricsServiceRequest, names: MetricNames, max_size: int
) -> MetricsSnapshot:
    """Read back what :func:`snapshot_to_request` writes (our metrics, by ``names``).

    A series' calls and duration points are joined by their attributes; other metrics are
    ignored. The temporality is that of the first sum found (cumulative when none).
    """
    temporality: Temporality | None = None
    out: list[ResourcePoints] = []
    for rm in request.resource_metrics:
        series: dict[Attributes, list[Any]] = {}
        events: list[EventsPoint] = []
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name in (names.calls, names.events) and metric.HasField("sum"):
                    if temporality is None:
                        temporality = _FROM_OTLP.get(
                            metric.sum.aggregation_temporality, Temporality.CUMULATIVE
                        )
                    for p in metric.sum.data_points:
                        labels = _labels(p.attributes)
                        if metric.name == names.events:
                            events.append(
                                EventsPoint(
                                    labels, p.start_time_unix_nano, p.time_unix_nano, p.as_int
                                )
                            )
                        else:
                            entry = series.setdefault(labels, [0, 0, 0, None, ()])
                            entry[0:3] = [p.start_time_unix_nano, p.time_unix_nano, p.as_int]
                elif metric.name == names.duration:
                    for ep in metric.exponential_histogram.data_points:
                        entry = series.setdefault(_labels(ep.attributes), [0, 0, 0, None, ()])
                        entry[3] = _expo_from_point(ep, max_size)
                        entry[4] = _exemplars_of(ep)
                    for hp in metric.histogram.data_points:
                        entry = series.setdefault(_labels(hp.attributes), [0, 0, 0, None, ()])
                        entry[3] = _explicit_from_point(hp)
                        entry[4] = _exemplars_of(hp)
        points = ResourcePoints(rm.resource)
        points.series = [
            SeriesPoint(labels, start, end, calls, hist, exemplars)
            for labels, (start, end, calls, hist, exemplars) in series.items()
        ]
        points.events = events
        out.append(points)
    return MetricsSnapshot(
        names, temporality or Temporality.CUMULATIVE, 0, [r for r in out if r.series or r.events]
    )


_FROM_OTLP = {value: key for key, value in _TEMPORALITY.items()}


def _labels(attributes: Iterable[KeyValue]) -> Attributes:
    return tuple((kv.key, any_value_to_str(kv.value)) for kv in attributes)


def _exemplars_of(
    point: ExponentialHistogramDataPoint | HistogramDataPoint,
) -> tuple[Exemplar, ...]:
    return tuple(
        Exemplar(e.trace_id, e.span_id, e.as_double, e.time_unix_nano) for e in point.exemplars
    )


def _expo_from_point(point: ExponentialHistogramDataPoint, max_size: int) -> ExpoHistogram:
    known = point.count > 0
    return ExpoHistogram(
        max_size=max_size,
        scale=point.scale,
        zero_count=point.zero_count,
        count=point.count,
        sum=point.sum,
        min=point.min if point.HasField("min") else (math.nan if known else math.inf),
        max=point.max if point.HasField("max") else (math.nan if known else -math.inf),
        offset=point.positive.offset if point.positive.bucket_counts else 0,
        counts=list(point.positive.bucket_counts),
    )


def _explicit_from_point(point: HistogramDataPoint) -> ExplicitHistogram:
    known = point.count > 0
    return ExplicitHistogram(
        bounds=tuple(point.explicit_bounds),
        counts=list(point.bucket_counts),
        count=point.count,
        sum=point.sum,
        min=point.min if point.HasField("min") else (math.nan if known else math.inf),
        max=point.max if point.HasField("max") else (math.nan if known else -math.inf),
    )
