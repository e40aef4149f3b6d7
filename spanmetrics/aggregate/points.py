"""What a flush produces: metric points grouped by resource, free of any wire format."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.model.enums import Temporality

#: Label pairs in output order: intrinsic dimensions first, then configured ones.
Attributes = tuple[tuple[str, str], ...]

#: First label of a derived metric's series: the metric it belongs to (``derive``), as
#: Prometheus keeps a series' name among its labels. Writers take it off.
METRIC_NAME_LABEL = "__name__"


def metric_of(attributes: Attributes) -> str | None:
    """The derived metric a series belongs to, or None for a span-metrics series."""
    return attributes[0][1] if attributes and attributes[0][0] == METRIC_NAME_LABEL else None


@dataclass(frozen=True, slots=True)
class Exemplar:
    """A span kept as an example of a duration point."""

    trace_id: bytes
    span_id: bytes
    value: float
    """Span duration in the histogram's unit."""
    time_unix_nano: int
    """End time of the span."""


#: Which metrics a series point feeds: both, or one of them when per-metric dimensions
#: (``calls_dimensions``, ``histogram.dimensions``) give them different labels.
PointRole = Literal["both", "calls", "duration"]


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One series' calls and duration for one flush."""

    attributes: Attributes
    start_time_unix_nano: int
    time_unix_nano: int
    calls: int
    duration: ExpoHistogram | ExplicitHistogram | None
    exemplars: tuple[Exemplar, ...] = ()
    role: PointRole = "both"


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
class LabelSplit:
    """Labels that only one of the calls and duration metrics carries.

    Series are kept by all their labels; at output, each metric's points are summed over
    the labels it does not carry (exact: counts and histograms add).
    """

    calls_only: frozenset[str] = frozenset()
    """Label names on the calls metric only."""
    duration_only: frozenset[str] = frozenset()
    """Label names on the duration metric only."""
    calls_only_globs: tuple[re.Pattern[str], ...] = ()
    """Glob dimensions (compiled) whose labels are on the calls metric only."""
    duration_only_globs: tuple[re.Pattern[str], ...] = ()
    """Glob dimensions (compiled) whose labels are on the duration metric only."""
    not_globbed: frozenset[str] = frozenset()
    """Labels that never come from a glob (intrinsic, named and scope labels)."""

    @property
    def splits(self) -> bool:
        """Whether the two metrics have different labels at all."""
        return bool(
            self.calls_only or self.duration_only or self.calls_only_globs
            or self.duration_only_globs
        )  # fmt: skip

    def calls_labels(self, attributes: Attributes) -> Attributes:
        """The labels of a series on the calls metric."""
        return self._without(attributes, self.duration_only, self.duration_only_globs)

    def duration_labels(self, attributes: Attributes) -> Attributes:
        """The labels of a series on the duration metric."""
        return self._without(attributes, self.calls_only, self.calls_only_globs)

    def _without(
        self, attributes: Attributes, names: frozenset[str], globs: tuple[re.Pattern[str], ...]
    ) -> Attributes:
        protected = self.not_globbed
        return tuple(
            (k, v)
            for k, v in attributes
            if k not in names and (k in protected or not any(pattern.match(k) for pattern in globs))
        )


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Metric names and unit derived from ``namespace`` and ``histogram.unit``, and how
    the output carries labels and resources."""

    calls: str
    duration: str
    events: str
    unit: str
    split: LabelSplit = LabelSplit()
    """Labels on one metric only."""
    copy_resource: bool = True
    """Whether output resources carry the spans' resource attributes."""
    summaries: tuple[tuple[str, tuple[float, ...]], ...] = ()
    """Streams written as OTLP summaries (a view's ``summary`` aggregation), with their
    quantiles: their series hold an exponential histogram."""
    temporalities: tuple[tuple[str, str], ...] = ()
    """Streams whose view chose a temporality (``cumulative`` or ``delta``)."""

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
