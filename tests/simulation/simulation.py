"""A deterministic simulation of the fleet, FoundationDB style: one seed, one run.

:func:`run_seed` builds a fleet (:mod:`tests.simulation.harness`) with a configuration
drawn from the seed, then lets the seeded generator decide every step: resume one parked
store, producer or group call; deliver a record; flush; rebalance; pause a worker (a
zombie); wake it up; kill it; start another; jump the clock. Then everything is woken up,
the group settles on the live workers, and the fleet runs until its output stops changing.
:func:`check` verifies the invariants on everything that was published and stored:

- counts exact: each series' published calls add up to the spans sent (per resource, when
  a cardinality limit folds series into the overflow series);
- one start time per stream, and a new stream only after the previous one ended (expiry);
- cumulative values never go down in time order, and two points at the same time agree;
- delta points never overlap, each one starts where the previous ended unless the series
  expired in between, and they add up to the stored cumulative state;
- at most ``limit + 1`` series per resource at any flush, and in the stored state.

A failing seed prints its configuration and the last steps; it replays exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.config.load import parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.state.codec import HistogramSpec, decode_resource_state, decode_series_state
from tests.builders import CLIENT, ERROR, SERVER, UNSET, request, resource, span
from tests.simulation.harness import (
    Faults,
    Node,
    Point,
    SimFleet,
    expected_calls,
    random_assignment,
    resource_key,
    settle,
    sum_points,
)

#: The dimension of high cardinality, for runs with a cardinality limit.
USER = "user.id"


@dataclass(frozen=True)
class SimConfig:
    """What one seed runs."""

    delta: bool
    limit: int
    expiration_s: float
    resource_expiration_s: float
    partitions: int
    shards: int
    records: int
    workers: int
    steps: int
    fault_rate: float
    #: Small limits, so that cuts and outputs are split over several records.
    small_records: bool

    @property
    def expiring(self) -> bool:
        """Whether series may expire (and come back as new streams)."""
        return bool(self.expiration_s or self.resource_expiration_s)

    def topology(self) -> Topology:
        """The topology of the run."""
        return parse_topology(
            {
                "source": {"topic": "spans", "group": "sim"},
                "spanmetrics": {
                    "metrics_flush_interval": "1s",
                    "aggregation_temporality": "AGGREGATION_TEMPORALITY_"
                    + ("DELTA" if self.delta else "CUMULATIVE"),
                    "aggregation_cardinality_limit": self.limit,
                    "series_expiration": self.expiration_s,
                    "metrics_expiration": self.resource_expiration_s,
                    "dimensions": [{"name": USER}] if self.limit else [],
                    "exemplars": {"enabled": True, "max_per_data_point": 2},
                },
                "sinks": [
                    {
                        "kafka": {
                            "topic": "metrics",
                            "producer": {
                                "max_message_bytes": 4096 if self.small_records else 1_000_000
                            },
                        }
                    }
                ],
            },
            "simulation",
        )


def draw_config(rng: random.Random) -> SimConfig:
    """A configuration for one seed."""
    return SimConfig(
        delta=rng.random() < 0.4,
        limit=rng.choice([0, 0, 0, 3]),
        expiration_s=rng.choice([0.0, 0.0, 0.0, 4.0]),
        resource_expiration_s=rng.choice([0.0, 0.0, 0.0, 0.0, 3.0]),
        partitions=rng.randint(1, 4),
        shards=rng.randint(1, 3),
        records=rng.randint(8, 30),
        workers=rng.randint(1, 3),
        steps=rng.randint(300, 900),
        fault_rate=rng.choice([0.0, 0.0, 0.03]),
        small_records=rng.random() < 0.25,
    )


def make_input(rng: random.Random, config: SimConfig) -> list[tuple[int, Any]]:
    """Span records to produce during the run: (partition, request)."""
    services = ["cart", "checkout", "frontend"]
    records = []
    for _ in range(config.records):
        resources = []
        for _ in range(rng.randint(1, 3)):
            service = rng.choice(services)
            spans = [
                span(
                    rng.choice(["GET", "POST", "db"]),
                    rng.choice([SERVER, CLIENT]),
                    rng.choice([UNSET, UNSET, ERROR]),
                    duration_ms=rng.random() * 50,
                    attributes={USER: f"u{rng.randint(0, 9)}"} if config.limit else None,
                    span_id=rng.randbytes(8),
                    trace_id=rng.randbytes(16),
                )
                for _ in range(rng.randint(1, 4))
            ]
            attrs = {
                "service.name": service,
                "service.instance.id": f"{service}-{rng.randint(0, 1)}",
            }
            resources.append(resource(attrs, *spans))
        records.append((rng.randrange(config.partitions), request(*resources)))
    return records


@dataclass
class Run:
    """A finished run: the fleet, its configuration and what happened."""

    seed: int
    config: SimConfig
    fleet: SimFleet
    trace: list[str] = field(default_factory=list)


_CHANNELS = ("spans", "deltas", "flush", "rebalance")


def _busy(node: Node, channel: str) -> bool:
    task = node.tasks.get(channel)
    return task is not None and not task.done()


async def _drive(
    rng: random.Random, run: Run, given_input: list[tuple[int, Any]] | None = None
) -> None:
    fleet, config, trace = run.fleet, run.config, run.trace
    pending_input = make_input(rng, config) if given_input is None else given_input
    counter = 0

    def spawn(node: Node, channel: str, coro: Any, what: str) -> None:
        trace.append(f"{node.name}: {what}")
        node.tasks[channel] = asyncio.get_running_loop().create_task(coro)

    def live() -> list[Node]:
        return [fleet.nodes[n] for n in sorted(fleet.nodes)]

    def start_worker() -> None:
        nonlocal counter
        name = f"w{counter}"
        counter += 1
        fleet.start(name)
        trace.append(f"{name}: start")

    def rebalance() -> None:
        members = [n for n in live() if n.name in fleet.group.members and not n.paused]
        if not members or any(_busy(n, "rebalance") for n in members):
            return
        fleet.group.generation += 1
        assignment = random_assignment(rng, [n.name for n in members], fleet.all_partitions())
        for node in members:
            spawn(
                node,
                "rebalance",
                fleet.revoke_and_assign(node, assignment[node.name], fleet.group.generation),
                f"rebalance -> {sorted(assignment[node.name])}",
            )

    for _ in range(config.workers):
        start_worker()
    rebalance()
    await settle()
    for _step in range(config.steps):
        fleet.clock.advance(rng.randint(1, 40) / 1000)
        paused = {n.name for n in live() if n.paused}
        roll = rng.random()
        runnable = fleet.sched.runnable(paused)
        if roll < 0.40 and runnable:
            seq = rng.choice(runnable)
            owner, label, _ = fleet.sched.parked[seq]
            trace.append(f"{owner}: resume {label}")
            fleet.sched.resume(seq)
        elif roll < 0.70:
            candidates = [
                (node, topic)
                for node in live()
                if not node.paused and not _busy(node, "rebalance")
                for topic, channel in ((fleet.source, "spans"), (fleet.deltas, "deltas"))
                if not _busy(node, channel) and fleet.deliverable(node, topic)
            ]
            if candidates:
                node, topic = rng.choice(candidates)
                tp, record = rng.choice(fleet.deliverable(node, topic))
                channel = "spans" if topic == fleet.source else "deltas"
                spawn(
                    node, channel, fleet.deliver(node, tp, record), f"deliver {tp}@{record.offset}"
                )
        elif roll < 0.80:
            nodes = [n for n in live() if not n.paused and not _busy(n, "flush")]
            if nodes:
                node = rng.choice(nodes)
                spawn(node, "flush", node.worker.flush(), "flush")
        elif roll < 0.88:
            if pending_input:
                partition, req = pending_input.pop(0)
                fleet.produce(partition, req)
                trace.append(f"produce to partition {partition}")
        elif roll < 0.90:
            seconds = rng.uniform(0.5, 3.0)
            fleet.clock.advance(seconds)
            trace.append(f"clock +{seconds:.2f}s")
        elif roll < 0.93:
            rebalance()
        elif roll < 0.95:
            awake = [n for n in live() if not n.paused]
            if len(awake) > 1:
                node = rng.choice(awake)
                node.paused = True
                fleet.group.members.discard(node.name)  # its session times out
                trace.append(f"{node.name}: pause")
        elif roll < 0.97:
            sleeping = [n for n in live() if n.paused]
            if sleeping:
                node = rng.choice(sleeping)
                node.paused = False
                fleet.group.members.add(node.name)  # it rejoins; its view is still old
                trace.append(f"{node.name}: wake up")
        elif roll < 0.985:
            if len(live()) > 1:
                node = rng.choice(live())
                fleet.kill(node.name)
                trace.append(f"{node.name}: SIGKILL")
        elif len(live()) < 4:
            start_worker()
        await settle()
        _raise_failures(live())
    # Quiesce: wake everyone, let every parked call go through, then settle the group.
    trace.append("-- quiesce")
    for node in live():
        node.paused = False
        fleet.group.members.add(node.name)
    while fleet.sched.parked or any(_busy(n, c) for n in live() for c in _CHANNELS):
        for seq in list(fleet.sched.parked):
            if seq in fleet.sched.parked:
                fleet.sched.resume(seq)
        await settle()
    _raise_failures(live())
    fleet.sched.scripted = True
    fleet.faults.rate = 0.0
    while pending_input:
        fleet.produce(*pending_input.pop(0))
    await fleet.rebalance(random_assignment(rng, sorted(fleet.nodes), fleet.all_partitions()))
    await fleet.pump(flushes=3)


def _raise_failures(nodes: list[Node]) -> None:
    """A worker call that raised is a bug of the worker: the run stops there."""
    for node in nodes:
        for channel, task in node.tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"{node.name} {channel} raised") from task.exception()


def run_seed(
    seed: int,
    topology: Topology | None = None,
    make: Callable[[random.Random, SimConfig], list[tuple[int, Any]]] | None = None,
) -> Run:
    """Run the simulation of ``seed``: the connector's topology and spans, or ``topology``
    with the input ``make`` draws."""
    rng = random.Random(seed)
    config = draw_config(rng)
    given_input = make(rng, config) if make is not None else None
    fleet = SimFleet(
        topology or config.topology(),
        config.partitions,
        config.shards,
        scripted=False,
        faults=Faults(random.Random(rng.random()), config.fault_rate),
        internal_max_record_bytes=1024 if config.small_records else None,
    )
    run = Run(seed, config, fleet)
    asyncio.run(_drive(rng, run, given_input))
    return run


# --------------------------------------------------------------------- invariants


def check(run: Run) -> list[str]:
    """Every invariant the run breaks (empty when it is correct)."""
    config, fleet = run.config, run.fleet
    problems: list[str] = []
    dims = [USER] if config.limit else []
    expected = expected_calls(fleet.inputs, dims)
    streams = sum_points(fleet.output(), ".calls")
    by_series: dict[Any, list[Point]] = defaultdict(list)
    for (res, _name, labels), points in streams.items():
        by_series[(res, labels)] += points
    totals: Counter[Any] = Counter()
    for key, points in by_series.items():
        problems += _check_series(key, points, config)
        totals[key] = _total(points, config.delta)
    # Counts exact.
    if config.limit:
        per_resource: Counter[Any] = Counter()
        for (res, _), n in expected.items():
            per_resource[res] += n
        got: Counter[Any] = Counter()
        for (res, _), n in totals.items():
            got[res] += n
        if got != per_resource:
            problems.append(f"calls per resource {dict(got)} != sent {dict(per_resource)}")
        problems += _check_limit(streams, config.limit)
    elif totals != expected:
        wrong = {
            k: (expected.get(k, 0), totals.get(k, 0))
            for k in set(expected) | set(totals)
            if expected.get(k, 0) != totals.get(k, 0)
        }
        problems.append(f"series with wrong calls (sent, published): {wrong}")
    problems += _check_stored(run, by_series)
    return problems


def _streams(points: list[Point]) -> dict[int, list[Point]]:
    out: dict[int, list[Point]] = defaultdict(list)
    for p in points:
        out[p.start_ns].append(p)
    return out


def _check_series(key: Any, points: list[Point], config: SimConfig) -> list[str]:
    problems = []
    if config.delta:
        unique = sorted({(p.start_ns, p.time_ns, p.value) for p in points})
        for (s0, t0, v0), (s1, t1, v1) in itertools.pairwise(unique):
            if (s0, t0) == (s1, t1):
                problems.append(f"{key}: two delta points for ({s0}, {t0}]: {v0} and {v1}")
            elif s1 < t0:
                problems.append(f"{key}: delta points overlap: ({s0}, {t0}] and ({s1}, {t1}]")
            elif s1 != t0 and not config.expiring:
                problems.append(f"{key}: gap between delta points ({s0}, {t0}] and ({s1}, {t1}]")
        for s, t, v in unique:
            if not s < t or v <= 0:
                problems.append(f"{key}: bad delta point ({s}, {t}] = {v}")
        return problems
    streams = _streams(points)
    if len(streams) > 1 and not config.expiring:
        problems.append(f"{key}: published with {len(streams)} start times {sorted(streams)}")
    previous_end = None
    for start in sorted(streams):
        ordered = sorted(streams[start], key=lambda p: (p.time_ns, p.arrival))
        if previous_end is not None and start <= previous_end:
            problems.append(f"{key}: stream starting {start} overlaps the previous one")
        for p in ordered:
            if not p.start_ns < p.time_ns:
                problems.append(f"{key}: point ends before its start: ({p.start_ns}, {p.time_ns}]")
        for a, b in itertools.pairwise(ordered):
            if b.value < a.value:
                problems.append(
                    f"{key}: cumulative went down {a.value} -> {b.value} "
                    f"(times {a.time_ns} -> {b.time_ns}, from {a.sender} then {b.sender})"
                )
            if a.time_ns == b.time_ns and a.value != b.value:
                problems.append(f"{key}: two values {a.value}, {b.value} at time {a.time_ns}")
        previous_end = ordered[-1].time_ns
    return problems


def _total(points: list[Point], delta: bool) -> int:
    if delta:
        return sum(v for _, _, v in {(p.start_ns, p.time_ns, p.value) for p in points})
    streams = _streams(points)
    return sum(max(s, key=lambda p: (p.time_ns, p.arrival)).value for s in streams.values())


def _check_limit(streams: dict[Any, list[Point]], limit: int) -> list[str]:
    problems = []
    at: dict[Any, set[Any]] = defaultdict(set)
    for (res, _name, labels), points in streams.items():
        for p in points:
            at[(res, p.sender, p.time_ns)].add(labels)
    for (res, sender, time_ns), labels in at.items():
        if len(labels) > limit + 1:
            problems.append(
                f"{dict(res)['service.name']}: {len(labels)} series at {time_ns} from {sender}"
            )
    return problems


def _check_stored(run: Run, by_series: dict[Any, list[Point]]) -> list[str]:
    """The stored cumulative state agrees with what was published."""
    problems = []
    spec = HistogramSpec(160)
    stored_series: Counter[Any] = Counter()
    for shard in range(run.fleet.log.partitions(run.fleet.deltas)):
        checkpoint = asyncio.run(run.fleet.store.load_shard(shard))
        resources = {}
        for rid, blob in checkpoint.resources.items():
            raw, _ = decode_resource_state(blob)
            resources[rid] = resource_key(Resource.FromString(raw).attributes)
        per_resource: Counter[Any] = Counter()
        for blob in checkpoint.series.values():
            rid, kind, labels, state = decode_series_state(blob, spec)
            if kind != "series":
                continue
            key = (resources[rid], labels)
            per_resource[resources[rid]] += 1
            stored_series[key] = state.calls
            published = [p for p in by_series.get(key, []) if p.start_ns >= state.start_ns]
            if run.config.delta:
                total = sum(v for _, _, v in {(p.start_ns, p.time_ns, p.value) for p in published})
            else:
                total = max((p.value for p in published), default=0)
            if total != state.calls:
                problems.append(f"{key}: stored {state.calls}, published {total}")
        if run.config.limit:
            for res, n in per_resource.items():
                if n > run.config.limit + 1:
                    problems.append(f"{dict(res)['service.name']}: {n} series stored")
    return problems
