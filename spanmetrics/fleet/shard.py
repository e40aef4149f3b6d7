"""Stage 2 of the fleet: the owner of one shard, and so of every series in it.

The owner reads its partition of the internal topic, applies each delta part once, keeps
the shard's :class:`~spanmetrics.aggregate.registry.SeriesRegistry`, and turns it, every
flush, into one incremental checkpoint and the shard's output. The checkpoint's content is
taken in one synchronous step (:meth:`ShardOwner.prepare`), so deltas keep being applied
while it is written; it becomes the owner's truth only once the store took it
(:meth:`ShardOwner.stored`).

With a ``derive`` topology the owner also joins: cuts hand it the spans that still wait for
a partner (:class:`ShardJoin`), and its checkpoint holds them with the series, so a join
is exact through a crash or a move like every count.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.derived import PointSums, release
from spanmetrics.aggregate.engine import DURATION_CLAMPED
from spanmetrics.aggregate.join import HeldGroup, TraceJoin
from spanmetrics.aggregate.points import EventsPoint, SeriesPoint
from spanmetrics.aggregate.registry import (
    ChangedSeries,
    Changes,
    DeltaTaken,
    SeriesRegistry,
    StreamMark,
    series_id,
)
from spanmetrics.aggregate.resources import ResourceIdentity, resource_identity
from spanmetrics.aggregate.rules import Rules
from spanmetrics.aggregate.views import OutputPlan
from spanmetrics.decode.facts import AttributeMap
from spanmetrics.fleet.output import KafkaOutput
from spanmetrics.state.codec import (
    Applied,
    CodecError,
    HistogramSpec,
    OutputRecord,
    decode_delta,
    decode_join,
    decode_resource_state,
    decode_series_state,
    encode_join,
    encode_resource_state,
    encode_series_state,
)
from spanmetrics.state.store import ShardCheckpoint, ShardWrite

#: What :meth:`ShardOwner.apply` did with a record.
APPLIED, DUPLICATE, ALREADY_READ = "applied", "duplicate", "already_read"


@dataclass(slots=True)
class PreparedFlush:
    """One flush of a shard, taken in one step: the checkpoint to write and the output."""

    write: ShardWrite
    changes: Changes
    taken: DeltaTaken | None
    removed: list[ChangedSeries]
    """Series that expire with this flush."""
    cumulative: list[ExportMetricsServiceRequest] | None
    """The shard's cumulative state as OTLP (for Prometheus and cumulative output)."""
    outputs: list[OutputRecord]
    """Records to send once the write is stored; they include all of ``write.pending``."""


class ShardJoin:
    """A shard's joins (``derive``): the spans cuts handed on, until their partner comes or
    the window ends; the spans it lets go become points of the shard's series."""

    def __init__(self, rules: Rules, max_size: int, max_duration_ns: int) -> None:
        self.buffer = TraceJoin(rules)
        self._rules = rules
        self._max_size = max_size
        self._max_duration_ns = max_duration_ns
        self._attributes: dict[bytes, AttributeMap] = {}
        #: Whether the buffer changed since the last checkpoint taken.
        self.dirty = False
        #: Released spans whose duration was clamped, since the last ``take_counters``.
        self.clamped = 0

    def add(self, groups: list[HeldGroup], now_ns: int) -> PointSums:
        """Hold the groups of one delta record; the points of the spans it let go."""
        sums = PointSums(self._rules, self._max_size, self._max_duration_ns)
        if groups:
            release(sums, self.buffer.add_held(groups, now_ns), self._attributes)
            self.dirty = True
        self.clamped += sums.clamped
        return sums

    def expire(self, now_ns: int) -> PointSums:
        """Let go of traces past the window; their waiting spans' points (orphans)."""
        sums = PointSums(self._rules, self._max_size, self._max_duration_ns)
        released = self.buffer.expire(now_ns)
        if released:
            release(sums, released, self._attributes)
            self.dirty = True
        self.clamped += sums.clamped
        if len(self._attributes) > 10_000:
            self._attributes.clear()
        return sums

    def take_counters(self) -> dict[str, int]:
        """Spans joined, orphaned, evicted and clamped since the last call."""
        counters = self.buffer.counters
        self.buffer.counters = dict.fromkeys(counters, 0)
        clamped, self.clamped = self.clamped, 0
        return {**counters, DURATION_CLAMPED: clamped}


class ShardOwner:
    """An owned shard (stage 2)."""

    def __init__(
        self,
        shard: int,
        epoch: int,
        registry: SeriesRegistry,
        spec: HistogramSpec,
        key_attributes: frozenset[str],
        join: ShardJoin | None = None,
        plan: OutputPlan | None = None,
    ) -> None:
        self.shard = shard
        #: The joins of a ``derive`` topology.
        self.join = join
        #: Views, span filters and span-name rules: they make the shard's streams out of
        #: the full-resolution deltas stage 1 sends. The worker swaps it, live, right after
        #: a flush, so that each flush's points come from one version.
        self.plan = plan
        #: Spans filtered or renamed by the plan since the last flush (for telemetry).
        self.counters: Counter[str] = Counter()
        #: Version of the control document the plan comes from (0: the topology's).
        self.plan_version = 0
        #: Streams of the previous views, to end once a checkpoint after the switch is
        #: stored (they were published with their last values by then).
        self._ending: StreamMark | None = None
        self.epoch = epoch
        self.registry = registry
        self._spec = spec
        self._key_attributes = key_attributes
        #: Next offset of the shard's internal partition to apply.
        self.next_offset = 0
        self.applied: Applied = {}
        #: Delta output stored with the last checkpoint and not known to be sent.
        self.pending: list[OutputRecord] = []
        #: Held through a flush, so that flushes of a shard happen one after the other.
        self.flush_lock = asyncio.Lock()
        #: Series expired by flushes whose checkpoint was not stored, by the flush's stamp.
        self._unsaved_finals: list[tuple[int, list[ChangedSeries]]] = []
        #: Stamp of the checkpoint this owner started from (0 for a new shard): no output
        #: holds a newer state of the shard, so later series are new to every sink.
        self.taken_at_ns = 0
        self._resources: dict[bytes, tuple[ResourceIdentity, Resource] | None] = {}

    # ---------------------------------------------------------------- restore

    def restore(self, checkpoint: ShardCheckpoint) -> None:
        """Load the shard's checkpoint into this (new) owner.

        Raises:
            CodecError: stored state that cannot be read.
        """
        self.next_offset = checkpoint.offset or 0
        self.plan_version = checkpoint.views_version
        self.applied = dict(checkpoint.applied)
        self.pending = list(checkpoint.pending)
        self.registry.restore_stamp(checkpoint.stamp)
        by_rid = {}
        for rid, blob in checkpoint.resources.items():
            raw, last_seen = decode_resource_state(blob)
            resource = Resource.FromString(raw)
            identity = resource_identity(resource, self._key_attributes)
            if identity is None:
                raise CodecError("resource: stored without service.name")
            by_rid[rid] = self.registry.restore_resource(identity, resource, last_seen)
        for blob in checkpoint.series.values():
            rid, kind, labels, state = decode_series_state(blob, self._spec)
            res = by_rid.get(rid)
            if res is None:
                raise CodecError("series: its resource is not stored")
            self.registry.restore_series(res, kind, labels, state)
        if self.join is not None and checkpoint.join:
            self.join.buffer.restore(decode_join(checkpoint.join))

    # ------------------------------------------------------------------ apply

    def apply(self, offset: int, value: bytes, now_ns: int) -> tuple[str, int]:
        """Apply one record of the shard's internal partition, unless already applied.

        Returns what was done and how many calls went to overflow series.

        Raises:
            CodecError: the record cannot be read (it counts as read).
        """
        if offset < self.next_offset:
            return ALREADY_READ, 0
        self.next_offset = offset + 1
        record = decode_delta(value, self._spec)
        head = record.header
        end, parts = self.applied.get(head.partition, (-1, frozenset()))
        if head.end < end or (head.end == end and head.part in parts):
            # A cut sent again: by the next owner of its partition, or by a zombie.
            return DUPLICATE, 0
        self.applied[head.partition] = (
            (end, parts | {head.part}) if head.end == end else (head.end, frozenset({head.part}))
        )
        series: list[list[SeriesPoint]] = [[] for _ in record.resources]
        events: list[list[EventsPoint]] = [[] for _ in record.resources]
        for index, point in record.series:
            series[index].append(point)
        for index, event in record.events:
            events[index].append(event)
        overflowed = 0
        for i, raw in enumerate(record.resources):
            resolved = self._resource(raw)
            if resolved is None:
                continue
            identity, resource = resolved
            points = self.plan.project(series[i], self.counters) if self.plan else series[i]
            overflowed += self.registry.apply(
                identity, resource, points, events[i], now_ns, head.interval_end_ns
            )
        if self.join is not None and record.held:
            sums = self.join.add([group for _, group in record.held], now_ns)
            overflowed += self._apply_sums(sums, now_ns, head.interval_end_ns)
        return APPLIED, overflowed

    def _apply_sums(self, sums: PointSums, now_ns: int, seen_ns: int) -> int:
        """Add the points of spans the join let go to the shard's series."""
        overflowed = 0
        for raw, points in sums.points():
            resolved = self._resource(raw)
            if resolved is not None:
                identity, resource = resolved
                streams = self.plan.project(points, self.counters) if self.plan else points
                overflowed += self.registry.apply(identity, resource, streams, (), now_ns, seen_ns)
        return overflowed

    def _resource(self, raw: bytes) -> tuple[ResourceIdentity, Resource] | None:
        """The identity and message of a resource as stage 1 sent it (None without
        ``service.name``, which stage 1 never sends)."""
        if raw in self._resources:
            return self._resources[raw]
        if len(self._resources) >= 10_000:  # resources churn (pods); keep this bounded
            self._resources.clear()
        resource = Resource.FromString(raw)
        identity = resource_identity(resource, self._key_attributes)
        resolved = self._resources[raw] = None if identity is None else (identity, resource)
        return resolved

    # ------------------------------------------------------------------ flush

    def prepare(
        self, now_ns: int, delta_output: bool, want_cumulative: bool, output: KafkaOutput
    ) -> PreparedFlush:
        """Take this flush's output and checkpoint, in one step (no await).

        Points are stamped now, before the write that checks the fence: a point that a
        worker sends after losing the shard is older than every point of the new owner.
        Nothing here is final: :meth:`stored` or :meth:`not_stored` says whether the write
        made it.
        """
        registry = self.registry
        join_blob = None
        if self.join is not None:
            # Orphans first, so that this flush publishes them and checkpoints them with
            # the buffer they left.
            self._apply_sums(self.join.expire(now_ns), now_ns, now_ns)
            if self.join.dirty:
                join_blob = encode_join(self.join.buffer.groups())
                self.join.dirty = False
        stamp_ns = registry.stamp(now_ns)
        removed = registry.expire(stamp_ns)
        # Views may choose another temporality than the output's for some streams: then
        # both kinds of output are made, each with its own streams.
        mixed = registry.mixed
        cumulative = (
            output.requests(registry.cumulative(stamp_ns))
            if want_cumulative or not delta_output or mixed
            else None
        )
        taken = None
        outputs: list[OutputRecord] = []
        pending: list[OutputRecord] = []
        if delta_output or mixed:
            # Written ahead with the checkpoint: sent again as is if this worker dies.
            delta, taken = registry.take_delta(stamp_ns)
            if delta.resources:
                pending = output.records(output.requests(delta))
        if not delta_output or mixed:
            # The cumulative output is not written ahead (the next flush publishes the same
            # state again), except the last points of series that expire: once the
            # checkpoint removes them, nothing else holds them. Each at the time of the
            # flush that expired it: a series that came back since is a new stream, which
            # starts after that.
            finals = (
                [*self._unsaved_finals, (stamp_ns, removed)] if removed else self._unsaved_finals
            )
            for expired_ns, series in finals:
                kept = [e for e in series if not registry.is_delta(e[2])]
                points = registry.final_points(kept, expired_ns)
                pending += output.records(output.requests(points))
            published = cumulative or []
            if mixed:
                published = output.requests(registry.cumulative(stamp_ns, only_cumulative=True))
            outputs = pending + output.records(published)
        else:
            outputs = pending
        changes = registry.changes()
        write = ShardWrite(
            offset=self.next_offset,
            applied=dict(self.applied),
            series={
                series_id(res.rid, kind, labels): encode_series_state(res.rid, kind, labels, s)
                for res, kind, labels, s in changes.series
            },
            removed_series=changes.removed_series,
            resources={
                res.rid: encode_resource_state(res.resource.SerializeToString(), res.last_seen_ns)
                for res in changes.resources
            },
            removed_resources=changes.removed_resources,
            pending=pending,
            stamp=stamp_ns,
            join=join_blob,
            views_version=self.plan_version,
        )
        return PreparedFlush(write, changes, taken, removed, cumulative, outputs)

    def switch(self, plan: OutputPlan, version: int) -> None:
        """Run views ``version`` from now on: deltas applied after this make its streams.
        Call it with no delta applied since the last :meth:`prepare` (or at takeover): the
        streams there are now all the old views', and end after the next stored flush."""
        self._ending = self.registry.mark()
        self.plan = plan
        self.plan_version = version
        self.registry.names = plan.names

    def stored(self, prepared: PreparedFlush) -> None:
        """The prepared checkpoint is in the store."""
        self.registry.committed(prepared.changes)
        if self._ending is not None:
            # The first flush stored since the switch: prepared before it (a live switch)
            # or with the restored state (a takeover), it holds the old streams' last
            # points. They end now; their removal goes with the next checkpoint.
            self.registry.end(self._ending)
            self._ending = None
        self.pending = list(prepared.write.pending)
        self._unsaved_finals = []

    def not_stored(self, prepared: PreparedFlush) -> None:
        """The prepared checkpoint could not be written (the store is unreachable): what it
        took is taken again by a later flush."""
        if prepared.taken is not None:
            self.registry.restore_delta(prepared.taken)
        if self.join is not None and prepared.write.join is not None:
            self.join.dirty = True  # the next checkpoint writes the buffer
        # Expired series are gone from the registry; their last points wait for a
        # checkpoint that holds them.
        if prepared.removed:
            self._unsaved_finals.append((prepared.write.stamp, prepared.removed))
