"""A series budget across two worker processes on the embedded broker and Redis: the fleet
never publishes more series than the budget, the rest folds into overflow, every span is
counted; and Redis's leases never add up to more than a budget."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.dev.synth import encode_request
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.state.store import RedisStateStore
from tests.integration.test_fleet_exactness import Fleet
from tests.metric_points import points
from tests.simulation.test_budgets import CALLS, SERVICES, batch

pytestmark = pytest.mark.integration


def test_redis_leases_never_add_up_to_more_than_the_budget(
    redis_url: str, redis_prefix: str
) -> None:
    async def run() -> list[int]:
        store = RedisStateStore(redis_url, redis_prefix)
        try:
            granted = [(await store.lease_budgets(s, [("k", 30, 50)]))[0] for s in range(3)]
            # A shard asking again replaces its own lease: it may grow into what is left.
            granted[0] = (await store.lease_budgets(0, [("k", 40, 50)]))[0]
            return granted
        finally:
            await store.close()

    granted = asyncio.run(run())
    assert granted[1:] == [20, 0] and granted[0] == 30  # 30 + 20 + 0; then 50 - 20 - 0
    assert sum(granted) <= 50


@pytest.mark.once  # fleet behaviour, not the reader's: see test_fleet_exactness
def test_a_budget_holds_across_two_workers(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics = f"budget-{suffix}", f"budget-metrics-{suffix}"
    topology = tmp_path / "t.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": redis_url,
        "spanmetrics": {"dimensions": [{"name": "user.id"}], "metrics_flush_interval": "1s"},
        "budgets": [{"metric": CALLS, "max_series": 40}],
        "sinks": [{"kafka": {"topic": metrics}}],
    }))  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    rng = random.Random(4)
    last: dict[tuple[str, Any], tuple[int, int]] = {}

    async def read(consumer: AIOKafkaConsumer) -> None:
        for records in (await consumer.getmany(timeout_ms=300)).values():
            for record in records:
                for p in points(record.value):
                    key = (p.service, p.labels)
                    if p.metric == CALLS and p.time_ns >= last.get(key, (0, 0))[0]:
                        last[key] = (p.time_ns, p.value)

    async def scenario() -> int:
        await ensure_topics(broker.bootstrap, {topic: 4, metrics: 1})
        consumer = AIOKafkaConsumer(metrics, bootstrap_servers=broker.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        await producer.start()
        sent = 0
        try:
            fleet.start("a")
            fleet.start("b")
            for _ in range(12):
                await producer.send_and_wait(topic, encode_request(batch(rng), "otlp_proto"))
                sent += 10 * len(SERVICES)
            deadline = time.monotonic() + 120
            while sum(v for _, v in last.values()) != sent and time.monotonic() < deadline:
                await read(consumer)
            return sent
        finally:
            await producer.stop()
            await consumer.stop()

    try:
        sent = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    overflow = [k for k in last if ("otel.metric.overflow", "true") in k[1]]
    assert sum(v for _, v in last.values()) == sent, logs
    assert len(last) - len(overflow) <= 40, logs
    assert overflow, logs
