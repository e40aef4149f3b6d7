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
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from spanmetrics.aggregate.attributes import any_value_to_number, any_value_to_str
from spanmetrics.aggregate.dimensions import (
    OVERFLOW_SCOPE,
    DimensionPlan,
    ScopeDimensions,
    SpanKey,
)
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
    """Per resource: its id in series keys, first-seen attributes, and its series count."""

    rid: int
    identity: tuple[object, ...]
    resource: Resource
    service_name: str
    last_seen_ns: int
    series_count: int = 0
    overflow_row: int = -1
    events: dict[SpanKey, _EventSeries] = field(default_factory=dict)


@dataclass(slots=True)
class _RowOwner:
    resource: _ResourceState
    key: SpanKey


@dataclass(slots=True)
class _RequestColumns:
    """The spans of one request that are kept, as columns aligned by span."""

    resource_ids: Sequence[int]
    scope_ids: Sequence[int]
    names: Sequence[str]
    kinds: Sequence[int]
    codes: Sequence[int]
    starts: Sequence[int]
    ends: Sequence[int]
    states: Sequence[str]
    spans: Sequence[Span] | None
    dimension_values: Sequence[tuple[str | None, ...]] | None


def _service_name(attributes: Iterable[KeyValue]) -> str | None:
    for kv in attributes:
        if kv.key == "service.name":
            value = any_value_to_str(kv.value)
            return value or None
    return None


#: Resources remembered by their serialized bytes before the cache is cleared.
_RESOURCE_CACHE_LIMIT = 10_000


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
        #: series key -> row; keys start with the resource id, so one dict serves all.
        self._index: dict[SpanKey, int] = {}
        self._owners: list[_RowOwner | None] = []
        self._resources: dict[tuple[object, ...], _ResourceState] = {}
        self._by_rid: dict[int, _ResourceState] = {}
        self._next_rid = 0
        #: serialized Resource -> resource id (-1: no service.name), to skip re-reading the
        #: attributes of a resource seen before.
        self._resource_cache: dict[bytes, int] = {}
        self._scopes: dict[ScopeDimensions, int] = {ScopeDimensions(): 0}
        self._scope_list: list[ScopeDimensions] = [ScopeDimensions()]
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)
        self._limit = config.aggregation_cardinality_limit
        self._exemplar_max = config.exemplars.max_per_data_point if config.exemplars.enabled else 0
        self._exemplars: dict[int, list[Exemplar]] = {}
        self._adjusted_cache: dict[str, float] = {"": 1.0}
        self._pending = _PendingBatch()
        # Per-span work beyond the intrinsic columns, decided once.
        self._per_scope = bool(self.plan.scopes) or self.plan.reads_span_attributes
        self._needs_spans = (
            bool(self._exemplar_max)
            or config.events.enabled
            or bool(config.span_multiplier_key)
            or self._per_scope
        )

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
        resource_spans = request.resource_spans
        rids = [self._resource_id(rs.resource, now) for rs in resource_spans]
        if -1 in rids:
            dropped = sum(
                len(ss.spans)
                for rid, rs in zip(rids, resource_spans, strict=True)
                if rid < 0
                for ss in rs.scope_spans
            )
            self.counters[DROPPED_MISSING_SERVICE_NAME] += dropped
            self.counters[SPANS_RECEIVED] += dropped
        columns = self._read_columns(resource_spans, rids)
        if columns is None:
            return
        self.counters[SPANS_RECEIVED] += len(columns.names)
        keys = self.plan.keys(
            columns.resource_ids,
            columns.scope_ids,
            columns.names,
            columns.kinds,
            columns.codes,
            columns.dimension_values,
        )
        rows = self._rows_for(keys, now)
        weights: list[int] | None = None
        if any(columns.states) or self.config.span_multiplier_key:
            weights = self._weights(columns, resource_spans, rids)
        pending = self._pending
        pending.add(rows, columns.starts, columns.ends, weights)
        if columns.spans is not None:
            if self._exemplar_max:
                self._collect_exemplars(columns.spans, rows, columns.starts, columns.ends)
            if self.config.events.enabled:
                self._count_events(columns.spans, keys, weights, now)
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

    def _read_columns(
        self, resource_spans: Sequence[ResourceSpans], rids: list[int]
    ) -> _RequestColumns | None:
        """Every field the aggregation needs, read in as few passes over the spans as the
        configuration allows: one comprehension for the whole request in the common case."""
        kept = [(rid, rs) for rid, rs in zip(rids, resource_spans, strict=True) if rid >= 0]
        if not self._per_scope:
            rows = [
                (
                    rid,
                    s.name,
                    s.kind,
                    s.status.code,
                    s.start_time_unix_nano,
                    s.end_time_unix_nano,
                    s.trace_state,
                )
                for rid, rs in kept
                for ss in rs.scope_spans
                for s in ss.spans
            ]
            if not rows:
                return None
            resource_ids, names, kinds, codes, starts, ends, states = zip(*rows, strict=True)
            flat: list[Span] | None = (
                [s for _, rs in kept for ss in rs.scope_spans for s in ss.spans]
                if self._needs_spans
                else None
            )
            scope_ids: Sequence[int] = [0] * len(names)
            return _RequestColumns(
                resource_ids, scope_ids, names, kinds, codes, starts, ends, states, flat, None
            )
        # Scope labels or span-attribute dimensions: per resource and scope.
        plan = self.plan
        rows_ext: list[tuple[int, int, str, int, int, int, int, str]] = []
        all_spans: list[Span] = []
        values: list[tuple[str | None, ...]] = []
        for rid, rs in kept:
            fallback = plan.resource_values(rs.resource.attributes)
            for ss in rs.scope_spans:
                spans = ss.spans
                if not spans:
                    continue
                sid = self._scope_id(plan.scope_dimensions(ss.scope.name, ss.scope.version))
                rows_ext += [
                    (
                        rid,
                        sid,
                        s.name,
                        s.kind,
                        s.status.code,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        s.trace_state,
                    )
                    for s in spans
                ]
                all_spans += spans
                if plan.reads_span_attributes:
                    values += [plan.span_values(s, fallback) for s in spans]
        if not rows_ext:
            return None
        resource_ids, scope_ids, names, kinds, codes, starts, ends, states = zip(
            *rows_ext, strict=True
        )
        return _RequestColumns(
            resource_ids,
            scope_ids,
            names,
            kinds,
            codes,
            starts,
            ends,
            states,
            all_spans,
            values if plan.reads_span_attributes else None,
        )

    def _scope_id(self, scope: ScopeDimensions) -> int:
        sid = self._scopes.get(scope)
        if sid is None:
            sid = self._scopes[scope] = len(self._scope_list)
            self._scope_list.append(scope)
        return sid

    def _resource_id(self, resource: Resource, now: int) -> int:
        """The id of a resource's state, or -1 when it has no ``service.name``."""
        raw = resource.SerializeToString()
        rid = self._resource_cache.get(raw)
        if rid is None:
            rid = self._resolve_resource(resource, now)
            if len(self._resource_cache) >= _RESOURCE_CACHE_LIMIT:
                self._resource_cache.clear()
            self._resource_cache[raw] = rid
        if rid >= 0:
            self._by_rid[rid].last_seen_ns = now
        return rid

    def _resolve_resource(self, resource: Resource, now: int) -> int:
        service_name = _service_name(resource.attributes)
        if service_name is None:
            return -1
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
            state = _ResourceState(self._next_rid, identity, copy, service_name, now)
            self._next_rid += 1
            self._resources[identity] = state
            self._by_rid[state.rid] = state
        return state.rid

    def _rows_for(self, keys: list[SpanKey], now: int) -> list[int]:
        get = self._index.get
        rows = [get(k, -1) for k in keys]
        if -1 in rows:
            for i, row in enumerate(rows):
                if row < 0:
                    rows[i] = self._new_row(keys[i], now)
        return rows

    def _new_row(self, key: SpanKey, now: int) -> int:
        row = self._index.get(key, -1)
        if row >= 0:
            return row
        state = self._by_rid[key[0]]  # type: ignore[index]
        if self._limit and state.series_count >= self._limit:
            self.counters[CARDINALITY_OVERFLOW] += 1
            if state.overflow_row < 0:
                state.overflow_row = self._allocate(state, (state.rid, OVERFLOW_SCOPE), now)
            return state.overflow_row
        row = self._allocate(state, key, now)
        self._index[key] = row
        state.series_count += 1
        return row

    def _allocate(self, state: _ResourceState, key: SpanKey, now: int) -> int:
        row = self.table.allocate(now)
        owner = _RowOwner(state, key)
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
        self,
        columns: _RequestColumns,
        resource_spans: Sequence[ResourceSpans],
        rids: list[int],
    ) -> list[int]:
        """Adjusted count of each span: tracestate threshold times any multiplier."""
        cache = self._adjusted_cache
        key = self.config.span_multiplier_key
        spans = columns.spans
        multipliers = {
            rid: self._resource_multiplier(rs.resource.attributes)
            for rid, rs in zip(rids, resource_spans, strict=True)
            if rid >= 0
        }
        weights: list[int] = []
        for i, tracestate in enumerate(columns.states):
            count = cache.get(tracestate)
            if count is None:
                count = cache[tracestate] = adjusted_count(tracestate)
            multiplier = multipliers.get(columns.resource_ids[i])
            if key and spans is not None:
                for kv in spans[i].attributes:
                    if kv.key == key:
                        parsed = parse_multiplier(any_value_to_number(kv.value))
                        if parsed is None:
                            self.counters[INVALID_MULTIPLIER] += 1
                        else:
                            multiplier = parsed
                        break
            if multiplier is not None:
                count *= multiplier
            if count == 1.0:
                weights.append(1)
            else:
                span_id = spans[i].span_id if spans is not None else b""
                weights.append(stochastic_round(count, span_id))
        if len(cache) > 10_000:
            # Tracestates are few in practice; bound the cache against odd producers.
            self._adjusted_cache = {"": 1.0}
        return weights

    def _collect_exemplars(
        self,
        spans: Sequence[Span],
        rows: list[int],
        starts: Sequence[int],
        ends: Sequence[int],
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
        spans: Sequence[Span],
        keys: list[SpanKey],
        weights: list[int] | None,
        now: int,
    ) -> None:
        for i, (span, key) in enumerate(zip(spans, keys, strict=True)):
            if not span.events:
                continue
            weight = 1 if weights is None else weights[i]
            state = self._by_rid[key[0]]  # type: ignore[index]
            for event in span.events:
                event_key = (*key, *self.plan.event_values(event.attributes))
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
                        owner.resource.service_name, owner.key, self._scope_of(owner.key)
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

    def _scope_of(self, key: SpanKey) -> ScopeDimensions:
        sid = key[1]
        return self._scope_list[sid] if isinstance(sid, int) and sid >= 0 else ScopeDimensions()

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
            for key, series in state.events.items():
                if delta and not series.touched:
                    continue
                self._resource_points(by_resource, state).events.append(
                    EventsPoint(
                        attributes=self.plan.event_labels(
                            state.service_name, key, self._scope_of(key)
                        ),
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
        expired_rids = set()
        if resource_ttl:
            for identity, state in list(self._resources.items()):
                if now - state.last_seen_ns > resource_ttl:
                    del self._resources[identity]
                    del self._by_rid[state.rid]
                    expired_rids.add(state.rid)
            if expired_rids:
                # Cached byte strings may name an expired resource id.
                self._resource_cache.clear()
        table = self.table
        stale = table.live & (
            (now - table.last_seen_ns > series_ttl) if series_ttl else np.zeros_like(table.live)
        )
        expired = set(np.flatnonzero(stale).tolist())
        if expired_rids:
            for row, owner in enumerate(self._owners):
                if owner is not None and owner.resource.rid in expired_rids:
                    expired.add(row)
        for row in expired:
            owner = self._owners[row]
            assert owner is not None
            state = owner.resource
            if owner.key[1] == OVERFLOW_SCOPE:
                state.overflow_row = -1
            else:
                del self._index[owner.key]
                state.series_count -= 1
            self._owners[row] = None
        if series_ttl:
            for state in self._resources.values():
                for event_key, event in list(state.events.items()):
                    if now - event.last_seen_ns > series_ttl:
                        del state.events[event_key]
        table.release(sorted(expired))
