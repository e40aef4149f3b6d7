"""The live view's totals agree with what the worker counted: a real worker on the
embedded broker, and the view reading its output like any consumer."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.aggregate.points import MetricNames
from spanmetrics.dev.live import FleetView
from spanmetrics.dev.synth import SpanGenerator, encode_request
from spanmetrics.kafka.admin import ensure_topics
from tests.integration.test_fleet_exactness import Fleet

pytestmark = pytest.mark.integration


@pytest.mark.once  # fleet behaviour, not the reader's: see test_fleet_exactness
def test_the_views_totals_are_the_workers_counts(broker: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics = f"spans-{suffix}", f"metrics-{suffix}"
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": broker.url, "group": f"live-{suffix}",
                           "dead_letter_topic": f"dlq-{suffix}"},
                "spanmetrics": {"metrics_flush_interval": "1s"},
                "sinks": [{"kafka": {"topic": metrics}}],
            }
        )
    )  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    view = FleetView(MetricNames.for_namespace("traces.span.metrics", "ms"))

    async def scenario() -> int:
        await ensure_topics(broker.bootstrap, {topic: 2, metrics: 1})
        fleet.start("a")
        generator = SpanGenerator(seed=4)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for _ in range(30):
                value = encode_request(generator.batch_request(500), "otlp_proto")
                await producer.send_and_wait(topic, value)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            metrics, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
            group_id=None, max_partition_fetch_bytes=16 << 20,
        )  # fmt: skip
        await consumer.start()
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        view.add_record(record.key, record.value)
                received = view.workers.get("a", {}).get("spans_received", 0)
                if view.total_calls == received == 15_000:
                    break
        finally:
            await consumer.stop()
        return int(view.workers.get("a", {}).get("spans_received", 0))

    try:
        received = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    assert view.total_calls == received == 15_000
    window, seconds = view.window()
    assert seconds > 0 and sum(s.calls for s in window) > 0
