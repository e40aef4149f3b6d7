"""Fleet-wide cardinality limit through real workers on the embedded broker and Redis: two
workers, four partitions, a dimension with thousands of values and a limit of 50. Every
resource has at most 51 series (50 and the overflow series), wherever its spans were
read, and its calls still add up to the spans sent."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.decode import decode_metrics
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.model.attributes import any_value_to_str
from tests.builders import SERVER, request, resource, span
from tests.integration.test_fleet_exactness import Fleet

pytestmark = pytest.mark.integration

PARTITIONS = 4
LIMIT = 50
SERVICES = ("checkout", "cart", "frontend")


@pytest.mark.once  # fleet behaviour, not the reader's: see test_fleet_exactness
def test_the_cardinality_limit_holds_across_workers_and_partitions(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    suffix = redis_prefix[-8:]
    topic, metrics_topic = f"spans-{suffix}", f"metrics-{suffix}"
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                           "dead_letter_topic": f"dlq-{suffix}"},
                "spanmetrics": {
                    "metrics_flush_interval": "1s",
                    "aggregation_cardinality_limit": LIMIT,
                    "dimensions": [{"name": "user.id"}],
                },
                "sinks": [{"kafka": {"topic": metrics_topic}}],
                "state": redis_url,
            }
        )
    )  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    rng = random.Random(8)
    sent: Counter[str] = Counter()

    async def scenario() -> dict[tuple[str, Any], int]:
        await ensure_topics(broker.bootstrap, {topic: PARTITIONS, metrics_topic: 1})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for i in range(80):
                service = SERVICES[i % len(SERVICES)]
                spans = [
                    span("GET /cart", SERVER, attributes={"user.id": f"u{rng.randrange(5000)}"})
                    for _ in range(100)
                ]
                attrs = {"service.name": service, "service.instance.id": f"{service}-0"}
                value = request(resource(attrs, *spans)).SerializeToString()
                await producer.send_and_wait(topic, value, partition=i % PARTITIONS)
                sent[service] += len(spans)
        finally:
            await producer.stop()
        fleet.start("a")
        fleet.start("b")
        consumer = AIOKafkaConsumer(
            metrics_topic,
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            max_partition_fetch_bytes=16 << 20,
        )
        await consumer.start()
        latest: dict[tuple[str, Any], tuple[int, int]] = {}

        def per_service() -> Counter[str]:
            out: Counter[str] = Counter()
            for (service, _), (_, value) in latest.items():
                out[service] += value
            return out

        try:
            deadline = time.monotonic() + 120
            while per_service() != sent and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if (record.key or b"").startswith(b"worker-"):
                            continue
                        for rm in decode_metrics(record.value, "otlp_proto").resource_metrics:
                            service = next(
                                any_value_to_str(kv.value)
                                for kv in rm.resource.attributes
                                if kv.key == "service.name"
                            )
                            for sm in rm.scope_metrics:
                                for metric in sm.metrics:
                                    if not metric.name.endswith(".calls"):
                                        continue
                                    for p in metric.sum.data_points:
                                        labels = tuple(
                                            (kv.key, kv.value.string_value) for kv in p.attributes
                                        )
                                        key = (service, labels)
                                        if p.time_unix_nano >= latest.get(key, (0, 0))[0]:
                                            latest[key] = (p.time_unix_nano, p.as_int)
        finally:
            await consumer.stop()
        return {key: value for key, (_, value) in latest.items()}

    try:
        latest = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    series: dict[str, int] = defaultdict(int)
    calls: Counter[str] = Counter()
    overflow: Counter[str] = Counter()
    for (service, labels), value in latest.items():
        series[service] += 1
        calls[service] += value
        if labels == (("otel.metric.overflow", "true"),):
            overflow[service] += value
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    assert calls == sent, logs
    assert all(n <= LIMIT + 1 for n in series.values()), dict(series)
    assert all(overflow[s] > 0 for s in SERVICES), dict(overflow)  # thousands of users each
    # Both workers read input partitions, so the spans of each service were read by both.
    for name in ("a", "b"):
        text = (tmp_path / f"{name}.log").read_text()
        assert re.search(r"partition \d+ (has no cut|from offset)", text), name
