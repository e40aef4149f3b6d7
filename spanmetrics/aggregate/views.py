"""Views, span filters and span-name rules applied to a flush's series (pure).

:class:`OutputPlan` turns the series an engine flushed into the streams the topology asks
for (:mod:`spanmetrics.config.views`). It works on series, not spans: a filter drops a
series and counts its calls, a name rule rewrites a label and merges the series that then
agree, a view sums series over the labels it leaves out. All exact, because counts add and
histograms merge. Every stream it emits names its metric in ``__name__``
(:data:`~spanmetrics.aggregate.points.METRIC_NAME_LABEL`), as derived metrics do, so the
fleet and the writers carry them as any series.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from spanmetrics.aggregate.cumulative import Histogram, merge_histograms
from spanmetrics.aggregate.derived import derived_names
from spanmetrics.aggregate.dimensions import metric_names
from spanmetrics.aggregate.explicit import ExplicitHistogram, bucket_of
from spanmetrics.aggregate.expohist import ExpoHistogram, merge
from spanmetrics.aggregate.points import (
    METRIC_NAME_LABEL,
    Attributes,
    MetricNames,
    MetricsSnapshot,
    ResourcePoints,
    SeriesPoint,
    metric_of,
)
from spanmetrics.aggregate.rules import _Lookup, _Selector
from spanmetrics.config.model import Topology
from spanmetrics.config.rules import SpanSelector
from spanmetrics.config.views import (
    KIND_LABEL,
    NAME_LABEL,
    SERVICE_LABEL,
    AttributeKeys,
    SpanFilters,
    SpanNameRule,
    SpanTest,
    View,
    instrument_pattern,
)
from spanmetrics.decode.facts import SpanFacts

# Counter names (self-telemetry labels).
FILTERED_NOT_INCLUDED = "spans_filtered.not_included"
FILTERED_EXCLUDED = "spans_filtered.excluded"
RENAMED = "spans_renamed"
DROPPED_BY_VIEW = "spans_dropped_by_view"

_NO_LOOKUP = _Lookup({})


class _LabelTest:
    """A selector's kind and label tests, on a series' labels."""

    def __init__(self, kinds: tuple[str, ...], attributes: SpanSelector) -> None:
        self._selector = _Selector(attributes, _NO_LOOKUP)
        self._kinds = frozenset(f"SPAN_KIND_{k.removeprefix('SPAN_KIND_')}" for k in kinds)

    def holds(self, labels: dict[str, str]) -> bool:
        if self._kinds and labels.get(KIND_LABEL) not in self._kinds:
            return False
        # The attribute tests of a span selector, read on the labels.
        probe = SpanFacts(b"", b"", b"", "", 0, 0, 0, 0, labels)
        return self._selector.attributes_hold(probe)


def _span_test(test: SpanTest) -> _LabelTest:
    return _LabelTest(test.span_kind, SpanSelector(attributes=test.attributes))


@dataclass(frozen=True, slots=True)
class _CompiledView:
    view: View
    instrument: re.Pattern[str] | None
    services: frozenset[str]
    span_name: re.Pattern[str] | None
    labels: _LabelTest
    kind: str

    def selects(self, instrument: str, labels: dict[str, str]) -> bool:
        return (
            (self.instrument is None or self.instrument.match(instrument) is not None)
            and (not self.services or labels.get(SERVICE_LABEL) in self.services)
            and (
                self.span_name is None
                or self.span_name.match(labels.get(NAME_LABEL, "")) is not None
            )
            and self.labels.holds(labels)
        )


class OutputPlan:
    """A topology's views, span filters and span-name rules, compiled."""

    def __init__(
        self,
        views: tuple[View, ...],
        filters: SpanFilters | None,
        name_rules: tuple[SpanNameRule, ...],
        names: MetricNames,
        instruments: Iterable[str],
    ) -> None:
        self.names = names
        self._views = [
            _CompiledView(
                v,
                instrument_pattern(v.selector.instrument_name)
                if v.selector.instrument_name
                else None,
                frozenset(v.selector.service),
                re.compile(v.selector.span_name) if v.selector.span_name else None,
                _LabelTest(v.selector.span_kind, SpanSelector(attributes=v.selector.attributes)),
                v.stream.aggregation.kind if v.stream.aggregation else "default",
            )
            for v in views
        ]
        self._include = [_span_test(t) for t in filters.include] if filters else []
        self._exclude = [_span_test(t) for t in filters.exclude] if filters else []
        self._rules = [
            (re.compile(r.pattern), r.replacement, frozenset(r.service)) for r in name_rules
        ]
        #: The metrics views may select (:attr:`Topology.instrument_names`).
        self.instruments = list(instruments)
        self._check_and_name()

    @property
    def active(self) -> bool:
        """Whether the plan changes anything (else the series pass as they are)."""
        return bool(self._views or self._include or self._exclude or self._rules)

    def _check_and_name(self) -> None:
        """The summary streams and the streams with their own temporality, for the
        writers (the topology checked the names)."""
        summaries: dict[str, tuple[float, ...]] = {}
        temporalities: dict[str, str] = {}
        for compiled in self._views:
            stream = compiled.view.stream
            selected = [
                n for n in self.instruments
                if compiled.instrument is None or compiled.instrument.match(n)
            ]  # fmt: skip
            outputs = [stream.name] if stream.name else selected
            if stream.temporality is not None:
                temporalities.update(dict.fromkeys(outputs, stream.temporality))
            aggregation = stream.aggregation
            if aggregation is not None and aggregation.summary is not None:
                for name in outputs:
                    if name != self.names.calls:
                        summaries[name] = aggregation.summary.quantiles
        self.names = replace(
            self.names,
            summaries=tuple(sorted(summaries.items())),
            temporalities=tuple(sorted(temporalities.items())),
        )

    # ------------------------------------------------------------------ apply

    def apply(self, snapshot: MetricsSnapshot, counters: Counter[str]) -> MetricsSnapshot:
        """The streams of one flush; filtered and renamed spans counted in ``counters``."""
        if not self.active:
            return snapshot
        out: list[ResourcePoints] = []
        for rp in snapshot.resources:
            streams = self.project(rp.series, counters)
            if streams or rp.events:
                out.append(ResourcePoints(rp.resource, streams, rp.events))
        return MetricsSnapshot(snapshot.names, snapshot.temporality, snapshot.time_unix_nano, out)

    def project(self, points: Iterable[SeriesPoint], counters: Counter[str]) -> list[SeriesPoint]:
        """The streams of one resource's series (``points`` itself when nothing applies)."""
        if not self.active:
            return list(points)
        streams: dict[Attributes, SeriesPoint] = {}
        for point in points:
            for labels, stream in self._streams(point, counters):
                previous = streams.get(labels)
                streams[labels] = stream if previous is None else _add(previous, stream)
        return list(streams.values())

    def _streams(
        self, point: SeriesPoint, counters: Counter[str]
    ) -> Iterable[tuple[Attributes, SeriesPoint]]:
        derived = metric_of(point.attributes)
        if derived is not None:
            kind = "sum" if point.duration is None else "histogram"
            yield from self._view_streams(
                derived, kind, point, dict(point.attributes[1:]), counters
            )
            return
        labels = dict(point.attributes)
        if not self._kept(labels, point.calls, counters):
            return
        labels = self._renamed(labels, point.calls, counters)
        split = self.names.split
        if point.role != "duration":
            calls_labels = dict(split.calls_labels(tuple(labels.items())))
            yield from self._view_streams(
                self.names.calls, "sum", replace(point, duration=None), calls_labels, counters
            )
        if point.role != "calls" and point.duration is not None:
            duration_labels = dict(split.duration_labels(tuple(labels.items())))
            yield from self._view_streams(
                self.names.duration, "histogram", point, duration_labels, counters
            )

    def _kept(self, labels: dict[str, str], calls: int, counters: Counter[str]) -> bool:
        if self._include and not any(t.holds(labels) for t in self._include):
            counters[FILTERED_NOT_INCLUDED] += calls
            return False
        if any(t.holds(labels) for t in self._exclude):
            counters[FILTERED_EXCLUDED] += calls
            return False
        return True

    def _renamed(
        self, labels: dict[str, str], calls: int, counters: Counter[str]
    ) -> dict[str, str]:
        name = labels.get(NAME_LABEL)
        if name is None or not self._rules:
            return labels
        new = name
        for pattern, replacement, services in self._rules:
            if not services or labels.get(SERVICE_LABEL) in services:
                new = pattern.sub(replacement, new)
        if new != name:
            counters[RENAMED] += calls
            labels = {**labels, NAME_LABEL: new}
        return labels

    def _view_streams(
        self,
        instrument: str,
        kind: str,
        point: SeriesPoint,
        labels: dict[str, str],
        counters: Counter[str],
    ) -> Iterable[tuple[Attributes, SeriesPoint]]:
        matched = [v for v in self._views if v.selects(instrument, labels)]
        if not matched:
            yield self._stream(instrument, tuple(labels.items()), point, None)
            return
        for compiled in matched:
            if compiled.kind == "drop":
                counters[DROPPED_BY_VIEW] += point.calls if kind == "sum" else 0
                continue
            stream = compiled.view.stream
            kept = _kept_labels(labels, stream.attribute_keys)
            renamed = tuple((stream.rename_attributes.get(k, k), v) for k, v in kept)
            name = stream.name or instrument
            yield self._stream(name, renamed, point, compiled if kind == "histogram" else None)

    def _stream(
        self, name: str, labels: Attributes, point: SeriesPoint, compiled: _CompiledView | None
    ) -> tuple[Attributes, SeriesPoint]:
        full = ((METRIC_NAME_LABEL, name), *labels)
        duration = point.duration
        aggregation = compiled.view.stream.aggregation if compiled is not None else None
        if aggregation is not None and duration is not None:
            if aggregation.base2_exponential_bucket_histogram is not None:
                duration = _exponential(
                    duration, aggregation.base2_exponential_bucket_histogram.max_size
                )
            elif aggregation.explicit_bucket_histogram is not None:
                bounds = aggregation.explicit_bucket_histogram.boundaries
                duration = explicit_from_exponential(duration, bounds)
        return full, SeriesPoint(
            full, point.start_time_unix_nano, point.time_unix_nano, point.calls, duration,
            point.exemplars,
        )  # fmt: skip


def _kept_labels(labels: dict[str, str], keys: AttributeKeys | None) -> list[tuple[str, str]]:
    if keys is None:
        return list(labels.items())
    excluded = set(keys.excluded)
    included = None if keys.included is None else {*keys.included, SERVICE_LABEL}
    return [
        (k, v)
        for k, v in labels.items()
        if k not in excluded and (included is None or k in included)
    ]


def _add(a: SeriesPoint, b: SeriesPoint) -> SeriesPoint:
    """Two points of one stream summed: their series were merged by a view or a rule."""
    return SeriesPoint(
        a.attributes,
        min(a.start_time_unix_nano, b.start_time_unix_nano),
        max(a.time_unix_nano, b.time_unix_nano),
        a.calls + b.calls,
        merge_histograms(a.duration, b.duration),
        (a.exemplars + b.exemplars)[-10:],
    )


def _exponential(hist: Histogram, max_size: int) -> Histogram:
    if not isinstance(hist, ExpoHistogram):
        return hist  # an explicit topology's durations have no exponential form
    return merge(ExpoHistogram(max_size=max_size), hist, max_size)


def explicit_from_exponential(hist: Histogram, bounds: tuple[float, ...]) -> ExplicitHistogram:
    """An explicit histogram with ``bounds`` from an exponential one: each bucket's count
    goes to the explicit bucket holding the bucket's (geometric) middle, the zero bucket to
    the first. Exact when no bound falls inside an exponential bucket."""
    if isinstance(hist, ExplicitHistogram):
        if hist.bounds == bounds:
            return hist.copy()
        raise ValueError("explicit histograms with other bounds cannot be re-bucketed")
    counts = [0] * (len(bounds) + 1)
    counts[bucket_of(0.0, bounds)] += hist.zero_count
    base = 2.0 ** (2.0**-hist.scale)
    for j, n in enumerate(hist.counts):
        if n:
            middle = base ** (hist.offset + j + 0.5)
            counts[bucket_of(middle, bounds)] += n
    lo = hist.min if hist.count else math.inf
    hi = hist.max if hist.count else -math.inf
    return ExplicitHistogram(bounds, counts, hist.count, hist.sum, lo, hi)


def output_plan(topology: Topology) -> OutputPlan:
    """A topology's views, span filters and span-name rules, compiled."""
    sm = topology.spanmetrics
    names = derived_names(sm) if topology.derive is not None else metric_names(sm)
    return OutputPlan(
        topology.views, topology.span_filters, topology.span_names, names,
        topology.instrument_names,
    )  # fmt: skip
