"""One worker on a real broker and Redis: bad records to the dead-letter topic, drops counted
by reason, self-telemetry published, and SIGTERM that checkpoints and leaves cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.decode import decode_metrics
from spanmetrics.dev.synth import encode_request
from spanmetrics.kafka.admin import ensure_topics
from tests.builders import request, resource, span

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/7"


async def read_until(bootstrap: str, topic: str, done: Any, timeout_s: float = 60) -> list[Any]:
    """Records of ``topic`` from the start until ``done(records)`` holds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(records):
            assert time.monotonic() < deadline, f"timed out reading {topic}: {len(records)}"
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def telemetry(records: list[Any]) -> dict[str, int]:
    """Latest worker counters, as ``name`` or ``name{reason}``."""
    latest: dict[str, int] = {}
    for record in records:
        if not (record.key or b"").startswith(b"worker-"):
            continue
        for rm in decode_metrics(record.value, "otlp_proto").resource_metrics:
            for m in rm.scope_metrics[0].metrics:
                for p in m.sum.data_points:
                    reason = next((kv.value.string_value for kv in p.attributes), "")
                    name = m.name.removeprefix("spanmetrics.worker.")
                    latest[f"{name}{{{reason}}}" if reason else name] = p.as_int
    return latest


def test_dead_letters_drops_telemetry_and_clean_shutdown(broker: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics, dlq, group = (
        f"spans-{suffix}",
        f"metrics-{suffix}",
        f"dlq-{suffix}",
        f"worker-{suffix}",
    )
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "group": group, "dead_letter_topic": dlq},
                "spanmetrics": {"metrics_flush_interval": "1s"},
                "sinks": [{"kafka": {"topic": metrics}}],
            }
        )
    )
    good = request(resource({"service.name": "cart"}, span("get"), span("get")))
    no_service = request(resource({"k8s.pod.name": "x"}, span("lost"), span("lost"), span("l")))
    garbage = b"\xff\xfe not a protobuf"
    log = (tmp_path / "worker.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    client = redis.Redis.from_url(REDIS_URL)
    try:

        async def scenario() -> tuple[list[Any], list[Any]]:
            nonlocal proc
            await ensure_topics(broker.bootstrap, {topic: 2, metrics: 1, dlq: 1})
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            values = [
                encode_request(good, "otlp_proto"),
                garbage,
                encode_request(no_service, "otlp_proto"),
                encode_request(good, "otlp_proto"),
            ]
            for value in values:
                await producer.send_and_wait(topic, value, partition=0)
            await producer.stop()
            # The broker and state come from the command line and the environment.
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spanmetrics",
                    "worker",
                    "--topology",
                    str(topology),
                    "--broker",
                    broker.url,
                    "--worker-id",
                    "w1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SPANMETRICS_STATE": REDIS_URL},
            )
            dead = await read_until(broker.bootstrap, dlq, lambda r: len(r) >= 1)
            out = await read_until(
                broker.bootstrap,
                metrics,
                lambda r: (
                    telemetry(r).get("records_received") == 4
                    and telemetry(r).get("spans_received") == 7
                ),
            )
            return dead, out

        dead, out = asyncio.run(scenario())
        (record,) = dead
        headers = {k: v.decode() for k, v in record.headers}
        assert record.value == garbage
        assert headers["spanmetrics.error.reason"] == "invalid_protobuf"
        assert headers["spanmetrics.source.topic"] == topic
        assert (headers["spanmetrics.source.partition"], headers["spanmetrics.source.offset"]) == (
            "0",
            "1",
        )
        counters = telemetry(out)
        assert counters["records_dead_lettered{invalid_protobuf}"] == 1
        assert counters["spans_dropped{missing_service_name}"] == 3

        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # The last cut holds every record and was sent whole: the next owner starts after
        # offset 3, with nothing to read again.
        cut = client.hmget(f"spanmetrics:{group}:{{part:0}}", ["start", "end"])
        assert cut == [b"4", b"4"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        keys = list(client.scan_iter(f"spanmetrics:{group}:*"))
        if keys:
            client.delete(*keys)
        client.close()
