"""One fleet worker: consume span records, checkpoint, publish owned shards.

See README "How the numbers stay exact". In short, per owned input partition P the worker
runs a delta engine; every flush interval it folds the engine's delta into P's cumulative
shards and checkpoints them with P's next offset (atomic, fenced). Then, for every shard it
owns (shard s belongs to the owner of partition s), it merges shard s of every partition's
checkpoint and publishes the result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener

from spanmetrics.aggregate.cumulative import CumulativeShard, shard_of
from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.points import MetricsSnapshot
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.config.model import Topology
from spanmetrics.decode import DecodeError
from spanmetrics.export.otlp import encode_metrics, snapshot_to_request
from spanmetrics.fleet.telemetry import telemetry_request
from spanmetrics.kafka.admin import bootstrap_servers
from spanmetrics.model.clock import Clock
from spanmetrics.state.store import FencedError, StateStore

log = logging.getLogger("spanmetrics.worker")


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
    """A fleet member. :meth:`run` until ``stop`` is set; then flush, checkpoint, leave."""

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
        self._consumer: Any = None
        self._producer: Any = None
        self.ready = asyncio.Event()
        self._started_ns = clock.now_ns()

    # ---------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, flushing every ``metrics_flush_interval``."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        source = self.topology.source
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=source.group,
            enable_auto_commit=False,
            auto_offset_reset=source.initial_offset,
            client_id=self.worker_id,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()
        self._consumer.subscribe([source.topic], listener=_Listener(self))
        interval = self.topology.spanmetrics.metrics_flush_interval
        next_flush = time.monotonic() + interval
        try:
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
                if batches:
                    async with self._lock:
                        await self._consume(batches)
                if self._partitions and not self.ready.is_set():
                    self.ready.set()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + interval
                    await self.flush()
            await self.flush()
        finally:
            await self._consumer.stop()  # leaves the group: revokes (and checkpoints) first
            await self._producer.stop()

    # ------------------------------------------------------------------ consume

    async def _consume(self, batches: dict[Any, list[Any]]) -> None:
        encoding = self.topology.source.encoding
        for tp, records in batches.items():
            part = self._partitions.get(tp.partition)
            if part is None:
                continue  # fetched before a rebalance took the partition away
            for record in records:
                if record.offset < part.next_offset:
                    continue  # already counted in the checkpoint
                try:
                    part.engine.consume_record(record.value or b"", encoding)
                except DecodeError as err:
                    await self._dead_letter(record, err)
                self.stats.counters["records_received"] += 1
                part.next_offset = record.offset + 1
                part.dirty = True

    async def _dead_letter(self, record: Any, err: DecodeError) -> None:
        self.stats.counters[f"records_dead_lettered.{err.reason}"] += 1
        headers = [
            ("spanmetrics.error.reason", err.reason.encode()),
            ("spanmetrics.error.detail", err.detail.encode()[:1000]),
            ("spanmetrics.source.topic", record.topic.encode()),
            ("spanmetrics.source.partition", str(record.partition).encode()),
            ("spanmetrics.source.offset", str(record.offset).encode()),
        ]
        await self._producer.send_and_wait(
            self.topology.source.dead_letter_topic,
            value=record.value,
            key=record.key,
            headers=headers,
        )

    # -------------------------------------------------------------- rebalancing

    async def assign(self, partitions: list[int]) -> None:
        """Take ownership: claim epochs, load checkpoints, seek to their offsets."""
        from aiokafka import TopicPartition

        async with self._lock:
            topic = self.topology.source.topic
            self._n_partitions = len(self._consumer.partitions_for_topic(topic) or ())
            for p in partitions:
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
                tp = TopicPartition(topic, p)
                if ckpt.offset is not None:
                    self._consumer.seek(tp, ckpt.offset)
                    log.info("%s: partition %d from checkpoint offset %d", self.worker_id, p,
                             ckpt.offset)  # fmt: skip
                else:
                    part.next_offset = 0
                    if self.topology.source.initial_offset == "earliest":
                        await self._consumer.seek_to_beginning(tp)
                    else:
                        await self._consumer.seek_to_end(tp)
                    log.info("%s: partition %d has no checkpoint, from %s", self.worker_id, p,
                             self.topology.source.initial_offset)  # fmt: skip

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

    # -------------------------------------------------------------------- flush

    async def flush(self) -> None:
        """Checkpoint every owned partition, then publish every owned shard."""
        started = time.perf_counter()
        async with self._lock:
            saved = True
            for p in list(self._partitions):
                try:
                    await self._checkpoint(p)
                except FencedError:
                    log.warning("%s: lost partition %d to another worker", self.worker_id, p)
                    del self._partitions[p]
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
            shard = shard_of(identity, max(self._n_partitions, 1))
            part.shards.setdefault(shard, CumulativeShard()).add_points(
                identity, rp.resource, rp.series, rp.events
            )
            part.unsaved.add(shard)
        blobs = {s: part.shards[s].encode(self.names) for s in part.unsaved}
        await self.store.save(p, part.epoch, part.next_offset, blobs)
        part.dirty = False
        part.unsaved.clear()
        self.stats.last_checkpoint_unix = time.time()

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
        if not self._output_delta:
            if merged.series or merged.events:
                await self._send(s, merged.snapshot(self.names, now))
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
        from aiokafka import TopicPartition

        lag: dict[int, float] = {}
        for p, part in self._partitions.items():
            highwater = self._consumer.highwater(TopicPartition(self.topology.source.topic, p))
            if highwater is not None:
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
            {"consumer_lag": self.consumer_lag()} if self._consumer is not None else {},
            self._started_ns,
            now,
        )
        encoding = self._sink_encoding()
        payload = encode_metrics(request, encoding)
        for sink in self.topology.sinks:
            if sink.kafka is not None and self._producer is not None:
                await self._producer.send_and_wait(
                    sink.kafka.topic, value=payload, key=f"worker-{self.worker_id}".encode()
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
                await self._producer.send_and_wait(
                    sink.kafka.topic, value=payload, key=f"shard-{s}".encode()
                )
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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka rebalance callbacks, forwarded to the worker."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._worker.revoke(sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._worker.assign(sorted(tp.partition for tp in assigned))
