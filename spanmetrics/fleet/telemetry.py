"""The worker's own metrics, as OTLP, published through the same sinks as span metrics.

Counters are cumulative since the worker started; gauges are read at each flush. Counter
names with a dot carry a reason: ``spans_dropped.missing_service_name`` becomes
``spanmetrics.worker.spans_dropped{reason="missing_service_name"}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

from spanmetrics import __version__

PREFIX = "spanmetrics.worker."


def _label(target: object, key: str, value: str) -> None:
    kv: KeyValue = target.add()  # type: ignore[attr-defined]
    kv.key = key
    kv.value.string_value = value


def telemetry_request(
    worker_id: str,
    counters: Mapping[str, int],
    gauges: Mapping[str, float],
    partition_gauges: Mapping[str, Mapping[int, float]],
    start_ns: int,
    now_ns: int,
) -> ExportMetricsServiceRequest:
    """One ResourceMetrics for this worker (``service.name=spanmetrics``)."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    _label(rm.resource.attributes, "service.name", "spanmetrics")
    _label(rm.resource.attributes, "service.instance.id", worker_id)
    sm = rm.scope_metrics.add()
    sm.scope.name = "spanmetrics.worker"
    sm.scope.version = __version__
    by_name: dict[str, list[tuple[str | None, int]]] = {}
    for name, total in sorted(counters.items()):
        base, _, why = name.partition(".")
        by_name.setdefault(base, []).append((why or None, total))
    for base, values in by_name.items():
        metric = sm.metrics.add(name=PREFIX + base)
        metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.is_monotonic = True
        for reason, count in values:
            sum_point = metric.sum.data_points.add(
                start_time_unix_nano=start_ns, time_unix_nano=now_ns, as_int=count
            )
            if reason:
                _label(sum_point.attributes, "reason", reason)
    for name, gauge_value in sorted(gauges.items()):
        metric = sm.metrics.add(name=PREFIX + name)
        metric.gauge.data_points.add(time_unix_nano=now_ns, as_double=gauge_value)
    for name, per_partition in sorted(partition_gauges.items()):
        metric = sm.metrics.add(name=PREFIX + name)
        for partition, reading in sorted(per_partition.items()):
            gauge_point = metric.gauge.data_points.add(time_unix_nano=now_ns, as_double=reading)
            _label(gauge_point.attributes, "partition", str(partition))
    return request
