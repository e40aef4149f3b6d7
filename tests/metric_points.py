"""Points of OTLP metrics records, flattened, for tests that read what the fleet published."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.model.attributes import any_value_to_str

Labels = tuple[tuple[str, str], ...]


class Point(NamedTuple):
    """One sum point (its value) or exponential histogram point (its count)."""

    service: str
    metric: str
    labels: Labels
    """Sorted."""
    start_ns: int
    time_ns: int
    value: int
    temporality: int


def points(value: bytes) -> Iterator[Point]:
    """Every sum and exponential histogram point of one ``otlp_proto`` metrics record."""
    for rm in ExportMetricsServiceRequest.FromString(value).resource_metrics:
        service = next((any_value_to_str(kv.value) for kv in rm.resource.attributes
                        if kv.key == "service.name"), "")  # fmt: skip
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                field = m.WhichOneof("data")
                if field == "sum":
                    data, count = m.sum, False
                elif field == "exponential_histogram":
                    data, count = m.exponential_histogram, True
                else:
                    continue
                for p in data.data_points:
                    labels = tuple(sorted((kv.key, any_value_to_str(kv.value))
                                          for kv in p.attributes))  # fmt: skip
                    yield Point(service, m.name, labels, p.start_time_unix_nano,
                                p.time_unix_nano, p.count if count else p.as_int,
                                data.aggregation_temporality)  # fmt: skip
