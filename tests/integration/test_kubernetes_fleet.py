"""The Kubernetes topology in a real fleet: two worker processes on the embedded broker and
Redis, the spans of every trace scattered over the four partitions of the span topic (as an
exporter that does not partition by trace id writes them), a worker SIGKILLed mid-stream
and another started. Every metric must come out exactly as the oracle says, with the
joined dimensions (verb, resource, pod) that only other spans of the trace carry.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.decode import decode_metrics
from spanmetrics.dev.kubernetes import all_spans, as_request
from spanmetrics.dev.synth import encode_request
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.model.attributes import any_value_to_str
from tests.integration.test_fleet_exactness import Fleet
from tests.kubernetes.oracle import expected

# The derived path reads spans in Python whatever the reader: once is enough.
pytestmark = [pytest.mark.integration, pytest.mark.once]

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "kubernetes.yaml"
PARTITIONS = 4


def scattered(version: str, seed: int) -> list[tuple[int, bytes]]:
    """(partition, record) pairs: each span alone in a record, on a random partition."""
    rng = random.Random(seed)
    spans = list(all_spans(version))
    rng.shuffle(spans)
    return [
        (rng.randrange(PARTITIONS), encode_request(as_request([(res, [s])]), "otlp_proto"))
        for res, s in spans
    ]


async def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, value in records:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


class Output:
    """The last cumulative value of every stream on the metrics topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self.last: dict[tuple[str, Any], tuple[int, int]] = {}
        self.starts: dict[tuple[str, Any], set[int]] = defaultdict(set)
        self.records = 0

    async def poll(self) -> None:
        for records in (await self.consumer.getmany(timeout_ms=500)).values():
            for record in records:
                self.records += 1
                request = decode_metrics(record.value, "otlp_proto")
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            field = m.WhichOneof("data")
                            if field == "sum":
                                points = [(p, p.as_int) for p in m.sum.data_points]
                            elif field == "exponential_histogram":
                                points = [(p, p.count) for p in m.exponential_histogram.data_points]
                            else:
                                continue
                            for p, value in points:
                                labels = tuple(
                                    (kv.key, any_value_to_str(kv.value)) for kv in p.attributes
                                )
                                key = (m.name, labels)
                                self.starts[key].add(p.start_time_unix_nano)
                                if p.time_unix_nano >= self.last.get(key, (0, 0))[0]:
                                    self.last[key] = (p.time_unix_nano, value)

    def totals(self) -> dict[str, dict[Any, int]]:
        out: dict[str, dict[Any, int]] = defaultdict(dict)
        for (name, labels), (_, value) in self.last.items():
            if not name.startswith("spanmetrics."):  # the workers' own telemetry
                out[name][labels] = value
        return dict(out)


def test_joins_across_partitions_through_a_sigkill(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics_topic, group = f"k8s-{suffix}", f"k8s-metrics-{suffix}", redis_prefix
    document = yaml.safe_load(TOPOLOGY.read_text())
    document["source"] |= {"topic": topic, "broker": broker.url, "group": group,
                           "dead_letter_topic": f"dlq-{suffix}"}  # fmt: skip
    document["spanmetrics"]["metrics_flush_interval"] = "1s"
    document["derive"]["opt_in"] = ["k8s.namespace.name", "k8s.pod.name"]
    document["state"] = redis_url
    document["sinks"] = [{"kafka": {"topic": metrics_topic}}]
    topology = tmp_path / "kubernetes.yaml"
    topology.write_text(yaml.safe_dump(document, sort_keys=False))  # labels keep their order
    fleet = Fleet(topology, tmp_path)
    want: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    for version in ("1.35", "1.29"):
        for metric, streams in expected(version, pods=True).items():
            for labels, stream in streams.items():
                want[metric][labels] += stream.calls
    wanted = {m: dict(s) for m, s in want.items()}

    async def scenario() -> Output:
        await ensure_topics(broker.bootstrap, {topic: PARTITIONS, metrics_topic: 1})
        output = Output(broker.bootstrap, metrics_topic)
        await output.consumer.start()
        try:
            fleet.start("a")
            fleet.start("b")
            await produce(broker.bootstrap, topic, scattered("1.35", seed=1))
            deadline = time.monotonic() + 120
            while output.records == 0:
                assert time.monotonic() < deadline, "the fleet published nothing"
                await output.poll()
            # Half of the next fixture, then a kill: the victim dies holding spans that wait
            # for partners in other partitions, read by the other worker.
            second = scattered("1.29", seed=2)
            await produce(broker.bootstrap, topic, second[: len(second) // 2])
            fleet.signal("a", signal.SIGKILL)
            fleet.start("c")
            await produce(broker.bootstrap, topic, second[len(second) // 2 :])
            deadline = time.monotonic() + 150
            while output.totals() != wanted and time.monotonic() < deadline:
                await output.poll()
            return output
        finally:
            await output.consumer.stop()
            fleet.stop_all()

    try:
        output = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    logs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.log"))
    got = output.totals()
    for metric in sorted(set(wanted) | set(got)):
        assert got.get(metric) == wanted.get(metric), f"{metric}\n{logs}"
    # One start time per stream through the kill.
    moved = {k: v for k, v in output.starts.items()
             if len(v) > 1 and not k[0].startswith("spanmetrics.")}  # fmt: skip
    assert not moved, f"{moved}\n{logs}"
