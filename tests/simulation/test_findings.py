"""Regression tests for the findings of issue #8, on the in-process fleet.

Each test is the scenario that broke on the worker before the two-stage fleet (the same
scenarios, written against the old worker's API, all failed there): start times that
moved, a zombie publishing stale values, deltas counted twice after a fence, biased
sampling, per-partition limits and expiry, state that grew with partitions, and output
records too large for Kafka.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Coroutine
from typing import Any

import pytest

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.config.load import parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.state.codec import HistogramSpec, decode_delta
from tests.builders import SERVER, request, resource, span
from tests.clock import FakeClock
from tests.simulation.harness import SimFleet, expected_calls, settle, sum_points

SERVICE = {"service.name": "checkout", "service.instance.id": "checkout-0"}


def topology(**spanmetrics: Any) -> Topology:
    sinks = spanmetrics.pop("sinks", [{"kafka": {"topic": "metrics"}}])
    return parse_topology(
        {
            "source": {"topic": "spans", "group": "findings"},
            "spanmetrics": {"metrics_flush_interval": "1s", **spanmetrics},
            "sinks": sinks,
        },
        "test",
    )


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def one_span(name: str = "GET /cart", attributes: dict[str, object] | None = None) -> Any:
    return request(resource(SERVICE, span(name, SERVER, attributes=attributes)))


def latest(fleet: SimFleet) -> dict[Any, int]:
    """Latest cumulative calls per (resource, labels), by point time."""
    out = {}
    for (res, _, labels), points in sum_points(fleet.output()).items():
        out[(res, labels)] = max(points, key=lambda p: (p.time_ns, p.arrival)).value
    return out


# ------------------------------------------------------------------ 1. start times


def test_a_series_has_one_start_time_through_kills_scale_out_and_restart() -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(), partitions=4, shards=2)
        tps = fleet.all_partitions()
        fleet.start("a"), fleet.start("b")
        await fleet.rebalance({"a": tps[::2], "b": tps[1::2]})
        # b's partition sees the series first, a's five seconds later.
        fleet.produce(1, one_span())
        await fleet.deliver_all(fleet.nodes["b"])
        fleet.clock.advance(5)
        fleet.produce(0, one_span())
        await fleet.pump()
        fleet.kill("b")  # SIGKILL
        fleet.start("c")  # scale-out
        await fleet.rebalance({"a": tps[:3], "c": tps[3:]})
        for p in range(4):
            fleet.produce(p, one_span())
        await fleet.pump()
        for name in list(fleet.nodes):  # the whole fleet restarts from the store
            fleet.kill(name)
        fleet.start("d")
        await fleet.rebalance({"d": tps})
        fleet.produce(2, one_span())
        await fleet.pump()
        return fleet

    fleet = run(scenario())
    for key, points in sum_points(fleet.output()).items():
        assert len({p.start_ns for p in points}) == 1, (key, points)
    assert latest(fleet) == expected_calls(fleet.inputs)


# ------------------------------------------------------------------- 2. zombies


def test_a_zombie_publishes_nothing_after_its_shard_moved() -> None:
    async def scenario() -> tuple[SimFleet, int]:
        fleet = SimFleet(topology(), partitions=1)
        tps = fleet.all_partitions()
        fleet.start("a")
        await fleet.rebalance({"a": tps})
        fleet.produce(0, one_span())
        await fleet.pump(["a"], flushes=1)
        # b takes everything over; a was paused and is not told (a zombie).
        fleet.start("b")
        await fleet.rebalance({"b": tps})
        fleet.produce(0, one_span())
        await fleet.pump(["b"], flushes=1)
        before = len(fleet.output())
        fleet.clock.advance(1)
        await fleet.nodes["a"].worker.flush()  # its partitions are idle: the old bug's case
        return fleet, before

    fleet, before = run(scenario())
    output = fleet.output()
    assert len(output) == before, "the zombie published"
    values = [p.value for points in sum_points(output).values() for p in points]
    assert values == sorted(values)
    assert fleet.nodes["a"].worker.shards == []  # released on the fence


# -------------------------------------------------- 3. delta after fence + reassign


def test_deltas_add_up_after_a_fenced_worker_gets_its_shard_back() -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA"), 1)
        tps = fleet.all_partitions()
        a = fleet.start("a")
        await fleet.rebalance({"a": tps})
        fleet.produce(0, one_span())
        await fleet.pump(["a"], flushes=1)
        fleet.start("b")
        await fleet.rebalance({"b": tps})  # a is a zombie
        fleet.produce(0, one_span())
        await fleet.pump(["b"], flushes=1)
        await fleet.deliver_all(a)  # what the zombie had fetched
        fleet.clock.advance(1)
        await a.worker.flush()  # fenced
        await fleet.rebalance({"b": [], "a": tps})
        fleet.produce(0, one_span())
        await fleet.pump(["a"])
        return fleet

    fleet = run(scenario())
    deltas = {
        (p.start_ns, p.time_ns, p.value) for ps in sum_points(fleet.output()).values() for p in ps
    }
    assert sum(v for _, _, v in deltas) == 3


# ------------------------------------------------------------------- 4. sampling


@pytest.mark.parametrize(
    ("threshold", "keep"),
    [("4", 0.75), ("2", 0.875), ("55", 1 - 0x55 / 256), ("c8", 1 - 0xC8 / 256), ("8", 0.5)],
)
@pytest.mark.parametrize("exemplars", [False, True])
def test_sampling_correction_is_unbiased(threshold: str, keep: float, exemplars: bool) -> None:
    """Thresholds that are not powers of two give fractional counts, rounded at random
    by the span id: the total must be the adjusted count, within 5 standard deviations."""
    config = topology(exemplars={"enabled": exemplars}).spanmetrics
    engine = SpanMetricsEngine(config, FakeClock())
    rng = random.Random(threshold)
    n = 4000
    spans = [
        span("GET", SERVER, trace_state=f"ot=th:{threshold}", span_id=rng.randbytes(8))
        for _ in range(n)
    ]
    engine.consume(request(resource(SERVICE, *spans)))
    calls = sum(p.calls for rp in engine.flush().resources for p in rp.series)
    count = 1 / keep
    fraction = count - math.floor(count)
    sigma = math.sqrt(n * fraction * (1 - fraction))
    assert abs(calls - n * count) <= 5 * sigma + 1, (calls, n * count, sigma)


def test_sampling_correction_through_the_fleet() -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(), partitions=2)
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        rng = random.Random(3)
        for i in range(20):
            spans = [
                span("GET", SERVER, trace_state="ot=th:4", span_id=rng.randbytes(8))
                for _ in range(100)
            ]
            fleet.produce(i % 2, request(resource(SERVICE, *spans)))
        await fleet.pump()
        return fleet

    calls = sum(latest(run(scenario())).values())
    assert abs(calls - 2000 * 4 / 3) <= 5 * math.sqrt(2000 * 2 / 9) + 1, calls


# ------------------------------------------------------------ 5. limits and expiry


def test_the_cardinality_limit_holds_for_the_whole_fleet() -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(
            topology(aggregation_cardinality_limit=50, dimensions=[{"name": "user.id"}]), 4
        )
        tps = fleet.all_partitions()
        fleet.start("a"), fleet.start("b")
        await fleet.rebalance({"a": tps[::2], "b": tps[1::2]})
        user = 0
        for i in range(40):
            spans = []
            for _ in range(25):
                spans.append(span("GET", SERVER, attributes={"user.id": f"u{user}"}))
                user += 1
            fleet.produce(i % 4, request(resource(SERVICE, *spans)))
            if i == 20:  # a rebalance in the middle resets nothing
                await fleet.pump()
                await fleet.rebalance({"a": tps[1::2], "b": tps[::2]})
        await fleet.pump()
        return fleet

    fleet = run(scenario())
    published = latest(fleet)
    assert len(published) <= 51
    assert sum(published.values()) == 1000
    overflow = [
        v for (_, labels), v in published.items() if labels == (("otel.metric.overflow", "true"),)
    ]
    assert overflow == [950]


def test_an_admitted_series_stays_admitted_after_a_rebalance() -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(
            topology(aggregation_cardinality_limit=1, dimensions=[{"name": "user.id"}]), 1
        )
        tps = fleet.all_partitions()
        fleet.start("a")
        await fleet.rebalance({"a": tps})
        fleet.produce(0, one_span(attributes={"user.id": "first"}))
        await fleet.pump()
        fleet.start("b")
        await fleet.rebalance({"a": [], "b": tps})
        fleet.produce(0, one_span(attributes={"user.id": "second"}))
        fleet.produce(0, one_span(attributes={"user.id": "first"}))
        await fleet.pump()
        return fleet

    published = {
        dict(labels).get("user.id", "overflow"): v
        for (_, labels), v in latest(run(scenario())).items()
    }
    assert published == {"first": 2, "overflow": 1}


def test_an_expired_series_leaves_the_output_and_the_state_and_comes_back_as_a_new_stream() -> None:
    async def scenario() -> tuple[SimFleet, int, int]:
        fleet = SimFleet(topology(series_expiration="10s"), partitions=2)
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        fleet.produce(0, one_span("gone"))
        fleet.produce(1, one_span("alive"))
        await fleet.pump()
        for _ in range(12):  # a minute without spans of "gone"; "alive" keeps going
            fleet.clock.advance(5)
            fleet.produce(1, one_span("alive"))
            await fleet.pump(flushes=1)
        in_output = len(fleet.output())
        stored = sum(len(c.series) for c in [await fleet.store.load_shard(s) for s in range(2)])
        fleet.produce(0, one_span("gone"))  # it comes back
        await fleet.pump()
        return fleet, in_output, stored

    fleet, in_output, stored = run(scenario())
    points = sum_points(fleet.output())
    gone = next(ps for (_, _, labels), ps in points.items() if ("span.name", "gone") in labels)
    alive = next(ps for (_, _, labels), ps in points.items() if ("span.name", "alive") in labels)
    last_flush = max(p.time_ns for p in alive if p.arrival < in_output)
    assert max(p.time_ns for p in gone if p.arrival < in_output) < last_flush - 30 * 10**9
    assert stored == 1  # only "alive"
    streams = sorted({p.start_ns for p in gone})
    assert len(streams) == 2 and [p.value for p in gone if p.start_ns == streams[1]][-1] == 1


# --------------------------------------------------------------------- 6. state


def stored_bytes(partitions: int) -> int:
    async def scenario() -> int:
        fleet = SimFleet(topology(), partitions=partitions)
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        rng = random.Random(3)
        for i in range(64):
            spans = [
                span(f"op{rng.randrange(200)}", SERVER, duration_ms=rng.random() * 100)
                for _ in range(100)
            ]
            attrs = {"service.name": f"svc{rng.randrange(5)}", "service.instance.id": "0"}
            fleet.produce(i % partitions, request(resource(attrs, *spans)))
        await fleet.pump()
        return await fleet.store.stored_bytes()

    return int(run(scenario()))


def test_state_grows_with_series_not_with_partitions() -> None:
    one, eight = stored_bytes(1), stored_bytes(8)
    assert eight <= 1.5 * one, (one, eight)


# ------------------------------------------------------------------ 7. record size


@pytest.mark.parametrize("max_bytes", [1_000_000, 64 * 1024])
def test_output_and_internal_records_stay_under_the_limit(max_bytes: int) -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(
            topology(
                dimensions=[{"name": "user.id"}],
                sinks=[
                    {"kafka": {"topic": "metrics", "producer": {"max_message_bytes": max_bytes}}}
                ],
            ),
            partitions=1,
        )
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        rng = random.Random(5)
        for i in range(20):
            spans = [
                span(
                    "GET",
                    SERVER,
                    duration_ms=rng.random() * 1000,
                    attributes={"user.id": f"u{i * 500 + k}"},
                )
                for k in range(500)
            ]
            fleet.produce(0, request(resource(SERVICE, *spans)))
        await fleet.pump()
        return fleet

    fleet = run(scenario())
    metrics = fleet.log.topics["metrics"][0]
    assert max(len(r.value) for r in metrics) <= max_bytes
    deltas = [r for partition in fleet.log.topics[fleet.deltas] for r in partition]
    assert max(len(r.value) for r in deltas) <= fleet.nodes["a"].worker.internal_max_record_bytes
    assert any(decode_delta(r.value, HistogramSpec(160)).header.parts > 1 for r in deltas)
    assert latest(fleet) == expected_calls(fleet.inputs, ["user.id"])
    assert len(latest(fleet)) == 10_000


def test_reading_goes_on_while_a_checkpoint_is_written() -> None:
    """State is written off the consume path: while a shard's checkpoint write is in
    flight (parked in the store), records of the input topic are still read (deltas are
    applied without any lock at all)."""

    async def scenario() -> tuple[int, int, bool]:
        fleet = SimFleet(topology(), partitions=1)
        a = fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        fleet.produce(0, one_span())
        await fleet.pump(["a"], flushes=1)
        fleet.sched.scripted = False  # from now on every store and producer call parks
        flush = asyncio.get_running_loop().create_task(a.worker.flush())
        await settle_until_parked(fleet, "store.save_shard")
        # The shard's checkpoint write is parked: deliver more input and its deltas.
        fleet.produce(0, one_span())
        fleet.produce(0, one_span())
        before = a.worker.stats.counters["records_received"]
        for offset in (1, 2):  # bounded: a read that waits for the write fails the test
            record = fleet.log.topics[fleet.source][0][offset]
            await asyncio.wait_for(fleet.deliver(a, (fleet.source, 0), record), timeout=5)
        read = a.worker.stats.counters["records_received"] - before
        parked = any(label == "store.save_shard" for _, label, _ in fleet.sched.parked.values())
        fleet.sched.scripted = True
        while fleet.sched.parked:
            fleet.sched.resume(next(iter(fleet.sched.parked)))
            await settle()
        await flush
        return read, len(fleet.sched.parked), parked

    read, left, parked = run(scenario())
    assert parked and read == 2 and left == 0


async def settle_until_parked(fleet: SimFleet, label: str) -> None:
    for _ in range(100):
        await settle()
        if any(lbl == label for _, lbl, _ in fleet.sched.parked.values()):
            return
        for seq in list(fleet.sched.parked):
            fleet.sched.resume(seq)
    raise AssertionError(f"nothing parked at {label}")


def test_a_span_is_published_by_the_second_flush_after_it_was_read() -> None:
    """The latency the README states: one flush cuts the span's partition, the shard
    owner's next flush publishes it."""

    async def scenario() -> list[int]:
        fleet = SimFleet(topology(), partitions=1)
        a = fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        fleet.produce(0, one_span())
        published = []
        for _ in range(2):
            await fleet.deliver_all(a)
            fleet.clock.advance(1)
            await a.worker.flush()
            published.append(sum(latest(fleet).values()))
        return published

    assert run(scenario()) == [0, 1]


def test_input_partitions_can_be_added_to_a_running_fleet() -> None:
    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(), partitions=2, shards=2)
        fleet.start("a"), fleet.start("b")
        tps = fleet.all_partitions()
        await fleet.rebalance({"a": tps[::2], "b": tps[1::2]})
        for p in range(2):
            fleet.produce(p, one_span())
        await fleet.pump()
        fleet.log.add_partitions(fleet.source, 4)  # the shards stay as they are
        tps = fleet.all_partitions()
        await fleet.rebalance({"a": tps[1::2], "b": tps[::2]})
        for p in range(4):
            fleet.produce(p, one_span())
        await fleet.pump()
        return fleet

    fleet = run(scenario())
    assert latest(fleet) == expected_calls(fleet.inputs)
    assert sum(latest(fleet).values()) == 6
