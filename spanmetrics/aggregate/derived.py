"""The derived-metrics engine: spans in, the metrics of a ``derive`` block out.

Per span: its roles (:meth:`Rules.roles`), its weight (the service's multiplier), then
either its points now, or a wait in the join buffer. Points of one record are summed per
series before they reach the :class:`~spanmetrics.aggregate.registry.SeriesRegistry`,
which owns the series' lifecycle (start times, expiry, the cardinality limit, delta and
cumulative output) as it does in the fleet's shards.

Each point's labels start with ``__name__`` (:data:`METRIC_NAME_LABEL`), the metric it
belongs to: a series is one stream of one metric, and the OTLP writer groups the points
into metrics by it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.engine import DURATION_CLAMPED, RESOURCES_TRIMMED
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.join import HeldGroup, HeldSpan, Released, TraceJoin
from spanmetrics.aggregate.oversize import bounded_resource
from spanmetrics.aggregate.points import Attributes, MetricNames, MetricsSnapshot, SeriesPoint
from spanmetrics.aggregate.registry import SeriesRegistry
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.aggregate.rules import Rules
from spanmetrics.aggregate.sampling import stochastic_round
from spanmetrics.config.defaults import MAX_RESOURCE_BYTES
from spanmetrics.config.model import Encoding, SpanMetricsConfig
from spanmetrics.config.rules import DeriveConfig
from spanmetrics.decode import decode_traces
from spanmetrics.decode.facts import AttributeMap, SpanFacts, count_spans, read_facts
from spanmetrics.model.attributes import any_value_to_str
from spanmetrics.model.clock import Clock
from spanmetrics.model.enums import Temporality

#: The unit of every derived histogram: Kubernetes' own metrics are in seconds.
DERIVED_UNIT = "s"

#: Points summed before they go to the registry (as the span-metrics engine buffers spans).
APPLY_BATCH_POINTS = 4096

# Counter names (self-telemetry labels).
SPANS_RECEIVED = "spans_received"
OTHER_SERVICES = "spans_other_services"
DROPPED_MISSING_SERVICE_NAME = "spans_dropped.missing_service_name"
EXCLUDED = "spans_excluded"
UNMATCHED = "spans_unmatched"


def derived_names(config: SpanMetricsConfig) -> MetricNames:
    """Metric names of a derived topology: each point names its metric; these are for the
    few points that name none (none are made today)."""
    return MetricNames.for_namespace(config.namespace, DERIVED_UNIT)


def weight_of(rules: Rules, span: SpanFacts, service: str) -> int:
    """How many spans ``span`` stands for: its service's multiplier, rounded at random
    (from the span id) when it is not a whole number, so that counts stay unbiased."""
    multiplier = rules.multiplier(service)
    if multiplier == 1.0:
        return 1
    return stochastic_round(multiplier, span.span_id)


class PointSums:
    """Points of one record (or one release) summed per resource and labels."""

    def __init__(self, rules: Rules, max_size: int, max_duration_ns: int) -> None:
        self._rules = rules
        self._max_size = max_size
        #: 0: no bound (``max_span_duration``).
        self._max_duration_ns = max_duration_ns
        self.by_resource: dict[bytes, dict[Attributes, list[object]]] = {}
        self.excluded = 0
        #: Spans whose duration was above ``max_duration_ns`` and counted as it.
        self.clamped = 0
        #: Points added (before summing): when to hand them on.
        self.added = 0

    def add(
        self,
        resource: bytes,
        resource_attributes: AttributeMap,
        metric_index: int,
        span: SpanFacts,
        weight: int,
        partner: SpanFacts | None = None,
        orphan: bool = False,
    ) -> None:
        """Add one span's point to ``metric_index``."""
        metric = self._rules.metrics[metric_index]
        labels = metric.labels(span, resource_attributes, partner, orphan)
        if labels is None:
            self.excluded += 1
            return
        if weight <= 0:
            return  # stands for no span: it must not touch a histogram's range either
        self.added += 1
        entry = self.by_resource.setdefault(resource, {}).get(labels)
        if entry is None:
            hist = ExpoHistogram(max_size=self._max_size) if metric.is_histogram else None
            entry = self.by_resource[resource][labels] = [0, hist]
        entry[0] += weight  # type: ignore[operator]
        if entry[1] is not None:
            duration_ns = span.duration_ns
            if self._max_duration_ns and duration_ns > self._max_duration_ns:
                self.clamped += 1
                duration_ns = self._max_duration_ns
            entry[1].record(duration_ns / 1e9, weight)  # type: ignore[attr-defined]

    def points(self) -> Iterable[tuple[bytes, list[SeriesPoint]]]:
        """Per resource, its summed points (start and time are the registry's)."""
        for resource, table in self.by_resource.items():
            yield (
                resource,
                [
                    SeriesPoint(labels, 0, 0, calls, hist)  # type: ignore[arg-type]
                    for labels, (calls, hist) in table.items()
                ],
            )


def release(
    sums: PointSums,
    released: Iterable[Released],
    attributes_of: dict[bytes, AttributeMap],
) -> None:
    """Add the points of spans the join buffer let go."""
    for r in released:
        attrs = attributes_of.get(r.resource)
        if attrs is None:
            attrs = attributes_of[r.resource] = _resource_attributes(r.resource)
        sums.add(
            r.resource, attrs, r.metric, r.held.facts, r.held.weight, r.partner, r.partner is None
        )


def _resource_attributes(raw: bytes) -> AttributeMap:
    return {kv.key: any_value_to_str(kv.value) for kv in Resource.FromString(raw).attributes}


class DerivedMetricsEngine:
    """Aggregates spans into the metrics of a ``derive`` block; :meth:`flush` emits them.

    ``forward``: spans still waiting for a partner at a flush are handed to the caller
    (:meth:`take_held`) instead of kept, as a fleet partition does at its cut.
    ``event_time``: the join window runs on span end times, not the clock (offline input,
    which is read faster than it happened).
    """

    def __init__(
        self,
        derive: DeriveConfig,
        config: SpanMetricsConfig,
        clock: Clock,
        *,
        forward: bool = False,
        event_time: bool = False,
    ) -> None:
        self.rules = Rules(derive)
        self.config = config
        self.clock = clock
        self.names = derived_names(config)
        self.temporality = Temporality.DELTA if config.is_delta else Temporality.CUMULATIVE
        self.counters: Counter[str] = Counter()
        self.registry = SeriesRegistry(
            self.names,
            cardinality_limit=config.aggregation_cardinality_limit,
            series_ttl_ns=round(config.series_expiration * 1e9),
            resource_ttl_ns=round(config.metrics_expiration * 1e9),
            delta_output=config.is_delta,
        )
        self.join = TraceJoin(self.rules)
        self._forward = forward
        self._event_time = event_time
        self._watermark_ns = 0
        self._max_size = config.histogram.max_size
        self._max_duration_ns = config.max_span_duration_ns
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)
        self._keys = self.rules.attribute_keys
        self._events = self.rules.event_names
        self._attributes: dict[bytes, AttributeMap] = {}
        self._held: list[HeldGroup] = []
        #: Points summed over several records before they reach the registry: its cost is
        #: per series and record (a histogram merge), so it is paid once per many spans.
        self._sums = PointSums(self.rules, self._max_size, self._max_duration_ns)

    @property
    def active_series(self) -> int:
        """Series currently held."""
        return len(self.registry)

    # ------------------------------------------------------------------ consume

    def consume_record(self, value: bytes, encoding: Encoding) -> None:
        """Read one Kafka record value and aggregate its spans.

        Raises:
            DecodeError: the record is not valid in ``encoding``; nothing was aggregated.
        """
        self.consume(decode_traces(value, encoding))

    def consume(self, request: ExportTraceServiceRequest) -> None:
        """Aggregate every selected span of one request."""
        now = self.clock.now_ns()
        rules = self.rules
        total = count_spans(request)
        self.counters[SPANS_RECEIVED] += total
        sums = self._sums
        released: list[Released] = []
        seen = 0
        for rs in read_facts(request, self._keys, self._events, rules.services):
            seen += len(rs.spans)
            service = rs.resource_attributes.get("service.name") or ""
            if not service:
                self.counters[DROPPED_MISSING_SERVICE_NAME] += len(rs.spans)
                continue
            resource = rs.resource
            bounded = bounded_resource(resource, MAX_RESOURCE_BYTES, self._key_attributes)
            if bounded is not None:
                self.counters[RESOURCES_TRIMMED] += 1
                resource = bounded
            raw = resource.SerializeToString()
            self._attributes.setdefault(raw, rs.resource_attributes)
            link = rules.is_link(service)
            held: list[HeldSpan] = []
            for span in rs.spans:
                roles = rules.roles(span, service)
                weight = weight_of(rules, span, service)
                for metric in roles.direct:
                    sums.add(raw, rs.resource_attributes, metric, span, weight)
                if roles.joins or link:
                    held.append(
                        HeldSpan(span, weight, list(roles.waiting), roles.partner_of,
                                 roles.selected_by)
                    )  # fmt: skip
                elif not roles.direct:
                    self.counters[UNMATCHED] += 1
                self._watermark_ns = max(self._watermark_ns, span.end_ns)
            if held:
                released += self.join.add(raw, held, self._join_now(now))
        self.counters[OTHER_SERVICES] += total - seen
        release(sums, released, self._attributes)
        if sums.added >= APPLY_BATCH_POINTS:
            self._apply_pending(now)

    def _join_now(self, now: int) -> int:
        return self._watermark_ns if self._event_time else now

    def _apply_pending(self, now: int) -> None:
        sums, self._sums = self._sums, PointSums(self.rules, self._max_size, self._max_duration_ns)
        self._apply(sums, now)

    def _apply(self, sums: PointSums, now: int) -> None:
        self.counters[EXCLUDED] += sums.excluded
        self.counters[DURATION_CLAMPED] += sums.clamped
        for raw, points in sums.points():
            resource = Resource.FromString(raw)
            identity = resource_identity(resource, self._key_attributes)
            if identity is not None:
                self.registry.apply(identity, resource, points, (), now, now)

    # -------------------------------------------------------------------- flush

    def finish(self) -> None:
        """The end of the input: every span still waiting is emitted as an orphan."""
        release(self._sums, self.join.finish(), self._attributes)
        self._apply_pending(self.clock.now_ns())

    def flush(self) -> MetricsSnapshot:
        """Build the points of this interval (cumulative or delta)."""
        now = self.clock.now_ns()
        if self._forward:
            self._held += self.join.drain()
        else:
            release(self._sums, self.join.expire(self._join_now(now)), self._attributes)
        self._apply_pending(now)
        self.counters.update({k: v for k, v in self.join.counters.items()})
        self.join.counters = dict.fromkeys(self.join.counters, 0)
        registry = self.registry
        stamp = registry.stamp(now)
        registry.expire(stamp)
        if self.config.is_delta:
            snapshot, _ = registry.take_delta(stamp)
        else:
            snapshot = registry.cumulative(stamp)
        registry.committed(registry.changes())
        if len(self._attributes) > 10_000:
            self._attributes.clear()  # resources churn (pods); re-read when needed
        return MetricsSnapshot(self.names, self.temporality, stamp, snapshot.resources)

    def take_held(self) -> list[HeldGroup]:
        """With ``forward``: the groups still waiting at the last flushes, handed over."""
        held, self._held = self._held, []
        return held
