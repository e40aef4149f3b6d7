"""The span-metrics engine: decoded OTLP batches in, metric snapshots out.

Work is done per batch: resource-level work once per resource, one key build and one dict
lookup per span, then one vectorised update of calls and histograms per request.

Time semantics (OTel data model, "Temporality"), with T0 the creation of a series:

- cumulative: (T0, T1], (T0, T2], (T0, T3] ... the start never moves;
- delta:      (T0, T1], (T1, T2], (T2, T3] ... each start is the previous flush that
  emitted the series, and a flush emits only series that received spans.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmetrics.aggregate.attributes import any_value_to_number, any_value_to_str
from spanmetrics.aggregate.dimensions import OVERFLOW_KEY, DimensionPlan, ScopeDimensions, SpanKey
from spanmetrics.aggregate.explicit import ExplicitHistogramColumns
from spanmetrics.aggregate.expohist_columns import ExpoHistogramColumns
from spanmetrics.aggregate.points import (
    EventsPoint,
    Exemplar,
    MetricNames,
    MetricsSnapshot,
    ResourcePoints,
    SeriesPoint,
)
from spanmetrics.aggregate.sampling import adjusted_count, parse_multiplier, stochastic_round
from spanmetrics.aggregate.series import HistogramColumns, SeriesTable
from spanmetrics.config.model import Encoding, SpanMetricsConfig
from spanmetrics.decode import decode_traces
from spanmetrics.model.clock import Clock
from spanmetrics.model.enums import Temporality

#: Nanoseconds per unit of the duration metric.
_NS_PER_UNIT = {"ms": 1e6, "s": 1e9}

#: Spans buffered before one vectorised update. Numpy's fixed cost per call dominates on
#: one 1000-span record, so several records are applied together; flush applies the rest.
APPLY_BATCH_SPANS = 16_384

# Counter names, stable: they become self-telemetry labels.
SPANS_RECEIVED = "spans_received"
DROPPED_MISSING_SERVICE_NAME = "spans_dropped.missing_service_name"
NEGATIVE_DURATION = "spans_negative_duration"
CARDINALITY_OVERFLOW = "spans_cardinality_overflow"
INVALID_MULTIPLIER = "spans_invalid_multiplier"


@dataclass(slots=True)
class _PendingBatch:
    """Spans read and keyed but not yet applied to the series table."""

    rows: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    #: None while every pending span weighs 1, the common case, so no list is kept.
    weights: list[int] | None = None
    #: (span count, consume time) per consume call, so each series' last-seen time is the
    #: time its spans arrived, not the time they were applied.
    arrivals: list[tuple[int, int]] = field(default_factory=list)

    def arrived(self, now_ns: int) -> None:
        """Mark the spans added since the previous call as received at ``now_ns``."""
        counted = sum(n for n, _ in self.arrivals)
        if len(self.rows) > counted:
            self.arrivals.append((len(self.rows) - counted, now_ns))

    def arrival_times(self) -> NDArray[np.int64]:
        """Consume time of each pending span."""
        counts = np.array([n for n, _ in self.arrivals], np.int64)
        times = np.array([t for _, t in self.arrivals], np.int64)
        return np.repeat(times, counts)

    def add(
        self,
        rows: list[int],
        starts: Sequence[int],
        ends: Sequence[int],
        weights: list[int] | None,
    ) -> None:
        """Append one scope's spans; ``weights`` None means all 1."""
        if weights is not None and self.weights is None:
            self.weights = [1] * len(self.rows)
        self.rows += rows
        self.starts += starts
        self.ends += ends
        if self.weights is not None:
            self.weights += weights if weights is not None else [1] * len(rows)


@dataclass(slots=True)
class _EventSeries:
    count: int
    created_ns: int
    start_ns: int
    last_seen_ns: int
    touched: bool = True


@dataclass(slots=True)
class _ResourceState:
    """Per resource: its identity, first-seen attributes and its series index."""

    resource: Resource
    service_name: str
    last_seen_ns: int
    #: scope labels -> span key -> row in the series table
    index: dict[ScopeDimensions, dict[SpanKey, int]] = field(default_factory=dict)
    series_count: int = 0
    overflow_row: int = -1
    events: dict[tuple[ScopeDimensions, SpanKey], _EventSeries] = field(default_factory=dict)


@dataclass(slots=True)
class _RowOwner:
    resource: _ResourceState
    scope: ScopeDimensions
    key: SpanKey


def _service_name(attributes: Iterable[KeyValue]) -> str | None:
    for kv in attributes:
        if kv.key == "service.name":
            value = any_value_to_str(kv.value)
            return value or None
    return None


class SpanMetricsEngine:
    """Aggregates spans into calls and duration series; :meth:`flush` emits them."""

    def __init__(self, config: SpanMetricsConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.plan = DimensionPlan(config)
        self.names = MetricNames.for_namespace(config.namespace, config.histogram.unit)
        self.temporality = Temporality.DELTA if config.is_delta else Temporality.CUMULATIVE
        self.counters: Counter[str] = Counter()
        self._ns_per_unit = _NS_PER_UNIT[config.histogram.unit]
        self.table = SeriesTable(self._histogram_columns(config))
        self._owners: list[_RowOwner | None] = []
        self._resources: dict[tuple[object, ...], _ResourceState] = {}
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)
        self._limit = config.aggregation_cardinality_limit
        self._exemplar_max = config.exemplars.max_per_data_point if config.exemplars.enabled else 0
        self._exemplars: dict[int, list[Exemplar]] = {}
        self._adjusted_cache: dict[str, float] = {"": 1.0}
        self._pending = _PendingBatch()

    def _histogram_columns(self, config: SpanMetricsConfig) -> HistogramColumns | None:
        hist = config.histogram
        if hist.disable:
            return None
        if hist.explicit is not None:
            ms_per_unit = self._ns_per_unit / 1e6
            bounds = tuple(b / ms_per_unit for b in hist.explicit.buckets)
            return ExplicitHistogramColumns(bounds)
        return ExpoHistogramColumns(hist.max_size)

    # ------------------------------------------------------------------ consume

    @property
    def active_series(self) -> int:
        """Call/duration series currently held."""
        return self.table.live_count

    def consume_record(self, value: bytes, encoding: Encoding) -> None:
        """Decode one Kafka record value and aggregate its spans.

        Raises:
            DecodeError: the record is not valid in ``encoding``; nothing was aggregated.
        """
        self.consume(decode_traces(value, encoding))

    def consume(self, request: ExportTraceServiceRequest) -> None:
        """Aggregate every span of one decoded record.

        Series are created at once; counts and histograms may be buffered until enough
        spans are pending or until the next :meth:`flush`.
        """
        now = self.clock.now_ns()
        pending = self._pending
        for resource_spans in request.resource_spans:
            resource = resource_spans.resource
            n_spans = sum(len(s.spans) for s in resource_spans.scope_spans)
            if not n_spans:
                continue
            self.counters[SPANS_RECEIVED] += n_spans
            attributes = resource.attributes
            service_name = _service_name(attributes)
            if service_name is None:
                self.counters[DROPPED_MISSING_SERVICE_NAME] += n_spans
                continue
            state = self._resource_state(resource, service_name, now)
            fallback = self.plan.resource_values(attributes)
            resource_multiplier = self._resource_multiplier(attributes)
            for scope_spans in resource_spans.scope_spans:
                spans = scope_spans.spans
                if not spans:
                    continue
                scope = self.plan.scope_dimensions(
                    scope_spans.scope.name, scope_spans.scope.version
                )
                # One pass over the spans reads every field the fast path needs.
                columns = [
                    (
                        s.name,
                        s.kind,
                        s.status.code,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        s.trace_state,
                    )
                    for s in spans
                ]
                names, kinds, codes, starts, ends, states = zip(*columns, strict=True)
                keys = self.plan.keys(spans, names, kinds, codes, fallback)
                rows = self._rows_for(state, scope, keys, now)
                weights: list[int] | None = None
                if (
                    any(states)
                    or resource_multiplier is not None
                    or self.config.span_multiplier_key
                ):
                    weights = self._weights(spans, states, resource_multiplier)
                pending.add(rows, starts, ends, weights)
                if self._exemplar_max:
                    self._collect_exemplars(spans, rows, starts, ends)
                if self.config.events.enabled:
                    self._count_events(state, scope, spans, keys, weights, now)
        pending.arrived(now)
        if len(pending.rows) >= APPLY_BATCH_SPANS:
            self._apply_pending()

    def _apply_pending(self) -> None:
        pending = self._pending
        if not pending.rows:
            return
        self._pending = _PendingBatch()
        row_ids = np.array(pending.rows, np.int64)
        start = np.array(pending.starts, np.uint64)
        end = np.array(pending.ends, np.uint64)
        negative = end < start
        n_negative = int(np.count_nonzero(negative))
        if n_negative:
            # A span that ends before it starts counts as 0, as in the connector.
            self.counters[NEGATIVE_DURATION] += n_negative
            end = np.where(negative, start, end)
        values = (end - start).astype(np.float64) / self._ns_per_unit
        weights = pending.weights
        w = np.ones(len(row_ids), np.int64) if weights is None else np.array(weights, np.int64)
        self.table.record(row_ids, values, w, pending.arrival_times())

    def _resource_state(self, resource: Resource, service_name: str, now: int) -> _ResourceState:
        if self._key_attributes:
            pairs = [
                (kv.key, any_value_to_str(kv.value))
                for kv in resource.attributes
                if kv.key in self._key_attributes
            ]
        else:
            pairs = [(kv.key, any_value_to_str(kv.value)) for kv in resource.attributes]
        identity = (service_name, *sorted(pairs))
        state = self._resources.get(identity)
        if state is None:
            copy = Resource()
            copy.CopyFrom(resource)
            state = _ResourceState(copy, service_name, now)
            self._resources[identity] = state
        state.last_seen_ns = now
        return state

    def _rows_for(
        self, state: _ResourceState, scope: ScopeDimensions, keys: list[SpanKey], now: int
    ) -> list[int]:
        index = state.index.get(scope)
        if index is None:
            index = state.index[scope] = {}
        get = index.get
        rows = [get(k, -1) for k in keys]
        if -1 in rows:
            for i, row in enumerate(rows):
                if row < 0:
                    rows[i] = self._new_row(state, scope, index, keys[i], now)
        return rows

    def _new_row(
        self,
        state: _ResourceState,
        scope: ScopeDimensions,
        index: dict[SpanKey, int],
        key: SpanKey,
        now: int,
    ) -> int:
        row = index.get(key, -1)
        if row >= 0:
            return row
        if self._limit and state.series_count >= self._limit:
            self.counters[CARDINALITY_OVERFLOW] += 1
            if state.overflow_row < 0:
                state.overflow_row = self._allocate(state, ScopeDimensions(), OVERFLOW_KEY, now)
            return state.overflow_row
        row = self._allocate(state, scope, key, now)
        index[key] = row
        state.series_count += 1
        return row

    def _allocate(
        self, state: _ResourceState, scope: ScopeDimensions, key: SpanKey, now: int
    ) -> int:
        row = self.table.allocate(now)
        owner = _RowOwner(state, scope, key)
        if row == len(self._owners):
            self._owners.append(owner)
        else:
            self._owners[row] = owner
        return row

    def _resource_multiplier(self, attributes: Iterable[KeyValue]) -> float | None:
        key = self.config.span_multiplier_key
        if not key:
            return None
        for kv in attributes:
            if kv.key == key:
                return parse_multiplier(any_value_to_number(kv.value))
        return None

    def _weights(
        self, spans: Sequence[Span], states: Sequence[str], resource_multiplier: float | None
    ) -> list[int]:
        cache = self._adjusted_cache
        key = self.config.span_multiplier_key
        weights: list[int] = []
        for span, tracestate in zip(spans, states, strict=True):
            count = cache.get(tracestate)
            if count is None:
                count = cache[tracestate] = adjusted_count(tracestate)
            multiplier = resource_multiplier
            if key:
                for kv in span.attributes:
                    if kv.key == key:
                        parsed = parse_multiplier(any_value_to_number(kv.value))
                        if parsed is None:
                            self.counters[INVALID_MULTIPLIER] += 1
                        else:
                            multiplier = parsed
                        break
            if multiplier is not None:
                count *= multiplier
            weights.append(stochastic_round(count, span.span_id) if count != 1.0 else 1)
        if len(cache) > 10_000:
            # Tracestates are few in practice; bound the cache against odd producers.
            self._adjusted_cache = {"": 1.0}
        return weights

    def _collect_exemplars(
        self, spans: Sequence[Span], rows: list[int], starts: tuple[int, ...], ends: tuple[int, ...]
    ) -> None:
        limit = self._exemplar_max
        store = self._exemplars
        for i, row in enumerate(rows):
            kept = store.get(row)
            if kept is None:
                kept = store[row] = []
            elif len(kept) >= limit:
                continue
            span = spans[i]
            if not span.trace_id:
                continue
            duration = max(ends[i] - starts[i], 0) / self._ns_per_unit
            kept.append(Exemplar(span.trace_id, span.span_id, duration, ends[i]))

    def _count_events(
        self,
        state: _ResourceState,
        scope: ScopeDimensions,
        spans: Sequence[Span],
        keys: list[SpanKey],
        weights: list[int] | None,
        now: int,
    ) -> None:
        for i, (span, key) in enumerate(zip(spans, keys, strict=True)):
            weight = 1 if weights is None else weights[i]
            for event in span.events:
                event_key = (scope, (*key, *self.plan.event_values(event.attributes)))
                series = state.events.get(event_key)
                if series is None:
                    series = state.events[event_key] = _EventSeries(0, now, now, now)
                series.count += weight
                series.last_seen_ns = now
                series.touched = True

    # -------------------------------------------------------------------- flush

    def flush(self) -> MetricsSnapshot:
        """Build the points of this interval, then apply the temporality's reset policy."""
        self._apply_pending()
        now = self.clock.now_ns()
        self._expire(now)
        delta = self.temporality is Temporality.DELTA
        table = self.table
        emit = np.flatnonzero(table.touched if delta else table.live)
        by_resource: dict[int, ResourcePoints] = {}
        for row in emit.tolist():
            owner = self._owners[row]
            assert owner is not None
            points = self._resource_points(by_resource, owner.resource)
            start = int(table.start_ns[row] if delta else table.created_ns[row])
            points.series.append(
                SeriesPoint(
                    attributes=self.plan.labels(
                        owner.resource.service_name, owner.key, owner.scope
                    ),
                    start_time_unix_nano=start,
                    time_unix_nano=now,
                    calls=int(table.calls[row]),
                    duration=table.histogram(row),
                    exemplars=tuple(self._exemplars.get(row, ())),
                )
            )
        if self.config.events.enabled:
            self._flush_events(by_resource, now, delta)
        if delta:
            table.reset(emit, now)
        self._exemplars.clear()
        return MetricsSnapshot(self.names, self.temporality, now, list(by_resource.values()))

    @staticmethod
    def _resource_points(
        by_resource: dict[int, ResourcePoints], state: _ResourceState
    ) -> ResourcePoints:
        points = by_resource.get(id(state))
        if points is None:
            points = by_resource[id(state)] = ResourcePoints(state.resource)
        return points

    def _flush_events(self, by_resource: dict[int, ResourcePoints], now: int, delta: bool) -> None:
        for state in self._resources.values():
            for (scope, key), series in state.events.items():
                if delta and not series.touched:
                    continue
                self._resource_points(by_resource, state).events.append(
                    EventsPoint(
                        attributes=self.plan.event_labels(state.service_name, key, scope),
                        start_time_unix_nano=series.start_ns if delta else series.created_ns,
                        time_unix_nano=now,
                        count=series.count,
                    )
                )
                if delta:
                    series.count = 0
                    series.start_ns = now
                    series.touched = False

    def _expire(self, now: int) -> None:
        series_ttl = round(self.config.series_expiration * 1e9)
        resource_ttl = round(self.config.metrics_expiration * 1e9)
        if not series_ttl and not resource_ttl:
            return
        expired: set[int] = set()
        if resource_ttl:
            for identity, state in list(self._resources.items()):
                if now - state.last_seen_ns > resource_ttl:
                    del self._resources[identity]
                    expired.update(r for idx in state.index.values() for r in idx.values())
                    if state.overflow_row >= 0:
                        expired.add(state.overflow_row)
        if series_ttl:
            stale = (now - self.table.last_seen_ns > series_ttl) & self.table.live
            for row in np.flatnonzero(stale).tolist():
                owner = self._owners[row]
                if owner is None or row in expired:
                    continue
                state = owner.resource
                if owner.key == OVERFLOW_KEY:
                    state.overflow_row = -1
                else:
                    del state.index[owner.scope][owner.key]
                    state.series_count -= 1
                expired.add(row)
            for state in self._resources.values():
                for event_key, event in list(state.events.items()):
                    if now - event.last_seen_ns > series_ttl:
                        del state.events[event_key]
        for row in expired:
            self._owners[row] = None
        self.table.release(sorted(expired))
