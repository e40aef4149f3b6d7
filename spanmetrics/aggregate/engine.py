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
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import cast

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.dimensions import (
    OVERFLOW_SCOPE,
    DimensionPlan,
    ScopeDimensions,
    SpanKey,
    metric_names,
)
from spanmetrics.aggregate.explicit import ExplicitHistogramColumns
from spanmetrics.aggregate.expohist_columns import ExpoHistogramColumns
from spanmetrics.aggregate.join import HeldGroup
from spanmetrics.aggregate.oversize import bounded_resource, key_bytes
from spanmetrics.aggregate.points import (
    EventsPoint,
    Exemplar,
    MetricsSnapshot,
    ResourcePoints,
    SeriesPoint,
)
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.aggregate.sampling import (
    MAX_ADJUSTED_COUNT,
    adjusted_count,
    parse_multiplier,
    stochastic_round,
)
from spanmetrics.aggregate.series import HistogramColumns, SeriesTable
from spanmetrics.config.defaults import MAX_RESOURCE_BYTES, MAX_SERIES_LABEL_BYTES
from spanmetrics.config.model import Encoding, SpanMetricsConfig
from spanmetrics.decode.batch import (
    KeyLayout,
    SpanBatch,
    Values,
    batch_from_request,
    read_batch,
    select,
)
from spanmetrics.model.attributes import any_value_to_number
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
DURATION_CLAMPED = "spans_duration_clamped"
CARDINALITY_OVERFLOW = "spans_cardinality_overflow"
OVERSIZED_LABELS = "spans_oversized_labels"
RESOURCES_TRIMMED = "resources_trimmed"
INVALID_MULTIPLIER = "spans_invalid_multiplier"
ADJUSTED_COUNT_CAPPED = "spans_adjusted_count_capped"


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


#: What a span's key starts with: its resource's id (-1: no ``service.name``, dropped).
_NO_SERVICE = -1

#: Resources remembered by their serialized bytes before the cache is cleared.
_RESOURCE_CACHE_LIMIT = 10_000


def _per_span(batch: SpanBatch, scope_ids: list[int]) -> list[int]:
    """A per-scope id repeated for each span of the scope."""
    out: list[int] = []
    start = 0
    for scope_id, end in zip(scope_ids, batch.scope_span_end, strict=True):
        out += [scope_id] * (end - start)
        start = end
    return out


def _first(keys: list[SpanKey]) -> list[int]:
    """The resource id of each key."""
    return cast(list[int], [k[0] for k in keys])


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
        self._max_duration_ns = config.max_span_duration_ns or float("inf")
        self.table = SeriesTable(self._histogram_columns(config), growth=_TABLE_GROWTH)
        #: series key -> row; keys start with the resource id, so one dict serves all.
        self._index: dict[SpanKey, int] = {}
        #: Key of each row (None: free row). The row's resource is ``_by_rid[key[0]]``: a
        #: list of keys costs less memory per series than one owner object per row.
        self._row_keys: list[SpanKey | None] = []
        self._resources: dict[tuple[object, ...], _ResourceState] = {}
        self._by_rid: dict[int, _ResourceState] = {}
        self._next_rid = 0
        #: serialized Resource -> its resource id (-1 when it has no service.name), to
        #: skip parsing a resource seen before.
        self._resource_cache: dict[bytes, int] = {}
        self._scopes: dict[ScopeDimensions, int] = {ScopeDimensions(): 0}
        self._scope_list: list[ScopeDimensions] = [ScopeDimensions()]
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)
        self._limit = config.aggregation_cardinality_limit
        self._exemplar_max = config.exemplars.max_per_data_point if config.exemplars.enabled else 0
        self._exemplars: dict[int, list[Exemplar]] = {}
        #: Rows whose exemplars for this interval are complete: their spans are skipped.
        self._full_exemplar_rows: set[int] = set()
        self._adjusted_cache: dict[str, float] = {"": 1.0}
        self._pending = _PendingBatch()
        #: What the batches must hold for this configuration.
        self.spec = self.plan.batch_spec(
            ids=bool(self._exemplar_max), multiplier_key=config.span_multiplier_key
        )
        #: The scanner builds series keys itself, with this engine's resource and scope ids.
        self._layout = KeyLayout(
            self._resolve,
            self._scope_id_of if self.plan.scopes else None,
            self.plan.keep_name,
            self.plan.keep_kind,
            self.plan.keep_status,
        )
        #: The time of the record being consumed (a resource created while scanning).
        self._now = 0

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
        """Read one Kafka record value and aggregate its spans (the compiled scanner for
        ``otlp_proto`` when it is built, see :data:`spanmetrics.decode.batch.PATH`).

        Raises:
            DecodeError: the record is not valid in ``encoding``; nothing was aggregated.
        """
        now = self._now = self.clock.now_ns()  # also the creation time of new resources
        self._consume_batch(read_batch(value, encoding, self.spec, self._layout), now)

    def consume(self, request: ExportTraceServiceRequest) -> None:
        """Aggregate every span of one decoded request (read by the pure-Python reader)."""
        now = self._now = self.clock.now_ns()
        self._consume_batch(batch_from_request(request, self.spec), now)

    def _consume_batch(self, batch: SpanBatch, now: int) -> None:
        """Aggregate the spans of one batch, received at ``now``.

        Series are created at once; counts and histograms may be buffered until enough
        spans are pending or until the next :meth:`flush`.
        """
        plan = self.plan
        # Resolved while scanning, or here: the same lookup by the resource's bytes.
        rids = self._seen(
            batch.resource_ids
            if batch.resource_ids is not None
            else [self._resolve(raw) for raw in batch.resources],
            now,
        )
        n = len(batch)
        self.counters[SPANS_RECEIVED] += n
        # Without keys from the scanner, each span's resource and scope ids, by position.
        span_rids = span_sids = None
        if batch.keys is None:
            scope_rids = [
                rids[i]
                for i, end in enumerate(batch.resource_scope_end)
                for _ in range(batch.resource_scope_end[i - 1] if i else 0, end)
            ]
            span_rids = _per_span(batch, scope_rids)
            if plan.scopes:
                span_sids = _per_span(batch, [self._scope_id_of(*s) for s in batch.scopes])
        if _NO_SERVICE in rids:
            first = _first(batch.keys) if batch.keys is not None else span_rids
            assert first is not None
            kept = [i for i, rid in enumerate(first) if rid != _NO_SERVICE]
            self.counters[DROPPED_MISSING_SERVICE_NAME] += n - len(kept)
            if not kept:
                return
            batch = select(batch, kept)
            span_rids = None if span_rids is None else [span_rids[i] for i in kept]
            span_sids = None if span_sids is None else [span_sids[i] for i in kept]
        if not len(batch):
            return
        if batch.keys is not None:
            keys = batch.keys  # built by the scanner, in the plan's layout
        else:
            assert span_rids is not None
            assert batch.names is not None and batch.kinds is not None and batch.codes is not None
            keys = plan.keys(
                span_rids,
                span_sids if span_sids is not None else repeat(0),
                batch.names,
                batch.kinds,
                batch.codes,
                self._dimension_values(batch, rids, span_rids),
            )
        keys = plan.with_sampling_method(keys, batch.trace_states)
        rows = self._rows_for(keys, now)
        weights: list[int] | None = None
        if self.config.span_multiplier_key or any(batch.trace_states):
            weights = self._weights(
                batch, rids, span_rids if span_rids is not None else _first(keys)
            )
        pending = self._pending
        pending.add(rows, batch.durations, weights, now)
        if self._exemplar_max:
            self._collect_exemplars(batch, rows)
        if batch.events is not None:
            self._count_events(batch.events, keys, weights, now)
        if len(pending.rows) >= APPLY_BATCH_SPANS:
            self._apply_pending()

    def _scope_id_of(self, name: str, version: str) -> int:
        """A scope's id (its ``include_instrumentation_scope`` labels); also the scanner's
        :attr:`KeyLayout.scope_id`."""
        return self._scope_id(self.plan.scope_dimensions(name, version))

    def _resolve(self, raw: bytes) -> int:
        """A resource's id, remembered by its bytes (also the scanner's
        :attr:`KeyLayout.resolve`)."""
        rid = self._resource_cache.get(raw)
        return self._cache_resource(raw, self._now) if rid is None else rid

    def _seen(self, rids: list[int], now: int) -> list[int]:
        by_rid = self._by_rid
        for rid in set(rids):
            if rid >= 0:
                by_rid[rid].last_seen_ns = now
        return rids

    def _dimension_values(
        self, batch: SpanBatch, rids: list[int], span_rids: list[int]
    ) -> list[tuple[object, ...]] | None:
        """The dimension part of each span's key: the named values, then the glob matches."""
        plan = self.plan
        if not plan.globs:
            return batch.values  # type: ignore[return-value]
        assert batch.pairs is not None and batch.resource_pairs is not None
        named: Iterable[tuple[object, ...]] = batch.values or repeat(())
        base = {rid: plan.glob_values(batch.resource_pairs[i], ()) for i, rid in enumerate(rids)}
        return [
            (*v, plan.glob_values(pairs, base[rid]))
            for v, pairs, rid in zip(named, batch.pairs, span_rids)  # noqa: B905
        ]

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
        too_long = durations > self._max_duration_ns
        n_too_long = int(np.count_nonzero(too_long))
        if n_too_long:
            self.counters[DURATION_CLAMPED] += n_too_long
            durations[too_long] = self._max_duration_ns
        values = durations / self._ns_per_unit
        weights = pending.weights
        w = np.ones(n, np.int64) if weights is None else np.fromiter(weights, np.int64, n)
        arrivals = pending.arrival_times()
        if weights is not None:
            # An adjusted count below 1 may round to 0: such a span stands for no span, and
            # must not touch the histogram's range either.
            counted = w > 0
            if not counted.all():
                row_ids, values, w, arrivals = (
                    row_ids[counted],
                    values[counted],
                    w[counted],
                    arrivals[counted],
                )
        self.table.record(row_ids, values, w, arrivals)

    def _scope_id(self, scope: ScopeDimensions) -> int:
        sid = self._scopes.get(scope)
        if sid is None:
            sid = self._scopes[scope] = len(self._scope_list)
            self._scope_list.append(scope)
        return sid

    def _cache_resource(self, raw: bytes, now: int) -> int:
        rid = self._resolve_resource(Resource.FromString(raw), now)
        if len(self._resource_cache) >= _RESOURCE_CACHE_LIMIT:
            self._resource_cache.clear()
        self._resource_cache[raw] = rid
        return rid

    def _resolve_resource(self, resource: Resource, now: int) -> int:
        bounded = bounded_resource(resource, MAX_RESOURCE_BYTES, self._key_attributes)
        if bounded is not None:
            self.counters[RESOURCES_TRIMMED] += 1
            resource = bounded
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
        over_limit = self._limit and state.series_count >= self._limit
        oversized = key_bytes(key) > MAX_SERIES_LABEL_BYTES
        if over_limit or oversized:
            self.counters[OVERSIZED_LABELS if oversized else CARDINALITY_OVERFLOW] += 1
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

    def _multiplier(self, raw: bytes | None) -> float | None:
        """A multiplier attribute's value (a serialized AnyValue); None when absent."""
        if raw is None:
            return None
        return parse_multiplier(any_value_to_number(AnyValue.FromString(raw)))

    def _weights(self, batch: SpanBatch, rids: list[int], span_rids: list[int]) -> list[int]:
        """Adjusted count of each span: tracestate threshold times any multiplier (the
        span's own, else its resource's)."""
        cache = self._adjusted_cache
        by_rid: dict[int, float | None] = {}
        if self.config.span_multiplier_key:
            for rid, raw in zip(rids, batch.resource_multipliers, strict=True):
                by_rid[rid] = self._multiplier(raw)
        span_multipliers = batch.multipliers
        weights: list[int] = []
        for i, tracestate in enumerate(batch.trace_states):
            count = cache.get(tracestate)
            if count is None:
                count = cache[tracestate] = adjusted_count(tracestate)
            multiplier = by_rid.get(span_rids[i])
            if span_multipliers is not None and span_multipliers[i] is not None:
                parsed = self._multiplier(span_multipliers[i])
                if parsed is None:
                    self.counters[INVALID_MULTIPLIER] += 1
                else:
                    multiplier = parsed
            if multiplier is not None:
                count *= multiplier
            if count > MAX_ADJUSTED_COUNT:
                self.counters[ADJUSTED_COUNT_CAPPED] += 1
                count = MAX_ADJUSTED_COUNT
            if count == 1.0:
                weights.append(1)
            else:
                # The span id is the random draw (the batch keeps it for every span that
                # may weigh more than one): without it every count would round the same way.
                weights.append(stochastic_round(count, batch.span_ids[i] or b""))
        if len(cache) > 10_000:
            # Tracestates are few in practice; bound the cache against odd producers.
            self._adjusted_cache = {"": 1.0}
        return weights

    def _collect_exemplars(self, batch: SpanBatch, rows: list[int]) -> None:
        limit = self._exemplar_max
        store = self._exemplars
        full = self._full_exemplar_rows
        assert batch.trace_ids is not None and batch.end_times is not None
        durations = batch.durations
        for i, row in enumerate(rows):
            if row in full:
                continue
            kept = store.get(row)
            if kept is None:
                kept = store[row] = []
            elif len(kept) >= limit:
                full.add(row)
                continue
            trace_id = batch.trace_ids[i]
            if not trace_id:
                continue
            clamped = min(max(float(durations[i]), 0.0), self._max_duration_ns)
            duration = clamped / self._ns_per_unit
            kept.append(Exemplar(trace_id, batch.span_ids[i] or b"", duration, batch.end_times[i]))

    def _count_events(
        self,
        events: list[list[Values] | None],
        keys: list[SpanKey],
        weights: list[int] | None,
        now: int,
    ) -> None:
        for i, (span_events, key) in enumerate(zip(events, keys, strict=True)):
            if not span_events:
                continue
            weight = 1 if weights is None else weights[i]
            state = self._by_rid[key[0]]  # type: ignore[index]
            for values in span_events:
                event_key = (*key, *values)
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
        self._full_exemplar_rows.clear()
        return MetricsSnapshot(self.names, self.temporality, now, list(by_resource.values()))

    def take_held(self) -> list[HeldGroup]:
        """Spans held for joins: none, the span metrics join nothing (the fleet's stage 1
        asks every engine)."""
        return []

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
