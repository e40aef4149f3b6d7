"""Views changed live, in the in-process fleet: two workers, spans before and after a
control document that excludes ``user.id``. Each worker switches at a flush; no flush
mixes the old and the new label sets; the old streams' last counts plus the new streams'
counts are every span; a takeover after the switch ends the old streams too."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest

from spanmetrics.config.load import parse_topology
from spanmetrics.state.store import AuditEntry
from tests.builders import SERVER, request, resource, span
from tests.metric_points import points as record_points
from tests.simulation.harness import SimFleet

CALLS = "traces.span.metrics.calls"
DENY = """\
views:
  - selector: {instrument_name: "traces.span.metrics.*"}
    stream:
      attribute_keys: {excluded: [user.id]}
"""


def topology(delta: bool) -> Any:
    return parse_topology({
        "source": {"topic": "spans", "group": "live"},
        "spanmetrics": {"dimensions": [{"name": "user.id"}], "metrics_flush_interval": "1s",
                        "aggregation_temporality": "AGGREGATION_TEMPORALITY_"
                        + ("DELTA" if delta else "CUMULATIVE")},
        "sinks": [{"kafka": {"topic": "metrics"}}],
    })  # fmt: skip


def batch(rng: random.Random, n: int) -> Any:
    resources = []
    for service in ("cart", "checkout", "auth"):
        spans = [span("GET /", SERVER, attributes={"user.id": f"u{rng.randrange(20)}"})
                 for _ in range(n)]  # fmt: skip
        resources.append(resource({"service.name": service}, *spans))
    return request(*resources)


def calls_points(fleet: SimFleet) -> list[tuple[int, str, list[tuple[Any, int, int, int]]]]:
    """Per output record: its position, sender and calls points (labels, start, time, v)."""
    return [
        (i, record.sender, [((p.service, p.labels), p.start_ns, p.time_ns, p.value)
                            for p in record_points(record.value) if p.metric == CALLS])
        for i, record in enumerate(fleet.output())
    ]  # fmt: skip


@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
def test_a_live_view_change_is_exact_and_never_mixed(delta: bool) -> None:
    fleet = SimFleet(topology(delta), partitions=2, shards=2)
    fleet.start("a")
    fleet.start("b")
    rng = random.Random(5)
    sent = 0

    async def run() -> None:
        nonlocal sent
        await fleet.rebalance({"a": [("spans", 0), (fleet.deltas, 0)],
                               "b": [("spans", 1), (fleet.deltas, 1)]})  # fmt: skip
        for i in range(4):
            fleet.produce(i % 2, batch(rng, 30))
            sent += 90
        await fleet.pump(flushes=2)
        version = await fleet.store.save_control(DENY, AuditEntry(0, "test", 0.0, "deny"))
        assert version == 1
        for node in fleet.nodes.values():
            assert await node.worker.refresh_control()
        for i in range(4):
            fleet.produce(i % 2, batch(rng, 30))
            sent += 90
        await fleet.pump(flushes=3)
        # A takeover after the switch: the shards move; nothing is counted twice.
        await fleet.rebalance({"a": [("spans", 1), (fleet.deltas, 1)],
                               "b": [("spans", 0), (fleet.deltas, 0)]})  # fmt: skip
        fleet.produce(0, batch(rng, 30))
        sent += 90
        await fleet.pump(flushes=3)

    asyncio.run(run())
    assert all(n.worker.views_version == 1 for n in fleet.nodes.values())
    records = calls_points(fleet)
    switched_at: dict[str, int] = {}
    for i, sender, points in records:
        kinds = {any(k == "user.id" for k, _ in labels) for (_, labels), *_ in points}
        assert len(kinds) <= 1, f"record {i} from {sender} mixes old and new label sets"
        if kinds == {False}:
            switched_at.setdefault(sender, i)
        elif sender in switched_at:
            raise AssertionError(f"{sender} went back to the old views at record {i}")
    assert set(switched_at) == {"a", "b"}
    # Counts: per stream, its last cumulative value (or its deltas' sum), all streams.
    streams: dict[Any, dict[int, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for _, _, points in records:
        for key, start, time, value in points:
            streams[key][start].append((time, value))
    total = 0
    for by_start in streams.values():
        for values in by_start.values():
            total += sum(v for _, v in set(values)) if delta else max(values)[1]
        if not delta:
            assert len(by_start) == 1, "a stream was restarted under its own identity"
    assert total == sent
    # The stored state holds the new streams only.
    for shard in fleet.store._shards.values():
        assert shard.views_version == 1
        from spanmetrics.state.codec import HistogramSpec, decode_series_state

        for blob in shard.series.values():
            _, _, labels, _ = decode_series_state(blob, HistogramSpec(160))
            assert "user.id" not in dict(labels)


def test_a_view_that_does_not_fit_the_topology_is_skipped_and_counted() -> None:
    fleet = SimFleet(topology(False), partitions=1, shards=1)
    node = fleet.start("a")

    async def run() -> None:
        await fleet.store.save_control("views: [{selector: {}, stream: {name: x}}]\n",
                                       AuditEntry(0, "t", 0.0, ""))  # fmt: skip
        assert not await node.worker.refresh_control()

    asyncio.run(run())
    assert node.worker.views_version == 1  # skipped, not retried
    assert node.worker.stats.counters["control_rejected"] == 1


def test_workers_keep_their_version_while_the_store_is_unreachable() -> None:
    fleet = SimFleet(topology(False), partitions=1, shards=1)
    node = fleet.start("a")

    async def unreachable() -> None:
        raise ConnectionError("Timeout reading from 127.0.0.1:6379")

    async def run() -> None:
        await fleet.store.save_control(DENY, AuditEntry(0, "t", 0.0, ""))
        assert await node.worker.refresh_control()
        node.worker.adopt_control()
        node.worker.store.load_control = unreachable  # type: ignore[method-assign]
        for _ in range(3):
            assert not await node.worker.refresh_control()

    asyncio.run(run())
    assert node.worker.views_version == 1
    assert node.worker.stats.counters["control_errors"] == 3
