"""Cumulative state that can be stored, merged across partitions, and turned into deltas.

A fleet keeps one :class:`CumulativeShard` per (input partition, shard). Its stored form is
an OTLP ``ExportMetricsServiceRequest`` with cumulative points, so a checkpoint can be read
with any OTLP tool. The series of one shard, merged over every partition, are the series a
single publisher emits. Merging is exact: counts add, and exponential histograms downscale
to a common scale and add.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.attributes import any_value_to_str
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
)
from spanmetrics.aggregate.resources import ResourceIdentity, resource_identity
from spanmetrics.model.enums import Temporality

Histogram = ExpoHistogram | ExplicitHistogram
SeriesKey = tuple[ResourceIdentity, Attributes]


def shard_of(identity: tuple[object, ...], shards: int) -> int:
    """Shard of a key: a hash that is the same in every process and every run."""
    return zlib.crc32(repr(identity).encode("utf-8")) % shards


@dataclass(slots=True)
class CumulativeSeries:
    """Calls and duration of one series since ``start_ns``."""

    start_ns: int
    calls: int = 0
    duration: Histogram | None = None
    #: The most recent exemplars seen, kept until newer ones replace them.
    exemplars: tuple[Exemplar, ...] = ()


@dataclass(slots=True)
class CumulativeShard:
    """Cumulative series of some resources, keyed by (resource identity, labels)."""

    resources: dict[ResourceIdentity, Resource] = field(default_factory=dict)
    series: dict[SeriesKey, CumulativeSeries] = field(default_factory=dict)
    events: dict[SeriesKey, CumulativeSeries] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.series)

    def add_points(
        self,
        identity: ResourceIdentity,
        resource: Resource,
        series: Iterable[SeriesPoint],
        events: Iterable[EventsPoint] = (),
    ) -> None:
        """Add one resource's points (deltas, or cumulative points of a disjoint stream)."""
        self.resources.setdefault(identity, resource)
        for point in series:
            self._add(
                self.series,
                (identity, point.attributes),
                point.start_time_unix_nano,
                point.calls,
                point.duration,
                point.exemplars,
            )
        for event in events:
            self._add(
                self.events,
                (identity, event.attributes),
                event.start_time_unix_nano,
                event.count,
                None,
            )

    @staticmethod
    def _add(
        table: dict[SeriesKey, CumulativeSeries],
        key: SeriesKey,
        start_ns: int,
        calls: int,
        duration: Histogram | None,
        exemplars: tuple[Exemplar, ...] = (),
    ) -> None:
        current = table.get(key)
        if current is None:
            table[key] = CumulativeSeries(
                start_ns, calls, duration.copy() if duration is not None else None, exemplars
            )
            return
        current.start_ns = min(current.start_ns, start_ns)
        current.calls += calls
        if exemplars:
            current.exemplars = _latest_exemplars(current.exemplars, exemplars)
        if duration is not None:
            current.duration = (
                duration.copy() if current.duration is None else _merged(current.duration, duration)
            )

    def merge(self, other: CumulativeShard) -> None:
        """Add every series of ``other`` into this shard."""
        for identity, resource in other.resources.items():
            self.resources.setdefault(identity, resource)
        for key, s in other.series.items():
            self._add(self.series, key, s.start_ns, s.calls, s.duration, s.exemplars)
        for key, e in other.events.items():
            self._add(self.events, key, e.start_ns, e.calls, None)

    def snapshot(self, names: MetricNames, time_ns: int) -> MetricsSnapshot:
        """Every series as cumulative points at ``time_ns``."""
        return self._points(names, lambda _kind, _key, _start: time_ns, time_ns)

    def _points(
        self,
        names: MetricNames,
        time_of: Callable[[str, SeriesKey, int], int],
        snapshot_time_ns: int,
    ) -> MetricsSnapshot:
        by_identity: dict[ResourceIdentity, ResourcePoints] = {}

        def points_of(identity: ResourceIdentity) -> ResourcePoints:
            points = by_identity.get(identity)
            if points is None:
                points = by_identity[identity] = ResourcePoints(self.resources[identity])
            return points

        for key, s in sorted(self.series.items(), key=_order):
            time_ns = time_of("series", key, s.start_ns)
            points_of(key[0]).series.append(
                SeriesPoint(key[1], s.start_ns, time_ns, s.calls, s.duration, s.exemplars)
            )
        for key, e in sorted(self.events.items(), key=_order):
            time_ns = time_of("events", key, e.start_ns)
            points_of(key[0]).events.append(EventsPoint(key[1], e.start_ns, time_ns, e.calls))
        temporality = Temporality.CUMULATIVE
        return MetricsSnapshot(names, temporality, snapshot_time_ns, list(by_identity.values()))

    def delta_since(
        self,
        previous: CumulativeShard,
        last_sent_ns: dict[tuple[str, SeriesKey], int],
        names: MetricNames,
        time_ns: int,
    ) -> MetricsSnapshot:
        """Delta points from ``previous`` (what was last published) to this state.

        Only series that changed are emitted. A point starts at the time its series was
        last published (``last_sent_ns``), or at the series' start if it never was, and
        ``last_sent_ns`` is updated. Min and max of a delta histogram are unknown (NaN).
        """
        by_identity: dict[ResourceIdentity, ResourcePoints] = {}
        for key, now in sorted(self.series.items(), key=_order):
            before = previous.series.get(key)
            calls = now.calls - (before.calls if before else 0)
            if calls == 0:
                continue
            duration = now.duration
            if before is not None and before.duration is not None and duration is not None:
                duration = _subtract(duration, before.duration)
            start = last_sent_ns.get(("series", key), now.start_ns)
            last_sent_ns[("series", key)] = time_ns
            identity, labels = key
            points = by_identity.get(identity)
            if points is None:
                points = by_identity[identity] = ResourcePoints(self.resources[identity])
            # Exemplars newer than what was published with the previous delta.
            exemplars = tuple(
                e for e in now.exemplars if before is None or e not in before.exemplars
            )
            points.series.append(SeriesPoint(labels, start, time_ns, calls, duration, exemplars))
        for key, now in sorted(self.events.items(), key=_order):
            before = previous.events.get(key)
            count = now.calls - (before.calls if before else 0)
            if count == 0:
                continue
            start = last_sent_ns.get(("events", key), now.start_ns)
            last_sent_ns[("events", key)] = time_ns
            points = by_identity.get(key[0])
            if points is None:
                points = by_identity[key[0]] = ResourcePoints(self.resources[key[0]])
            points.events.append(EventsPoint(key[1], start, time_ns, count))
        return MetricsSnapshot(names, Temporality.DELTA, time_ns, list(by_identity.values()))

    # ------------------------------------------------------------- stored form

    def encode(
        self, names: MetricNames, sent_ns: dict[tuple[str, SeriesKey], int] | None = None
    ) -> bytes:
        """OTLP protobuf of the cumulative points. A point's time is its series' entry in
        ``sent_ns`` (when it was last published), else its start."""
        from spanmetrics.export.otlp import snapshot_to_request

        sent = sent_ns or {}
        snapshot = self._points(names, lambda kind, key, start: sent.get((kind, key), start), 0)
        return snapshot_to_request(snapshot).SerializeToString()

    @classmethod
    def decode(
        cls,
        data: bytes,
        names: MetricNames,
        max_size: int,
        key_attributes: frozenset[str] = frozenset(),
        sent_ns: dict[tuple[str, SeriesKey], int] | None = None,
    ) -> CumulativeShard:
        """Read a shard back from :meth:`encode` (or any cumulative OTLP of our metrics).

        With ``sent_ns``, each point's time is recorded there as its last publish time.
        """
        request = ExportMetricsServiceRequest.FromString(data)
        shard = cls()
        sum_tables = {
            names.calls: ("series", shard.series),
            names.events: ("events", shard.events),
        }
        for rm in request.resource_metrics:
            identity = resource_identity(rm.resource, key_attributes)
            if identity is None:
                continue
            shard.resources.setdefault(identity, rm.resource)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    sums = sum_tables.get(metric.name)
                    if sums is not None:
                        kind, table = sums
                        for p in metric.sum.data_points:
                            entry = _entry(table, identity, p.attributes, p.start_time_unix_nano)
                            entry.calls += p.as_int
                            if sent_ns is not None:
                                sent_ns[(kind, (identity, _labels(p.attributes)))] = (
                                    p.time_unix_nano
                                )
                    elif metric.name == names.duration:
                        exp_points = metric.exponential_histogram.data_points
                        for ep in exp_points:
                            s = _entry(
                                shard.series, identity, ep.attributes, ep.start_time_unix_nano
                            )
                            s.duration = _expo_from_point(ep, max_size)
                            s.exemplars = _exemplars_from_point(ep)
                        for hp in metric.histogram.data_points:
                            s = _entry(
                                shard.series, identity, hp.attributes, hp.start_time_unix_nano
                            )
                            s.duration = _explicit_from_point(hp)
                            s.exemplars = _exemplars_from_point(hp)
        return shard


def _order(item: tuple[SeriesKey, CumulativeSeries]) -> tuple[str, Attributes]:
    (identity, labels), _ = item
    return repr(identity), labels


def _labels(attributes: Iterable[Any]) -> Attributes:
    return tuple((kv.key, any_value_to_str(kv.value)) for kv in attributes)


def _entry(
    table: dict[SeriesKey, CumulativeSeries],
    identity: ResourceIdentity,
    attributes: Iterable[Any],
    start_ns: int,
) -> CumulativeSeries:
    key = (identity, _labels(attributes))
    entry = table.get(key)
    if entry is None:
        entry = table[key] = CumulativeSeries(start_ns)
    return entry


def _latest_exemplars(
    kept: tuple[Exemplar, ...], new: tuple[Exemplar, ...]
) -> tuple[Exemplar, ...]:
    """The most recent exemplars of both, as many as the larger of the two holds (each
    side is already capped at ``exemplars.max_per_data_point``)."""
    keep = max(len(kept), len(new))
    merged = sorted(set(kept) | set(new), key=lambda e: (e.time_unix_nano, e.span_id))
    return tuple(merged[-keep:])


def _exemplars_from_point(
    point: ExponentialHistogramDataPoint | HistogramDataPoint,
) -> tuple[Exemplar, ...]:
    return tuple(
        Exemplar(e.trace_id, e.span_id, e.as_double, e.time_unix_nano) for e in point.exemplars
    )


def _expo_from_point(point: ExponentialHistogramDataPoint, max_size: int) -> ExpoHistogram:
    has_min = point.HasField("min")
    return ExpoHistogram(
        max_size=max_size,
        scale=point.scale,
        zero_count=point.zero_count,
        count=point.count,
        sum=point.sum,
        min=point.min if has_min else (math.inf if point.count == 0 else math.nan),
        max=point.max if point.HasField("max") else (-math.inf if point.count == 0 else math.nan),
        offset=point.positive.offset if point.positive.bucket_counts else 0,
        counts=list(point.positive.bucket_counts),
    )


def _explicit_from_point(point: HistogramDataPoint) -> ExplicitHistogram:
    return ExplicitHistogram(
        bounds=tuple(point.explicit_bounds),
        counts=list(point.bucket_counts),
        count=point.count,
        sum=point.sum,
        min=point.min if point.HasField("min") else math.inf,
        max=point.max if point.HasField("max") else -math.inf,
    )


def _merged(a: Histogram, b: Histogram) -> Histogram:
    if isinstance(a, ExpoHistogram) and isinstance(b, ExpoHistogram):
        return a.merged(b)
    if isinstance(a, ExplicitHistogram) and isinstance(b, ExplicitHistogram):
        return a.merged(b)
    raise ValueError("cannot merge an exponential with an explicit histogram")


def _subtract(now: Histogram, before: Histogram) -> Histogram:
    """``now - before`` for two cumulative states of one series (``before`` ⊆ ``now``)."""
    if isinstance(now, ExpoHistogram) and isinstance(before, ExpoHistogram):
        return _subtract_expo(now, before)
    if isinstance(now, ExplicitHistogram) and isinstance(before, ExplicitHistogram):
        return ExplicitHistogram(
            bounds=now.bounds,
            counts=[a - b for a, b in zip(now.counts, before.counts, strict=True)],
            count=now.count - before.count,
            sum=now.sum - before.sum,
            min=math.nan,
            max=math.nan,
        )
    raise ValueError("cannot subtract histograms of different kinds")


def _subtract_expo(now: ExpoHistogram, before: ExpoHistogram) -> ExpoHistogram:
    # The values of `before` are a subset of those of `now`, so `now` is at the same or a
    # coarser scale; bring `before` to it and subtract bucket by bucket.
    earlier = before.copy()
    if earlier.scale > now.scale:
        earlier.downscale(earlier.scale - now.scale)
    counts = list(now.counts)
    for i, c in enumerate(earlier.counts):
        counts[earlier.offset + i - now.offset] -= c
    first = next((i for i, c in enumerate(counts) if c), len(counts))
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    return ExpoHistogram(
        max_size=now.max_size,
        scale=now.scale,
        zero_count=now.zero_count - earlier.zero_count,
        count=now.count - earlier.count,
        sum=now.sum - earlier.sum,
        min=math.nan,
        max=math.nan,
        offset=now.offset + first if first <= last else 0,
        counts=counts[first : last + 1] if first <= last else [],
    )
