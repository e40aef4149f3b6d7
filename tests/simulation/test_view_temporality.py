"""A view's own temporality, in the in-process fleet: one stream delta and the other
cumulative in one output, through a shard move, with every span counted in each."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
)

from spanmetrics.config.load import parse_topology
from tests.builders import SERVER, request, resource, span
from tests.simulation.harness import SimFleet

CALLS, DURATION = "traces.span.metrics.calls", "traces.span.metrics.duration"


def topology(output: str, calls: str) -> Any:
    return parse_topology({
        "source": {"topic": "spans", "group": "temporality"},
        "spanmetrics": {"metrics_flush_interval": "1s",
                        "aggregation_temporality": f"AGGREGATION_TEMPORALITY_{output.upper()}"},
        "views": [{"selector": {"instrument_name": CALLS}, "stream": {"temporality": calls}}],
        "sinks": [{"kafka": {"topic": "metrics"}}],
    })  # fmt: skip


@pytest.mark.parametrize(("output", "calls"), [("cumulative", "delta"), ("delta", "cumulative")])
def test_each_stream_has_its_temporality_and_counts_every_span(output: str, calls: str) -> None:
    fleet = SimFleet(topology(output, calls), partitions=2, shards=2)
    fleet.start("a")
    fleet.start("b")
    rng = random.Random(1)
    sent = 0

    async def run() -> None:
        nonlocal sent
        await fleet.rebalance({"a": [("spans", 0), (fleet.deltas, 0)],
                               "b": [("spans", 1), (fleet.deltas, 1)]})  # fmt: skip
        for round_ in range(6):
            if round_ == 3:  # the shards move: each new owner resumes from the checkpoint
                await fleet.rebalance({"a": [("spans", 1), (fleet.deltas, 1)],
                                       "b": [("spans", 0), (fleet.deltas, 0)]})  # fmt: skip
            spans = [span(rng.choice(["GET /", "POST /"]), SERVER) for _ in range(25)]
            fleet.produce(round_ % 2, request(resource({"service.name": "shop"}, *spans)))
            sent += 25
            await fleet.pump(flushes=1)
        await fleet.pump(flushes=2)

    asyncio.run(run())
    seen: dict[str, set[int]] = defaultdict(set)
    # calls: (labels, start, time) -> value; durations: labels -> start -> (time, count).
    calls_points: dict[Any, int] = {}
    durations: dict[Any, dict[int, tuple[int, int]]] = defaultdict(dict)
    for record in fleet.output():
        for rm in ExportMetricsServiceRequest.FromString(record.value).resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    labels_of = lambda p: tuple(sorted((a.key, a.value.string_value)  # noqa: E731
                                                       for a in p.attributes))  # fmt: skip
                    if m.name == CALLS:
                        seen[CALLS].add(m.sum.aggregation_temporality)
                        for p in m.sum.data_points:
                            key = (labels_of(p), p.start_time_unix_nano, p.time_unix_nano)
                            calls_points[key] = p.as_int
                    elif m.name == DURATION:
                        seen[DURATION].add(m.exponential_histogram.aggregation_temporality)
                        for p in m.exponential_histogram.data_points:
                            by_start = durations[labels_of(p)]
                            if p.time_unix_nano >= by_start.get(p.start_time_unix_nano, (0, 0))[0]:
                                by_start[p.start_time_unix_nano] = (p.time_unix_nano, p.count)
    delta, cumulative = AGGREGATION_TEMPORALITY_DELTA, AGGREGATION_TEMPORALITY_CUMULATIVE
    assert seen[CALLS] == {delta if calls == "delta" else cumulative}
    assert seen[DURATION] == {delta if output == "delta" else cumulative}
    if calls == "delta":
        assert sum(calls_points.values()) == sent
    else:
        last: dict[Any, tuple[int, int]] = {}
        for (labels, start, time), value in calls_points.items():
            if time >= last.get((labels, start), (0, 0))[0]:
                last[(labels, start)] = (time, value)
        assert sum(v for _, v in last.values()) == sent
    if output == "delta":
        total = sum(count for by_start in durations.values() for _, count in by_start.values())
        # Delta points: every (start, time) once; the dict above kept the latest per start,
        # which for deltas is each point (starts differ).
        assert total == sent
    else:
        assert sum(c for by_start in durations.values() for _, c in by_start.values()) == sent
