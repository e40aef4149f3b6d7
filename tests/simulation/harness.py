"""An in-process fleet: real :class:`Worker` objects on an in-memory log and consumer group,
a shared :class:`MemoryStateStore` and a fake clock, driven step by step.

Every call a worker makes to the store, the producer or the group parks at a *point*
(before, and after it takes effect) until the driver resumes it. The driver is either a
script (scripted tests: every point resumes at once) or :func:`run_simulation`, which
picks, with a seeded random generator, what happens next: resume one parked call, deliver
a record, flush, rebalance, pause a worker (a zombie: its calls stay parked while the group
moves on), resume it, kill it (its calls are cancelled wherever they are), or start a new
one. The same seed replays exactly the same run: everything runs on one event loop, no
real I/O, no real time.

The model follows what the worker's runtime (faust) does:

- a rebalance revokes every partition of a member, then assigns its new ones (eager);
  records are then fetched from the group's committed offset (the worker commits its
  checkpoints' offsets in ``assign``), or from the start;
- a member's records arrive one at a time per topic (one agent per topic), and its flush
  timer runs beside them;
- a paused member drops out of the group (its session times out) but does not know it:
  when it wakes up it finishes what it was doing, gets what it had already fetched, and
  flushes, until the group tells it (a revocation) at the next rebalance it joins. Commits
  from a member the group no longer has are refused, as Kafka refuses them.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanmetrics.config.model import Topology
from spanmetrics.fleet.worker import Headers, TopicPartition, Worker
from spanmetrics.model.attributes import any_value_to_str
from spanmetrics.model.enums import span_kind_name, status_code_name
from spanmetrics.state.store import Cut, MemoryStateStore, ShardCheckpoint, ShardWrite
from tests.clock import FakeClock


class CommitRefused(Exception):
    """The group does not have this member (any more)."""


# ------------------------------------------------------------------------- the log


@dataclass(slots=True)
class Record:
    """One record of the in-memory log."""

    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    #: Who sent it (a worker id, or "producer").
    sender: str = "producer"


class Log:
    """Topics of partitions of records, in memory."""

    def __init__(self) -> None:
        self.topics: dict[str, list[list[Record]]] = {}

    def create(self, topic: str, partitions: int) -> None:
        """A topic with ``partitions`` empty partitions (kept if it exists)."""
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes,
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        sender: str = "producer",
    ) -> int:
        """Append a record; returns its offset."""
        log = self.topics[topic][partition]
        log.append(Record(len(log), key, value, tuple(headers), sender))
        return len(log) - 1

    def add_partitions(self, topic: str, count: int) -> None:
        """Grow ``topic`` to ``count`` partitions (as ``kafka-topics --alter``)."""
        partitions = self.topics[topic]
        partitions += [[] for _ in range(count - len(partitions))]

    def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``."""
        return len(self.topics[topic])


# ------------------------------------------------------------------- the scheduler


class Scheduler:
    """Holds parked calls until the driver resumes them; in scripted mode, none park."""

    def __init__(self, scripted: bool = True) -> None:
        self.scripted = scripted
        self.parked: dict[int, tuple[str, str, asyncio.Future[None]]] = {}
        self._seq = 0

    async def point(self, owner: str, label: str) -> None:
        """Park the calling task (of worker ``owner``) until resumed."""
        if self.scripted:
            return
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parked[seq] = (owner, label, future)
        try:
            await future
        finally:
            self.parked.pop(seq, None)

    def runnable(self, paused: set[str]) -> list[int]:
        """Parked calls of workers that are not paused, oldest first."""
        return [seq for seq, (owner, _, _) in self.parked.items() if owner not in paused]

    def resume(self, seq: int) -> None:
        """Let a parked call go on."""
        _, _, future = self.parked.pop(seq)
        if not future.done():
            future.set_result(None)


async def settle() -> None:
    """Run the event loop until no task can make progress (every one is parked, waiting on
    a lock held by a parked one, or done)."""
    loop: Any = asyncio.get_running_loop()
    for _ in range(10_000):
        await asyncio.sleep(0)
        if not loop._ready:  # CPython's queue of runnable callbacks: empty means quiescent
            return
    raise AssertionError("the fleet did not settle")


# -------------------------------------------------------- the runtime of one worker


class Faults:
    """Injected failures of writes: before they take effect, or after (the write happened,
    the caller sees an error: an ambiguous failure)."""

    def __init__(self, rng: random.Random | None = None, rate: float = 0.0) -> None:
        self._rng = rng or random.Random(0)
        self.rate = rate
        self.injected: Counter[str] = Counter()

    def draw(self, what: str) -> str | None:
        """None, "before" or "after"."""
        if not self.rate or self._rng.random() >= self.rate:
            return None
        when = self._rng.choice(("before", "after"))
        self.injected[f"{what}.{when}"] += 1
        return when


class _Store:
    """The shared store as one worker sees it: every call parks before and after."""

    #: Calls that fail when faults are injected (taking over stays reliable: a worker that
    #: cannot claim or load crashes, which the simulation does with kills).
    _FALLIBLE = ("save_cut", "save_shard", "clear_pending")

    def __init__(
        self, inner: MemoryStateStore, sched: Scheduler, owner: str, faults: Faults
    ) -> None:
        self._inner = inner
        self._sched = sched
        self._owner = owner
        self._faults = faults

    @property
    def bytes_written(self) -> int:
        return self._inner.bytes_written

    async def _call(self, label: str, call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        await self._sched.point(self._owner, f"store.{label}")
        fault = self._faults.draw(f"store.{label}") if label in self._FALLIBLE else None
        if fault == "before":
            raise ConnectionError(f"injected: store.{label} failed")
        result = await call()
        await self._sched.point(self._owner, f"store.{label}.done")
        if fault == "after":
            raise ConnectionError(f"injected: store.{label} answer lost")
        return result

    async def claim_partition(self, partition: int) -> int:
        return int(
            await self._call("claim_partition", lambda: self._inner.claim_partition(partition))
        )

    async def load_cut(self, partition: int) -> Cut | None:
        result: Cut | None = await self._call("load_cut", lambda: self._inner.load_cut(partition))
        return result

    async def save_cut(self, partition: int, epoch: int, cut: Cut) -> None:
        await self._call("save_cut", lambda: self._inner.save_cut(partition, epoch, cut))

    async def claim_shard(self, shard: int) -> int:
        return int(await self._call("claim_shard", lambda: self._inner.claim_shard(shard)))

    async def load_shard(self, shard: int) -> ShardCheckpoint:
        result: ShardCheckpoint = await self._call(
            "load_shard", lambda: self._inner.load_shard(shard)
        )
        return result

    async def save_shard(self, shard: int, epoch: int, write: ShardWrite) -> None:
        await self._call("save_shard", lambda: self._inner.save_shard(shard, epoch, write))

    async def clear_pending(self, shard: int, epoch: int) -> None:
        await self._call("clear_pending", lambda: self._inner.clear_pending(shard, epoch))

    async def load_control(self) -> Any:
        return await self._call("load_control", self._inner.load_control)

    async def lease_budgets(self, shard: int, requests: list[Any]) -> list[int]:
        return list(
            await self._call("lease_budgets", lambda: self._inner.lease_budgets(shard, requests))
        )

    async def save_control(self, document: str, audit: Any) -> int:
        return await self._inner.save_control(document, audit)

    async def control_audit(self) -> list[Any]:
        return await self._inner.control_audit()

    async def stored_bytes(self) -> int:
        return await self._inner.stored_bytes()

    async def close(self) -> None:
        pass


class _Producer:
    """Appends to the log; parks before the append and before the acknowledgement."""

    def __init__(self, log: Log, sched: Scheduler, owner: str, faults: Faults) -> None:
        self._log = log
        self._sched = sched
        self._owner = owner
        self._faults = faults

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> None:
        await self._sched.point(self._owner, f"send.{topic}")
        fault = self._faults.draw("send")
        if fault == "before":
            raise ConnectionError("injected: send failed")
        if partition is None:
            partition = 0 if key is None else sum(key) % self._log.partitions(topic)
        self._log.append(topic, partition, value, key, headers, self._owner)
        await self._sched.point(self._owner, f"send.{topic}.ack")
        if fault == "after":
            raise ConnectionError("injected: acknowledgement lost")


class Group:
    """The consumer group: members, generation and committed offsets."""

    def __init__(self) -> None:
        self.members: set[str] = set()
        #: Incremented by every rebalance; a member's commits count only in its generation.
        self.generation = 0
        self.committed: dict[TopicPartition, int] = {}


class _Positions:
    def __init__(self, fleet: SimFleet, owner: str) -> None:
        self._fleet = fleet
        self._owner = owner

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        fleet = self._fleet
        await fleet.sched.point(self._owner, "commit")
        node = fleet.nodes.get(self._owner)
        group = fleet.group
        if node is None or self._owner not in group.members or node.generation != group.generation:
            raise CommitRefused(f"{self._owner} is not a member of generation {group.generation}")
        group.committed.update(offsets)

    def highwater(self, topic: str, partition: int) -> int | None:
        return None


@dataclass
class Node:
    """One worker and what its runtime knows."""

    name: str
    worker: Worker
    #: The assignment the worker was last told about.
    assigned: set[TopicPartition] = field(default_factory=set)
    #: Next offset to deliver, per assigned partition.
    fetch: dict[TopicPartition, int] = field(default_factory=dict)
    #: In-flight operations by channel ("spans", "deltas", "flush", "rebalance").
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    paused: bool = False
    #: The group generation of the member's last assignment.
    generation: int = 0


# ------------------------------------------------------------------------ the fleet


class SimFleet:
    """Workers of one topology on one log, group, store and clock."""

    def __init__(
        self,
        topology: Topology,
        partitions: int,
        shards: int | None = None,
        scripted: bool = True,
        metrics_partitions: int = 1,
        faults: Faults | None = None,
        internal_max_record_bytes: int | None = None,
    ) -> None:
        self.topology = topology
        self.log = Log()
        self.store = MemoryStateStore()
        self.clock = FakeClock()
        self.group = Group()
        self.sched = Scheduler(scripted)
        self.faults = faults or Faults()
        self.internal_max_record_bytes = internal_max_record_bytes
        self.nodes: dict[str, Node] = {}
        self.source = topology.source.topic
        probe = Worker(topology, self.store, self.clock)
        self.deltas = probe.deltas_topic
        self.log.create(self.source, partitions)
        self.log.create(self.deltas, shards or partitions)
        self.metrics_topics = [s.kafka.topic for s in topology.sinks if s.kafka is not None]
        for topic in self.metrics_topics:
            self.log.create(topic, metrics_partitions)
        self.log.create(topology.source.dead_letter_topic, 1)
        #: Every span record produced, in order.
        self.inputs: list[ExportTraceServiceRequest] = []

    # ------------------------------------------------------------ membership

    def start(self, name: str) -> Node:
        """A new worker, member of the group (not assigned anything yet)."""
        worker = Worker(
            self.topology,
            _Store(self.store, self.sched, name, self.faults),  # type: ignore[arg-type]
            self.clock,
            broker="kafka://sim:0",
            worker_id=name,
        )
        worker.attach(
            _Positions(self, name),
            _Producer(self.log, self.sched, name, self.faults),
            self.log.partitions(self.deltas),
        )
        if self.internal_max_record_bytes is not None:
            worker.internal_max_record_bytes = self.internal_max_record_bytes

        async def sleep(seconds: float) -> None:
            await self.sched.point(name, f"sleep {seconds:g}s")

        worker.sleep = sleep
        node = self.nodes[name] = Node(name, worker)
        self.group.members.add(name)
        return node

    def all_partitions(self) -> list[TopicPartition]:
        """Every partition the group distributes: the input's and the shards'."""
        return [(self.source, p) for p in range(self.log.partitions(self.source))] + [
            (self.deltas, s) for s in range(self.log.partitions(self.deltas))
        ]

    def kill(self, name: str) -> None:
        """SIGKILL: the worker's calls stop wherever they are, and it leaves the group."""
        node = self.nodes.pop(name)
        self.group.members.discard(name)
        for task in node.tasks.values():
            task.cancel()

    async def revoke_and_assign(
        self, node: Node, assignment: Iterable[TopicPartition], generation: int
    ) -> None:
        """What the runtime does to one member in a rebalance of ``generation``."""
        old = sorted(node.assigned)
        node.assigned = set()
        node.fetch = {}
        await node.worker.revoke(old)
        node.generation = generation
        new = set(assignment)
        await node.worker.assign(sorted(new))
        node.assigned = new
        node.fetch = {tp: self.group.committed.get(tp, 0) for tp in new}

    async def rebalance(self, assignment: dict[str, list[TopicPartition]]) -> None:
        """Scripted: revoke every member's partitions, then assign ``assignment``."""
        self.group.generation += 1
        for name in sorted(assignment):
            node = self.nodes[name]
            old = sorted(node.assigned)
            node.assigned, node.fetch = set(), {}
            await node.worker.revoke(old)
        for name in sorted(assignment):
            node = self.nodes[name]
            node.generation = self.group.generation
            self.group.members.add(name)
            await node.worker.assign(sorted(assignment[name]))
            node.assigned = set(assignment[name])
            node.fetch = {tp: self.group.committed.get(tp, 0) for tp in node.assigned}

    # ----------------------------------------------------------------- input

    def produce(self, partition: int, request: ExportTraceServiceRequest) -> None:
        """Append a span record to the input topic (and keep it for the expected counts)."""
        self.log.append(self.source, partition, request.SerializeToString())
        self.inputs.append(request)

    # -------------------------------------------------------------- delivery

    def deliverable(self, node: Node, topic: str) -> list[tuple[TopicPartition, Record]]:
        """Every record ``node`` could be delivered next on ``topic``."""
        out = []
        for tp in sorted(tp for tp in node.assigned if tp[0] == topic):
            offset = node.fetch.get(tp, 0)
            records = self.log.topics[tp[0]][tp[1]]
            if offset < len(records):
                out.append((tp, records[offset]))
        return out

    async def deliver(self, node: Node, tp: TopicPartition, record: Record) -> None:
        """Deliver one record to the worker and move its fetch position on."""
        node.fetch[tp] = record.offset + 1
        await node.worker.consume(tp[0], tp[1], record.offset, record.key, record.value)

    async def deliver_all(self, node: Node) -> int:
        """Scripted: deliver everything available to ``node``; returns how many."""
        n = 0
        for topic in (self.source, self.deltas):
            while items := self.deliverable(node, topic):
                await self.deliver(node, *items[0])
                n += 1
        return n

    async def pump(self, names: Iterable[str] | None = None, flushes: int = 3) -> None:
        """Scripted: deliver and flush until nothing moves, ``flushes`` rounds at most after
        the last delivery."""
        names = sorted(names or self.nodes)
        idle = 0
        while idle < flushes:
            moved = 0
            for name in names:
                moved += await self.deliver_all(self.nodes[name])
            self.clock.advance(1)
            for name in names:
                await self.nodes[name].worker.flush()
            idle = 0 if moved else idle + 1

    # ---------------------------------------------------------------- output

    def output(self) -> list[Record]:
        """Every record of the metrics topics, in log order per partition."""
        return [
            record
            for topic in self.metrics_topics
            for partition in self.log.topics[topic]
            for record in partition
            if not (record.key or b"").startswith(b"worker-")
        ]


def resource_key(attributes: Iterable[Any]) -> tuple[tuple[str, str], ...]:
    """A resource's attributes as sorted pairs: its identity in the output."""
    return tuple(sorted((kv.key, any_value_to_str(kv.value)) for kv in attributes))


def expected_calls(
    inputs: Iterable[ExportTraceServiceRequest], dimensions: Iterable[str] = ()
) -> Counter[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]]:
    """Calls per (resource, labels) that the inputs must add up to, computed without the
    engine: the connector's intrinsic dimensions, then each of ``dimensions`` from the
    span's attributes when it has it."""
    counts: Counter[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = Counter()
    for request in inputs:
        for rs in request.resource_spans:
            resource = resource_key(rs.resource.attributes)
            service = dict(resource).get("service.name", "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {kv.key: any_value_to_str(kv.value) for kv in span.attributes}
                    labels = (
                        ("service.name", service),
                        ("span.name", span.name),
                        ("span.kind", span_kind_name(span.kind)),
                        ("status.code", status_code_name(span.status.code)),
                        *((d, attrs[d]) for d in dimensions if d in attrs),
                    )
                    counts[(resource, labels)] += 1
    return counts


# ------------------------------------------------------------- reading the output

#: (resource attributes, metric name, point attributes).
StreamKey = tuple[tuple[tuple[str, str], ...], str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class Point:
    """One published sum point, with where and in what order it arrived."""

    start_ns: int
    time_ns: int
    value: int
    arrival: int
    sender: str
    temporality: int


def sum_points(records: Iterable[Record], suffix: str = ".calls") -> dict[StreamKey, list[Point]]:
    """Points of every sum metric whose name ends with ``suffix``, per stream, in arrival
    order."""
    out: dict[StreamKey, list[Point]] = defaultdict(list)
    for arrival, record in enumerate(records):
        request = ExportMetricsServiceRequest.FromString(record.value)
        for rm in request.resource_metrics:
            resource = resource_key(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if not metric.name.endswith(suffix) or not metric.HasField("sum"):
                        continue
                    for p in metric.sum.data_points:
                        labels = tuple((kv.key, any_value_to_str(kv.value)) for kv in p.attributes)
                        out[(resource, metric.name, labels)].append(
                            Point(
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                p.as_int,
                                arrival,
                                record.sender,
                                metric.sum.aggregation_temporality,
                            )
                        )
    return out


def random_assignment(
    rng: random.Random, members: list[str], partitions: list[TopicPartition]
) -> dict[str, list[TopicPartition]]:
    """Every partition to one member, at random."""
    assignment: dict[str, list[TopicPartition]] = {m: [] for m in members}
    for tp in partitions:
        assignment[rng.choice(members)].append(tp)
    return assignment
