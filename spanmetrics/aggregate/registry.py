"""The one owner of series lifecycle for a set of resources: a shard of the fleet.

A :class:`SeriesRegistry` receives delta points, from any number of input partitions, and
decides once, for the whole fleet, everything that is decided per series:

- the **start time**, fixed when the series is first created here and never moved;
- **admission** under the cardinality limit, or folding into the resource's overflow
  series (``otel.metric.overflow=true``), so that the resource's calls stay exact;
- **expiry** after ``series_expiration`` (or the resource's ``metrics_expiration``)
  without spans; an expired series that comes back is a new stream with a new start;
- what was **published**: the start of a series' next delta point, and the delta not sent
  yet.

It also knows what changed since the last checkpoint (:meth:`changes`), so that a
checkpoint writes only that. It is pure: no I/O and no clock; times are passed in. (Its
model is Tempo's ``ManagedRegistry``: one owner of series, limits and staleness.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.budgets import BudgetLedger
from spanmetrics.aggregate.cumulative import Histogram, latest_exemplars, merge_histograms
from spanmetrics.aggregate.dimensions import is_overflow, overflow_labels
from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.oversize import key_bytes
from spanmetrics.aggregate.points import (
    Attributes,
    EventsPoint,
    Exemplar,
    MetricNames,
    MetricsSnapshot,
    ResourcePoints,
    SeriesPoint,
    metric_of,
)
from spanmetrics.aggregate.resources import ResourceIdentity, stable_id
from spanmetrics.config.defaults import MAX_SERIES_LABEL_BYTES
from spanmetrics.model.enums import Temporality

#: The two tables of a resource: call/duration series, and span-event series.
Kind = Literal["series", "events"]
KINDS: tuple[Kind, Kind] = ("series", "events")


@dataclass(slots=True)
class SeriesState:
    """One series since ``start_ns``: calls (or event count), duration, exemplars."""

    start_ns: int
    """Fixed at creation; the start of every cumulative point."""
    last_seen_ns: int
    """Latest time a partition saw spans of it (drives expiry)."""
    calls: int = 0
    duration: Histogram | None = None
    exemplars: tuple[Exemplar, ...] = ()
    """The most recent exemplars, at most the configured number."""
    last_sent_ns: int = 0
    """Time of the last delta point published for it; 0 when none was."""


@dataclass(slots=True)
class ResourceState:
    """A resource's series and events, keyed by their labels."""

    rid: bytes
    """Stable id of the identity, its name in stored state."""
    identity: ResourceIdentity
    resource: Resource
    last_seen_ns: int
    series: dict[Attributes, SeriesState] = field(default_factory=dict)
    events: dict[Attributes, SeriesState] = field(default_factory=dict)
    admitted: int = 0
    """Series other than the overflow series: what the cardinality limit counts."""

    def table(self, kind: Kind) -> dict[Attributes, SeriesState]:
        """``series`` or ``events``."""
        return self.series if kind == "series" else self.events


def series_id(rid: bytes, kind: Kind, labels: Attributes) -> bytes:
    """Stable id of one series: its name in stored state."""
    return stable_id((rid, kind, labels))


#: A changed series: where it lives, and its state.
ChangedSeries = tuple[ResourceState, Kind, Attributes, SeriesState]


@dataclass(slots=True)
class Changes:
    """What changed since the last committed checkpoint (see :meth:`SeriesRegistry.changes`)."""

    series: list[ChangedSeries]
    removed_series: list[bytes]
    resources: list[ResourceState]
    removed_resources: list[bytes]
    _versions: dict[bytes, int]
    _resource_versions: dict[bytes, int]

    @property
    def empty(self) -> bool:
        """Whether nothing changed."""
        return not (self.series or self.removed_series or self.resources or self.removed_resources)


@dataclass(slots=True)
class _Unsent:
    """The part of a series not yet published as a delta point."""

    resource: ResourceState
    kind: Kind
    labels: Attributes
    state: SeriesState
    calls: int = 0
    duration: Histogram | None = None
    exemplars: tuple[Exemplar, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamMark:
    """The series of a registry at one moment (:meth:`SeriesRegistry.mark`)."""

    keys: list[tuple[ResourceIdentity, Attributes]]
    version: int
    """The registry's change counter then: a series changed after it has a larger one."""


@dataclass(slots=True)
class DeltaTaken:
    """Delta points taken for publishing, until they are known to be stored or not."""

    entries: list[_Unsent]
    previous_sent_ns: list[int]


def _same_aggregation(a: Histogram | None, b: Histogram | None) -> bool:
    """Whether two histograms of a series can be merged (a sum has none)."""
    if a is None or b is None:
        return True
    if isinstance(a, ExplicitHistogram) and isinstance(b, ExplicitHistogram):
        return a.bounds == b.bounds
    return type(a) is type(b)


class SeriesRegistry:
    """Cumulative series of a shard, with their lifecycle (module docstring)."""

    def __init__(
        self,
        names: MetricNames,
        *,
        cardinality_limit: int = 0,
        series_ttl_ns: int = 0,
        resource_ttl_ns: int = 0,
        exemplar_limit: int = 0,
        delta_output: bool = False,
    ) -> None:
        self.names = names
        self._limit = cardinality_limit
        #: Fleet-wide series budgets (the shard's leases); None: no budgets.
        self.budgets: BudgetLedger | None = None
        self._series_ttl_ns = series_ttl_ns
        self._resource_ttl_ns = resource_ttl_ns
        self._exemplar_limit = exemplar_limit
        self._delta_output = delta_output
        self.resources: dict[ResourceIdentity, ResourceState] = {}
        self._unsent: dict[bytes, _Unsent] = {}
        self._version = 0
        self._dirty: dict[bytes, tuple[ChangedSeries, int]] = {}
        self._dirty_resources: dict[bytes, tuple[ResourceState, int]] = {}
        self._removed_series: set[bytes] = set()
        self._removed_resources: set[bytes] = set()
        #: The time of the last published points, and the newest start time: every start is
        #: after the points published before it, and every point at or after its start.
        self._last_stamp_ns = 0
        self._newest_start_ns = 0

    def __len__(self) -> int:
        """Call/duration series held, overflow series included."""
        return sum(len(r.series) for r in self.resources.values())

    # ----------------------------------------------------------------- applying

    def apply(
        self,
        identity: ResourceIdentity,
        resource: Resource,
        series: Iterable[SeriesPoint],
        events: Iterable[EventsPoint],
        now_ns: int,
        seen_ns: int,
    ) -> int:
        """Add one resource's delta points, seen by a partition at ``seen_ns``.

        A new series is created at ``now_ns`` (its start time), or, when the resource
        already has ``cardinality_limit`` series, or its labels are larger than
        ``MAX_SERIES_LABEL_BYTES``, its calls and durations go to the resource's overflow
        series. Returns the calls that went to the overflow series.
        """
        res = self.resources.get(identity)
        if res is None:
            copy = Resource()
            copy.CopyFrom(resource)
            res = self.resources[identity] = ResourceState(
                stable_id(identity), identity, copy, seen_ns
            )
            self._removed_resources.discard(res.rid)
            self._touch_resource(res)
        elif seen_ns > res.last_seen_ns:
            res.last_seen_ns = seen_ns
            # Stored again only where its expiry needs the time; else it never changes.
            if self._resource_ttl_ns:
                self._touch_resource(res)
        overflowed = 0
        for point in series:
            labels = point.attributes
            state = res.series.get(labels)
            if state is None:
                over_limit = bool(self._limit) and res.admitted >= self._limit
                if (
                    over_limit
                    or key_bytes(labels) > MAX_SERIES_LABEL_BYTES
                    or (
                        self.budgets is not None
                        and not self.budgets.admit(str(identity[0]), labels)
                    )
                ):
                    overflowed += point.calls
                    labels = overflow_labels(labels)
                    state = res.series.get(labels)
                else:
                    res.admitted += 1
                if state is None:
                    state = self._create(res, "series", labels, now_ns, seen_ns)
            elif not _same_aggregation(state.duration, point.duration):
                # A view changed the stream's aggregation: a new stream, with a new start
                # time, never a merge of two kinds under one identity.
                state = self._create(res, "series", labels, now_ns, seen_ns)
            self._add(
                res, "series", labels, state, point.calls, point.duration, point.exemplars, seen_ns
            )
        for event in events:
            state = res.events.get(event.attributes)
            if state is None:
                state = self._create(res, "events", event.attributes, now_ns, seen_ns)
            self._add(res, "events", event.attributes, state, event.count, None, (), seen_ns)
        return overflowed

    def _create(
        self, res: ResourceState, kind: Kind, labels: Attributes, now_ns: int, seen_ns: int
    ) -> SeriesState:
        # After the last published points: a series that expired and comes back is a new
        # stream, which must start after the old one's last point.
        start = max(now_ns, self._last_stamp_ns + 1)
        self._newest_start_ns = max(self._newest_start_ns, start)
        state = SeriesState(start_ns=start, last_seen_ns=seen_ns)
        res.table(kind)[labels] = state
        self._removed_series.discard(series_id(res.rid, kind, labels))
        return state

    def _add(
        self,
        res: ResourceState,
        kind: Kind,
        labels: Attributes,
        state: SeriesState,
        calls: int,
        duration: Histogram | None,
        exemplars: tuple[Exemplar, ...],
        seen_ns: int,
    ) -> None:
        state.calls += calls
        if duration is not None:
            state.duration = merge_histograms(state.duration, duration)
        if exemplars and self._exemplar_limit:
            state.exemplars = latest_exemplars(state.exemplars, exemplars, self._exemplar_limit)
        state.last_seen_ns = max(state.last_seen_ns, seen_ns)
        sid = series_id(res.rid, kind, labels)
        self._mark(sid, (res, kind, labels, state))
        if self.is_delta(labels):
            unsent = self._unsent.get(sid)
            if unsent is None:
                unsent = self._unsent[sid] = _Unsent(res, kind, labels, state)
            unsent.calls += calls
            if duration is not None:
                unsent.duration = merge_histograms(unsent.duration, duration)
            if exemplars and self._exemplar_limit:
                unsent.exemplars = latest_exemplars(
                    unsent.exemplars, exemplars, self._exemplar_limit
                )

    def _mark(self, sid: bytes, entry: ChangedSeries) -> None:
        self._version += 1
        self._dirty[sid] = (entry, self._version)

    def _touch_resource(self, res: ResourceState) -> None:
        self._version += 1
        self._dirty_resources[res.rid] = (res, self._version)

    # -------------------------------------------------------------- publishing

    def stamp(self, now_ns: int) -> int:
        """The time of points published now: ``now_ns``, or just after the previous stamp
        or the newest start if the clock is behind them (clocks of different workers
        differ a little), so that the stamps of a shard only ever increase, and every
        point ends after its start."""
        stamp = max(now_ns, self._newest_start_ns + 1, self._last_stamp_ns + 1)
        self._last_stamp_ns = stamp
        return stamp

    @property
    def last_stamp_ns(self) -> int:
        """The time of the last points published (0 before any)."""
        return self._last_stamp_ns

    def restore_stamp(self, last_stamp_ns: int) -> None:
        """Continue after a previous owner's last stamp (stored with its checkpoint)."""
        self._last_stamp_ns = max(self._last_stamp_ns, last_stamp_ns)

    def is_delta(self, labels: Attributes) -> bool:
        """Whether a series is published as delta points: the output's temporality, or the
        one its view chose."""
        if not self.names.temporalities:
            return self._delta_output
        chosen = dict(self.names.temporalities).get(metric_of(labels) or "")
        return self._delta_output if chosen is None else chosen == "delta"

    @property
    def mixed(self) -> bool:
        """Whether some views chose another temporality than the output's."""
        return any((t == "delta") != self._delta_output for _, t in self.names.temporalities)

    def cumulative(self, time_ns: int, only_cumulative: bool = False) -> MetricsSnapshot:
        """Every series as a cumulative point at ``time_ns`` (a :meth:`stamp`); with
        ``only_cumulative``, the series published as cumulative points only."""
        return self.final_points(
            [
                (res, kind, labels, state)
                for res in self.resources.values()
                for kind in KINDS
                for labels, state in res.table(kind).items()
                if not (only_cumulative and self.is_delta(labels))
            ],
            time_ns,
        )

    def take_delta(self, time_ns: int) -> tuple[MetricsSnapshot, DeltaTaken]:
        """Delta points of everything not yet published, ending at ``time_ns`` (a
        :meth:`stamp`).

        Each point starts where its series' previous point ended (its start time for the
        first one). The taken points are forgotten here and each series' next point will
        start at ``time_ns``, unless :meth:`restore_delta` is called because they could not
        be stored.
        """
        entries = list(self._unsent.values())
        self._unsent = {}
        previous = [e.state.last_sent_ns for e in entries]
        by_resource: dict[bytes, ResourcePoints] = {}
        for e in entries:
            points = by_resource.get(e.resource.rid)
            if points is None:
                points = by_resource[e.resource.rid] = ResourcePoints(e.resource.resource)
            start = e.state.last_sent_ns or e.state.start_ns
            if e.kind == "series":
                points.series.append(
                    SeriesPoint(e.labels, start, time_ns, e.calls, e.duration, e.exemplars)
                )
            else:
                points.events.append(EventsPoint(e.labels, start, time_ns, e.calls))
            e.state.last_sent_ns = time_ns
            self._mark(
                series_id(e.resource.rid, e.kind, e.labels), (e.resource, e.kind, e.labels, e.state)
            )
        snapshot = MetricsSnapshot(
            self.names, Temporality.DELTA, time_ns, list(by_resource.values())
        )
        return snapshot, DeltaTaken(entries, previous)

    def restore_delta(self, taken: DeltaTaken) -> None:
        """Put back delta points that were taken but not stored: they are published later,
        from their original start."""
        for e, previous in zip(taken.entries, taken.previous_sent_ns, strict=True):
            e.state.last_sent_ns = previous
            sid = series_id(e.resource.rid, e.kind, e.labels)
            later = self._unsent.get(sid)
            if later is not None:
                # What arrived after the take comes after it in time.
                e.calls += later.calls
                e.duration = merge_histograms(e.duration, later.duration)
                if later.exemplars:
                    e.exemplars = latest_exemplars(
                        e.exemplars, later.exemplars, self._exemplar_limit
                    )
            self._unsent[sid] = e

    # ------------------------------------------------------------------ expiry

    def expire(self, now_ns: int) -> list[ChangedSeries]:
        """Remove series and resources idle for longer than their expiration; returns what
        was removed, as it was last. A series with a delta not yet published stays until
        it is published."""
        removed: list[ChangedSeries] = []
        if self._resource_ttl_ns:
            for identity, res in list(self.resources.items()):
                idle = now_ns - res.last_seen_ns > self._resource_ttl_ns
                if idle and not any(e.resource is res for e in self._unsent.values()):
                    removed += self._remove_resource(identity, res)
        if self._series_ttl_ns:
            for identity, res in list(self.resources.items()):
                for kind in KINDS:
                    table = res.table(kind)
                    stale = [
                        labels
                        for labels, s in table.items()
                        if now_ns - s.last_seen_ns > self._series_ttl_ns
                        and series_id(res.rid, kind, labels) not in self._unsent
                    ]
                    for labels in stale:
                        removed.append((res, kind, labels, table.pop(labels)))
                        self._forget(res, kind, labels)
                        if kind == "series" and not is_overflow(labels):
                            res.admitted -= 1
                if not res.series and not res.events:
                    self._remove_resource(identity, res)
        return removed

    def set_budgets(self, budgets: BudgetLedger | None) -> None:
        """Hold series under these budgets from now on; the series held now take their
        slots."""
        self.budgets = budgets or None
        if self.budgets is not None:
            for res in self.resources.values():
                for labels in res.series:
                    if not is_overflow(labels):
                        self.budgets.count(str(res.identity[0]), labels)

    def mark(self) -> StreamMark:
        """Every call/duration series now: what :meth:`end` ends later."""
        keys = [(identity, labels) for identity, res in self.resources.items()
                for labels in res.series]  # fmt: skip
        return StreamMark(keys, self._version)

    def end(self, mark: StreamMark) -> int:
        """Remove the marked series that got no point since the mark (their streams ended
        at a views change); returns how many. A series that did get one is a stream the new
        views make under the same identity: it goes on."""
        ended = 0
        for identity, labels in mark.keys:
            res = self.resources.get(identity)
            if res is None or labels not in res.series:
                continue
            sid = series_id(res.rid, "series", labels)
            dirty = self._dirty.get(sid)
            if dirty is not None and dirty[1] > mark.version:
                continue
            del res.series[labels]
            self._forget(res, "series", labels)
            if not is_overflow(labels):
                res.admitted -= 1
            ended += 1
            if not res.series and not res.events:
                self._remove_resource(identity, res)
        return ended

    def _remove_resource(
        self, identity: ResourceIdentity, res: ResourceState
    ) -> list[ChangedSeries]:
        del self.resources[identity]
        removed: list[ChangedSeries] = []
        for kind in KINDS:
            for labels, state in res.table(kind).items():
                removed.append((res, kind, labels, state))
                self._forget(res, kind, labels)
        self._dirty_resources.pop(res.rid, None)
        self._removed_resources.add(res.rid)
        return removed

    def final_points(self, entries: list[ChangedSeries], time_ns: int) -> MetricsSnapshot:
        """Cumulative points of these series (removed ones: their last points) at
        ``time_ns``, grouped by resource."""
        by_resource: dict[bytes, ResourcePoints] = {}
        for res, kind, labels, s in entries:
            points = by_resource.get(res.rid)
            if points is None:
                points = by_resource[res.rid] = ResourcePoints(res.resource)
            if kind == "series":
                points.series.append(
                    SeriesPoint(labels, s.start_ns, time_ns, s.calls, s.duration, s.exemplars)
                )
            else:
                points.events.append(EventsPoint(labels, s.start_ns, time_ns, s.calls))
        return MetricsSnapshot(
            self.names, Temporality.CUMULATIVE, time_ns, list(by_resource.values())
        )

    def _forget(self, res: ResourceState, kind: Kind, labels: Attributes) -> None:
        if self.budgets is not None and kind == "series" and not is_overflow(labels):
            self.budgets.release(str(res.identity[0]), labels)
        sid = series_id(res.rid, kind, labels)
        self._dirty.pop(sid, None)
        self._unsent.pop(sid, None)
        self._removed_series.add(sid)

    # ------------------------------------------------------------- checkpoints

    def changes(self) -> Changes:
        """What changed since the last :meth:`committed` call. Nothing is cleared: a
        checkpoint that fails to be written is simply written again later."""
        return Changes(
            series=[entry for entry, _ in self._dirty.values()],
            removed_series=sorted(self._removed_series),
            resources=[res for res, _ in self._dirty_resources.values()],
            removed_resources=sorted(self._removed_resources),
            _versions={sid: version for sid, (_, version) in self._dirty.items()},
            _resource_versions={rid: v for rid, (_, v) in self._dirty_resources.items()},
        )

    def committed(self, changes: Changes) -> None:
        """``changes`` is stored: forget them, except what changed again since."""
        for sid, version in changes._versions.items():
            entry = self._dirty.get(sid)
            if entry is not None and entry[1] == version:
                del self._dirty[sid]
        for rid, version in changes._resource_versions.items():
            res_entry = self._dirty_resources.get(rid)
            if res_entry is not None and res_entry[1] == version:
                del self._dirty_resources[rid]
        self._removed_series.difference_update(changes.removed_series)
        self._removed_resources.difference_update(changes.removed_resources)

    def restore_resource(
        self, identity: ResourceIdentity, resource: Resource, last_seen_ns: int
    ) -> ResourceState:
        """Load a stored resource (not marked as changed)."""
        res = self.resources.get(identity)
        if res is None:
            res = self.resources[identity] = ResourceState(
                stable_id(identity), identity, resource, last_seen_ns
            )
        return res

    def restore_series(
        self, res: ResourceState, kind: Kind, labels: Attributes, state: SeriesState
    ) -> None:
        """Load a stored series of a restored resource (not marked as changed)."""
        table = res.table(kind)
        if kind == "series" and not is_overflow(labels) and labels not in table:
            res.admitted += 1
            if self.budgets is not None:
                self.budgets.count(str(res.identity[0]), labels)
        table[labels] = state
        self._newest_start_ns = max(self._newest_start_ns, state.start_ns)
