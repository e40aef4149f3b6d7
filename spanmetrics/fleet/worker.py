"""One fleet worker: both stages of the fleet, for the partitions it owns.

See README "How the numbers stay exact". A worker owns some partitions of the input topic
(stage 1, :class:`~spanmetrics.fleet.partition.InputPartition`) and some partitions of the
internal topic, the shards (stage 2, :class:`~spanmetrics.fleet.shard.ShardOwner`). Each
flush it cuts its input partitions into per-shard deltas, and checkpoints and publishes its
shards.

The worker does not talk to the consumer group itself: a runtime (faust, in
``fleet/app.py``, or the in-process simulation in the tests) delivers records of both
topics to :meth:`Worker.consume`, rebalances to :meth:`Worker.assign` /
:meth:`Worker.revoke`, and calls :meth:`Worker.flush` on a timer. Whatever way a worker
loses a partition or a shard (revoked, fenced by a new owner, stopping), it goes through
one release method.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from spanmetrics.aggregate.budgets import BudgetLedger
from spanmetrics.aggregate.derived import DerivedMetricsEngine
from spanmetrics.aggregate.engine import (
    CARDINALITY_OVERFLOW,
    DROPPED_MISSING_SERVICE_NAME,
    SPANS_RECEIVED,
    SpanMetricsEngine,
    explicit_bounds,
)
from spanmetrics.aggregate.join import EVICTED, JOINED, ORPHANED
from spanmetrics.aggregate.registry import SeriesRegistry
from spanmetrics.aggregate.rules import Rules
from spanmetrics.aggregate.views import OutputPlan, output_plan
from spanmetrics.config.control import with_control
from spanmetrics.config.defaults import DEFAULT_MAX_MESSAGE_BYTES
from spanmetrics.config.load import ConfigError
from spanmetrics.config.model import Topology
from spanmetrics.config.views import Budget
from spanmetrics.decode import REASONS as DECODE_REASONS
from spanmetrics.decode import DecodeError
from spanmetrics.export.otlp import encode_records
from spanmetrics.fleet.health import HealthState
from spanmetrics.fleet.output import KafkaOutput
from spanmetrics.fleet.partition import InputPartition, IntervalEngine, cut_records
from spanmetrics.fleet.prometheus_sinks import PrometheusSinks
from spanmetrics.fleet.shard import APPLIED, DUPLICATE, ShardJoin, ShardOwner
from spanmetrics.fleet.telemetry import telemetry_request
from spanmetrics.fleet.topics import deltas_topic
from spanmetrics.kafka.admin import bootstrap_servers
from spanmetrics.model.clock import Clock
from spanmetrics.state.codec import CodecError, HistogramSpec, OutputRecord
from spanmetrics.state.store import Cut, FencedError, StateStore

log = logging.getLogger("spanmetrics.worker")

#: Kafka record headers: (name, value) pairs.
Headers = Sequence[tuple[str, bytes]]
#: (topic, partition).
TopicPartition = tuple[str, int]

#: Backoff between retries of a cut that must happen before reading goes on, and of a dead
#: letter.
_RETRY_MIN_S, _RETRY_MAX_S = 0.5, 10.0
#: Sends of a dead letter before it is counted as lost.
_DEAD_LETTER_ATTEMPTS = 5

#: Counter of spans whose series fit no delta record (see ``encode_delta_parts``).
SPANS_TOO_LARGE_FOR_A_RECORD = "spans_dropped.too_large_for_a_record"
#: Largest record of the internal topic (Kafka's default ``message.max.bytes``, about 1 MB).
INTERNAL_MAX_RECORD_BYTES = DEFAULT_MAX_MESSAGE_BYTES
#: Series a partition's interval holds at most before it is cut (about 1.7 kB each): stage
#: 1 has no cardinality limit of its own, so this bounds its memory per partition.
INTERVAL_MAX_SERIES = 20_000


class Positions(Protocol):
    """What the worker needs from the consumer runtime that delivers its records."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit next-offsets to the consumer group (a position hint: checkpoints decide)."""

    def highwater(self, topic: str, partition: int) -> int | None:
        """The broker's last known high watermark of a partition, if any."""


class Sender(Protocol):
    """A Kafka producer."""

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> None:
        """Send one record (to ``partition``, or the key's) and wait for the acknowledgement."""


@dataclass(slots=True)
class WorkerStats:
    """Self-telemetry, also logged at each flush."""

    counters: Counter[str] = field(default_factory=Counter)
    last_checkpoint_ns: int = 0
    last_flush_seconds: float = 0.0
    active_series: int = 0


class Worker:
    """A fleet member: its input partitions, its shards, their checkpoints and output."""

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
        # Stage 1 only pre-aggregates: limits and expiry are decided by the series' owner.
        self._stage1_config = sm.model_copy(
            update={
                "aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA",
                "aggregation_cardinality_limit": 0,
                "series_expiration": 0.0,
                "metrics_expiration": 0.0,
            }
        )
        self._delta_output = sm.is_delta
        self._key_attributes = frozenset(sm.resource_metrics_key_attributes)
        self._spec = HistogramSpec(sm.histogram.max_size, explicit_bounds(sm))
        #: Views, span filters and span-name rules, applied by the shards: the topology's,
        #: until a control document (``spanmetrics views apply``) replaces them.
        self._plan = output_plan(topology)
        #: Series budgets in force (the topology's, or the control document's).
        self._budgets = topology.budgets
        #: Version of the control document in force; 0: the topology's own views.
        self.views_version = 0
        self._next_plan: tuple[int, OutputPlan, tuple[Budget, ...]] | None = None
        self._control_unreachable = False
        self.names = self._plan.names
        #: The rules of a ``derive`` topology, shared by stage 1 and the shards' joins.
        self._rules = Rules(topology.derive) if topology.derive is not None else None
        self.source_topic = topology.source.topic
        self.deltas_topic = deltas_topic(topology.source.group)
        self.output = KafkaOutput(topology)
        self._partitions: dict[int, InputPartition] = {}
        self._shards: dict[int, ShardOwner] = {}
        #: Shards given up in a rebalance, kept until its assignment: if this worker gets
        #: one back and nobody owned it meanwhile, its state in memory is still the truth.
        self._parked: dict[int, ShardOwner] = {}
        self._n_shards = 0
        self._lock = asyncio.Lock()
        self.stats = WorkerStats()
        # Counters exist from the start at 0, so rate() and increase() see their first
        # increment (a counter series born at 1 hides it) and dashboards show a flat 0.
        for name in (
            SPANS_RECEIVED,
            DROPPED_MISSING_SERVICE_NAME,
            "records_received",
            "checkpoint_errors",
            *(f"records_dead_lettered.{reason}" for reason in DECODE_REASONS),
            *((JOINED, ORPHANED, EVICTED) if topology.derive is not None else ()),
        ):
            self.stats.counters[name] = 0
        self.prometheus = PrometheusSinks(topology, self.stats.counters)
        self._positions: Positions = _Detached()
        self._sender: Sender = _Detached()
        self._started_ns = clock.now_ns()
        #: What /healthz and /readyz report (fleet/health.py).
        self.health = HealthState(started_ns=self._started_ns)
        #: Largest record sent to the internal topic.
        self.internal_max_record_bytes = INTERNAL_MAX_RECORD_BYTES
        #: Series a partition's interval may hold before it is cut early.
        self.interval_max_series = INTERVAL_MAX_SERIES
        #: How the worker waits before a retry (the simulation replaces it).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # ---------------------------------------------------------------- lifecycle

    def attach(self, positions: Positions, sender: Sender, n_shards: int) -> None:
        """Connect the worker to its runtime: consumer positions, producer, and the number
        of shards (partitions of the internal topic)."""
        self._positions = positions
        self._sender = sender
        self._n_shards = n_shards

    @property
    def partitions(self) -> list[int]:
        """Input partitions owned now."""
        return sorted(self._partitions)

    @property
    def shards(self) -> list[int]:
        """Shards owned now."""
        return sorted(self._shards)

    def _new_engine(self) -> IntervalEngine:
        if self.topology.derive is not None:
            # Spans still waiting for a partner at a cut go on to the shard, which joins
            # them with the rest of their trace (whatever partition that is read from).
            # Event time, so that a cut sent again is the same cut.
            return DerivedMetricsEngine(
                self.topology.derive, self._stage1_config, self.clock, forward=True,
                event_time=True,
            )  # fmt: skip
        return SpanMetricsEngine(self._stage1_config, self.clock)

    def _new_owner(self, shard: int, epoch: int) -> ShardOwner:
        sm = self.topology.spanmetrics
        registry = SeriesRegistry(
            self.names,
            cardinality_limit=sm.aggregation_cardinality_limit,
            series_ttl_ns=round(sm.series_expiration * 1e9),
            resource_ttl_ns=round(sm.metrics_expiration * 1e9),
            exemplar_limit=sm.exemplars.max_per_data_point if sm.exemplars.enabled else 0,
            delta_output=self._delta_output,
        )
        join = (
            ShardJoin(self._rules, sm.histogram.max_size, sm.max_span_duration_ns)
            if self._rules is not None
            else None
        )
        owner = ShardOwner(
            shard, epoch, registry, self._spec, self._key_attributes, join, self._plan
        )
        owner.plan_version = self.views_version
        registry.set_budgets(BudgetLedger(self._budgets, self._plan.names))
        return owner

    def _switch(self, owner: ShardOwner) -> None:
        """Make ``owner`` run the views and budgets in force (see :meth:`ShardOwner.switch`)."""
        owner.switch(self._plan, self.views_version)
        owner.registry.set_budgets(BudgetLedger(self._budgets, self._plan.names))

    async def _lease(self, owner: ShardOwner) -> None:
        """Renew the shard's budget leases (kept as they are when the store is down)."""
        ledger = owner.registry.budgets
        if ledger is None:
            return
        try:
            ledger.grant(await self.store.lease_budgets(owner.shard, ledger.requests()))
        except Exception as err:
            self.stats.counters["budget_lease_errors"] += 1
            log.warning("%s: budget leases of shard %d not renewed: %r", self.worker_id,
                        owner.shard, err)  # fmt: skip

    # ------------------------------------------------------------------ consume

    async def consume(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        """Take one record of the input topic or of the internal topic."""
        if topic == self.deltas_topic:
            self._apply_delta(partition, offset, value or b"")
            return
        self.health.last_record_ns = self.clock.now_ns()
        part = self._partitions.get(partition)
        if part is None:
            # Delivered after a rebalance took the partition away: its new owner reads it
            # again from the last cut.
            self.stats.counters["records_not_owned"] += 1
            return
        if offset < part.next_offset:
            return  # already in a cut
        replay_ends_before = part.replay_end is not None and offset >= part.replay_end
        # The recorded cut being re-read ends before this record: cut it exactly there.
        if replay_ends_before and not await self._finish_replay(part, replay_done=True):
            return
        error: DecodeError | None = None
        async with part.read_lock:
            if self._partitions.get(partition) is not part or offset < part.next_offset:
                return
            if 0 <= part.next_offset < offset:
                # Offsets skip only over transaction markers or deleted records; anything
                # else would be a positioning fault, so it is counted and logged.
                self.stats.counters["offset_gaps"] += 1
                log.warning("%s: partition %d jumped from offset %d to %d", self.worker_id,
                            partition, part.next_offset, offset)  # fmt: skip
            try:
                part.read(offset, value or b"", self.topology.source.encoding)
            except DecodeError as err:
                error = err
        self.stats.counters["records_received"] += 1
        if error is not None:
            await self._dead_letter(topic, partition, offset, value, key, error)
        if part.replay_end is not None and part.next_offset >= part.replay_end:
            await self._finish_replay(part)
        elif part.engine.active_series > self.interval_max_series:
            # Bounded memory whatever the input's cardinality (limits and budgets apply in
            # the shards): cut now. Where depends only on the records read, so a cut read
            # again ends at the same offset.
            self.stats.counters["cuts_for_size"] += 1
            await self._cut_in_flush(part)

    def _apply_delta(self, shard: int, offset: int, value: bytes) -> None:
        owner = self._shards.get(shard)
        if owner is None:
            self.stats.counters["deltas_not_owned"] += 1
            return
        try:
            result, overflowed = owner.apply(offset, value, self.clock.now_ns())
        except CodecError as err:
            self.stats.counters["deltas_unreadable"] += 1
            log.error("%s: shard %d offset %d unreadable, skipped: %s", self.worker_id, shard,
                      offset, err)  # fmt: skip
            return
        if result == APPLIED:
            self.stats.counters["deltas_applied"] += 1
            if overflowed:
                self.stats.counters[CARDINALITY_OVERFLOW] += overflowed
        elif result == DUPLICATE:
            self.stats.counters["deltas_duplicate"] += 1

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
        if value is not None and len(value) > self.internal_max_record_bytes:
            # The producer would refuse it, and every retry with it: the dead letter keeps
            # the record's start, and says how large the whole was.
            headers.append(("spanmetrics.source.bytes", str(len(value)).encode()))
            value = value[: self.internal_max_record_bytes]
            self.stats.counters["dead_letters_truncated"] += 1
        delay = _RETRY_MIN_S
        for attempt in range(_DEAD_LETTER_ATTEMPTS):
            try:
                await self._sender.send(
                    self.topology.source.dead_letter_topic, value or b"", key, headers
                )
                return
            except Exception as exc:
                log.warning("%s: dead letter of %s/%d@%d not sent (attempt %d): %r",
                            self.worker_id, topic, partition, offset, attempt + 1, exc)  # fmt: skip
                await self.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        self.stats.counters["dead_letters_lost"] += 1
        log.error("%s: dead letter of %s/%d@%d lost", self.worker_id, topic, partition, offset)

    # -------------------------------------------------------------- rebalancing

    async def assign(self, assigned: Iterable[TopicPartition]) -> None:
        """Take ownership of every partition of ``assigned`` not owned yet: claim its epoch,
        load its state, and make the group resume from it.

        Positions are committed here, before the runtime seeks each partition to its
        committed offset, so reading resumes exactly where the state ends. (Commits only
        ever follow a checkpoint, so a committed offset is never ahead of one; records
        before the state's offset are skipped.)
        """
        async with self._lock:
            resume: dict[TopicPartition, int] = {}
            for topic, p in sorted(assigned):
                if topic == self.source_topic and p not in self._partitions:
                    await self._take_partition(p, resume)
                elif topic == self.deltas_topic and p not in self._shards:
                    await self._take_shard(p, resume)
            self._parked.clear()
            if resume:
                await self._commit(resume)
            self._owned_changed()
        self.health.joined = True

    async def _take_partition(self, p: int, resume: dict[TopicPartition, int]) -> None:
        epoch = await self.store.claim_partition(p)
        cut = await self.store.load_cut(p)
        part = InputPartition(p, epoch, self._new_engine, self.clock.now_ns(), cut)
        self._partitions[p] = part
        if part.resume_offset is not None:
            resume[(self.source_topic, p)] = part.resume_offset
            replay = f" (re-reading its last cut, to {part.replay_end})" if part.replay_end else ""
            log.info("%s: partition %d from offset %d%s", self.worker_id, p, part.resume_offset,
                     replay)  # fmt: skip
        else:
            log.info("%s: partition %d has no cut yet, from %s", self.worker_id, p,
                     self.topology.source.initial_offset)  # fmt: skip

    async def _take_shard(self, s: int, resume: dict[TopicPartition, int]) -> None:
        epoch = await self.store.claim_shard(s)
        owner = self._parked.pop(s, None)
        if owner is not None and owner.epoch + 1 == epoch:
            # Nobody claimed it since this worker gave it up after a checkpoint.
            owner.epoch = epoch
        else:
            owner = self._new_owner(s, epoch)
            owner.restore(await self.store.load_shard(s))
        # Nothing newer than the checkpoint taken over was ever published.
        owner.taken_at_ns = owner.registry.last_stamp_ns
        if owner.plan_version != self.views_version:
            # Made with other views: published once more as they are, then ended.
            self._switch(owner)
        await self._lease(owner)
        self._shards[s] = owner
        # Always committed, even with no checkpoint (from 0): the internal topic must be
        # read from its start whatever ``source.initial_offset`` says.
        resume[(self.deltas_topic, s)] = owner.next_offset
        log.info("%s: shard %d from offset %d, %d series", self.worker_id, s, owner.next_offset,
                 len(owner.registry))  # fmt: skip

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._positions.commit(offsets)
        except Exception as err:  # a position hint only: the checkpoint decides
            self.stats.counters["commit_errors"] += 1
            log.warning("%s: commit of %s failed: %r", self.worker_id, offsets, err)

    async def revoke(self, revoked: Iterable[TopicPartition]) -> None:
        """Give partitions up: cut input partitions and checkpoint shards first, so that
        their next owners resume exactly."""
        async with self._lock:
            for topic, p in sorted(revoked):
                if topic == self.source_topic and p in self._partitions:
                    await self._close_partition(self._partitions[p], "revoked")
                elif topic == self.deltas_topic and p in self._shards:
                    await self._close_shard(self._shards[p], "revoked")
            self._owned_changed()

    def _owned_changed(self) -> None:
        self.health.owns_partitions = bool(self._partitions)
        self.health.owns_shards = bool(self._shards)

    async def stop(self) -> None:
        """Give everything up, as on a revocation (for shutdown)."""
        await self.revoke(
            [(self.source_topic, p) for p in self._partitions]
            + [(self.deltas_topic, s) for s in self._shards]
        )

    async def _close_partition(self, part: InputPartition, why: str) -> None:
        try:
            await self._cut(part)
            if not part.unsent and part.replay_end is None and part.start >= 0:
                # Everything read was sent: the next owner needs not re-read the last cut.
                await self.store.save_cut(part.partition, part.epoch, Cut(part.start, part.start))
        except FencedError:
            why = "fenced"
        except Exception:
            log.exception("%s: last cut of partition %d failed; its next owner re-reads it",
                          self.worker_id, part.partition)  # fmt: skip
        self._release_partition(part, why)

    async def _close_shard(self, owner: ShardOwner, why: str) -> None:
        stored = False
        try:
            stored = await self._flush_shard(owner)
        except FencedError:
            why = "fenced"
        except Exception:
            log.exception("%s: last checkpoint of shard %d failed", self.worker_id, owner.shard)
        self._release_shard(owner, why)
        if stored and not owner.pending:
            self._parked[owner.shard] = owner

    def _release_partition(self, part: InputPartition, why: str) -> None:
        """The one way an input partition stops being this worker's."""
        if self._partitions.get(part.partition) is part:
            del self._partitions[part.partition]
            self.stats.counters[f"partitions_released.{why}"] += 1
            level = logging.WARNING if why == "fenced" else logging.INFO
            log.log(level, "%s: partition %d released (%s)", self.worker_id, part.partition, why)

    def _release_shard(self, owner: ShardOwner, why: str) -> None:
        """The one way a shard stops being this worker's: it leaves every output at once."""
        if self._shards.get(owner.shard) is owner:
            del self._shards[owner.shard]
            self.prometheus.drop_shard(owner.shard)
            self.stats.counters[f"shards_released.{why}"] += 1
            level = logging.WARNING if why == "fenced" else logging.INFO
            log.log(level, "%s: shard %d released (%s)", self.worker_id, owner.shard, why)

    # ---------------------------------------------------------------- stage 1

    async def _finish_replay(self, part: InputPartition, replay_done: bool = False) -> bool:
        """Cut a re-read cut at its recorded end; False when the partition was lost.

        No record past that end may enter the engine before the cut, so this retries
        (reading waits) until the store takes the cut.
        """
        delay = _RETRY_MIN_S
        while self._partitions.get(part.partition) is part:
            try:
                await self._cut(part, replay_done)
                return self._partitions.get(part.partition) is part
            except FencedError:
                self._release_partition(part, "fenced")
                return False
            except Exception:
                log.exception("%s: cut of partition %d at its recorded end failed; retrying",
                              self.worker_id, part.partition)  # fmt: skip
                self.stats.counters["cut_errors"] += 1
                await self.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        return False

    async def _cut(self, part: InputPartition, replay_done: bool = False) -> None:
        """Record the partition's due cut, then send its deltas to the shards."""
        async with part.cut_lock:
            if self._partitions.get(part.partition) is not part:
                return
            if part.unsent:
                # The last recorded cut is not all acknowledged: finish it first, or a crash
                # after the next cut is recorded would lose it.
                await self._send_cut(part)
            async with part.read_lock:
                cut = part.due_cut(replay_done)
                if cut is None:
                    return
                # Reading this partition waits for this one round trip, so that no record
                # past the cut's end goes into the engine being cut.
                await self.store.save_cut(part.partition, part.epoch, cut)
                now = self.clock.now_ns()
                engine, started = part.close_interval(cut, now)
            snapshot = engine.flush()  # full resolution: the shards apply the views
            self.stats.counters.update(engine.counters)
            part.unsent, dropped = cut_records(
                snapshot, engine.take_held(), part.partition, part.epoch, cut, (started, now),
                max(self._n_shards, 1), self.internal_max_record_bytes,
            )  # fmt: skip
            if dropped:
                self.stats.counters[SPANS_TOO_LARGE_FOR_A_RECORD] += dropped
                log.warning(
                    "partition %d: %d spans in series too large for a %d-byte record, dropped",
                    part.partition, dropped, self.internal_max_record_bytes,
                )  # fmt: skip
            part.unsent_end = cut.end
            self.stats.counters["cuts"] += 1
            await self._send_cut(part)

    async def _send_cut(self, part: InputPartition) -> None:
        """Send the records of the partition's recorded cut; once the broker has them all,
        the cut is done and its end is committed."""
        await asyncio.gather(
            *(
                self._sender.send(self.deltas_topic, value, str(shard).encode(), (), shard)
                for shard, value in part.unsent
            )
        )
        self.stats.counters["delta_records_sent"] += len(part.unsent)
        self.health.last_broker_ok_ns = self.clock.now_ns()
        part.unsent = []
        await self._commit({(self.source_topic, part.partition): part.unsent_end})

    # ---------------------------------------------------------------- stage 2

    async def _flush_shard(self, owner: ShardOwner) -> bool:
        """Checkpoint the shard, then publish it; False when it is no longer owned.

        Raises:
            FencedError: another worker owns the shard now; nothing was published.
        """
        async with owner.flush_lock:
            if self._shards.get(owner.shard) is not owner:
                return False
            if owner.pending:
                # Stored with the last checkpoint and maybe never sent: sent again, as is,
                # before anything newer.
                await self._send_outputs(owner.shard, owner.pending)
                await self.store.clear_pending(owner.shard, owner.epoch)
                owner.pending = []
            prepared = owner.prepare(
                self.clock.now_ns(), self._delta_output, self.prometheus.enabled, self.output
            )
            if owner.join is not None:
                self.stats.counters.update(owner.join.take_counters())
            self.stats.counters.update(owner.counters)
            owner.counters.clear()
            if owner.plan_version != self.views_version:
                # The flush boundary of a new views version (no await since prepare): the
                # points above are all the old views', deltas applied from now on make the
                # new ones' streams.
                self._switch(owner)
            try:
                # The fence of every publish: nothing below happens unless this worker
                # still owns the shard.
                await self.store.save_shard(owner.shard, owner.epoch, prepared.write)
            except FencedError:
                raise
            except Exception:
                owner.not_stored(prepared)
                raise
            owner.stored(prepared)
            await self._lease(owner)
            self.stats.last_checkpoint_ns = self.health.last_checkpoint_ns = self.clock.now_ns()
            self.stats.counters["checkpoint_bytes_written"] += prepared.write.size
            if self.prometheus.enabled and prepared.cumulative is not None:
                self.prometheus.set_shard(
                    owner.shard, prepared.cumulative, prepared.write.stamp, owner.taken_at_ns
                )
            # The output holds everything written ahead (delta output is the pending record
            # itself; the last points of expiring series are part of the cumulative output).
            if prepared.outputs:
                await self._send_outputs(owner.shard, prepared.outputs)
            if owner.pending:
                await self.store.clear_pending(owner.shard, owner.epoch)
                owner.pending = []
            await self._commit({(self.deltas_topic, owner.shard): prepared.write.offset})
            return True

    async def _send_outputs(self, shard: int, records: list[OutputRecord]) -> None:
        key = f"shard-{shard}".encode()
        await asyncio.gather(
            *(self._sender.send(self.output.topic(i), value, key, ()) for i, value in records)
        )
        self.stats.counters["metrics_records_sent"] += len(records)

    # -------------------------------------------------------------------- flush

    async def refresh_control(self) -> bool:
        """Read the fleet's control document; True when a newer valid version was found
        (it takes effect at each shard's next flush: call :meth:`flush`).

        While the store is unreachable the worker keeps the version it runs. A version that
        does not fit this worker's topology is skipped, logged and counted.
        """
        try:
            control = await self.store.load_control()
        except Exception as err:
            if not self._control_unreachable:
                log.warning("%s: control document unreadable, keeping views version %d: %r",
                            self.worker_id, self.views_version, err)  # fmt: skip
            self._control_unreachable = True
            self.stats.counters["control_errors"] += 1
            return False
        self._control_unreachable = False
        pending = self._next_plan[0] if self._next_plan else self.views_version
        if control is None or control.version <= pending:
            return False
        try:
            topology = with_control(self.topology, control.document, f"views v{control.version}")
            plan = output_plan(topology)
        except (ConfigError, ValueError) as err:
            log.error("%s: views version %d rejected, keeping %d: %s", self.worker_id,
                      control.version, self.views_version, err)  # fmt: skip
            self.stats.counters["control_rejected"] += 1
            self.views_version = control.version  # not retried: the next version may fit
            return False
        self._next_plan = (control.version, plan, topology.budgets)
        log.info("%s: views version %d received", self.worker_id, control.version)
        return True

    def adopt_control(self) -> None:
        """Run the version :meth:`refresh_control` found; shards switch after their next
        flush (a shard created from now on starts with it)."""
        if self._next_plan is not None:
            self.views_version, self._plan, self._budgets = self._next_plan
            self._next_plan = None
            self.names = self._plan.names

    async def flush(self) -> None:
        """Cut every owned input partition, then checkpoint and publish every owned shard."""
        started = time.perf_counter()
        async with self._lock:
            self.adopt_control()  # every shard switches right after its flush below
            # The stamp of the worker's own telemetry. Each shard's points are stamped when
            # its checkpoint is prepared, before the fence check (ShardOwner.prepare).
            stamp = self.clock.now_ns()
            await _each(self._cut_in_flush(part) for part in list(self._partitions.values()))
            await _each(self._flush_shard_in_flush(owner) for owner in list(self._shards.values()))
            self.stats.active_series = sum(len(o.registry) for o in self._shards.values())
        self.stats.last_flush_seconds = time.perf_counter() - started
        self.health.lag = sum(self.consumer_lag().values())
        self._owned_changed()
        await self._publish_telemetry(stamp)
        await self.prometheus.push(stamp // 1_000_000)
        log.info(
            "%s: flush %.3fs partitions=%s shards=%s series=%d %s",
            self.worker_id,
            self.stats.last_flush_seconds,
            self.partitions,
            self.shards,
            self.stats.active_series,
            dict(self.stats.counters),
        )

    async def _cut_in_flush(self, part: InputPartition) -> None:
        try:
            await self._cut(part)
        except FencedError:
            self._release_partition(part, "fenced")
        except Exception:
            # The store or the broker is unreachable: keep reading; the cut is retried at
            # the next flush, bigger.
            log.exception("%s: cut of partition %d failed", self.worker_id, part.partition)
            self.stats.counters["cut_errors"] += 1

    async def _flush_shard_in_flush(self, owner: ShardOwner) -> None:
        try:
            await self._flush_shard(owner)
        except FencedError:
            self._release_shard(owner, "fenced")
        except Exception:
            # Nothing is published meanwhile: a published value must never be ahead of
            # what a restart would recover.
            log.exception("%s: checkpoint of shard %d failed", self.worker_id, owner.shard)
            self.stats.counters["checkpoint_errors"] += 1

    # ---------------------------------------------------------------- telemetry

    def consumer_lag(self) -> dict[int, float]:
        """Records behind the broker's high watermark, per owned input partition.

        Read from the high watermarks of fetch responses. On the embedded test broker they
        are known to read low when batches hold several records (see README), so this is
        a health signal only; nothing exact depends on it.
        """
        lag: dict[int, float] = {}
        for p, part in self._partitions.items():
            highwater = self._positions.highwater(self.source_topic, p)
            if highwater is not None and part.next_offset >= 0:
                lag[p] = float(max(highwater - part.next_offset, 0))
        return lag

    async def _publish_telemetry(self, now_ns: int) -> None:
        last = self.stats.last_checkpoint_ns
        age = (now_ns - last) / 1e9 if last else 0.0
        request = telemetry_request(
            self.worker_id,
            self.stats.counters,
            {
                "series_active": float(self.stats.active_series),
                "flush_duration_seconds": self.stats.last_flush_seconds,
                "checkpoint_age_seconds": max(age, 0.0),
                "partitions_owned": float(len(self._partitions)),
                "shards_owned": float(len(self._shards)),
                "views_version": float(self.views_version),
            },
            {"consumer_lag": self.consumer_lag()},
            self._started_ns,
            now_ns,
        )
        self.prometheus.set_telemetry(request)
        key = f"worker-{self.worker_id}".encode()
        try:
            for sink in self.output.sinks.values():
                for value in encode_records(
                    request, sink.encoding, sink.producer.max_message_bytes
                ):
                    await self._sender.send(sink.topic, value, key, ())
                    self.health.last_broker_ok_ns = self.clock.now_ns()
        except Exception as exc:  # the next flush sends newer telemetry
            self.stats.counters["telemetry_errors"] += 1
            log.warning("%s: telemetry not sent: %r", self.worker_id, exc)


async def _each(tasks: Iterable[Awaitable[None]]) -> None:
    """Run the tasks concurrently (each handles its own errors)."""
    await asyncio.gather(*tasks)


class _Detached:
    """Stands in for the runtime until :meth:`Worker.attach`; any use is a bug."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise RuntimeError("worker is not attached to a consumer runtime")

    def highwater(self, topic: str, partition: int) -> int | None:
        return None

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> None:
        raise RuntimeError("worker is not attached to a producer")
