"""Stage 1 of the fleet: one owned input partition, its open interval and its cuts.

The owner of an input partition aggregates its spans into deltas and, every flush, *cuts*:
records [start, end) become one delta per shard. A cut is recorded in the state store
before its deltas are sent, so that a new owner sends exactly the same deltas again if the
old one died halfway (README, "How the numbers stay exact"). For that, a cut's deltas must
depend only on the records in it: each interval gets a fresh engine, and the records of a
cut are split in a fixed order (:func:`spanmetrics.state.codec.encode_delta_parts`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.join import HeldGroup
from spanmetrics.aggregate.points import EventsPoint, MetricsSnapshot, SeriesPoint
from spanmetrics.aggregate.resources import service_identity, shard_of
from spanmetrics.config.model import Encoding
from spanmetrics.state.codec import CutHeader, ResourceDelta, encode_delta_parts
from spanmetrics.state.store import Cut

#: A record of the internal topic: its partition (the shard) and value.
ShardRecord = tuple[int, bytes]


class IntervalEngine(Protocol):
    """What an interval of stage 1 aggregates with: the span-metrics engine, or the
    derived-metrics engine of a ``derive`` topology."""

    counters: Counter[str]

    @property
    def active_series(self) -> int:
        """Series held."""

    def consume_record(self, value: bytes, encoding: Encoding) -> None:
        """Aggregate one record (raises ``DecodeError``)."""

    def flush(self) -> MetricsSnapshot:
        """The interval's delta points."""

    def take_held(self) -> list[HeldGroup]:
        """Spans still waiting for a join partner at the flush, handed over."""


class InputPartition:
    """An owned input partition (stage 1)."""

    def __init__(
        self,
        partition: int,
        epoch: int,
        new_engine: Callable[[], IntervalEngine],
        now_ns: int,
        last_cut: Cut | None,
    ) -> None:
        """Owned from ``epoch``, resuming after ``last_cut`` (the partition's last recorded
        cut, None if it never had one)."""
        self.partition = partition
        self.epoch = epoch
        self._new_engine = new_engine
        self.engine = new_engine()
        #: First offset of the open interval; -1 until the first record when there is no cut.
        self.start = -1
        #: Offset of the next record to read; -1 until known.
        self.next_offset = -1
        #: While re-reading a recorded cut that may not have been sent whole: its end. The
        #: next cut must end exactly there.
        self.replay_end: int | None = None
        if last_cut is not None:
            self.start = self.next_offset = last_cut.start
            if last_cut.end > last_cut.start:
                self.replay_end = last_cut.end
        self.interval_start_ns = now_ns
        #: Held while a record is read, and while a cut is recorded: a cut's end is the
        #: offset after the last record in its engine.
        self.read_lock = asyncio.Lock()
        #: Held through a whole cut, so that cuts of a partition happen one after the other.
        self.cut_lock = asyncio.Lock()
        #: Records of the last recorded cut not yet acknowledged by the broker, and the end
        #: of that cut. A new cut is recorded only once they are all sent.
        self.unsent: list[ShardRecord] = []
        self.unsent_end = -1

    @property
    def resume_offset(self) -> int | None:
        """Where reading resumes, when the partition's history tells (else the consumer
        group's position or ``source.initial_offset`` decides)."""
        return self.next_offset if self.next_offset >= 0 else None

    def read(self, offset: int, value: bytes, encoding: Encoding) -> None:
        """Aggregate one record at ``offset`` (at or after :attr:`next_offset`).

        Raises ``DecodeError`` for an undecodable record, which then still counts as read.
        """
        if self.start < 0:
            self.start = offset
        self.next_offset = offset + 1
        self.engine.consume_record(value, encoding)

    def due_cut(self, replay_done: bool = False) -> Cut | None:
        """The cut to record now, or None when there is nothing to cut yet.

        While a recorded cut is being re-read, the only cut allowed is that one, once all
        of it was read (or, with ``replay_done``, once a record at or past its end shows
        that the rest of it does not exist).
        """
        if self.replay_end is not None:
            if self.next_offset >= self.replay_end or replay_done:
                return Cut(self.start, self.replay_end)
            return None
        if self.start < 0 or self.next_offset <= self.start:
            return None
        return Cut(self.start, self.next_offset)

    def close_interval(self, cut: Cut, now_ns: int) -> tuple[IntervalEngine, int]:
        """Start the next interval after ``cut`` (recorded); returns the engine holding the
        cut's spans and when its interval started."""
        engine, started = self.engine, self.interval_start_ns
        self.engine = self._new_engine()
        self.start = cut.end
        self.next_offset = max(self.next_offset, cut.end)
        self.replay_end = None
        self.interval_start_ns = now_ns
        return engine, started


def cut_records(
    snapshot: MetricsSnapshot,
    held: Sequence[HeldGroup],
    partition: int,
    epoch: int,
    cut: Cut,
    interval: tuple[int, int],
    shards: int,
    max_bytes: int,
) -> tuple[list[ShardRecord], int]:
    """A cut's deltas as records of the internal topic, per shard and in a fixed order,
    and the spans of entries too large for any record (dropped, see
    :func:`~spanmetrics.state.codec.encode_delta_parts`).

    A resource's shard is a stable hash of its service instance (``service.namespace``,
    ``service.name``, ``service.instance.id``): resources that differ only in other
    attributes are one series in Prometheus (``job``/``instance``), and one series must have
    one owner.

    Spans still held for joins go to the shard of their resource too: the partners of a
    join are spans of one component instance, so that shard sees every span it needs.
    """
    by_resource: dict[bytes, tuple[list[SeriesPoint], list[EventsPoint], list[HeldGroup]]] = {}
    messages: dict[bytes, Resource] = {}
    for rp in snapshot.resources:
        raw = rp.resource.SerializeToString()
        messages[raw] = rp.resource
        entry = by_resource.setdefault(raw, ([], [], []))
        entry[0].extend(rp.series)
        entry[1].extend(rp.events)
    for group in held:
        by_resource.setdefault(group.resource, ([], [], []))[2].append(group)
    by_shard: dict[int, list[ResourceDelta]] = {}
    for raw, (series, events, groups) in by_resource.items():
        resource = messages.get(raw) or Resource.FromString(raw)
        shard = shard_of(service_identity(resource), shards)
        by_shard.setdefault(shard, []).append((raw, series, events, groups))
    records: list[ShardRecord] = []
    dropped = 0
    for shard in sorted(by_shard):
        header = CutHeader(partition, epoch, cut.start, cut.end, 0, 1, *interval)
        parts = encode_delta_parts(header, by_shard[shard], max_bytes)
        records += [(shard, r) for r in parts.records]
        dropped += parts.dropped_spans
    return records, dropped
