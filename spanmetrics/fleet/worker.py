"""One fleet worker: consume span records, checkpoint, publish owned shards.

See README "How the numbers stay exact". In short, per owned input partition P the worker
runs a delta engine; every flush interval it folds the engine's delta into P's cumulative
shards and checkpoints them with P's next offset (atomic, fenced). Then, for every shard it
owns (shard s belongs to the owner of partition s), it merges shard s of every partition's
checkpoint and publishes the result.

The worker does not talk to the consumer group itself: a runtime (faust, in
``fleet/app.py``) delivers records to :meth:`Worker.consume`, rebalances to
:meth:`Worker.assign` / :meth:`Worker.revoke`, and calls :meth:`Worker.flush` on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spanmetrics.aggregate.cumulative import CumulativeShard, shard_of
from spanmetrics.aggregate.engine import (
    DROPPED_MISSING_SERVICE_NAME,
    SPANS_RECEIVED,
    SpanMetricsEngine,
)
from spanmetrics.aggregate.points import MetricsSnapshot
from spanmetrics.aggregate.resources import resource_identity, service_identity
from spanmetrics.config.model import Topology
from spanmetrics.decode import REASONS as DECODE_REASONS
from spanmetrics.decode import DecodeError
from spanmetrics.export.otlp import encode_metrics, snapshot_to_request
from spanmetrics.fleet.prometheus_sinks import PrometheusSinks
from spanmetrics.fleet.telemetry import telemetry_request
from spanmetrics.kafka.admin import bootstrap_servers
from spanmetrics.model.clock import Clock
from spanmetrics.state.store import FencedError, StateStore

log = logging.getLogger("spanmetrics.worker")

#: Kafka record headers: (name, value) pairs.
Headers = Sequence[tuple[str, bytes]]


class Positions(Protocol):
    """What the worker needs from the consumer runtime that delivers its records."""

    async def commit(self, offsets: dict[int, int]) -> None:
        """Commit next-offsets of input partitions to the consumer group (a position hint)."""

    def highwater(self, partition: int) -> int | None:
        """The broker's last known high watermark of an input partition, if any."""


class Sender(Protocol):
    """A Kafka producer."""

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> None:
        """Send one record and wait for the broker's acknowledgement."""


@dataclass(slots=True)
class _Partition:
    """An owned input partition."""

    epoch: int
    engine: SpanMetricsEngine
    next_offset: int
    shards: dict[int, CumulativeShard] = field(default_factory=dict)
    #: Records consumed since the last successful checkpoint.
    dirty: bool = False
    #: Shards changed since the last successful checkpoint. Kept until a save succeeds,
    #: so a failed write (Redis unreachable) is not forgotten by the next one.
    unsaved: set[int] = field(default_factory=set)


@dataclass(slots=True)
class WorkerStats:
    """Self-telemetry, also logged at each flush."""

    counters: Counter[str] = field(default_factory=Counter)
    last_checkpoint_unix: float = 0.0
    last_flush_seconds: float = 0.0
    active_series: int = 0


class Worker:
    """A fleet member's exact state: owned partitions, their checkpoints, and publishing."""

    def __init__(
        self,
        topology: Topology,
        store: StateStore,
        clock: Clock,
        broker: str | None = None,
        worker_id: str = "worker",
    ) -> None:
        self.topology = topology
        self.store = store
        self.clock = clock
        self.bootstrap = bootstrap_servers(broker or topology.source.broker)
        self.worker_id = worker_id
        sm = topology.spanmetrics
        # Partitions aggregate deltas; cumulative or delta output is made when publishing.
        self._engine_config = sm.model_copy(
            update={"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"}
        )
        self._output_delta = sm.is_delta
        self._key_attributes = frozenset(sm.resource_metrics_key_attributes)
        self._max_size = sm.histogram.max_size
        probe = SpanMetricsEngine(self._engine_config, clock)
        self.names = probe.names
        self._partitions: dict[int, _Partition] = {}
        self._n_partitions = 0
        self._lock = asyncio.Lock()
        self._published: dict[int, tuple[CumulativeShard, dict[Any, int]]] = {}
        self.stats = WorkerStats()
        # Counters exist from the start at 0, so rate() and increase() see their first
        # increment (a counter series born at 1 hides it) and dashboards show a flat 0.
        for name in (
            SPANS_RECEIVED,
            DROPPED_MISSING_SERVICE_NAME,
            "records_received",
            "checkpoint_errors",
            *(f"records_dead_lettered.{reason}" for reason in DECODE_REASONS),
        ):
            self.stats.counters[name] = 0
        self.prometheus = PrometheusSinks(topology, self.stats.counters)
        self._positions: Positions = _Detached()
        self._sender: Sender = _Detached()
        self._started_ns = clock.now_ns()

    # ---------------------------------------------------------------- lifecycle

    def attach(self, positions: Positions, sender: Sender, n_partitions: int) -> None:
        """Connect the worker to its runtime: consumer positions, producer, topic size."""
        self._positions = positions
        self._sender = sender
        self._n_partitions = n_partitions

    # ------------------------------------------------------------------ consume

    async def consume(
        self, partition: int, offset: int, value: bytes | None, key: bytes | None, topic: str
    ) -> None:
        """Aggregate one input record, unless its partition's checkpoint already holds it."""
        async with self._lock:
            part = self._partitions.get(partition)
            if part is None:
                # Delivered after a rebalance took the partition away: its new owner
                # reads it again from the checkpoint.
                self.stats.counters["records_not_owned"] += 1
                return
            if offset < part.next_offset:
                return  # already counted in the checkpoint this partition resumed from
            if 0 <= part.next_offset < offset:
                # Offsets skip only over transaction markers or deleted records; anything
                # else would be a positioning fault, so it is counted and logged.
                self.stats.counters["offset_gaps"] += 1
                log.warning("%s: partition %d jumped from offset %d to %d", self.worker_id,
                            partition, part.next_offset, offset)  # fmt: skip
            try:
                part.engine.consume_record(value or b"", self.topology.source.encoding)
            except DecodeError as err:
                await self._dead_letter(topic, partition, offset, value, key, err)
            self.stats.counters["records_received"] += 1
            part.next_offset = offset + 1
            part.dirty = True

    async def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None,
        err: DecodeError,
    ) -> None:
        self.stats.counters[f"records_dead_lettered.{err.reason}"] += 1
        headers = [
            ("spanmetrics.error.reason", err.reason.encode()),
            ("spanmetrics.error.detail", err.detail.encode()[:1000]),
            ("spanmetrics.source.topic", topic.encode()),
            ("spanmetrics.source.partition", str(partition).encode()),
            ("spanmetrics.source.offset", str(offset).encode()),
        ]
        await self._sender.send(self.topology.source.dead_letter_topic, value or b"", key, headers)

    # -------------------------------------------------------------- rebalancing

    async def assign(self, partitions: list[int]) -> None:
        """Take ownership: claim epochs, load checkpoints, make the group resume from them.

        The checkpoint's offset is committed to the consumer group here, before the runtime
        positions the partition at its committed offset, so reading resumes exactly where
        the checkpoint ends. (Commits only ever follow a checkpoint, so a committed offset
        is never ahead of its checkpoint; records before the checkpoint offset are skipped.)
        """
        async with self._lock:
            resume: dict[int, int] = {}
            for p in partitions:
                if p in self._partitions:
                    continue
                epoch = await self.store.claim(p)
                ckpt = await self.store.load(p)
                part = _Partition(
                    epoch,
                    SpanMetricsEngine(self._engine_config, self.clock),
                    ckpt.offset if ckpt.offset is not None else -1,
                )
                for shard, blob in ckpt.shards.items():
                    part.shards[shard] = CumulativeShard.decode(
                        blob, self.names, self._max_size, self._key_attributes
                    )
                self._partitions[p] = part
                if ckpt.offset is not None:
                    resume[p] = ckpt.offset
                    log.info("%s: partition %d from checkpoint offset %d", self.worker_id, p,
                             ckpt.offset)  # fmt: skip
                else:
                    log.info("%s: partition %d has no checkpoint, from %s", self.worker_id, p,
                             self.topology.source.initial_offset)  # fmt: skip
            if resume:
                await self._commit(resume)

    async def _commit(self, offsets: dict[int, int]) -> None:
        try:
            await self._positions.commit(offsets)
        except Exception as err:  # a position hint only: the checkpoint decides
            self.stats.counters["commit_errors"] += 1
            log.warning("%s: commit of %s failed: %r", self.worker_id, offsets, err)

    async def revoke(self, partitions: list[int]) -> None:
        """Give partitions up: checkpoint them first, so the next owner resumes exactly."""
        async with self._lock:
            for p in partitions:
                if p in self._partitions:
                    try:
                        await self._checkpoint(p)
                    except FencedError:
                        log.warning("%s: partition %d was already taken over", self.worker_id, p)
                    del self._partitions[p]
                    self._published.pop(p, None)
                    self.prometheus.drop_shard(p)

    # -------------------------------------------------------------------- flush

    async def flush(self) -> None:
        """Checkpoint every owned partition, then publish every owned shard."""
        started = time.perf_counter()
        # Prometheus samples are stamped before the checkpoints: a worker that stalls after
        # checkpointing and sends late (a zombie) sends an older timestamp than the new
        # owner, which Prometheus refuses as out of order instead of reading a reset.
        sample_ms = int(time.time() * 1000)
        async with self._lock:
            saved = True
            for p in list(self._partitions):
                try:
                    await self._checkpoint(p)
                except FencedError:
                    log.warning("%s: lost partition %d to another worker", self.worker_id, p)
                    del self._partitions[p]
                    self.prometheus.drop_shard(p)
                except Exception:
                    # The store is unreachable: keep consuming and retry next interval.
                    # Nothing is published meanwhile, since a published value must never
                    # be ahead of what a restart would recover.
                    log.exception("%s: checkpoint of partition %d failed", self.worker_id, p)
                    self.stats.counters["checkpoint_errors"] += 1
                    saved = False
            for s in sorted(self._partitions) if saved else ():
                if s < self._n_partitions:
                    try:
                        await self._publish(s)
                    except FencedError:
                        log.warning("%s: lost shard %d to another worker", self.worker_id, s)
            self.stats.active_series = sum(
                len(shard) for part in self._partitions.values() for shard in part.shards.values()
            )
        self.stats.last_flush_seconds = time.perf_counter() - started
        await self._publish_telemetry()
        await self.prometheus.push(sample_ms)
        log.info(
            "%s: flush %.3fs partitions=%s series=%d %s",
            self.worker_id,
            self.stats.last_flush_seconds,
            sorted(self._partitions),
            self.stats.active_series,
            dict(self.stats.counters),
        )

    async def _checkpoint(self, p: int) -> None:
        part = self._partitions[p]
        delta = part.engine.flush()
        for name, value in part.engine.counters.items():
            self.stats.counters[name] += value
        part.engine.counters.clear()
        if not part.dirty and not delta.resources and not part.unsaved:
            return
        for rp in delta.resources:
            identity = resource_identity(rp.resource, self._key_attributes)
            if identity is None:
                continue
            # Sharded by service instance, not by the whole resource: resources that differ
            # only in other attributes are one series in Prometheus (job/instance labels),
            # and one series must have one publisher.
            shard = shard_of(service_identity(rp.resource), max(self._n_partitions, 1))
            part.shards.setdefault(shard, CumulativeShard()).add_points(
                identity, rp.resource, rp.series, rp.events
            )
            part.unsaved.add(shard)
        blobs = {s: part.shards[s].encode(self.names) for s in part.unsaved}
        await self.store.save(p, part.epoch, part.next_offset, blobs)
        part.dirty = False
        part.unsaved.clear()
        self.stats.last_checkpoint_unix = time.time()
        if part.next_offset >= 0:
            # After the checkpoint, never before: the committed offset must not pass it.
            await self._commit({p: part.next_offset})

    async def _publish(self, s: int) -> None:
        merged = CumulativeShard()
        # This worker's own partitions were just checkpointed from memory: merge those
        # shards directly and read only the other partitions' checkpoints from the store.
        others = [p for p in range(self._n_partitions) if p not in self._partitions]
        for blob in await self.store.shard_blobs(s, others):
            merged.merge(
                CumulativeShard.decode(blob, self.names, self._max_size, self._key_attributes)
            )
        for part in self._partitions.values():
            own = part.shards.get(s)
            if own is not None:
                merged.merge(own)
        now = self.clock.now_ns()
        epoch = self._partitions[s].epoch
        cumulative = merged.snapshot(self.names, now)
        if self.prometheus.enabled:
            self.prometheus.set_shard(s, snapshot_to_request(cumulative))
        if not self._output_delta:
            if merged.series or merged.events:
                await self._send(s, cumulative)
            return
        previous, last_sent = await self._previous_publish(s, epoch)
        snapshot = merged.delta_since(previous, last_sent, self.names, now)
        if not snapshot.resources:
            return
        payload = self._encode(snapshot)
        # Write-ahead: what is being sent is recorded before it is sent, so a crash in
        # between makes the next owner resend the identical record, never a new delta.
        await self.store.save_published(
            s, epoch, _encode_published(merged, last_sent, self), payload
        )
        await self._send_bytes(s, payload)
        await self.store.clear_pending(s, epoch)
        self._published[s] = (merged, last_sent)

    async def _previous_publish(self, s: int, epoch: int) -> tuple[CumulativeShard, dict[Any, int]]:
        cached = self._published.get(s)
        if cached is not None:
            return cached
        record = await self.store.load_published(s)
        if record.pending is not None:
            await self._send_bytes(s, record.pending)
            await self.store.clear_pending(s, epoch)
        if record.state is None:
            return CumulativeShard(), {}
        return _decode_published(record.state, self)

    def consumer_lag(self) -> dict[int, float]:
        """Records behind the broker's high watermark, per owned partition.

        Read from the high watermarks of fetch responses. On the embedded test broker they
        are known to read low when batches hold several records (see README), so this is
        a health signal only; nothing exact depends on it.
        """
        lag: dict[int, float] = {}
        for p, part in self._partitions.items():
            highwater = self._positions.highwater(p)
            if highwater is not None and part.next_offset >= 0:
                lag[p] = float(max(highwater - part.next_offset, 0))
        return lag

    async def _publish_telemetry(self) -> None:
        now = self.clock.now_ns()
        age = (
            time.time() - self.stats.last_checkpoint_unix
            if self.stats.last_checkpoint_unix
            else 0.0
        )
        request = telemetry_request(
            self.worker_id,
            self.stats.counters,
            {
                "series_active": float(self.stats.active_series),
                "flush_duration_seconds": self.stats.last_flush_seconds,
                "checkpoint_age_seconds": age,
                "partitions_owned": float(len(self._partitions)),
            },
            {"consumer_lag": self.consumer_lag()},
            self._started_ns,
            now,
        )
        self.prometheus.set_telemetry(request)
        encoding = self._sink_encoding()
        payload = encode_metrics(request, encoding)
        for sink in self.topology.sinks:
            if sink.kafka is not None:
                await self._sender.send(
                    sink.kafka.topic, payload, f"worker-{self.worker_id}".encode(), ()
                )

    def _encode(self, snapshot: MetricsSnapshot) -> bytes:
        encoding = self._sink_encoding()
        return encode_metrics(snapshot_to_request(snapshot), encoding)

    def _sink_encoding(self) -> str:
        for sink in self.topology.sinks:
            if sink.kafka is not None:
                return sink.kafka.encoding
        return "otlp_proto"

    async def _send(self, s: int, snapshot: MetricsSnapshot) -> None:
        await self._send_bytes(s, self._encode(snapshot))

    async def _send_bytes(self, s: int, payload: bytes) -> None:
        for sink in self.topology.sinks:
            if sink.kafka is not None:
                await self._sender.send(sink.kafka.topic, payload, f"shard-{s}".encode(), ())
        self.stats.counters["metrics_records_sent"] += 1


def _encode_published(shard: CumulativeShard, last_sent: dict[Any, int], worker: Worker) -> bytes:
    """The published state with each series' last send time in its point time."""
    return shard.encode(worker.names, sent_ns=last_sent)


def _decode_published(data: bytes, worker: Worker) -> tuple[CumulativeShard, dict[Any, int]]:
    last_sent: dict[Any, int] = {}
    shard = CumulativeShard.decode(
        data, worker.names, worker._max_size, worker._key_attributes, sent_ns=last_sent
    )
    return shard, last_sent


class _Detached:
    """Stands in for the runtime until :meth:`Worker.attach`; any use is a bug."""

    async def commit(self, offsets: dict[int, int]) -> None:
        raise RuntimeError("worker is not attached to a consumer runtime")

    def highwater(self, partition: int) -> int | None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> None:
        raise RuntimeError("worker is not attached to a producer")
