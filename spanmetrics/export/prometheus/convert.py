"""OTLP metrics to Prometheus series, as the OpenTelemetry compatibility spec translates them.

- Each resource gives every one of its series ``job`` (``service.namespace/service.name``)
  and ``instance`` (``service.instance.id``) labels, and one ``target_info`` series with its
  other attributes. Nothing names the worker that did the aggregating, so a series is the
  same whichever worker publishes it.
- Point attributes become labels (``service.name`` -> ``service_name``).
- The span metrics get the names of the chosen profile (:mod:`.names`); other metrics
  (the worker's own) the generic translation: monotonic sums end in ``_total``.
- Series that end up with the same name and labels (resources that differ only in
  attributes that are not labels) are merged, never emitted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

from spanmetrics.config.model import PrometheusHistograms
from spanmetrics.export.prometheus import native
from spanmetrics.export.prometheus.names import (
    NamingProfile,
    SpanMetricNames,
    label_name,
    metric_name_with_unit,
)
from spanmetrics.export.prometheus.series import Kind, Labels, PromExemplar, Series
from spanmetrics.model.attributes import any_value_to_str, format_double

#: Resource attributes that become ``job`` and ``instance`` instead of ``target_info`` labels.
_IDENTITY_KEYS = frozenset({"service.name", "service.namespace", "service.instance.id"})


class PrometheusConverter:
    """Converts cumulative OTLP requests to :class:`Series` for one sink."""

    def __init__(
        self, namespace: str, unit: str, naming: NamingProfile, histogram: PrometheusHistograms
    ) -> None:
        self.names = SpanMetricNames.of(naming, namespace, unit)
        self.histogram = histogram
        self._unit = unit
        self._classic_bounds = native.classic_bounds(unit)
        prefix = f"{namespace}." if namespace else ""
        self._span_metrics = {
            f"{prefix}calls": self.names.calls,
            f"{prefix}duration": self.names.duration,
            f"{prefix}events": self.names.events,
        }

    def convert(
        self,
        request: ExportMetricsServiceRequest,
        timestamp_ms: int,
        new_after_ns: int | None = None,
    ) -> list[Series]:
        """Every series of ``request`` at ``timestamp_ms``, merged by name and labels.

        With ``new_after_ns``, a counter or histogram whose points all start after it is
        marked :attr:`Series.new`: the sink has never written it.

        Raises:
            ValueError: a metric is not cumulative (Prometheus series are cumulative).
        """
        out: dict[tuple[str, Labels], Series] = {}
        for rm in request.resource_metrics:
            resource = {kv.key: any_value_to_str(kv.value) for kv in rm.resource.attributes}
            identity = _job_instance(resource)
            info_labels = _sorted(
                [*identity, *((label_name(k), v) for k, v in resource.items()
                              if k not in _IDENTITY_KEYS)]
            )  # fmt: skip
            _add(out, Series("target_info", "gauge", info_labels, timestamp_ms, value=1.0))
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for series in self._metric(metric, identity, timestamp_ms):
                        if new_after_ns is not None and series.kind != "gauge":
                            series.new = series.start_ns > new_after_ns
                        _add(out, series)
        return list(out.values())

    def _labels(self, identity: Labels, attributes: Iterable[Any], span_metric: bool) -> Labels:
        pairs = dict(identity)
        for kv in attributes:
            key = label_name(kv.key)
            if span_metric and key == "service_name":
                key = self.names.service_label
            pairs[key] = any_value_to_str(kv.value)
        return _sorted(pairs.items())

    def _metric(self, metric: Any, identity: Labels, ts: int) -> Iterable[Series]:
        span_name = self._span_metrics.get(metric.name)
        field = metric.WhichOneof("data")
        if field == "sum":
            _require_cumulative(metric, metric.sum.aggregation_temporality)
            if span_name:
                name = span_name
            else:
                name = metric_name_with_unit(metric.name, metric.unit)
                if metric.sum.is_monotonic and not name.endswith("_total"):
                    name += "_total"
            kind: Kind = "counter" if metric.sum.is_monotonic else "gauge"
            for p in metric.sum.data_points:
                value = float(p.as_int) if p.HasField("as_int") else p.as_double
                labels = self._labels(identity, p.attributes, bool(span_name))
                yield Series(name, kind, labels, ts, value=value, start_ns=p.start_time_unix_nano)
        elif field == "gauge":
            name = span_name or metric_name_with_unit(metric.name, metric.unit)
            for p in metric.gauge.data_points:
                value = float(p.as_int) if p.HasField("as_int") else p.as_double
                yield Series(name, "gauge", self._labels(identity, p.attributes, False), ts, value)
        elif field == "exponential_histogram":
            _require_cumulative(metric, metric.exponential_histogram.aggregation_temporality)
            name = span_name or metric_name_with_unit(metric.name, metric.unit)
            for p in metric.exponential_histogram.data_points:
                labels = self._labels(identity, p.attributes, bool(span_name))
                counts = list(p.positive.bucket_counts)
                h = native.native_from_otel(
                    p.scale, p.positive.offset, counts, p.zero_count, p.zero_threshold,
                    p.count, p.sum,
                )  # fmt: skip
                classic, _ = native.classic_from_otel(
                    p.scale, p.positive.offset, counts, p.zero_count, p.count,
                    self._classic_bounds,
                )  # fmt: skip
                yield Series(
                    name, "histogram", labels, ts, native=h, classic=classic, count=p.count,
                    sum=p.sum, exemplars=_exemplars(p.exemplars),
                    start_ns=p.start_time_unix_nano,
                )  # fmt: skip
        elif field == "summary":
            # Summaries are cumulative by definition in OTLP (they have no temporality).
            name = span_name or metric_name_with_unit(metric.name, metric.unit)
            for p in metric.summary.data_points:
                labels = self._labels(identity, p.attributes, False)
                start = p.start_time_unix_nano
                for qv in p.quantile_values:
                    quantile = _sorted([*labels, ("quantile", format_double(qv.quantile))])
                    yield Series(name, "gauge", quantile, ts, value=qv.value)
                yield Series(f"{name}_sum", "counter", labels, ts, value=p.sum, start_ns=start)
                yield Series(f"{name}_count", "counter", labels, ts, value=float(p.count),
                             start_ns=start)  # fmt: skip
        elif field == "histogram":
            _require_cumulative(metric, metric.histogram.aggregation_temporality)
            name = span_name or metric_name_with_unit(metric.name, metric.unit)
            for p in metric.histogram.data_points:
                labels = self._labels(identity, p.attributes, bool(span_name))
                classic = native.classic_from_explicit(
                    list(p.explicit_bounds), list(p.bucket_counts), p.count
                )
                yield Series(
                    name, "histogram", labels, ts, classic=classic, count=p.count, sum=p.sum,
                    exemplars=_exemplars(p.exemplars), start_ns=p.start_time_unix_nano,
                )  # fmt: skip


def _require_cumulative(metric: Any, temporality: int) -> None:
    if temporality != AGGREGATION_TEMPORALITY_CUMULATIVE:
        raise ValueError(
            f"metric {metric.name!r}: Prometheus needs cumulative points, got temporality "
            f"{temporality}"
        )


def _job_instance(resource: dict[str, str]) -> Labels:
    name = resource.get("service.name", "")
    namespace = resource.get("service.namespace", "")
    job = f"{namespace}/{name}" if namespace and name else name
    # `instance` is always present, empty when unknown: with `honor_labels: true` an
    # explicit empty label keeps the scraper from attaching the worker's own address.
    return (("instance", resource.get("service.instance.id", "")), ("job", job))


def _sorted(pairs: Iterable[tuple[str, str]]) -> Labels:
    return tuple(sorted(pairs))


def _exemplars(exemplars: Iterable[Any]) -> list[PromExemplar]:
    out = []
    for e in exemplars:
        labels = []
        if e.trace_id:
            labels.append(("trace_id", e.trace_id.hex()))
        if e.span_id:
            labels.append(("span_id", e.span_id.hex()))
        value = e.as_double if e.HasField("as_double") else float(e.as_int)
        out.append(PromExemplar(tuple(labels), value, e.time_unix_nano // 1_000_000))
    return out


def merge_series(parts: Iterable[list[Series]]) -> list[Series]:
    """Series of several conversions (shards) as one list, merged by name and labels."""
    out: dict[tuple[str, Labels], Series] = {}
    for part in parts:
        for series in part:
            _add(out, series)
    return list(out.values())


def _add(out: dict[tuple[str, Labels], Series], series: Series) -> None:
    key = (series.name, series.labels)
    current = out.get(key)
    if current is None:
        out[key] = series
        return
    if series.name == "target_info":
        return  # identical identity and attributes: the same target
    # One series in Prometheus: new only if every part of it is (an old part means the
    # series has samples already, and the new part's spans show up as an increment).
    current.new = current.new and series.new
    current.start_ns = min(current.start_ns, series.start_ns)
    if current.kind != "histogram":
        current.value += series.value
        return
    current.count += series.count
    current.sum += series.sum
    if current.native is not None and series.native is not None:
        current.native = native.merged(current.native, series.native)
    else:
        current.native = None
    if current.classic is not None and series.classic is not None:
        if [b for b, _ in current.classic] != [b for b, _ in series.classic]:
            raise ValueError(f"{series.name}: cannot merge histograms with different bounds")
        current.classic = [
            (b, c1 + c2) for (b, c1), (_, c2) in zip(current.classic, series.classic, strict=True)
        ]
    current.exemplars = sorted(
        [*current.exemplars, *series.exemplars], key=lambda e: e.timestamp_ms
    )[-max(len(current.exemplars), len(series.exemplars)) :]


__all__ = ["PrometheusConverter", "merge_series"]
