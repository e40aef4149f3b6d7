"""A cardinality attack on a real worker (issue #13): one client sends 1M spans, each with
a new ``user.id``, on a configured dimension. The worker's peak memory stays under
:data:`RSS_BOUND_MB`, the limit folds all but ``LIMIT`` series into the overflow series,
every call is still counted, and the overflow shows in the worker's own telemetry."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanmetrics.fleet.app import STREAM_BUFFER_RECORDS
from spanmetrics.fleet.worker import INTERVAL_MAX_SERIES
from spanmetrics.kafka.admin import ensure_topics
from tests.integration.test_fleet_exactness import Fleet
from tests.metric_points import points

pytestmark = [pytest.mark.integration, pytest.mark.once]

SPANS = 1_000_000
PER_RECORD = 2_000
LIMIT = 1_000
#: The stated bound (README, "Limits of the fleet today"): a worker idles at about
#: 95 MB, and stage 1 holds at most 20,000 series of one partition before it cuts.
RSS_BOUND_MB = 400


def attack_record(first: int, service: dict[str, str]) -> bytes:
    """``PER_RECORD`` spans of one endpoint, each with a user id never seen before."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in service.items():
        rs.resource.attributes.add(key=key).value.string_value = value
    spans = rs.scope_spans.add().spans
    for n in range(first, first + PER_RECORD):
        s = spans.add(name="POST /login", kind=2, trace_id=n.to_bytes(16, "big"),
                      span_id=n.to_bytes(8, "big"), start_time_unix_nano=10**18,
                      end_time_unix_nano=10**18 + 5_000_000)  # fmt: skip
        s.attributes.add(key="user.id").value.string_value = f"u{n}"
    return request.SerializeToString()


def rss_mb(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_a_million_new_user_ids_leave_memory_bounded_and_every_call_counted(
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
                    "metrics_flush_interval": "2s",
                    "aggregation_cardinality_limit": LIMIT,
                    "dimensions": [{"name": "user.id"}],
                },
                "sinks": [{"kafka": {"topic": metrics_topic}}],
                "state": redis_url,
            }
        )
    )  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    service = {"service.name": "auth", "service.instance.id": "auth-0"}
    rss: list[tuple[float, float]] = []

    async def scenario() -> tuple[dict[Any, int], int]:
        await ensure_topics(broker.bootstrap, {topic: 1, metrics_topic: 1})
        fleet.start("a")
        pid = fleet.procs["a"].pid
        started = time.monotonic()

        def sample() -> None:
            rss.append((time.monotonic() - started, rss_mb(pid, "VmRSS")))

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=8 << 20)
        await producer.start()
        try:
            for first in range(0, SPANS, PER_RECORD):
                await producer.send_and_wait(topic, attack_record(first, service))
                if first % (50 * PER_RECORD) == 0:
                    sample()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            metrics_topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
            group_id=None, max_partition_fetch_bytes=16 << 20,
        )  # fmt: skip
        await consumer.start()
        latest: dict[Any, tuple[int, int]] = {}
        overflow_seen = 0
        try:
            deadline = time.monotonic() + 300
            calls = 0
            while (
                calls != SPANS or overflow_seen != SPANS - LIMIT
            ) and time.monotonic() < deadline:
                sample()
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        for p in points(record.value):
                            if p.metric == "spanmetrics.worker.spans_cardinality_overflow":
                                overflow_seen = max(overflow_seen, p.value)
                            elif (
                                p.service == "auth"
                                and p.metric.endswith(".calls")
                                and p.time_ns >= latest.get(p.labels, (0, 0))[0]
                            ):
                                latest[p.labels] = (p.time_ns, p.value)
                calls = sum(v for _, v in latest.values())
            peak = rss_mb(pid, "VmHWM")
        finally:
            await consumer.stop()
        rss.append((time.monotonic() - started, peak))
        return {labels: value for labels, (_, value) in latest.items()}, overflow_seen

    try:
        latest, overflow_seen = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    peak = rss[-1][1]
    print(f"\nworker RSS over time (s, MB): {[(round(t), round(m)) for t, m in rss[:-1]]}")
    print(f"peak RSS {peak:.0f} MB for {SPANS:,} distinct user.id values, bound {RSS_BOUND_MB} MB")
    logs = (tmp_path / "a.log").read_text()[-3000:]
    assert sum(latest.values()) == SPANS, logs
    overflow = (("otel.metric.overflow", "true"),)
    by_kind = Counter("overflow" if labels == overflow else "admitted" for labels in latest)
    assert by_kind == {"admitted": LIMIT, "overflow": 1}, by_kind
    assert latest[overflow] == SPANS - LIMIT
    assert overflow_seen == SPANS - LIMIT, "the overflow is not in the worker's telemetry"
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"


def test_the_readme_states_the_bounds_this_test_measures() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"holds {INTERVAL_MAX_SERIES:,}\n  series" in readme
    assert f"at most {STREAM_BUFFER_RECORDS} records ahead" in readme
    assert f"asserts under {RSS_BOUND_MB} MB" in readme
