"""Series budgets across the fleet, in the in-process fleet: two workers, four shards, and
more series than a metric's budget and a service's budget allow. The fleet never holds
more, the rest folds into overflow series, and every span is still counted."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from spanmetrics.aggregate.budgets import BudgetLedger
from spanmetrics.aggregate.points import MetricNames
from spanmetrics.config.load import parse_topology
from spanmetrics.config.views import Budget
from tests.builders import SERVER, request, resource, span
from tests.metric_points import points
from tests.simulation.harness import SimFleet

CALLS = "traces.span.metrics.calls"
SERVICES = [f"svc-{i}" for i in range(8)]


def topology() -> Any:
    return parse_topology({
        "source": {"topic": "spans", "group": "budgets"},
        "spanmetrics": {"dimensions": [{"name": "user.id"}], "metrics_flush_interval": "1s"},
        "budgets": [{"metric": CALLS, "max_series": 40},
                    {"service": "svc-0", "max_series": 5}],
        "sinks": [{"kafka": {"topic": "metrics"}}],
    })  # fmt: skip


def batch(rng: random.Random) -> Any:
    return request(*(
        resource({"service.name": s, "service.instance.id": f"{s}-0"},
                 *(span("GET /", SERVER, attributes={"user.id": f"u{rng.randrange(30)}"})
                   for _ in range(10)))
        for s in SERVICES
    ))  # fmt: skip


def last_points(fleet: SimFleet) -> dict[tuple[str, Any], int]:
    """The last value of every calls stream: (service, labels) -> calls."""
    last: dict[tuple[str, Any], tuple[int, int]] = {}
    for record in fleet.output():
        for p in points(record.value):
            if p.metric == CALLS and p.time_ns >= last.get((p.service, p.labels), (0, 0))[0]:
                last[(p.service, p.labels)] = (p.time_ns, p.value)
    return {k: v for k, (_, v) in last.items()}


def test_budgets_hold_across_two_workers_and_every_span_counts() -> None:
    fleet = SimFleet(topology(), partitions=2, shards=4)
    fleet.start("a")
    fleet.start("b")
    rng = random.Random(2)
    sent = 0

    async def run() -> None:
        nonlocal sent
        await fleet.rebalance({
            "a": [("spans", 0), (fleet.deltas, 0), (fleet.deltas, 1)],
            "b": [("spans", 1), (fleet.deltas, 2), (fleet.deltas, 3)],
        })  # fmt: skip
        for i in range(6):
            fleet.produce(i % 2, batch(rng))
            sent += 10 * len(SERVICES)
            await fleet.pump(flushes=1)
        await fleet.pump(flushes=2)

    asyncio.run(run())
    last = last_points(fleet)
    overflow = [k for k in last if ("otel.metric.overflow", "true") in k[1]]
    regular = [k for k in last if k not in overflow]
    assert len(regular) <= 40  # the metric's budget, fleet-wide
    assert sum(1 for service, _ in regular if service == "svc-0") <= 5
    assert overflow, "nothing folded: the budgets were never reached"
    assert sum(last.values()) == sent
    folded = sum(
        n.worker.stats.counters["spans_cardinality_overflow"] for n in fleet.nodes.values()
    )
    assert folded == sum(last[k] for k in overflow)


def test_leases_never_add_up_to_more_than_the_budget() -> None:
    from spanmetrics.state.store import MemoryStateStore

    store = MemoryStateStore()
    names = MetricNames.for_namespace("traces.span.metrics", "ms")
    ledgers = [BudgetLedger([Budget(metric=CALLS, max_series=50)], names) for _ in range(4)]

    async def run() -> list[int]:
        for ledger in ledgers:
            ledger.grant(await store.lease_budgets(ledgers.index(ledger), ledger.requests()))
        return [ledger.usage()[0][2] for ledger in ledgers]

    granted = asyncio.run(run())
    assert sum(granted) <= 50 and granted[0] == 16  # a tenth, at least 16


def test_the_readme_budgets_parse_in_a_topology_and_in_a_control_document() -> None:
    import re
    from pathlib import Path

    import yaml

    from spanmetrics.config.control import with_control

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("**Series budgets across the fleet.**")
    block = re.search(r"```yaml\n(.*?)```", readme[start:], re.S)
    assert block is not None
    document = yaml.safe_load(block.group(1))
    t = parse_topology(document)
    assert [(b.metric, b.service, b.max_series) for b in t.budgets] == [
        (CALLS, None, 20000), (None, "checkout", 2000)]  # fmt: skip
    live = with_control(parse_topology({}), block.group(1), "budgets.yaml")
    assert live.budgets == t.budgets


def test_an_interval_is_cut_early_past_its_series_bound() -> None:
    # Stage 1 keeps every series of an interval until its cut: past a bound it cuts at
    # once, so that a cardinality attack cannot grow a worker's memory; counts stay exact.
    t = parse_topology({
        "source": {"topic": "spans", "group": "bound"},
        "spanmetrics": {"dimensions": [{"name": "user.id"}], "metrics_flush_interval": "1s",
                        "aggregation_cardinality_limit": 20},
        "sinks": [{"kafka": {"topic": "metrics"}}],
    })  # fmt: skip
    fleet = SimFleet(t, partitions=1, shards=1)
    node = fleet.start("a")
    node.worker.interval_max_series = 25
    rng = random.Random(9)
    sent = 0

    async def run() -> None:
        nonlocal sent
        await fleet.rebalance({"a": [("spans", 0), (fleet.deltas, 0)]})
        for _ in range(20):  # 20 records of 10 new user.ids each, in one interval
            fleet.produce(0, request(resource({"service.name": "shop"}, *(
                span("GET /", SERVER, attributes={"user.id": f"u{rng.randrange(10**9)}"})
                for _ in range(10)))))  # fmt: skip
            sent += 10
        while items := fleet.deliverable(node, "spans"):
            await fleet.deliver(node, *items[0])
            assert node.worker._partitions[0].engine.active_series <= 25 + 10
        await fleet.pump(flushes=2)

    asyncio.run(run())
    assert node.worker.stats.counters["cuts_for_size"] >= 6
    last = last_points(fleet)
    assert sum(last.values()) == sent  # the limit folds the rest into overflow, exactly
    assert len([k for k in last if ("otel.metric.overflow", "true") not in k[1]]) <= 20
