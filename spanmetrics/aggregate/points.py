"""What a flush produces: metric points grouped by resource, free of any wire format."""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.model.enums import Temporality

#: Label pairs in output order: intrinsic dimensions first, then configured ones.
Attributes = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Exemplar:
    """A span kept as an example of a duration point."""

    trace_id: bytes
    span_id: bytes
    value: float
    """Span duration in the histogram's unit."""
    time_unix_nano: int
    """End time of the span."""


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One series' calls and duration for one flush."""

    attributes: Attributes
    start_time_unix_nano: int
    time_unix_nano: int
    calls: int
    duration: ExpoHistogram | ExplicitHistogram | None
    exemplars: tuple[Exemplar, ...] = ()


@dataclass(frozen=True, slots=True)
class EventsPoint:
    """One span-event series' count for one flush."""

    attributes: Attributes
    start_time_unix_nano: int
    time_unix_nano: int
    count: int


@dataclass(slots=True)
class ResourcePoints:
    """The points of one resource, with the resource as first seen."""

    resource: Resource
    series: list[SeriesPoint] = field(default_factory=list)
    events: list[EventsPoint] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Metric names and unit derived from ``namespace`` and ``histogram.unit``."""

    calls: str
    duration: str
    events: str
    unit: str

    @classmethod
    def for_namespace(cls, namespace: str, unit: str) -> MetricNames:
        """Names as the connector builds them: ``<namespace>.calls`` etc."""
        prefix = f"{namespace}." if namespace else ""
        return cls(f"{prefix}calls", f"{prefix}duration", f"{prefix}events", unit)


@dataclass(slots=True)
class MetricsSnapshot:
    """Everything one flush emits."""

    names: MetricNames
    temporality: Temporality
    time_unix_nano: int
    resources: list[ResourcePoints] = field(default_factory=list)

    @property
    def series_count(self) -> int:
        """Number of call/duration series in the snapshot."""
        return sum(len(r.series) for r in self.resources)
