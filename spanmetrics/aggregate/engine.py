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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import cast

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from spanmetrics.aggregate.attributes import any_value_to_number
from spanmetrics.aggregate.dimensions import (
    OVERFLOW_SCOPE,
    DimensionPlan,
    ScopeDimensions,
    SpanKey,
    metric_names,
)
from spanmetrics.aggregate.explicit import ExplicitHistogramColumns
from spanmetrics.aggregate.expohist_columns import ExpoHistogramColumns
from spanmetrics.aggregate.points import (
    EventsPoint,
    Exemplar,
    MetricsSnapshot,
    ResourcePoints,
    SeriesPoint,
)
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.aggregate.sampling import adjusted_count, parse_multiplier, stochastic_round
from spanmetrics.aggregate.series import HistogramColumns, SeriesTable
from spanmetrics.config.model import Encoding, SpanMetricsConfig
from spanmetrics.decode import decode_traces
from spanmetrics.model.clock import Clock
from spanmetrics.model.enums import Temporality

#: Nanoseconds per unit of the duration metric.
_NS_PER_UNIT = {"ms": 1e6, "s": 1e9}

#: Growth factor of the series table and histogram columns when full. A row is about
#: 1.4 kB at max_size 160 (histogram buckets), so unused capacity dominates memory per
#: series: at 1.25 it is at most a fifth of the rows (a half when doubling), while the
#: copies stay amortised O(1) a row and happen only when series are created.
_TABLE_GROWTH = 1.25

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
    #: ``end - start`` of each span in ns (negative when a span ends before it starts), one
    #: array per consume call.
    durations: list[NDArray[np.float64]] = field(default_factory=list)
    #: None while every pending span weighs 1, the common case, so no list is kept.
    weights: list[int] | None = None
    #: (span count, consume time) per consume call, so each series' last-seen time is the
    #: time its spans arrived, not the time they were applied.
    arrivals: list[tuple[int, int]] = field(default_factory=list)

    def add(
        self,
        rows: list[int],
        durations: NDArray[np.float64],
        weights: list[int] | None,
        now_ns: int,
    ) -> None:
        """Append the spans of one consume call, received at ``now_ns``; ``weights`` None
        means all 1."""
        if weights is not None and self.weights is None:
            self.weights = [1] * len(self.rows)
        self.rows += rows
        self.durations.append(durations)
        if self.weights is not None:
            self.weights += weights if weights is not None else [1] * len(rows)
        self.arrivals.append((len(rows), now_ns))

    def arrival_times(self) -> NDArray[np.int64]:
        """Consume time of each pending span."""
        counts = np.array([n for n, _ in self.arrivals], np.int64)
        times = np.array([t for _, t in self.arrivals], np.int64)
        return np.repeat(times, counts)


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


#: Per ResourceSpans: the id of its resource's state (-1: no ``service.name``, dropped) and
#: the resource's fallback value of each configured dimension.
_ResourceEntry = tuple[int, tuple[str | None, ...]]
#: A ResourceSpans whose spans are aggregated, with its resource id and fallback values.
_KeptResource = tuple[int, ResourceSpans, tuple[str | None, ...]]

#: What is read of each span: its series key as read (the resource id first), ``end -
#: start`` in ns, and its trace_state.
_SpanRead = tuple[SpanKey, int, str]

#: Splitters of the _SpanRead tuples. ``map`` with an itemgetter transposes in C at about
#: half the cost of ``zip(*rows)``, which makes one iterator per row.
_KEY = itemgetter(0)
_DURATION = itemgetter(1)
_STATE = itemgetter(2)


class _Lazy:
    """The spans of a request, read only if an item is asked for."""

    def __init__(
        self, read: Callable[[list[_KeptResource]], list[Span]], kept: list[_KeptResource]
    ) -> None:
        self._read = read
        self._kept = kept
        self._spans: list[Span] | None = None

    def __getitem__(self, i: int) -> Span:
        if self._spans is None:
            self._spans = self._read(self._kept)
        return self._spans[i]


#: Resources remembered by their serialized bytes before the cache is cleared.
_RESOURCE_CACHE_LIMIT = 10_000
#: Scope names remembered (see ``SpanMetricsEngine._may_hold_dimensions``) before clearing.
_SCOPE_MEMORY_LIMIT = 10_000


def explicit_bounds(config: SpanMetricsConfig) -> tuple[float, ...] | None:
    """Bounds of the explicit duration histogram in the metric's unit; None when the
    histogram is exponential (or disabled)."""
    hist = config.histogram
    if hist.disable or hist.explicit is None:
        return None
    ms_per_unit = _NS_PER_UNIT[hist.unit] / 1e6
    return tuple(b / ms_per_unit for b in hist.explicit.buckets)


class SpanMetricsEngine:
    """Aggregates spans into calls and duration series; :meth:`flush` emits them."""

    def __init__(self, config: SpanMetricsConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.plan = DimensionPlan(config)
        self.names = metric_names(config)
        self.temporality = Temporality.DELTA if config.is_delta else Temporality.CUMULATIVE
        self.counters: Counter[str] = Counter()
        self._ns_per_unit = _NS_PER_UNIT[config.histogram.unit]
        self.table = SeriesTable(self._histogram_columns(config), growth=_TABLE_GROWTH)
        #: series key -> row; keys start with the resource id, so one dict serves all.
        self._index: dict[SpanKey, int] = {}
        #: Key of each row (None: free row). The row's resource is ``_by_rid[key[0]]``: a
        #: list of keys costs less memory per series than one owner object per row.
        self._row_keys: list[SpanKey | None] = []
        self._resources: dict[tuple[object, ...], _ResourceState] = {}
        self._by_rid: dict[int, _ResourceState] = {}
        self._next_rid = 0
        #: serialized Resource -> (resource id or -1 when it has no service.name, fallback
        #: dimension values), to skip re-reading the attributes of a resource seen before.
        self._resource_cache: dict[bytes, _ResourceEntry] = {}
        self._scopes: dict[ScopeDimensions, int] = {ScopeDimensions(): 0}
        self._scope_list: list[ScopeDimensions] = [ScopeDimensions()]
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)
        self._limit = config.aggregation_cardinality_limit
        self._exemplar_max = config.exemplars.max_per_data_point if config.exemplars.enabled else 0
        self._exemplars: dict[int, list[Exemplar]] = {}
        self._adjusted_cache: dict[str, float] = {"": 1.0}
        self._pending = _PendingBatch()
        #: Scope name -> whether its spans carried dimension attributes when last scanned.
        self._scopes_with_dimensions: dict[str, bool] = {}
        # Per-span work beyond the intrinsic columns, decided once.
        self._per_scope = bool(self.plan.scopes) or self.plan.reads_span_attributes
        self._keep_spans = (
            bool(self._exemplar_max) or config.events.enabled or bool(config.span_multiplier_key)
        )

    def _histogram_columns(self, config: SpanMetricsConfig) -> HistogramColumns | None:
        hist = config.histogram
        if hist.disable:
            return None
        bounds = explicit_bounds(config)
        if bounds is not None:
            return ExplicitHistogramColumns(bounds, growth=_TABLE_GROWTH)
        return ExpoHistogramColumns(hist.max_size, growth=_TABLE_GROWTH)

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
        resources = self._resource_entries(resource_spans, now)
        kept: list[_KeptResource] = [
            (rid, rs, fallback)
            for (rid, fallback), rs in zip(resources, resource_spans, strict=True)
            if rid >= 0
        ]
        if len(kept) < len(resources):
            dropped = sum(
                len(ss.spans)
                for (rid, _), rs in zip(resources, resource_spans, strict=True)
                if rid < 0
                for ss in rs.scope_spans
            )
            self.counters[DROPPED_MISSING_SERVICE_NAME] += dropped
            self.counters[SPANS_RECEIVED] += dropped
        read = self._read_per_scope(kept) if self._per_scope else self._read_request(kept)
        if not read:
            return
        self.counters[SPANS_RECEIVED] += len(read)
        keys = self.plan.with_sampling_method(
            self.plan.exclude(list(map(_KEY, read))), map(_STATE, read)
        )
        # fromiter with a known count fills one preallocated array, cheaper than np.array
        # on a list, which first scans it for shape and type. Durations are exact ints;
        # float64 takes any of them (no int64 overflow) and rounds as the uint64 -> float64
        # cast of ``end - start`` would.
        durations = np.fromiter(map(_DURATION, read), np.float64, len(read))
        rows = self._rows_for(keys, now)
        # Spans are read again only when something needs more than the key and duration.
        spans = self._spans(kept) if self._keep_spans else None
        weights: list[int] | None = None
        if self.config.span_multiplier_key or any(map(_STATE, read)):
            states: list[str] = list(map(_STATE, read))
            weights = self._weights(
                states, keys, spans if spans is not None else _Lazy(self._spans, kept),
                resource_spans, resources,
            )  # fmt: skip
        pending = self._pending
        pending.add(rows, durations, weights, now)
        if spans is not None:
            if self._exemplar_max:
                self._collect_exemplars(spans, rows, durations)
            if self.config.events.enabled:
                self._count_events(spans, keys, weights, now)
        if len(pending.rows) >= APPLY_BATCH_SPANS:
            self._apply_pending()

    def _apply_pending(self) -> None:
        pending = self._pending
        n = len(pending.rows)
        if not n:
            return
        self._pending = _PendingBatch()
        row_ids = np.fromiter(pending.rows, np.int64, n)
        durations = np.concatenate(pending.durations)
        negative = durations < 0.0
        n_negative = int(np.count_nonzero(negative))
        if n_negative:
            # A span that ends before it starts counts as 0, as in the connector.
            self.counters[NEGATIVE_DURATION] += n_negative
            durations[negative] = 0.0
        values = durations / self._ns_per_unit
        weights = pending.weights
        w = np.ones(n, np.int64) if weights is None else np.fromiter(weights, np.int64, n)
        self.table.record(row_ids, values, w, pending.arrival_times())

    @staticmethod
    def _read_request(kept: list[_KeptResource]) -> list[_SpanRead]:
        """Every span of the request in one comprehension: the common configuration (no
        scope labels, no span-attribute dimensions)."""
        # The key is built right here: zipping name/kind/code columns into keys afterwards
        # would cost a second pass and a second tuple per span.
        return [
            (
                (rid, 0, s.name, s.kind, s.status.code),
                s.end_time_unix_nano - s.start_time_unix_nano,
                s.trace_state,
            )
            for rid, rs, _ in kept
            for ss in rs.scope_spans
            for s in ss.spans
        ]

    @staticmethod
    def _spans(kept: list[_KeptResource]) -> list[Span]:
        """The spans read by :meth:`_read_request` or :meth:`_read_per_scope`, in order."""
        return [s for _, rs, _ in kept for ss in rs.scope_spans for s in ss.spans]

    def _read_per_scope(self, kept: list[_KeptResource]) -> list[_SpanRead]:
        """Every span of the request when keys need scope labels or span-attribute
        dimensions: one comprehension per resource and scope."""
        plan = self.plan
        read: list[_SpanRead] = []
        for rid, rs, fallback in kept:
            for ss in rs.scope_spans:
                spans = ss.spans
                if not spans:
                    continue
                scope = ss.scope
                sid = (
                    self._scope_id(plan.scope_dimensions(scope.name, scope.version))
                    if plan.scopes
                    else 0
                )
                if plan.reads_span_attributes and self._may_hold_dimensions(ss, scope.name):
                    read += self._read_scope_dimensions(spans, rid, sid, fallback, scope.name)
                else:
                    # Resource (or default) values for every span of the scope.
                    read += [
                        (
                            (rid, sid, s.name, s.kind, s.status.code, *fallback),
                            s.end_time_unix_nano - s.start_time_unix_nano,
                            s.trace_state,
                        )
                        for s in spans
                    ]
        return read

    def _may_hold_dimensions(self, ss: ScopeSpans, scope_name: str) -> bool:
        """Whether spans of ``ss`` may carry dimension attributes, so must be scanned.

        The byte check of :meth:`DimensionPlan.may_hold_dimensions` costs a serialization
        of the scope, wasted on scopes whose spans do carry them (HTTP server spans for
        HTTP dimensions), so a scope name whose last scan found some is scanned at once.
        """
        if self._scopes_with_dimensions.get(scope_name, False):
            return True
        if self.plan.may_hold_dimensions(ss):
            return True
        self._remember_scope(scope_name, False)
        return False

    def _remember_scope(self, scope_name: str, found: bool) -> None:
        seen = self._scopes_with_dimensions
        if len(seen) >= _SCOPE_MEMORY_LIMIT and scope_name not in seen:
            seen.clear()
        seen[scope_name] = found

    def _read_scope_dimensions(
        self,
        spans: Iterable[Span],
        rid: int,
        sid: int,
        fallback: tuple[str | None, ...],
        scope_name: str,
    ) -> list[_SpanRead]:
        """The spans of one scope, each scanned for its dimension attributes."""
        spans = list(spans)  # one wrapper per span for both passes below
        span_values = self.plan.span_values
        values = [span_values(s, fallback) for s in spans]
        # span_values returns ``fallback`` itself when a span has none of the attributes.
        self._remember_scope(scope_name, any(v is not fallback for v in values))
        return [
            (
                (rid, sid, s.name, s.kind, s.status.code, *v),
                s.end_time_unix_nano - s.start_time_unix_nano,
                s.trace_state,
            )
            for s, v in zip(spans, values, strict=True)
        ]

    def _scope_id(self, scope: ScopeDimensions) -> int:
        sid = self._scopes.get(scope)
        if sid is None:
            sid = self._scopes[scope] = len(self._scope_list)
            self._scope_list.append(scope)
        return sid

    def _resource_entries(
        self, resource_spans: Sequence[ResourceSpans], now: int
    ) -> list[_ResourceEntry]:
        """Per ResourceSpans: the id of its resource's state (-1 when it has no
        ``service.name``) and its fallback dimension values."""
        raws = [rs.resource.SerializeToString() for rs in resource_spans]
        cache = self._resource_cache
        entries = list(map(cache.get, raws))
        if None in entries:
            for i, entry in enumerate(entries):
                if entry is None:
                    entries[i] = self._cache_resource(raws[i], resource_spans[i].resource, now)
        known = cast(list[_ResourceEntry], entries)
        by_rid = self._by_rid
        for rid, _ in set(known):
            if rid >= 0:
                by_rid[rid].last_seen_ns = now
        return known

    def _cache_resource(self, raw: bytes, resource: Resource, now: int) -> _ResourceEntry:
        rid = self._resolve_resource(resource, now)
        entry = (rid, self.plan.resource_values(resource.attributes) if rid >= 0 else ())
        if len(self._resource_cache) >= _RESOURCE_CACHE_LIMIT:
            self._resource_cache.clear()
        self._resource_cache[raw] = entry
        return entry

    def _resolve_resource(self, resource: Resource, now: int) -> int:
        identity = resource_identity(resource, self._key_attributes)
        if identity is None:
            return -1
        service_name = str(identity[0])
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
        # One C-level pass of dict lookups, no Python call per span. A new key stops it with
        # KeyError: list.extend keeps the rows found so far, so the new key is the one at
        # len(rows), and the same map resumes after it. dict.get would return None for new
        # keys, and searching the rows for None costs more than the rare exception.
        rows: list[int] = []
        lookup = map(self._index.__getitem__, keys)
        while True:
            try:
                rows.extend(lookup)
            except KeyError:
                rows.append(self._new_row(keys[len(rows)], now))
            else:
                return rows

    def _new_row(self, key: SpanKey, now: int) -> int:
        row = self._index.get(key, -1)
        if row >= 0:
            return row
        state = self._by_rid[key[0]]  # type: ignore[index]
        if self._limit and state.series_count >= self._limit:
            self.counters[CARDINALITY_OVERFLOW] += 1
            if state.overflow_row < 0:
                state.overflow_row = self._allocate((state.rid, OVERFLOW_SCOPE), now)
            return state.overflow_row
        row = self._allocate(key, now)
        self._index[key] = row
        state.series_count += 1
        return row

    def _allocate(self, key: SpanKey, now: int) -> int:
        row = self.table.allocate(now)
        if row == len(self._row_keys):
            self._row_keys.append(key)
        else:
            self._row_keys[row] = key
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
        states: list[str],
        keys: list[SpanKey],
        spans: Sequence[Span] | _Lazy,
        resource_spans: Sequence[ResourceSpans],
        resources: list[_ResourceEntry],
    ) -> list[int]:
        """Adjusted count of each span: tracestate threshold times any multiplier."""
        cache = self._adjusted_cache
        key = self.config.span_multiplier_key
        multipliers = {
            rid: self._resource_multiplier(rs.resource.attributes)
            for (rid, _), rs in zip(resources, resource_spans, strict=True)
            if rid >= 0
        }
        weights: list[int] = []
        for i, tracestate in enumerate(states):
            count = cache.get(tracestate)
            if count is None:
                count = cache[tracestate] = adjusted_count(tracestate)
            multiplier = multipliers.get(keys[i][0])  # type: ignore[call-overload]
            if key:
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
                # The span id is the random draw: it must be read even when nothing else
                # of the span is (without it every count would round the same way).
                weights.append(stochastic_round(count, spans[i].span_id))
        if len(cache) > 10_000:
            # Tracestates are few in practice; bound the cache against odd producers.
            self._adjusted_cache = {"": 1.0}
        return weights

    def _collect_exemplars(
        self, spans: Sequence[Span], rows: list[int], durations: NDArray[np.float64]
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
            duration = max(float(durations[i]), 0.0) / self._ns_per_unit
            kept.append(Exemplar(span.trace_id, span.span_id, duration, span.end_time_unix_nano))

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
            key = self._row_keys[row]
            assert key is not None
            resource = self._by_rid[key[0]]  # type: ignore[index]
            points = self._resource_points(by_resource, resource)
            start = int(table.start_ns[row] if delta else table.created_ns[row])
            points.series.append(
                SeriesPoint(
                    attributes=self.plan.labels(resource.service_name, key, self._scope_of(key)),
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
            for row, key in enumerate(self._row_keys):
                if key is not None and key[0] in expired_rids:
                    expired.add(row)
        for row in expired:
            key = self._row_keys[row]
            assert key is not None
            # None when the whole resource expired: its state is gone, nothing to update.
            state = self._by_rid.get(key[0])  # type: ignore[call-overload]
            if key[1] == OVERFLOW_SCOPE:
                if state is not None:
                    state.overflow_row = -1
            else:
                del self._index[key]
                if state is not None:
                    state.series_count -= 1
            self._row_keys[row] = None
        if series_ttl:
            for state in self._resources.values():
                for event_key, event in list(state.events.items()):
                    if now - event.last_seen_ns > series_ttl:
                        del state.events[event_key]
        table.release(sorted(expired))
