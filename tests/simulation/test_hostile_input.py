"""Hostile input through the in-process fleet (issue #13): values so large that their
series would fit no delta record. Before the size bounds, such a series made its cut
raise, and the partition retried that cut for ever: nothing after it was counted."""

from __future__ import annotations

import asyncio
from typing import Any

from spanmetrics.aggregate.points import SeriesPoint
from spanmetrics.config.load import parse_topology
from spanmetrics.state.codec import CutHeader, encode_delta_parts
from tests.builders import SERVER, request, resource, span
from tests.simulation.harness import SimFleet
from tests.simulation.test_findings import latest

OVERFLOW = (("otel.metric.overflow", "true"),)
#: Larger than a whole delta record (about 1 MB): no split can carry it.
HUGE = "x" * 1_200_000


def topology() -> Any:
    return parse_topology(
        {
            "source": {"topic": "spans", "group": "hostile"},
            "spanmetrics": {"metrics_flush_interval": "1s", "dimensions": [{"name": "user.id"}]},
            "sinks": [{"kafka": {"topic": "metrics"}}],
        },
        "test",
    )


def test_a_label_larger_than_a_record_goes_to_overflow_and_the_partition_goes_on() -> None:
    service = {"service.name": "checkout", "service.instance.id": "c-0"}

    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(), partitions=1)
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        fleet.produce(
            0, request(resource(service, span("GET", SERVER, attributes={"user.id": HUGE})))
        )
        for i in range(5):
            fleet.produce(
                0, request(resource(service, span("GET", SERVER, attributes={"user.id": f"u{i}"})))
            )
        await fleet.pump()
        return fleet

    fleet = asyncio.run(scenario())
    published = latest(fleet)
    overflow = [v for (_, labels), v in published.items() if labels == OVERFLOW]
    assert overflow == [1]
    users = {dict(labels).get("user.id"): v for (_, labels), v in published.items()}
    assert {u: users[u] for u in (f"u{i}" for i in range(5))} == dict.fromkeys(
        (f"u{i}" for i in range(5)), 1
    )
    assert fleet.nodes["a"].worker.stats.counters["spans_oversized_labels"] == 1


def test_a_resource_larger_than_a_record_is_trimmed_and_counted_whole() -> None:
    service = {
        "service.name": "checkout",
        "service.instance.id": "c-0",
        "process.command_line": HUGE,
    }

    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(), partitions=1)
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        for _ in range(3):
            fleet.produce(0, request(resource(service, span("GET", SERVER))))
        await fleet.pump()
        return fleet

    fleet = asyncio.run(scenario())
    published = latest(fleet)
    ((res, _),) = published
    assert dict(res) == {"service.name": "checkout", "service.instance.id": "c-0"}
    assert sum(published.values()) == 3
    assert fleet.nodes["a"].worker.stats.counters["resources_trimmed"] >= 1


def test_an_entry_that_fits_no_record_is_dropped_and_counted_not_raised() -> None:
    """The codec's last resort, for input no bound foresaw."""
    small = SeriesPoint((("user.id", "u1"),), 0, 0, 2, None)
    large = SeriesPoint((("user.id", HUGE),), 0, 0, 7, None)
    parts = encode_delta_parts(
        CutHeader(0, 1, 0, 10, 0, 1, 0, 0), [(b"\n\x00", [small, large], [], [])], 1_000_000
    )
    assert parts.dropped_spans == 7
    assert len(parts.records) == 1


def test_an_oversized_undecodable_record_is_dead_lettered_truncated_with_its_size() -> None:
    """A 3 MB record of garbage: the producer takes at most one internal record's bytes,
    so the dead letter holds the record's start and a header with its whole size. Before,
    it was the whole record, which a broker refuses on every attempt: it was lost."""
    garbage = b"\xff" * 3_000_000

    async def scenario() -> SimFleet:
        fleet = SimFleet(topology(), partitions=1)
        fleet.start("a")
        await fleet.rebalance({"a": fleet.all_partitions()})
        fleet.log.append(fleet.topology.source.topic, 0, garbage, None, (), "producer")
        await fleet.pump()
        return fleet

    fleet = asyncio.run(scenario())
    worker = fleet.nodes["a"].worker
    (letter,) = fleet.log.topics[fleet.topology.source.dead_letter_topic][0]
    assert letter.value == garbage[: worker.internal_max_record_bytes]
    assert dict(letter.headers)["spanmetrics.source.bytes"] == b"3000000"
    assert worker.stats.counters["dead_letters_truncated"] == 1
